/* Seccomp per thread, checked by the program itself after restore:
 * - main: no_new_privs, then two stacked filters, getppid -> EPERM and
 *   getpgid -> EXDEV (the second with SECCOMP_FILTER_FLAG_LOG); both refuse
 *   getpgrp, with ENOLINK and ENOSYS, which shows their order;
 * - "inh": created after them, inherits both;
 * - "own": created before them, installs its own filter alone
 *   (getsid -> ENOTBLK), as root without no_new_privs;
 * - "strict": created before them, in strict mode, echoing bytes between
 *   two pipes with read/write only;
 * - "jail": created before them, under an allow-list that kills the process
 *   on any other syscall (the many godwit injects into it at dump and at
 *   restore included, unless its seccomp is suspended meanwhile).
 * Each filtered syscall must fail exactly as before, the others work, and
 * /proc shows the same mode and filter count per thread.
 * Arguments after DIR:
 *   dropadmin  "own" drops CAP_SYS_ADMIN from its effective set after its
 *              filter is in (no no_new_privs either: the restore must install
 *              it before that thread's credentials, and set no extra nnp);
 *   tsync      only main and "inh" (every filter shared); after restore main
 *              adds a filter with SECCOMP_FILTER_FLAG_TSYNC, which works only
 *              if the threads share their filters again. */
#include "harness.h"
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#define NONE 0xffffffffu

static int fails_with(long ret, int err) { return ret == -1 && errno == err; }

/* A filter under which syscall `nr` fails with `err` and `nr2` with `err2`
 * (NONE: no second); every other is allowed. */
static long deny2(unsigned nr, int err, unsigned nr2, int err2, unsigned flags) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr2, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err2),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

static long deny(unsigned nr, int err, unsigned flags) { return deny2(nr, err, NONE, 0, flags); }

/* Both of main's filters refuse getpgrp, the older with ENOLINK, the newer
 * with ENOSYS: with equal actions the newest filter's errno wins, so ENOSYS
 * says the stack kept its order. */
static const char *stack_order_wrong(void) {
    if (fails_with(syscall(SYS_getpgrp), ENOSYS)) return NULL;
    return errno == ENOLINK ? "getpgrp failed with ENOLINK: the filters are in the wrong order" : "getpgrp did not fail with ENOSYS";
}

/* Field `key` of /proc/self/task/TID/status, -1 if absent. */
static long status_of(pid_t tid, const char *key) {
    char p[64], line[256];
    snprintf(p, sizeof p, "/proc/self/task/%d/status", tid);
    FILE *f = fopen(p, "r");
    long v = -1;
    size_t n = strlen(key);
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') { v = atol(line + n + 1); break; }
    fclose(f);
    return v;
}


static char msg_own[512] = "not run", msg_inh[512] = "not run";
static volatile int own_ready, inh_ready, inh_done, inh_release, strict_tid, own_tid, inh_tid;
static int dropadmin, tsync;
static int to_strict[2], from_strict[2];
static volatile int jail_tid, jail_ok;

/* The calls "jail" may make: wait_go, its sleeps, exit; any other kills the process. */
static void *jail(void *a) {
    static const unsigned ok[] = { SYS_read, SYS_write, SYS_close, SYS_access, SYS_nanosleep,
        SYS_clock_nanosleep, SYS_restart_syscall, SYS_rt_sigreturn, SYS_futex, SYS_getpid,
        SYS_gettid, SYS_exit, SYS_exit_group, SYS_faccessat, 439 /* faccessat2 */ };
    enum { N = sizeof ok / sizeof ok[0] };
    struct sock_filter f[4 + N + 2] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    };
    for (int i = 0; i < N; i++) f[4 + i] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ok[i], N - i, 0);
    f[4 + N] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    f[5 + N] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    jail_tid = gettid();
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) { jail_tid = -errno; return a; }
    wait_go();
    jail_ok = 1;
    for (;;) sleep_ms(1000);
    return a;
}

static int admin_effective(void) {
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2];
    return syscall(SYS_capget, &h, d) || (d[0].effective & (1u << CAP_SYS_ADMIN));
}

