/* Process attributes: the nice value of its session's autogroup (it leads
 * its own session), oom_score_adj, audit loginuid, parent-death signal and
 * timer slack (per thread), child subreaper (an orphaned grandchild is
 * re-parented to us after restore), THP disable, dumpable, a membarrier
 * registration, memory-deny-write-execute; in a worker thread also the TSC
 * mode, the machine-check kill policy, CPUID faulting and syscall user
 * dispatch (with its selector at "block" while dumped). Runs as root. */
#include "harness.h"
#include <linux/membarrier.h>
#include <sys/mman.h>
#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif
#ifndef PR_SET_SYSCALL_USER_DISPATCH
#define PR_SET_SYSCALL_USER_DISPATCH 59
#define PR_SYS_DISPATCH_OFF 0
#define PR_SYS_DISPATCH_ON 1
#endif
#define SYSCALL_DISPATCH_FILTER_ALLOW 0
#define SYSCALL_DISPATCH_FILTER_BLOCK 1
#define ARCH_GET_CPUID 0x1011
#define ARCH_SET_CPUID 0x1012
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static long read_long(const char *path) {
    FILE *f = fopen(path, "r"); long v = -12345;
    if (f) { if (fscanf(f, "%ld", &v) != 1) v = -12345; fclose(f); }
    return v;
}
static void write_str(const char *path, const char *v) {
    int fd = open(path, O_WRONLY);
    if (fd < 0 || write(fd, v, strlen(v)) < 0) fail("writing %s: %s", path, strerror(errno));
    close(fd);
}
static pid_t ppid_of(pid_t p) {
    char path[64], buf[512]; snprintf(path, sizeof path, "/proc/%d/stat", p);
    int fd = open(path, O_RDONLY); if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1); close(fd); if (n <= 0) return -1; buf[n] = 0;
    char *r = strrchr(buf, ')'); char st; int pp;
    if (!r || sscanf(r + 2, "%c %d", &st, &pp) != 2) return -1;
    return pp;
}

