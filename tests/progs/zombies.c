/* Zombies of every kind. The root (a session leader) leaves unreaped:
 * a child that exited with 7; one killed by SIGTERM; one killed by SIGABRT
 * with a core dump (when this host writes cores for it); a zombie leading a
 * process group that a live sibling is still in; a zombie leading its own
 * session; a zombie in a group led by a live sibling; and a live child
 * holding a zombie of its own (two levels); a zombie made by clone with no
 * exit signal and a live child whose exit signal is SIGUSR1. After restore it checks each
 * zombie's PID, group and session, and that waitpid reports the very wait
 * status the kernel held before the dump. */
#include "harness.h"
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/sched.h>

static volatile sig_atomic_t got_usr1;
static void on_usr1(int s) { (void)s; got_usr1 = 1; }

/* A child made by clone3 with `exit_signal`; it runs `code` (<0: pause). */
static pid_t clone_child(int exit_signal, int code) {
    struct clone_args ca = { .exit_signal = (uint64_t)exit_signal };
    pid_t pid = (pid_t)syscall(SYS_clone3, &ca, sizeof ca);
    if (pid == 0) { if (code < 0) for (;;) pause(); _exit(code); }
    return pid;
}

/* Field `n` of /proc/PID/stat (n > 2). */
static long stat_field(pid_t pid, int n) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t r = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (r <= 0) return -1;
    buf[r] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    int field = 2;
    for (char *t = strtok(p + 1, " \n"); t; t = strtok(NULL, " \n"))
        if (++field == n) return atol(t);
    return -1;
}

/* The raw wait status of zombie `pid` (field 52 of /proc/PID/stat). */
static int raw_status(pid_t pid) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    int field = 2;
    for (char *t = strtok(p + 1, " \n"); t; t = strtok(NULL, " \n"))
        if (++field == 52) return atoi(t);
    return -1;
}

static int prctl_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); }

/* Field 4 (ppid) of /proc/PID/stat. */
static pid_t getppid_of(pid_t pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    int ppid = -1;
    if (p) sscanf(p + 2, "%*c %d", &ppid);
    return ppid;
}

static void await_zombie(pid_t pid) {
    siginfo_t si;
    while (waitid(P_PID, pid, &si, WEXITED | WNOWAIT | __WALL) != 0) sleep_ms(1);
}

