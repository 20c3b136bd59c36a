/* NUMA memory policies: the main thread's (interleave), a thread's
 * (preferred, with MPOL_F_STATIC_NODES), and two memory areas' own (bind,
 * local) set with mbind. Each is checked with get_mempolicy after restore. */
#include "harness.h"
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#define MPOL_DEFAULT 0
#define MPOL_PREFERRED 1
#define MPOL_BIND 2
#define MPOL_INTERLEAVE 3
#define MPOL_LOCAL 4
#define MPOL_F_STATIC_NODES (1 << 15)
#define MPOL_F_ADDR 2

static int policy(void *addr, unsigned long *mask) {
    int mode = -1; unsigned long m[16] = {0};
    if (syscall(SYS_get_mempolicy, &mode, m, 1025, addr, addr ? MPOL_F_ADDR : 0)) fail("get_mempolicy: %s", strerror(errno));
    *mask = m[0];
    return mode;
}

static volatile int t_set, t_go, t_done;
static char t_verdict[128] = "not run";
static void *worker(void *a) {
    unsigned long node0 = 1;
    if (syscall(SYS_set_mempolicy, MPOL_PREFERRED | MPOL_F_STATIC_NODES, &node0, 1025)) fail("set_mempolicy: %s", strerror(errno));
    t_set = 1;
    while (!t_go) sleep_ms(5);
    unsigned long m; int mode = policy(NULL, &m);
    if (mode != (MPOL_PREFERRED | MPOL_F_STATIC_NODES) || m != 1) snprintf(t_verdict, sizeof t_verdict, "thread policy %#x nodes %#lx", mode, m);
    else snprintf(t_verdict, sizeof t_verdict, "ok");
    t_done = 1;
    return a;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    unsigned long node0 = 1;
    CHECK(syscall(SYS_set_mempolicy, MPOL_INTERLEAVE, &node0, 1025) == 0, "set_mempolicy: %s", strerror(errno));
    size_t len = 8 * 4096;
    char *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *b = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(a != MAP_FAILED && b != MAP_FAILED, "mmap");
    CHECK(syscall(SYS_mbind, a, len, MPOL_BIND, &node0, 1025, 0) == 0, "mbind: %s", strerror(errno));
    CHECK(syscall(SYS_mbind, b, len, MPOL_LOCAL, NULL, 0, 0) == 0, "mbind local: %s", strerror(errno));
    memset(a, 7, len); memset(b, 9, len);
    pthread_t t; pthread_create(&t, NULL, worker, NULL);
    while (!t_set) sleep_ms(5);
    ready();
    wait_go();
    t_go = 1;
    while (!t_done) sleep_ms(5);
    pthread_join(t, NULL);
    CHECK(strcmp(t_verdict, "ok") == 0, "%s", t_verdict);
    unsigned long m; int mode = policy(NULL, &m);
    CHECK(mode == MPOL_INTERLEAVE && m == 1, "main thread policy %#x nodes %#lx", mode, m);
    mode = policy(a, &m);
    CHECK(mode == MPOL_BIND && m == 1, "area a policy %#x nodes %#lx", mode, m);
    mode = policy(b, &m);
    CHECK(mode == MPOL_LOCAL, "area b policy %#x", mode);
    CHECK(a[0] == 7 && a[len - 1] == 7 && b[len - 1] == 9, "memory contents");
    pass();
}