static volatile int t_go, t_done, t_ready;
static char t_verdict[200] = "not run";
static volatile char selector = SYSCALL_DISPATCH_FILTER_ALLOW;
static volatile int sigsys_seen;
static void on_sigsys(int sig) { selector = SYSCALL_DISPATCH_FILTER_ALLOW; sigsys_seen = 1; }
static void *worker(void *a) {
    prctl(PR_SET_PDEATHSIG, SIGHUP);
    prctl(PR_SET_TIMERSLACK, 654321);
    if (prctl(PR_SET_TSC, PR_TSC_SIGSEGV)) fail("PR_SET_TSC: %s", strerror(errno));
    if (prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0)) fail("PR_MCE_KILL: %s", strerror(errno));
    int cpuid = syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) == 0;
    if (prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_ON, 0, 0, &selector)) fail("syscall user dispatch: %s", strerror(errno));
    /* dumped with its syscalls blocked (as Wine runs Windows code): wait
     * without any */
    selector = SYSCALL_DISPATCH_FILTER_BLOCK;
    t_ready = 1;
    while (!t_go) __asm__ volatile("pause");
    selector = SYSCALL_DISPATCH_FILTER_ALLOW;
    int sig = 0; prctl(PR_GET_PDEATHSIG, &sig);
    long slack = prctl(PR_GET_TIMERSLACK);
    int tsc = 0; prctl(PR_GET_TSC, &tsc);
    int mce = prctl(PR_MCE_KILL_GET, 0, 0, 0, 0);
    long cpuid_now = syscall(SYS_arch_prctl, ARCH_GET_CPUID, 0);
    /* with the selector at BLOCK, a syscall raises SIGSYS if dispatch is on */
    selector = SYSCALL_DISPATCH_FILTER_BLOCK;
    syscall(SYS_getppid);
    selector = SYSCALL_DISPATCH_FILTER_ALLOW;
    prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_OFF, 0, 0, 0);
    if (sig != SIGHUP) snprintf(t_verdict, sizeof t_verdict, "worker pdeathsig %d", sig);
    else if (slack != 654321) snprintf(t_verdict, sizeof t_verdict, "worker timer slack %ld", slack);
    else if (tsc != PR_TSC_SIGSEGV) snprintf(t_verdict, sizeof t_verdict, "worker TSC mode %d", tsc);
    else if (mce != PR_MCE_KILL_EARLY) snprintf(t_verdict, sizeof t_verdict, "worker MCE kill policy %d", mce);
    else if (cpuid && cpuid_now != 0) snprintf(t_verdict, sizeof t_verdict, "worker CPUID faulting is off");
    else if (!sigsys_seen) snprintf(t_verdict, sizeof t_verdict, "worker syscall user dispatch is off");
    else snprintf(t_verdict, sizeof t_verdict, "ok");
    t_done = 1;
    return a;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    CHECK(setsid() > 0, "setsid: %s", strerror(errno));
    write_str("/proc/self/autogroup", "7");
    write_str("/proc/self/oom_score_adj", "567");
    write_str("/proc/self/loginuid", "4242");
    CHECK(prctl(PR_SET_PDEATHSIG, SIGUSR2) == 0, "pdeathsig");
    CHECK(prctl(PR_SET_TIMERSLACK, 123456) == 0, "timerslack");
    CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0, "subreaper");
    CHECK(prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0, "thp disable");
    CHECK(syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0, "membarrier register: %s", strerror(errno));
    int pfd[2]; CHECK(pipe(pfd) == 0, "pipe");
    pid_t a = fork();
    if (a == 0) {
        pid_t b = fork();
        if (b == 0) { for (;;) pause(); }
        if (write(pfd[1], &b, sizeof b) != sizeof b) _exit(1);
        for (;;) pause();
    }
    pid_t b; CHECK(read(pfd[0], &b, sizeof b) == sizeof b, "grandchild pid");
    close(pfd[0]); close(pfd[1]);
    signal(SIGSYS, on_sigsys);
    pthread_t t; pthread_create(&t, NULL, worker, NULL);
    while (!t_ready) sleep_ms(5);
    CHECK(prctl(PR_SET_DUMPABLE, 0) == 0, "dumpable");
    CHECK(prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0, "MDWE: %s", strerror(errno));
    long thp = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
    ready();
    wait_go();
    t_go = 1;
    while (!t_done) sleep_ms(5);
    pthread_join(t, NULL);
    CHECK(strcmp(t_verdict, "ok") == 0, "%s", t_verdict);
    char ag[128] = ""; FILE *agf = fopen("/proc/self/autogroup", "r");
    if (agf) { if (!fgets(ag, sizeof ag, agf)) ag[0] = 0; fclose(agf); }
    CHECK(strstr(ag, "nice 7") != NULL, "autogroup: %s", ag);
    long v = read_long("/proc/self/oom_score_adj");
    CHECK(v == 567, "oom_score_adj %ld", v);
    v = read_long("/proc/self/loginuid");
    CHECK(v == 4242, "loginuid %ld", v);
    int sig = 0; prctl(PR_GET_PDEATHSIG, &sig);
    CHECK(sig == SIGUSR2, "pdeathsig %d", sig);
    CHECK(prctl(PR_GET_TIMERSLACK) == 123456, "timer slack %d", prctl(PR_GET_TIMERSLACK));
    int sub = 0; prctl(PR_GET_CHILD_SUBREAPER, &sub);
    CHECK(sub == 1, "child subreaper %d", sub);
    CHECK(prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == thp && thp != 0, "THP disable %d (was %ld)", prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0), thp);
    CHECK(prctl(PR_GET_DUMPABLE) == 0, "dumpable %d", prctl(PR_GET_DUMPABLE));
    CHECK(prctl(PR_GET_MDWE, 0, 0, 0, 0) == PR_MDWE_REFUSE_EXEC_GAIN, "MDWE %d", prctl(PR_GET_MDWE, 0, 0, 0, 0));
    CHECK(syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0, "membarrier: %s", strerror(errno));
    /* the orphaned grandchild comes to us, the subreaper */
    kill(a, SIGKILL);
    CHECK(waitpid(a, NULL, 0) == a, "reaping the child");
    pid_t pp = -1;
    for (int i = 0; i < 200 && (pp = ppid_of(b)) != getpid(); i++) sleep_ms(10);
    kill(b, SIGKILL);
    CHECK(pp == getpid(), "orphan %d re-parented to %d, not to us (%d)", b, pp, getpid());
    CHECK(waitpid(b, NULL, 0) == b, "reaping the orphan");
    pass();
}
