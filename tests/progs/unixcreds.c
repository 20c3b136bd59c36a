/* Unix socket messages queued with their senders' credentials: a datagram
 * pair and a stream pair whose receiving ends have SO_PASSCRED on, each
 * with a message sent with the process's own credentials and one sent with
 * chosen ones (uid 1234 / gid 5678, root may), left unread. After restore
 * each message comes with the same pid, uid and gid, and the stream's
 * bytes stop at the change of credentials. A child (restored after the
 * pair's maker, its parent) sent one more to the parent. */
#include "harness.h"
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static void send_cred(int fd, const char *text, const struct ucred *c, const char *what) {
    struct iovec iov = { (void *)text, strlen(text) };
    union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(struct ucred))]; } u;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (c) {
        memset(&u, 0, sizeof u);
        m.msg_control = u.b;
        m.msg_controllen = sizeof u.b;
        struct cmsghdr *h = CMSG_FIRSTHDR(&m);
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_CREDENTIALS;
        h->cmsg_len = CMSG_LEN(sizeof *c);
        memcpy(CMSG_DATA(h), c, sizeof *c);
    }
    CHECK(sendmsg(fd, &m, MSG_NOSIGNAL) == (ssize_t)strlen(text), "%s: sendmsg (errno %d)", what, errno);
}

static void expect_cred(int fd, const char *text, pid_t pid, uid_t uid, gid_t gid, const char *what) {
    char buf[64];
    struct iovec iov = { buf, sizeof buf };
    union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(struct ucred)) + 64]; } u;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b };
    ssize_t n = recvmsg(fd, &m, MSG_DONTWAIT);
    CHECK(n == (ssize_t)strlen(text), "%s: got %zd bytes, want %zu (errno %d)", what, n, strlen(text), errno);
    CHECK(memcmp(buf, text, n) == 0, "%s: contents differ", what);
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    CHECK(h && h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_CREDENTIALS, "%s: no credentials", what);
    struct ucred c;
    memcpy(&c, CMSG_DATA(h), sizeof c);
    CHECK(c.pid == pid && c.uid == uid && c.gid == gid, "%s: credentials %d/%u/%u, want %d/%u/%u", what,
          (int)c.pid, c.uid, c.gid, (int)pid, uid, gid);
}

int main(int argc, char **argv) {
    setup(argc, argv);
    int one = 1;
    int d[2], s[2];
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, d) == 0, "socketpair dgram");
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0, "socketpair stream");
    CHECK(setsockopt(d[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) == 0, "SO_PASSCRED");
    CHECK(setsockopt(s[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) == 0, "SO_PASSCRED");
    pid_t me = getpid();
    struct ucred chosen = { me, 1234, 5678 };
    send_cred(d[0], "own", NULL, "dgram own");
    send_cred(d[0], "chosen", &chosen, "dgram chosen");
    send_cred(s[0], "abc", NULL, "stream own");
    send_cred(s[0], "defg", &chosen, "stream chosen");
    /* A message from a child, which is restored after the pair's maker. */
    int k[2];
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, k) == 0, "socketpair child");
    CHECK(setsockopt(k[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) == 0, "SO_PASSCRED");
    pid_t child = fork();
    CHECK(child >= 0, "fork");
    if (child == 0) {
        close(k[1]);
        send_cred(k[0], "from-child", NULL, "child");
        wait_go();
        _exit(0);
    }
    close(k[0]);
    char peekb[16];
    for (int i = 0; i < 500 && recv(k[1], peekb, sizeof peekb, MSG_PEEK | MSG_DONTWAIT) < 0; i++) sleep_ms(10);
    ready();
    wait_go();
    CHECK(getpid() == me, "pid changed");
    expect_cred(d[1], "own", me, getuid(), getgid(), "dgram own");
    expect_cred(d[1], "chosen", me, 1234, 5678, "dgram chosen");
    expect_cred(s[1], "abc", me, getuid(), getgid(), "stream own");
    expect_cred(s[1], "defg", me, 1234, 5678, "stream chosen");
    expect_cred(k[1], "from-child", child, getuid(), getgid(), "from the child");
    int st;
    CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child");
    char c;
    CHECK(recv(d[1], &c, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "dgram: more queued");
    CHECK(recv(s[1], &c, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "stream: more queued");
    pass();
}