int main(int argc, char **argv) {
    setup(argc, argv);
    if (getsid(0) != getpid()) CHECK(setsid() == getpid(), "setsid");
    if (argc > 2 && strcmp(argv[2], "orphan-session") == 0) {
        /* A zombie session leader whose member was re-parented to us: the
         * member cannot be put back in that session; the dump refuses it. */
        CHECK(prctl_subreaper() == 0, "PR_SET_CHILD_SUBREAPER");
        int q[2]; CHECK(pipe(q) == 0, "pipe");
        pid_t z = fork();
        if (z == 0) {
            if (setsid() < 0) _exit(96);
            pid_t b = fork();
            if (b == 0) { for (;;) pause(); }
            char msg[32]; int n = snprintf(msg, sizeof msg, "%d", b);
            if (write(q[1], msg, n) != n) _exit(95);
            _exit(0);
        }
        close(q[1]);
        char msg[32] = {0};
        CHECK(read(q[0], msg, sizeof msg - 1) > 0, "member pid");
        pid_t b = atoi(msg);
        await_zombie(z);
        while (getppid_of(b) != getpid()) sleep_ms(1);
        put_file("member", msg);
        ready();
        wait_go();
        CHECK(getsid(b) == z, "member's session %d", getsid(b));
        kill(b, SIGKILL);
        waitpid(b, NULL, 0);
        pass();
    }
    pid_t z_exit = fork();
    if (z_exit == 0) _exit(7);
    pid_t z_term = fork();
    if (z_term == 0) { signal(SIGTERM, SIG_DFL); raise(SIGTERM); _exit(99); }
    pid_t z_core = fork();
    if (z_core == 0) {
        struct rlimit rl;
        getrlimit(RLIMIT_CORE, &rl);
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_CORE, &rl);
        if (chdir(test_dir) != 0) _exit(98);
        abort();
    }
    /* A group led by a zombie, with a live member. */
    int p[2]; CHECK(pipe(p) == 0, "pipe");
    pid_t z_pgl = fork();
    if (z_pgl == 0) { setpgid(0, 0); char c; if (read(p[0], &c, 1) != 1) _exit(97); _exit(11); }
    setpgid(z_pgl, z_pgl);
    pid_t member = fork();
    if (member == 0) { setpgid(0, z_pgl); for (;;) pause(); }
    setpgid(member, z_pgl);
    while (getpgid(member) != z_pgl) sleep_ms(1);
    CHECK(write(p[1], "x", 1) == 1, "release the group leader");
    close(p[0]); close(p[1]);
    /* A zombie that led its own session. */
    pid_t z_sl = fork();
    if (z_sl == 0) { if (setsid() < 0) _exit(96); _exit(12); }
    /* A live group leader, and a zombie in its group. */
    pid_t leader = fork();
    if (leader == 0) { setpgid(0, 0); for (;;) pause(); }
    setpgid(leader, leader);
    pid_t z_in = fork();
    if (z_in == 0) { if (setpgid(0, leader) != 0) _exit(95); _exit(13); }
    /* Two levels: a live child with a zombie of its own, which it checks
     * after restore; it exits 0 if all is well. */
    pid_t mid = fork();
    if (mid == 0) {
        pid_t gz = fork();
        if (gz == 0) _exit(21);
        await_zombie(gz);
        int want = raw_status(gz);
        put_file("mid-ready", "ok\n");
        wait_go();
        int st;
        if (waitpid(gz, &st, WNOHANG) != gz) _exit(2);
        if (st != want || !WIFEXITED(st) || WEXITSTATUS(st) != 21) _exit(3);
        _exit(0);
    }
    /* Exit signals other than SIGCHLD: a zombie with none (waited for only
     * with __WALL), a live child that sends SIGUSR1 when it ends. */
    signal(SIGUSR1, on_usr1);
    pid_t z_clone = clone_child(0, 14);
    CHECK(z_clone > 0, "clone3: %s", strerror(errno));
    pid_t usr = clone_child(SIGUSR1, -1);
    CHECK(usr > 0, "clone3: %s", strerror(errno));
    await_zombie(z_clone);
    CHECK(stat_field(usr, 38) == SIGUSR1, "usr exit signal %ld", stat_field(usr, 38));
    pid_t zs[] = { z_exit, z_term, z_core, z_pgl, z_sl, z_in };
    int want[6];
    for (int i = 0; i < 6; i++) { await_zombie(zs[i]); want[i] = raw_status(zs[i]); }
    char mr[4200]; snprintf(mr, sizeof mr, "%s/mid-ready", test_dir);
    while (access(mr, F_OK) != 0) sleep_ms(5);
    CHECK(WIFEXITED(want[0]) && WEXITSTATUS(want[0]) == 7, "z_exit %#x", want[0]);
    CHECK(WIFSIGNALED(want[1]) && WTERMSIG(want[1]) == SIGTERM && !WCOREDUMP(want[1]), "z_term %#x", want[1]);
    CHECK(WIFSIGNALED(want[2]) && WTERMSIG(want[2]) == SIGABRT, "z_core %#x", want[2]);
    {
        /* With the usual core_pattern, the kernel wrote the core here. */
        char pat[256] = {0};
        int fd = open("/proc/sys/kernel/core_pattern", O_RDONLY);
        if (fd >= 0) { if (read(fd, pat, sizeof pat - 1) < 0) pat[0] = 0; close(fd); }
        if (strcmp(pat, "core\n") == 0) CHECK(WCOREDUMP(want[2]), "no core bit: %#x", want[2]);
    }
    CHECK(getpgid(z_sl) == z_sl && getsid(z_sl) == z_sl, "z_sl before");
    CHECK(getpgid(z_in) == leader, "z_in before");
    {
        char msg[64]; snprintf(msg, sizeof msg, "%d\n", want[2]);
        put_file("core-status", msg);
    }
    ready();
    wait_go();
    /* Groups and sessions first (reaping ends them). */
    CHECK(getsid(0) == getpid() && getpgid(0) == getpid(), "root session/group");
    CHECK(getpgid(z_pgl) == z_pgl, "zombie group leader's group %d", getpgid(z_pgl));
    CHECK(getpgid(member) == z_pgl, "member of the zombie's group is in %d", getpgid(member));
    CHECK(getsid(member) == getpid(), "member's session %d", getsid(member));
    CHECK(kill(-z_pgl, 0) == 0, "the zombie-led group is gone");
    CHECK(getsid(z_sl) == z_sl, "zombie session leader's session %d", getsid(z_sl));
    CHECK(getpgid(z_sl) == z_sl, "zombie session leader's group %d", getpgid(z_sl));
    CHECK(getpgid(z_in) == leader, "zombie in a live leader's group: %d", getpgid(z_in));
    CHECK(getsid(z_in) == getpid(), "zombie's session %d", getsid(z_in));
    for (int i = 0; i < 6; i++) {
        int st;
        CHECK(waitpid(zs[i], &st, WNOHANG) == zs[i], "zombie %d not reapable", zs[i]);
        CHECK(st == want[i], "zombie %d: status %#x, was %#x", zs[i], st, want[i]);
    }
    int st;
    CHECK(waitpid(z_clone, &st, WNOHANG) < 0 && errno == ECHILD, "the zombie without exit signal is seen without __WALL");
    CHECK(waitpid(z_clone, &st, WNOHANG | __WALL) == z_clone, "the zombie without exit signal is not reapable");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 14, "z_clone status %#x", st);
    CHECK(stat_field(usr, 38) == SIGUSR1, "usr exit signal %ld after restore", stat_field(usr, 38));
    got_usr1 = 0;
    kill(usr, SIGKILL);
    CHECK(waitpid(usr, &st, __WALL) == usr && WIFSIGNALED(st), "usr status %#x", st);
    for (int i = 0; i < 500 && !got_usr1; i++) sleep_ms(1);
    CHECK(got_usr1, "no SIGUSR1 when the child with that exit signal ended");
    CHECK(waitpid(mid, &st, 0) == mid, "mid not reaped");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the grandchild zombie came back wrong (mid status %#x)", st);
    kill(member, SIGKILL); kill(leader, SIGKILL);
    CHECK(waitpid(member, &st, 0) == member, "member");
    CHECK(waitpid(leader, &st, 0) == leader, "leader");
    /* Nothing else is left. */
    CHECK(waitpid(-1, &st, WNOHANG | __WALL) < 0 && errno == ECHILD, "an unexpected child");
    pass();
}
