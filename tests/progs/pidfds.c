/* pidfds: of itself (close-on-exec, as pidfd_open makes it), of a live
 * child (PIDFD_NONBLOCK, close-on-exec cleared, dup'ed at fd 50), of a
 * child made by clone3(CLONE_PIDFD), of a zombie child, of a child that has
 * exited and been reaped, and of one of its threads (PIDFD_THREAD, when the kernel has it).
 * After restore each must refer to the same process (fdinfo Pid:), keep its
 * flags, and behave: signal 0 reaches the live ones, poll and waitid(P_PIDFD)
 * see the children end, the reaped one is readable and gives ESRCH/ECHILD.
 * With the argument "outside" it also holds a pidfd of its parent (outside
 * the tree), which the dump must refuse. */
#include "harness.h"
#include <linux/sched.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#define PIDFD_THREAD O_EXCL

static int pidfd_open(pid_t pid, unsigned flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }
static int send_sig(int pfd, int sig) { return (int)syscall(SYS_pidfd_send_signal, pfd, sig, NULL, 0); }

/* fdinfo "Pid:" of our fd, or -2. */
static int fdinfo_pid(int fd) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    int f = open(path, O_RDONLY);
    if (f < 0) return -2;
    ssize_t n = read(f, buf, sizeof buf - 1);
    close(f);
    if (n <= 0) return -2;
    buf[n] = 0;
    char *p = strstr(buf, "\nPid:");
    return p ? atoi(p + 5) : -2;
}

static volatile pid_t thread_tid;
static void *worker(void *a) { (void)a; thread_tid = gettid(); for (;;) pause(); return NULL; }

static int readable(int fd) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

