/* ptysig DIR: a pty whose master this program holds, its slave's device
 * node given another owner and mode (as chown/chmod or `mesg n` would), and
 * processes blocked on the pty when the dump is made:
 *  - "reader": leads a session whose controlling terminal is the slave and
 *    is blocked in read() on it; SIGUSR1 (handler without SA_RESTART) must
 *    end that read with EINTR, then the terminal's ^C written to the master
 *    must reach it as SIGINT (handler with SA_RESTART: the read restarts and
 *    returns the line written after it); closing the master at last must
 *    hang the terminal up: SIGHUP for it, and its read ends;
 *  - "mreader": blocked in read() on a copy of the master; SIGUSR2 (handler
 *    without SA_RESTART) must end it with EINTR.
 * The children report through a pipe; after restore the parent checks the
 * slave's owner and mode and sends the signals. */
#include "harness.h"
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>

#define UID 4321
#define GID 1234
#define MODE 0640

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

static void reader(const char *slave, int w) {
    if (setsid() < 0) _exit(80);
    int s = open(slave, O_RDWR); /* becomes the controlling terminal */
    if (s < 0) _exit(81);
    handle(SIGUSR1, 0);
    handle(SIGINT, SA_RESTART);
    handle(SIGHUP, SA_RESTART);
    report(w, "R ready\n");
    char buf[64];
    ssize_t n = read(s, buf, sizeof buf);
    /* Each report's signal is taken, and cleared, before the report goes
     * out: the parent sends the next signal once it has read the report. */
    int e = n < 0 ? errno : 0, sig = got;
    got = 0;
    report(w, "R usr1 n=%zd errno=%d sig=%d\n", n, e, sig);
    n = read(s, buf, sizeof buf - 1);
    if (n > 0) buf[n] = 0; else buf[0] = 0;
    if (n > 0 && buf[n - 1] == '\n') buf[n - 1] = 0;
    sig = got;
    got = 0;
    report(w, "R int n=%zd sig=%d line=%s\n", n, sig, buf);
    n = read(s, buf, sizeof buf);
    report(w, "R hup n=%zd sig=%d\n", n, (int)got);
    _exit(0);
}

static void mreader(int m, int w) {
    handle(SIGUSR2, 0);
    report(w, "M ready\n");
    char buf[64];
    ssize_t n = read(m, buf, sizeof buf);
    report(w, "M usr2 n=%zd errno=%d sig=%d\n", n, n < 0 ? errno : 0, (int)got);
    _exit(0);
}

/* Reads one line from the report pipe (1 s per byte at most). */
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

/* Whether process PID sleeps (blocked in its read). */
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

static void wait_sleeping(pid_t pid) {
    for (int i = 0; i < 1000 && !sleeping(pid); i++) sleep_ms(10);
    CHECK(sleeping(pid), "child %d does not sleep", (int)pid);
}

int main(int argc, char **argv) {
    setup(argc, argv);
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0 || grantpt(m) < 0 || unlockpt(m) < 0) { perror("pty"); return 2; }
    char slave[64];
    snprintf(slave, sizeof slave, "%s", ptsname(m));
    if (chown(slave, UID, GID) < 0 || chmod(slave, MODE) < 0) { perror("chown/chmod"); return 2; }
    int p[2];
    if (pipe(p) < 0) return 2;
    pid_t r = fork();
    if (r == 0) { close(p[0]); close(m); reader(slave, p[1]); }
    pid_t mr = fork();
    if (mr == 0) { close(p[0]); mreader(m, p[1]); }
    close(p[1]);
    char buf[256];
    line(p[0], buf, sizeof buf);
    line(p[0], buf, sizeof buf);
    wait_sleeping(r);
    wait_sleeping(mr);
    ready();
    wait_go();

    /* The slave's node, through the (maybe new) index of our master. */
    const char *now = ptsname(m);
    CHECK(now, "ptsname: %s", strerror(errno));
    struct stat st;
    CHECK(stat(now, &st) == 0, "stat %s: %s", now, strerror(errno));
    CHECK(st.st_uid == UID && st.st_gid == GID && (st.st_mode & 07777) == MODE,
          "%s is owned by %d:%d mode %o, not %d:%d mode %o", now, (int)st.st_uid, (int)st.st_gid,
          (unsigned)(st.st_mode & 07777), UID, GID, MODE);

    CHECK(kill(mr, SIGUSR2) == 0, "kill mreader");
    line(p[0], buf, sizeof buf);
    CHECK(strcmp(buf, "M usr2 n=-1 errno=4 sig=12") == 0, "master reader: %s", buf);

    CHECK(kill(r, SIGUSR1) == 0, "kill reader");
    line(p[0], buf, sizeof buf);
    CHECK(strcmp(buf, "R usr1 n=-1 errno=4 sig=10") == 0, "slave reader after SIGUSR1: %s", buf);
    wait_sleeping(r);
    char intr = 3; /* ^C: SIGINT for the terminal's foreground group */
    CHECK(write(m, &intr, 1) == 1, "write ^C");
    sleep_ms(200);
    CHECK(write(m, "after\n", 6) == 6, "write line");
    line(p[0], buf, sizeof buf);
    CHECK(strcmp(buf, "R int n=6 sig=2 line=after") == 0, "slave reader after ^C: %s", buf);
    /* Closing the master hangs the terminal up: its session leader gets
     * SIGHUP and its read ends. */
    wait_sleeping(r);
    close(m);
    line(p[0], buf, sizeof buf);
    CHECK(strncmp(buf, "R hup n=", 8) == 0 && strstr(buf, " sig=1"), "slave reader after hangup: %s", buf);
    int status;
    CHECK(waitpid(r, &status, 0) == r && WIFEXITED(status) && WEXITSTATUS(status) == 0, "reader exit");
    CHECK(waitpid(mr, &status, 0) == mr && WIFEXITED(status) && WEXITSTATUS(status) == 0, "mreader exit");
    pass();
}
