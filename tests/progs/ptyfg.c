/* ptyfg DIR: ^C on a pty reaches the terminal's foreground process group
 * after restore, not the session leader's. The program holds the master;
 * "leader" leads a session whose controlling terminal is the slave, holds
 * no descriptor of it itself (closed after forking), and waits for its
 * child; "fg" moved to a process group of its own, made it the terminal's
 * foreground group and is blocked in read() on the slave, SIGINT caught
 * without SA_RESTART. After restore: TIOCGSID/TIOCGPGRP of the master name
 * the leader and fg; ^C written to the master must end fg's read with EINTR
 * and leave the leader (background) without SIGINT; the leader, through
 * /dev/tty, still reaches the terminal. */
#include "harness.h"
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>

static volatile sig_atomic_t got;

static void on_sig(int s) { got = s; }

static void handle(int sig, int flags) {
    struct sigaction sa = { .sa_handler = on_sig, .sa_flags = flags };
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

static void report(int w, const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (write(w, buf, n) < 0) _exit(93);
}

static void fg(int s, int w) {
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTTOU);
    sigprocmask(SIG_BLOCK, &set, &old);
    if (setpgid(0, 0) < 0 || tcsetpgrp(s, getpid()) < 0) _exit(82);
    sigprocmask(SIG_SETMASK, &old, NULL);
    handle(SIGINT, 0);
    report(w, "F ready\n");
    char buf[64];
    ssize_t n = read(s, buf, sizeof buf);
    report(w, "F n=%zd errno=%d sig=%d\n", n, n < 0 ? errno : 0, (int)got);
    _exit(0);
}

static void leader(const char *slave, int w) {
    if (setsid() < 0) _exit(80);
    int s = open(slave, O_RDWR); /* becomes the controlling terminal */
    if (s < 0) _exit(81);
    handle(SIGINT, SA_RESTART);
    pid_t f = fork();
    if (f == 0) fg(s, w);
    close(s);
    int status;
    while (waitpid(f, &status, 0) < 0 && errno == EINTR) {}
    int t = open("/dev/tty", O_RDWR | O_NOCTTY);
    ssize_t n = t < 0 ? -1 : write(t, "leader\n", 7);
    report(w, "L sig=%d f=%d tty=%zd\n", (int)got, WIFEXITED(status) ? WEXITSTATUS(status) : -1, n);
    _exit(0);
}

static void line(int r, char *out, size_t len) {
    size_t i = 0;
    while (i + 1 < len) {
        struct timeval tv = { 10, 0 };
        fd_set set;
        FD_ZERO(&set);
        FD_SET(r, &set);
        if (select(r + 1, &set, NULL, NULL, &tv) <= 0) fail("no report from a child (got \"%.*s\")", (int)i, out);
        if (read(r, out + i, 1) != 1) fail("report pipe closed (got \"%.*s\")", (int)i, out);
        if (out[i] == '\n') break;
        i++;
    }
    out[i] = 0;
}

static int sleeping(pid_t pid) {
    char p[64], buf[512];
    snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
    int fd = open(p, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *c = strrchr(buf, ')');
    return c && c[1] == ' ' && c[2] == 'S';
}

int main(int argc, char **argv) {
    setup(argc, argv);
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0 || grantpt(m) < 0 || unlockpt(m) < 0) { perror("pty"); return 2; }
    char slave[64];
    snprintf(slave, sizeof slave, "%s", ptsname(m));
    int p[2];
    if (pipe(p) < 0) return 2;
    pid_t l = fork();
    if (l == 0) { close(p[0]); close(m); leader(slave, p[1]); }
    close(p[1]);
    char buf[256];
    line(p[0], buf, sizeof buf);
    pid_t f = 0;
    for (int i = 0; i < 1000 && f <= 0; i++) {
        pid_t g = 0;
        if (ioctl(m, TIOCGPGRP, &g) == 0 && g != l) f = g;
        else sleep_ms(10);
    }
    if (f <= 0) { fprintf(stderr, "no foreground group\n"); return 2; }
    for (int i = 0; i < 1000 && !(sleeping(f) && sleeping(l)); i++) sleep_ms(10);
    ready();
    wait_go();

    pid_t sid = 0, g = 0;
    CHECK(ioctl(m, TIOCGSID, &sid) == 0 && sid == l, "session of the terminal: %d, not %d", (int)sid, (int)l);
    CHECK(ioctl(m, TIOCGPGRP, &g) == 0 && g == f, "foreground group: %d, not %d", (int)g, (int)f);
    char intr = 3;
    CHECK(write(m, &intr, 1) == 1, "write ^C");
    line(p[0], buf, sizeof buf);
    CHECK(strcmp(buf, "F n=-1 errno=4 sig=2") == 0, "foreground reader after ^C: %s", buf);
    line(p[0], buf, sizeof buf);
    CHECK(strcmp(buf, "L sig=0 f=0 tty=7") == 0, "session leader: %s", buf);
    int status;
    CHECK(waitpid(l, &status, 0) == l && WIFEXITED(status) && WEXITSTATUS(status) == 0, "leader exit");
    pass();
}