int main(int argc, char **argv) {
    setup(argc, argv);
    int self = pidfd_open(getpid(), 0);
    CHECK(self >= 0, "pidfd_open self: %s", strerror(errno));
    pid_t child = fork();
    if (child == 0) { for (;;) pause(); }
    int cfd = pidfd_open(child, O_NONBLOCK);
    CHECK(cfd >= 0, "pidfd_open child");
    CHECK(fcntl(cfd, F_SETFD, 0) == 0, "clear cloexec");
    CHECK(dup2(cfd, 50) == 50, "dup2");
    int clfd = -1;
    struct clone_args ca = { .flags = CLONE_PIDFD, .pidfd = (uint64_t)(uintptr_t)&clfd, .exit_signal = SIGCHLD };
    pid_t cloned = (pid_t)syscall(SYS_clone3, &ca, sizeof ca);
    if (cloned == 0) { for (;;) pause(); }
    CHECK(cloned > 0 && clfd >= 0, "clone3(CLONE_PIDFD): %s", strerror(errno));
    pid_t gone = fork();
    if (gone == 0) _exit(0);
    int gfd = pidfd_open(gone, 0);
    CHECK(gfd >= 0, "pidfd_open exiting child");
    CHECK(waitpid(gone, NULL, 0) == gone, "reap");
    CHECK(fdinfo_pid(gfd) == -1, "reaped pidfd Pid: %d", fdinfo_pid(gfd));
    /* A pidfd of a zombie child, not reaped yet. */
    pid_t zombie = fork();
    if (zombie == 0) _exit(9);
    siginfo_t zi;
    while (waitid(P_PID, zombie, &zi, WEXITED | WNOWAIT) != 0) sleep_ms(1);
    int zfd = pidfd_open(zombie, 0);
    CHECK(zfd >= 0, "pidfd_open zombie: %s", strerror(errno));
    pthread_t th;
    pthread_create(&th, NULL, worker, NULL);
    while (!thread_tid) sleep_ms(1);
    int tfd = pidfd_open(thread_tid, PIDFD_THREAD);
    int have_thread = tfd >= 0;
    CHECK(have_thread || errno == EINVAL, "pidfd_open(PIDFD_THREAD): %s", strerror(errno));
    if (argc > 2 && strcmp(argv[2], "outside") == 0)
        CHECK(pidfd_open(getppid(), 0) >= 0, "pidfd of the parent");
    ready();
    wait_go();
    CHECK(fdinfo_pid(self) == getpid(), "self pidfd refers to %d", fdinfo_pid(self));
    CHECK(fdinfo_pid(cfd) == child && fdinfo_pid(50) == child, "child pidfd refers to %d", fdinfo_pid(cfd));
    CHECK(fdinfo_pid(clfd) == cloned, "clone pidfd refers to %d", fdinfo_pid(clfd));
    CHECK(fdinfo_pid(gfd) == -1, "reaped pidfd refers to %d", fdinfo_pid(gfd));
    CHECK(fcntl(self, F_GETFD) == FD_CLOEXEC, "self pidfd close-on-exec lost");
    CHECK(fcntl(cfd, F_GETFD) == 0, "child pidfd became close-on-exec");
    CHECK(fcntl(cfd, F_GETFL) & O_NONBLOCK, "child pidfd lost O_NONBLOCK");
    CHECK(!(fcntl(self, F_GETFL) & O_NONBLOCK), "self pidfd became non-blocking");
    /* One description: O_NONBLOCK set through the dup shows on the original. */
    int fl = fcntl(50, F_GETFL);
    CHECK(fcntl(50, F_SETFL, fl & ~O_NONBLOCK) == 0 && !(fcntl(cfd, F_GETFL) & O_NONBLOCK), "fd 50 is not a dup of the child pidfd");
    CHECK(fcntl(50, F_SETFL, fl) == 0, "F_SETFL");
    CHECK(send_sig(self, 0) == 0, "signal 0 to self: %s", strerror(errno));
    CHECK(send_sig(cfd, 0) == 0, "signal 0 to child: %s", strerror(errno));
    CHECK(send_sig(gfd, 0) < 0 && errno == ESRCH, "signal to a reaped process: %s", strerror(errno));
    CHECK(readable(gfd), "the reaped pidfd is not readable");
    CHECK(!readable(cfd) && !readable(self), "a live process's pidfd is readable");
    siginfo_t si;
    memset(&si, 0, sizeof si);
    CHECK(waitid(P_PIDFD, gfd, &si, WEXITED | WNOHANG) < 0 && errno == ECHILD, "waitid on the reaped pidfd: %s", strerror(errno));
    memset(&si, 0, sizeof si);
    /* Non-blocking pidfd of a live child: EAGAIN. */
    CHECK(waitid(P_PIDFD, cfd, &si, WEXITED) < 0 && errno == EAGAIN, "waitid on a live non-blocking pidfd: %s", strerror(errno));
    if (have_thread) {
        CHECK(fdinfo_pid(tfd) == thread_tid, "thread pidfd refers to %d", fdinfo_pid(tfd));
        CHECK(fcntl(tfd, F_GETFL) & PIDFD_THREAD, "thread pidfd lost PIDFD_THREAD");
        CHECK(send_sig(tfd, 0) == 0, "signal 0 to the thread: %s", strerror(errno));
    }
    CHECK(fdinfo_pid(zfd) == zombie, "zombie pidfd refers to %d", fdinfo_pid(zfd));
    CHECK(readable(zfd), "the zombie's pidfd is not readable");
    memset(&si, 0, sizeof si);
    CHECK(waitid(P_PIDFD, zfd, &si, WEXITED) == 0 && si.si_pid == zombie && si.si_code == CLD_EXITED && si.si_status == 9, "waitid zombie: pid %d code %d status %d", si.si_pid, si.si_code, si.si_status);
    CHECK(send_sig(cfd, SIGKILL) == 0, "kill child");
    struct pollfd pf = { .fd = cfd, .events = POLLIN };
    CHECK(poll(&pf, 1, 5000) == 1, "poll did not see the child end");
    memset(&si, 0, sizeof si);
    CHECK(waitid(P_PIDFD, cfd, &si, WEXITED) == 0 && si.si_pid == child && si.si_code == CLD_KILLED, "waitid child: pid %d code %d", si.si_pid, si.si_code);
    CHECK(send_sig(clfd, SIGTERM) == 0, "kill cloned");
    memset(&si, 0, sizeof si);
    CHECK(waitid(P_PIDFD, clfd, &si, WEXITED) == 0 && si.si_pid == cloned && si.si_code == CLD_KILLED, "waitid cloned: pid %d code %d", si.si_pid, si.si_code);
    pass();
}
