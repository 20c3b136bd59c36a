/* O_ASYNC descriptors: a pipe whose read end signals this process with
 * SIGRTMIN+1 (F_SETOWN_EX F_OWNER_PID, F_SETSIG) when data arrives, and a
 * socket owned by this thread (F_OWNER_TID) with the default SIGIO and
 * no O_ASYNC (an owner for SIGURG). */
#include "harness.h"
#include <signal.h>
#include <sys/socket.h>

static volatile sig_atomic_t got, got_sig, got_fd, got_code;

static void on_io(int sig, siginfo_t *si, void *ctx) {
    (void)ctx;
    got++;
    got_sig = sig;
    got_fd = si->si_fd;
    got_code = si->si_code;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    struct sigaction sa = {0};
    sa.sa_sigaction = on_io;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    CHECK(sigaction(SIGRTMIN + 1, &sa, NULL) == 0, "sigaction");
    int p[2]; CHECK(pipe2(p, O_NONBLOCK) == 0, "pipe");
    /* Move the read end off its first number, to see si_fd is the fd's own. */
    CHECK(dup2(p[0], 17) == 17 && close(p[0]) == 0, "dup2"); p[0] = 17;
    struct f_owner_ex me = { F_OWNER_PID, getpid() };
    CHECK(fcntl(p[0], F_SETOWN_EX, &me) == 0, "F_SETOWN_EX");
    CHECK(fcntl(p[0], F_SETSIG, SIGRTMIN + 1) == 0, "F_SETSIG");
    CHECK(fcntl(p[0], F_SETFL, O_NONBLOCK | O_ASYNC) == 0, "O_ASYNC");
    int sv[2]; CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
    struct f_owner_ex thr = { F_OWNER_TID, gettid() };
    CHECK(fcntl(sv[0], F_SETOWN_EX, &thr) == 0, "F_SETOWN_EX tid");
    /* Works before the dump. */
    CHECK(write(p[1], "a", 1) == 1, "write");
    for (int i = 0; i < 100 && !got; i++) sleep_ms(10);
    CHECK(got && got_sig == SIGRTMIN + 1, "no signal before the dump");
    char c; CHECK(read(p[0], &c, 1) == 1, "read");
    ready();
    wait_go();
    got = got_sig = got_fd = got_code = 0;
    struct f_owner_ex o;
    CHECK(fcntl(p[0], F_GETOWN_EX, &o) == 0 && o.type == F_OWNER_PID && o.pid == getpid(), "pipe owner: type %d pid %d", o.type, o.pid);
    CHECK(fcntl(p[0], F_GETSIG) == SIGRTMIN + 1, "pipe signal: %d", fcntl(p[0], F_GETSIG));
    CHECK(fcntl(p[0], F_GETFL) & O_ASYNC, "O_ASYNC lost");
    CHECK(fcntl(sv[0], F_GETOWN_EX, &o) == 0 && o.type == F_OWNER_TID && o.pid == gettid(), "socket owner: type %d pid %d", o.type, o.pid);
    CHECK(fcntl(sv[0], F_GETSIG) == 0, "socket signal: %d", fcntl(sv[0], F_GETSIG));
    CHECK(!(fcntl(sv[0], F_GETFL) & O_ASYNC), "O_ASYNC appeared on the socket");
    CHECK(write(p[1], "b", 1) == 1, "write after restore");
    for (int i = 0; i < 100 && !got; i++) sleep_ms(10);
    CHECK(got == 1, "SIGRTMIN+1 received %d times after data arrived", (int)got);
    CHECK(got_sig == SIGRTMIN + 1 && got_fd == p[0] && got_code == POLL_IN, "signal %d fd %d code %d", (int)got_sig, (int)got_fd, (int)got_code);
    pass();
}
