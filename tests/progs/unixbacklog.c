/* A unix stream listener with two connections waiting to be accepted, both
 * from the tree: the first from the process itself (two writes queued), the
 * second from a child (one write queued). After restore the process
 * accepts exactly two connections, in the same order, each with its data,
 * and each connected to its own client (a reply reaches the right one; the
 * child checks its own and reports by its exit status). */
#include "harness.h"
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static void read_exact(int fd, const char *want, const char *what) {
    char buf[64] = { 0 };
    size_t len = strlen(want), got = 0;
    while (got < len) {
        ssize_t n = recv(fd, buf + got, len - got, 0);
        CHECK(n > 0, "%s: %zd after %zu bytes (errno %d)", what, n, got, errno);
        got += n;
    }
    CHECK(memcmp(buf, want, len) == 0, "%s: got '%s', want '%s'", what, buf, want);
}

int main(int argc, char **argv) {
    setup(argc, argv);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    int n = snprintf(a.sun_path, sizeof a.sun_path, "%s/l.sock", test_dir);
    CHECK(n < (int)sizeof a.sun_path, "test directory path too long for a socket");
    socklen_t al = offsetof(struct sockaddr_un, sun_path) + strlen(a.sun_path) + 1;
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(l >= 0 && bind(l, (void *)&a, al) == 0 && listen(l, 8) == 0, "listener (errno %d)", errno);
    int c1 = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(connect(c1, (void *)&a, al) == 0, "connect 1 (errno %d)", errno);
    CHECK(send(c1, "one-a", 5, 0) == 5 && send(c1, "one-b", 5, 0) == 5, "send 1");
    int note[2];
    CHECK(pipe(note) == 0, "pipe");
    pid_t child = fork();
    CHECK(child >= 0, "fork");
    if (child == 0) {
        close(note[0]);
        int c2 = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(c2, (void *)&a, al) != 0) _exit(10);
        if (send(c2, "two", 3, 0) != 3) _exit(11);
        if (write(note[1], "x", 1) != 1) _exit(12);
        close(note[1]);
        char buf[16] = { 0 };
        size_t got = 0;
        while (got < 7) {
            ssize_t r = recv(c2, buf + got, 7 - got, 0);
            if (r <= 0) _exit(13);
            got += r;
        }
        _exit(memcmp(buf, "reply-2", 7) == 0 ? 0 : 14);
    }
    close(note[1]);
    char x;
    CHECK(read(note[0], &x, 1) == 1, "child did not connect");
    close(note[0]);
    ready();
    wait_go();
    int s1 = accept(l, NULL, NULL);
    CHECK(s1 >= 0, "accept 1 after restore (errno %d)", errno);
    int s2 = accept(l, NULL, NULL);
    CHECK(s2 >= 0, "accept 2 after restore (errno %d)", errno);
    CHECK(fcntl(l, F_SETFL, O_NONBLOCK) == 0, "fcntl");
    CHECK(accept(l, NULL, NULL) < 0 && errno == EAGAIN, "a third connection was waiting");
    CHECK(fcntl(l, F_SETFL, 0) == 0, "fcntl");
    read_exact(s1, "one-aone-b", "first connection's data");
    read_exact(s2, "two", "second connection's data");
    CHECK(send(s1, "r1", 2, 0) == 2, "reply 1");
    read_exact(c1, "r1", "reply to the first client");
    CHECK(send(s2, "reply-2", 7, 0) == 7, "reply 2");
    int st;
    CHECK(waitpid(child, &st, 0) == child, "waitpid (errno %d)", errno);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: status %#x", st);
    /* The listener still takes new connections. */
    int c3 = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(connect(c3, (void *)&a, al) == 0, "connect after restore (errno %d)", errno);
    int s3 = accept(l, NULL, NULL);
    CHECK(s3 >= 0, "accept of a new connection (errno %d)", errno);
    pass();
}