static void *own(void *a) {
    own_tid = gettid();
    if (deny(SYS_getsid, ENOTBLK, 0)) { snprintf(msg_own, sizeof msg_own, "own: seccomp: %s", strerror(errno)); own_ready = 1; return a; }
    if (dropadmin) {
        struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
        struct __user_cap_data_struct d[2];
        if (syscall(SYS_capget, &h, d)) { snprintf(msg_own, sizeof msg_own, "own: capget"); own_ready = 1; return a; }
        d[0].effective &= ~(1u << CAP_SYS_ADMIN);
        if (syscall(SYS_capset, &h, d)) { snprintf(msg_own, sizeof msg_own, "own: capset"); own_ready = 1; return a; }
    }
    own_ready = 1;
    wait_go();
    char *m = msg_own;
    size_t n = sizeof msg_own;
    if (!fails_with(syscall(SYS_getsid, 0), ENOTBLK)) snprintf(m, n, "own: getsid did not fail with ENOTBLK (%s)", strerror(errno));
    else if (syscall(SYS_getppid) <= 0) snprintf(m, n, "own: getppid failed: %s", strerror(errno));
    else if (syscall(SYS_getpgid, 0) < 0) snprintf(m, n, "own: getpgid failed: %s", strerror(errno));
    else if (status_of(gettid(), "Seccomp") != 2 || status_of(gettid(), "Seccomp_filters") != 1)
        snprintf(m, n, "own: Seccomp %ld, filters %ld (want 2, 1)", status_of(gettid(), "Seccomp"), status_of(gettid(), "Seccomp_filters"));
    else if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 0) snprintf(m, n, "own: got no_new_privs");
    else if (dropadmin && admin_effective()) snprintf(m, n, "own: CAP_SYS_ADMIN effective again");
    else snprintf(m, n, "ok");
    return a;
}

static void *inh(void *a) {
    inh_tid = gettid();
    inh_ready = 1;
    wait_go();
    char *m = msg_inh;
    size_t n = sizeof msg_inh;
    if (!fails_with(syscall(SYS_getppid), EPERM)) snprintf(m, n, "inh: getppid did not fail with EPERM (%s)", strerror(errno));
    else if (!fails_with(syscall(SYS_getpgid, 0), EXDEV)) snprintf(m, n, "inh: getpgid did not fail with EXDEV (%s)", strerror(errno));
    else if (getsid(0) < 0) snprintf(m, n, "inh: getsid failed: %s", strerror(errno));
    else if (stack_order_wrong()) snprintf(m, n, "inh: %s", stack_order_wrong());
    else if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) snprintf(m, n, "inh: lost no_new_privs");
    else snprintf(m, n, "ok");
    inh_done = 1;
    while (!inh_release) sleep_ms(1);
    return a;
}

/* Strict mode: read, write, exit and rt_sigreturn only. */
static void *strict(void *a) {
    strict_tid = gettid();
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_STRICT, 0, NULL)) { strict_tid = -errno; return a; }
    for (;;) {
        char c;
        if (syscall(SYS_read, to_strict[0], &c, 1) != 1) syscall(SYS_exit, 1);
        c++;
        syscall(SYS_write, from_strict[1], &c, 1);
    }
    return a;
}

/* Sends `c` to the strict thread; it must answer c + 1 within 5 s. */
static void echo(char c, const char *when) {
    char back = 0;
    struct pollfd p = { from_strict[0], POLLIN, 0 };
    CHECK(write(to_strict[1], &c, 1) == 1, "%s: write to strict thread", when);
    CHECK(poll(&p, 1, 5000) == 1, "%s: the strict-mode thread does not answer", when);
    CHECK(read(from_strict[0], &back, 1) == 1 && back == c + 1, "%s: strict thread answered %d", when, back);
}

