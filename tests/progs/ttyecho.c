/* ttyecho DIR MODE: a line-oriented program on a terminal (fds 0/1/2).
 * Sets its terminal up (no echo, VMIN 7, VTIME 3, 37x101 window), creates
 * DIR/ready, then answers every line it reads with "got: LINE"; the line
 * "check" makes it verify its terminal and answer "verdict: PASS ..." or
 * "verdict: FAIL: why" (also written to DIR/result).
 *
 * MODE "session": it runs in the session of a pty whose master is in the same
 * process tree (under script(1)), as a child of the session leader; it moves
 * to a process group of its own and makes it the terminal's foreground group.
 * MODE "shell": it was started on a terminal made by the test, as the leader
 * of a new session; after `restore --shell-job` it is in the restoring
 * caller's session, on the caller's terminal. */
#include "harness.h"
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <termios.h>

static int shell_mode;
/* A descriptor opened through /dev/tty before the dump. */
static int devtty = -1;

static void say(const char *fmt, ...) {
    char buf[1200];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 1) n = sizeof buf - 1;
    if (write(1, buf, n) < 0) _exit(93);
}

/* The checks; returns NULL when all pass, else why not. */
static const char *verify(char *why, size_t len) {
    if (!isatty(0) || !isatty(1) || !isatty(2)) return "fds 0-2 are not all terminals";
    struct termios t;
    if (tcgetattr(0, &t) < 0) return "tcgetattr failed";
    if (t.c_lflag & ECHO) return "ECHO is on again";
    if (!(t.c_lflag & ICANON)) return "ICANON is off";
    if (t.c_cc[VMIN] != 7 || t.c_cc[VTIME] != 3) {
        snprintf(why, len, "VMIN %d VTIME %d, not 7 and 3", t.c_cc[VMIN], t.c_cc[VTIME]);
        return why;
    }
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, len, "no controlling terminal: open(/dev/tty): %s", strerror(errno));
        return why;
    }
    pid_t fg = tcgetpgrp(fd);
    close(fd);
    if (fg != getpgrp()) {
        snprintf(why, len, "foreground group %d, not ours (%d)", (int)fg, (int)getpgrp());
        return why;
    }
    unsigned int dev = 0;
    struct stat st;
    if (!isatty(devtty) || ioctl(devtty, TIOCGDEV, &dev) < 0 || fstat(0, &st) < 0)
        return "the descriptor opened through /dev/tty is no terminal any more";
    if (((dev >> 8) & 0xfff) != major(st.st_rdev) || ((dev & 0xff) | ((dev >> 12) & 0xfff00)) != minor(st.st_rdev))
        return "the descriptor opened through /dev/tty is not on fd 0's terminal";
    struct winsize w;
    if (ioctl(0, TIOCGWINSZ, &w) < 0) return "TIOCGWINSZ failed";
    const char *name = ttyname(0);
    if (!name || strncmp(name, "/dev/pts/", 9) != 0) return "fd 0 is not on /dev/pts/N";
    if (shell_mode) {
        if (getsid(0) == getpid()) return "still leads a session of its own";
    } else {
        if (w.ws_row != 37 || w.ws_col != 101) {
            snprintf(why, len, "window %dx%d, not 37x101", w.ws_row, w.ws_col);
            return why;
        }
        if (getpgrp() != getpid()) return "not in its own process group";
        if (getsid(0) != getppid()) return "its parent does not lead its session";
    }
    return NULL;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    shell_mode = argc > 2 && strcmp(argv[2], "shell") == 0;
    if (!isatty(0)) { fprintf(stderr, "ttyecho: stdin is not a terminal\n"); return 2; }
    if (!shell_mode && getsid(0) != getpid()) {
        /* Foreground group of our own (SIGTTOU blocked: we are in the
         * background until tcsetpgrp returns). */
        sigset_t s, old;
        sigemptyset(&s);
        sigaddset(&s, SIGTTOU);
        sigprocmask(SIG_BLOCK, &s, &old);
        if (setpgid(0, 0) < 0 || tcsetpgrp(0, getpid()) < 0) {
            perror("ttyecho: own foreground group");
            return 2;
        }
        sigprocmask(SIG_SETMASK, &old, NULL);
    }
    devtty = open("/dev/tty", O_RDWR);
    if (devtty < 0) { perror("ttyecho: /dev/tty"); return 2; }
    struct termios t;
    if (tcgetattr(0, &t) < 0) { perror("tcgetattr"); return 2; }
    t.c_lflag &= ~ECHO;
    t.c_cc[VMIN] = 7;
    t.c_cc[VTIME] = 3;
    if (tcsetattr(0, TCSANOW, &t) < 0) { perror("tcsetattr"); return 2; }
    struct winsize w = { .ws_row = 37, .ws_col = 101 };
    if (!shell_mode && ioctl(0, TIOCSWINSZ, &w) < 0) { perror("TIOCSWINSZ"); return 2; }
    say("ready on %s\n", ttyname(0));
    ready();
    char line[1024];
    for (;;) {
        ssize_t n = read(0, line, sizeof line - 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 0;
        line[n] = 0;
        if (n > 0 && line[n - 1] == '\n') line[--n] = 0;
        if (strcmp(line, "check") == 0) {
            char why[512];
            const char *bad = verify(why, sizeof why);
            struct winsize now = {0};
            ioctl(0, TIOCGWINSZ, &now);
            if (bad) {
                say("verdict: FAIL: %s\n", bad);
                char msg[600];
                snprintf(msg, sizeof msg, "FAIL: %s\n", bad);
                put_file("result", msg);
            } else {
                say("verdict: PASS size %dx%d on %s\n", now.ws_row, now.ws_col, ttyname(0));
                put_file("result", "PASS\n");
            }
        } else {
            say("got: %s\n", line);
        }
    }
}
