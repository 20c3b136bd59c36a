/* Descriptors connected outside the dumped tree (pipes, unix sockets whose
 * other end a process that is not dumped holds). Modes:
 *   DIR writer [epoll] write "N\n" lines to stdout (one write each, SIGPIPE
 *                     left at its default), N in DIR/count; PID in DIR/pid;
 *                     with "epoll", stdout is also in an epoll interest list
 *   DIR reader TEXT   after DIR/go, read stdin to end of file: PASS if it
 *                     read exactly TEXT (C escapes not interpreted; the test
 *                     passes real newlines)
 *   DIR echo          answer each read from stdin with "echo:" + the bytes,
 *                     on stdout; exit at end of file */
#include "harness.h"
#include <signal.h>
#include <sys/epoll.h>

static void put_int(const char *name, long v) {
    char b[32];
    snprintf(b, sizeof b, "%ld\n", v);
    put_file(name, b);
}

int main(int argc, char **argv) {
    setup(argc, argv);
    const char *mode = argc > 2 ? argv[2] : "";
    put_int("pid", getpid());
    if (!strcmp(mode, "writer")) {
        signal(SIGPIPE, SIG_DFL);
        if (argc > 3 && !strcmp(argv[3], "epoll")) {
            int ep = epoll_create1(0);
            struct epoll_event ev = { .events = EPOLLOUT, .data.u64 = 1 };
            if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, 1, &ev) < 0) return 5;
        }
        for (long n = 0;; n++) {
            char line[32];
            int len = snprintf(line, sizeof line, "%ld\n", n);
            if (write(1, line, len) != len) {
                char e[64];
                snprintf(e, sizeof e, "write %ld: errno %d\n", n, errno);
                put_file("error", e);
            }
            put_int("count", n + 1);
            if (n == 20) ready();
            sleep_ms(5);
        }
    }
    if (!strcmp(mode, "reader")) {
        const char *want = argc > 3 ? argv[3] : "";
        ready();
        wait_go();
        static char buf[1 << 20];
        size_t got = 0;
        for (;;) {
            ssize_t n = read(0, buf + got, sizeof buf - 1 - got);
            if (n < 0 && errno == EINTR) continue;
            CHECK(n >= 0, "read: errno %d", errno);
            if (n == 0) break;
            got += n;
        }
        buf[got] = 0;
        CHECK(got == strlen(want) && !memcmp(buf, want, got), "read %zu bytes \"%s\", wanted \"%s\"", got, buf, want);
        pass();
    }
    if (!strcmp(mode, "echo")) {
        ready();
        for (;;) {
            char buf[4096 + 5] = "echo:";
            ssize_t n = read(0, buf + 5, 4096);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return n < 0 ? 3 : 0;
            if (write(1, buf, n + 5) != n + 5) return 4;
        }
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