int main(int argc, char **argv) {
    setup(argc, argv);
    for (int i = 2; i < argc; i++) {
        dropadmin |= !strcmp(argv[i], "dropadmin");
        tsync |= !strcmp(argv[i], "tsync");
    }
    pthread_t t_own, t_inh, t_strict, t_jail;
    if (!tsync) {
        CHECK(pipe(to_strict) == 0 && pipe(from_strict) == 0, "pipe");
        CHECK(pthread_create(&t_strict, NULL, strict, NULL) == 0, "thread");
        CHECK(pthread_create(&t_own, NULL, own, NULL) == 0, "thread");
        CHECK(pthread_create(&t_jail, NULL, jail, NULL) == 0, "thread");
        while (!own_ready || !strict_tid || !jail_tid) sleep_ms(1);
        CHECK(jail_tid > 0, "jail: seccomp: %s", strerror(-jail_tid));
        CHECK(strict_tid > 0, "strict mode: %s", strerror(-strict_tid));
        CHECK(!strcmp(msg_own, "not run"), "%s", msg_own);
        echo('a', "before");
    }
    CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "no_new_privs");
    CHECK(deny2(SYS_getppid, EPERM, SYS_getpgrp, ENOLINK, 0) == 0, "filter 1: %s", strerror(errno));
    CHECK(deny2(SYS_getpgid, EXDEV, SYS_getpgrp, ENOSYS, SECCOMP_FILTER_FLAG_LOG) == 0, "filter 2: %s", strerror(errno));
    CHECK(pthread_create(&t_inh, NULL, inh, NULL) == 0, "thread");
    while (!inh_ready) sleep_ms(1);
    CHECK(fails_with(syscall(SYS_getppid), EPERM) && fails_with(syscall(SYS_getpgid, 0), EXDEV), "filters not in force before the dump");
    CHECK(!stack_order_wrong(), "before the dump: %s", stack_order_wrong());
    ready();
    wait_go();
    pid_t me = gettid();
    CHECK(fails_with(syscall(SYS_getppid), EPERM), "main: getppid did not fail with EPERM (%s)", strerror(errno));
    CHECK(fails_with(syscall(SYS_getpgid, 0), EXDEV), "main: getpgid did not fail with EXDEV (%s)", strerror(errno));
    CHECK(!stack_order_wrong(), "main: %s", stack_order_wrong());
    errno = 0;
    CHECK(getsid(0) >= 0 && getpid() > 0 && getuid() == 0, "main: an unfiltered syscall failed: %s", strerror(errno));
    CHECK(status_of(me, "Seccomp") == 2 && status_of(me, "Seccomp_filters") == 2,
          "main: Seccomp %ld, filters %ld (want 2, 2)", status_of(me, "Seccomp"), status_of(me, "Seccomp_filters"));
    CHECK(status_of(inh_tid, "Seccomp") == 2 && status_of(inh_tid, "Seccomp_filters") == 2,
          "inh: Seccomp %ld, filters %ld (want 2, 2)", status_of(inh_tid, "Seccomp"), status_of(inh_tid, "Seccomp_filters"));
    CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "main: lost no_new_privs");
    while (!inh_done) sleep_ms(1);
    CHECK(!strcmp(msg_inh, "ok"), "%s", msg_inh);
    if (tsync) {
        /* "inh" still lives: TSYNC works only if its filters are main's. */
        long r = deny(SYS_getpriority, EDOM, SECCOMP_FILTER_FLAG_TSYNC);
        CHECK(r == 0, "TSYNC after restore: %ld (%s): the threads no longer share their filters", r, r < 0 ? strerror(errno) : "a thread that could not be synced");
        CHECK(fails_with(syscall(SYS_getpriority, PRIO_PROCESS, 0), EDOM), "the TSYNC filter is not in force");
        CHECK(status_of(inh_tid, "Seccomp_filters") == 3, "inh: %ld filters after TSYNC (want 3)", status_of(inh_tid, "Seccomp_filters"));
    }
    inh_release = 1;
    pthread_join(t_inh, NULL);
    if (tsync) pass();
    pthread_join(t_own, NULL);
    CHECK(!strcmp(msg_own, "ok"), "%s", msg_own);
    CHECK(status_of(strict_tid, "Seccomp") == 1 && status_of(strict_tid, "Seccomp_filters") == 0,
          "strict: Seccomp %ld, filters %ld (want 1, 0)", status_of(strict_tid, "Seccomp"), status_of(strict_tid, "Seccomp_filters"));
    echo('x', "after");
    for (int i = 0; i < 500 && !jail_ok; i++) sleep_ms(10);
    CHECK(jail_ok, "jail: did not get past wait_go");
    CHECK(status_of(jail_tid, "Seccomp") == 2 && status_of(jail_tid, "Seccomp_filters") == 1,
          "jail: Seccomp %ld, filters %ld (want 2, 1)", status_of(jail_tid, "Seccomp"), status_of(jail_tid, "Seccomp_filters"));
    pass();
}
