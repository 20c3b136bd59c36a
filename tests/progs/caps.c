/* Capabilities per thread: bounding, permitted, effective, inheritable and
 * ambient sets, securebits (one of them locked), no_new_privs, and a thread
 * with its own uids that kept some capabilities (SECBIT_KEEP_CAPS). Runs as
 * root; each thread records its state, and checks it after restore. */
#include "harness.h"
#include <linux/capability.h>
#include <linux/securebits.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

struct state { uint64_t eff, prm, inh, bnd, amb; int sb, nnp; uid_t r, e, s; };

static int last_cap(void) {
    FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "r"); int n = 40;
    if (f) { if (fscanf(f, "%d", &n) != 1) n = 40; fclose(f); }
    return n;
}

static void snap(struct state *st) {
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2];
    memset(st, 0, sizeof *st);
    if (syscall(SYS_capget, &h, d)) fail("capget: %s", strerror(errno));
    st->eff = d[0].effective | (uint64_t)d[1].effective << 32;
    st->prm = d[0].permitted | (uint64_t)d[1].permitted << 32;
    st->inh = d[0].inheritable | (uint64_t)d[1].inheritable << 32;
    for (int c = 0; c <= last_cap(); c++) {
        if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1) st->bnd |= 1ULL << c;
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1) st->amb |= 1ULL << c;
    }
    st->sb = prctl(PR_GET_SECUREBITS);
    st->nnp = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
    syscall(SYS_getresuid, &st->r, &st->e, &st->s);
}

static int differ(const char *who, struct state *a, struct state *b, char *out) {
#define F(x, fmt) if (a->x != b->x) { sprintf(out, "%s: " #x " " fmt " became " fmt, who, a->x, b->x); return 1; }
    F(eff, "%#lx") F(prm, "%#lx") F(inh, "%#lx") F(bnd, "%#lx") F(amb, "%#lx")
    F(sb, "%#x") F(nnp, "%d") F(r, "%u") F(e, "%u") F(s, "%u")
    return 0;
}

static void capset3(uint64_t eff, uint64_t prm, uint64_t inh) {
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2] = {
        { (uint32_t)eff, (uint32_t)prm, (uint32_t)inh },
        { (uint32_t)(eff >> 32), (uint32_t)(prm >> 32), (uint32_t)(inh >> 32) },
    };
    if (syscall(SYS_capset, &h, d)) fail("capset: %s", strerror(errno));
}
#define B(c) (1ULL << (c))

static struct state t_before, t_after;
static volatile int t_ready, t_go, t_done;

static void *worker(void *a) {
    /* this thread alone: uids 1000 keeping NET_BIND_SERVICE, KILL, CHOWN */
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)) fail("keepcaps");
    if (syscall(SYS_setresuid, 1000, 1001, 1002)) fail("setresuid: %s", strerror(errno));
    capset3(B(CAP_NET_BIND_SERVICE) | B(CAP_KILL), B(CAP_NET_BIND_SERVICE) | B(CAP_KILL) | B(CAP_CHOWN), B(CAP_KILL));
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) fail("nnp");
    snap(&t_before);
    t_ready = 1;
    while (!t_go) sleep_ms(5);
    snap(&t_after);
    t_done = 1;
    return a;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    /* main: bounding without SYS_TIME and MKNOD; permitted without SYS_BOOT;
     * effective without SYS_ADMIN; inheritable NET_BIND_SERVICE and NET_RAW,
     * NET_BIND_SERVICE ambient; SECBIT_NOROOT locked */
    if (prctl(PR_CAPBSET_DROP, CAP_SYS_TIME, 0, 0, 0) || prctl(PR_CAPBSET_DROP, CAP_MKNOD, 0, 0, 0)) fail("bset drop");
    struct state now; snap(&now);
    uint64_t prm = now.prm & ~B(CAP_SYS_BOOT) & ~B(CAP_SYS_TIME) & ~B(CAP_MKNOD);
    capset3(prm & ~B(CAP_SYS_ADMIN), prm, B(CAP_NET_BIND_SERVICE) | B(CAP_NET_RAW));
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0)) fail("ambient: %s", strerror(errno));
    if (prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED)) fail("securebits: %s", strerror(errno));
    pthread_t t; pthread_create(&t, NULL, worker, NULL);
    while (!t_ready) sleep_ms(5);
    struct state before; snap(&before);
    CHECK(before.amb == B(CAP_NET_BIND_SERVICE) && !(before.bnd & B(CAP_MKNOD)) && before.sb == 3, "setup");
    CHECK(t_before.e == 1001 && t_before.prm == (B(CAP_NET_BIND_SERVICE) | B(CAP_KILL) | B(CAP_CHOWN)) && t_before.nnp == 1 && (t_before.sb & SECBIT_KEEP_CAPS), "worker setup");
    ready();
    wait_go();
    struct state after; snap(&after);
    t_go = 1;
    while (!t_done) sleep_ms(5);
    pthread_join(t, NULL);
    char why[300];
    CHECK(!differ("main", &before, &after, why), "%s", why);
    CHECK(!differ("worker", &t_before, &t_after, why), "%s", why);
    pass();
}
