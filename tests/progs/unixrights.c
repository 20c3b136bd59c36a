/* Descriptors in flight: over a datagram pair whose receiver has
 * SO_PASSCRED on, a message carrying a pipe's read end (with bytes in the
 * pipe; the process keeps only the write end), a regular file at offset 4
 * and an eventfd holding 7, and a message carrying credentials; over a
 * stream pair, a message carrying the same file description again, then
 * bytes. The process closes its own copies, so those descriptions are held
 * by no process, only by the queues. After restore it receives them and
 * checks they work: bytes written by it through the pipe, the file offset
 * (shared between the two copies), the eventfd's value; a seqpacket socket passed with a message queued to it by the
 * process, still connected to it. With the argument "nested", a unix
 * socket whose own queue carries a descriptor is also passed, which the
 * dump refuses. */
#include "harness.h"
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>

static void send_fds(int sock, const char *text, const int *fds, int n, const struct ucred *c, const char *what) {
    struct iovec iov = { (void *)text, strlen(text) };
    union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int) * 8) + CMSG_SPACE(sizeof(struct ucred))]; } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = 0 };
    m.msg_controllen = (n ? CMSG_SPACE(sizeof(int) * n) : 0) + (c ? CMSG_SPACE(sizeof *c) : 0);
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    if (n) {
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_RIGHTS;
        h->cmsg_len = CMSG_LEN(sizeof(int) * n);
        memcpy(CMSG_DATA(h), fds, sizeof(int) * n);
        h = CMSG_NXTHDR(&m, h);
    }
    if (c) {
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_CREDENTIALS;
        h->cmsg_len = CMSG_LEN(sizeof *c);
        memcpy(CMSG_DATA(h), c, sizeof *c);
    }
    CHECK(sendmsg(sock, &m, MSG_NOSIGNAL) == (ssize_t)strlen(text), "%s: sendmsg (errno %d)", what, errno);
}

/* Receives one message: its text, up to 8 fds (returns how many), creds. */
static int recv_fds(int sock, const char *text, int *fds, struct ucred *c, const char *what) {
    char buf[64];
    struct iovec iov = { buf, strlen(text) };
    union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int) * 8) + CMSG_SPACE(sizeof(struct ucred))]; } u;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b };
    ssize_t r = recvmsg(sock, &m, MSG_DONTWAIT);
    CHECK(r == (ssize_t)strlen(text), "%s: got %zd bytes, want %zu (errno %d)", what, r, strlen(text), errno);
    CHECK(memcmp(buf, text, r) == 0, "%s: contents differ", what);
    CHECK(!(m.msg_flags & MSG_CTRUNC), "%s: control data truncated", what);
    int n = 0;
    if (c) memset(c, 0, sizeof *c);
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h)) {
        if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
            n = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            memcpy(fds, CMSG_DATA(h), sizeof(int) * n);
        } else if (c && h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_CREDENTIALS) {
            memcpy(c, CMSG_DATA(h), sizeof *c);
        }
    }
    return n;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    int one = 1;
    int d[2], s[2], p[2];
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, d) == 0, "socketpair dgram");
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0, "socketpair stream");
    CHECK(setsockopt(d[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) == 0, "SO_PASSCRED");
    CHECK(pipe(p) == 0, "pipe");
    CHECK(write(p[1], "early-", 6) == 6, "pipe write");
    char path[4200];
    snprintf(path, sizeof path, "%s/data", test_dir);
    int f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(f >= 0, "open %s", path);
    CHECK(write(f, "0123456789", 10) == 10, "file write");
    CHECK(lseek(f, 4, SEEK_SET) == 4, "lseek");
    int e = eventfd(7, EFD_NONBLOCK);
    CHECK(e >= 0, "eventfd");
    int three[3] = { p[0], f, e };
    send_fds(d[0], "rights", three, 3, NULL, "dgram rights");
    pid_t me = getpid();
    struct ucred chosen = { me, 1234, 5678 };
    send_fds(d[0], "cred", NULL, 0, &chosen, "dgram cred");
    send_fds(s[0], "file", &f, 1, NULL, "stream file");
    send_fds(s[0], "bytes", NULL, 0, NULL, "stream bytes");
    /* A unix socket in flight, with bytes queued to it by the process. */
    int y[2];
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, y) == 0, "socketpair seqpacket");
    CHECK(send(y[1], "to-y0", 5, 0) == 5, "send to y0");
    send_fds(d[0], "sock", y, 1, NULL, "dgram socket");
    close(y[0]);
    if (argc > 2 && strcmp(argv[2], "nested") == 0) {
        /* A unix socket in flight whose own queue carries a descriptor:
         * not kept (the dump is refused). */
        int x[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, x) == 0, "socketpair");
        send_fds(x[1], "in", &p[1], 1, NULL, "nested");
        send_fds(s[0], "sock", x, 1, NULL, "stream socket");
        close(x[0]);
    }
    close(p[0]);
    close(f);
    close(e);
    ready();
    wait_go();
    int got[8];
    int n = recv_fds(d[1], "rights", got, NULL, "dgram rights");
    CHECK(n == 3, "dgram rights: %d descriptors, want 3", n);
    struct ucred c;
    CHECK(recv_fds(d[1], "cred", got + 3, &c, "dgram cred") == 0, "dgram cred: descriptors");
    CHECK(c.pid == me && c.uid == 1234 && c.gid == 5678, "dgram cred: %d/%u/%u", (int)c.pid, c.uid, c.gid);
    int g;
    CHECK(recv_fds(d[1], "sock", &g, NULL, "dgram socket") == 1, "dgram socket: no descriptor");
    char yb[16];
    CHECK(recv(g, yb, sizeof yb, MSG_DONTWAIT) == 5 && memcmp(yb, "to-y0", 5) == 0, "socket in flight: its queue");
    CHECK(send(g, "back", 4, 0) == 4, "socket in flight: send (errno %d)", errno);
    CHECK(recv(y[1], yb, sizeof yb, MSG_DONTWAIT) == 4 && memcmp(yb, "back", 4) == 0, "socket in flight: its peer");
    /* The pipe: its bytes, then more written by us through the kept end. */
    CHECK(write(p[1], "late", 4) == 4, "pipe write after restore (errno %d)", errno);
    char buf[64] = { 0 };
    CHECK(read(got[0], buf, sizeof buf) == 10 && memcmp(buf, "early-late", 10) == 0, "pipe: read '%s'", buf);
    /* The file, at its offset. */
    memset(buf, 0, sizeof buf);
    CHECK(read(got[1], buf, 3) == 3 && memcmp(buf, "456", 3) == 0, "file: read '%s' at offset 4", buf);
    uint64_t v = 0;
    CHECK(read(got[2], &v, 8) == 8 && v == 7, "eventfd: value %llu, want 7", (unsigned long long)v);
    CHECK(fcntl(got[2], F_GETFL) & O_NONBLOCK, "eventfd: O_NONBLOCK lost");
    /* The stream: bytes, then the same file description again. */
    int f2;
    CHECK(recv_fds(s[1], "file", &f2, NULL, "stream file") == 1, "stream file: no descriptor");
    char b5[5];
    CHECK(recv(s[1], b5, 5, MSG_DONTWAIT) == 5 && memcmp(b5, "bytes", 5) == 0, "stream bytes");
    CHECK(lseek(f2, 0, SEEK_CUR) == 7, "file: offset %ld, want 7 (one description)", (long)lseek(f2, 0, SEEK_CUR));
    char x;
    CHECK(recv(d[1], &x, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "dgram: more queued");
    CHECK(recv(s[1], &x, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "stream: more queued");
    pass();
}
