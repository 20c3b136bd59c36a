/* Unix sockets: a socketpair of each type with messages queued both ways
 * (message boundaries, a zero-length datagram, a 70 KB message), a
 * non-blocking end, a seqpacket pair split between the process and a child
 * with messages queued both ways, listeners on a path and an abstract name
 * (with an accepted connection holding data) that accept new connections
 * after restore, a datagram socket bound to a path with datagrams queued
 * from an unnamed socket and a socket connected to it, a stream pair whose
 * other end was closed with data left, and a shut-down stream pair. */
#include "harness.h"
#include <signal.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static const int types[3] = { SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET };
static const char *tname[3] = { "stream", "dgram", "seqpacket" };

static socklen_t path_addr(struct sockaddr_un *a, const char *name) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    int n = snprintf(a->sun_path, sizeof a->sun_path, "%s/%s", test_dir, name);
    CHECK(n < (int)sizeof a->sun_path, "test directory path too long for a socket");
    return offsetof(struct sockaddr_un, sun_path) + strlen(a->sun_path) + 1;
}

static socklen_t abstract_addr(struct sockaddr_un *a, const char *name) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    int n = snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "godwit-test-%d-%s", (int)getpid(), name);
    return offsetof(struct sockaddr_un, sun_path) + 1 + n;
}

static unsigned char big[70000], mid[3000];

/* Receives one message and checks its length and contents. */
static void expect(int fd, const void *want, size_t len, const char *what) {
    static unsigned char buf[100000];
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    CHECK(n == (ssize_t)len, "%s: got %zd bytes, want %zu (errno %d)", what, n, len, errno);
    CHECK(memcmp(buf, want, len) == 0, "%s: contents differ", what);
}

/* Reads exactly len stream bytes and checks them. */
static void expect_stream(int fd, const void *want, size_t len, const char *what) {
    static unsigned char buf[100000];
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv(fd, buf + got, len - got, MSG_DONTWAIT);
        CHECK(n > 0, "%s: %zd after %zu of %zu bytes (errno %d)", what, n, got, len, errno);
        got += n;
    }
    CHECK(memcmp(buf, want, len) == 0, "%s: contents differ", what);
}

static void expect_empty(int fd, const char *what) {
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
    CHECK(n < 0 && errno == EAGAIN, "%s: more data than expected (%zd, errno %d)", what, n, errno);
}

static void send_all(int fd, const void *p, size_t len, const char *what) {
    CHECK(send(fd, p, len, MSG_NOSIGNAL) == (ssize_t)len, "%s: send (errno %d)", what, errno);
}

/* Checks that listener l (with address a) accepts a new connection that
 * carries data both ways. */
static void new_connection(int l, int type, struct sockaddr_un *a, socklen_t al, const char *what) {
    int c = socket(AF_UNIX, type, 0);
    CHECK(connect(c, (void *)a, al) == 0, "%s: connect after restore (errno %d)", what, errno);
    int s = accept(l, NULL, NULL);
    CHECK(s >= 0, "%s: accept after restore (errno %d)", what, errno);
    send_all(c, "knock", 5, what);
    char buf[16];
    CHECK(recv(s, buf, sizeof buf, 0) == 5 && memcmp(buf, "knock", 5) == 0, "%s: data to the accepted end", what);
    send_all(s, "who", 3, what);
    CHECK(recv(c, buf, sizeof buf, 0) == 3 && memcmp(buf, "who", 3) == 0, "%s: data to the connecting end", what);
    close(c);
    CHECK(recv(s, buf, sizeof buf, 0) == 0, "%s: end of the new connection", what);
    close(s);
}

static void child(int s) {
    /* Our message waits in the parent's queue over the checkpoint. */
    send_all(s, "to-parent-1", 11, "child");
    wait_go();
    char buf[64];
    ssize_t n = recv(s, buf, sizeof buf, 0);
    if (n != 10 || memcmp(buf, "to-child-1", 10) != 0) _exit(3);
    send_all(s, "to-parent-2", 11, "child");
    for (;;) {
        n = recv(s, buf, sizeof buf, 0);
        if (n == 4 && memcmp(buf, "quit", 4) == 0) _exit(0);
        if (n != 6 || memcmp(buf, "ping ", 5) != 0) _exit(4);
        buf[1] = 'o';
        if (send(s, buf, 6, 0) != 6) _exit(5);
    }
}

int main(int argc, char **argv) {
    setup(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    fill(big, sizeof big, 5);
    fill(mid, sizeof mid, 6);

    /* A pair of each type, messages queued both ways. */
    int sv[3][2];
    for (int t = 0; t < 3; t++) {
        CHECK(socketpair(AF_UNIX, types[t], 0, sv[t]) == 0, "socketpair %s", tname[t]);
        send_all(sv[t][0], "alpha", 5, tname[t]);
        send_all(sv[t][0], mid, sizeof mid, tname[t]);
        if (types[t] != SOCK_STREAM) send_all(sv[t][0], "", 0, tname[t]);
        send_all(sv[t][0], big, sizeof big, tname[t]);
        send_all(sv[t][1], "beta", 4, tname[t]);
        send_all(sv[t][1], mid, 100, tname[t]);
    }
    fcntl(sv[1][0], F_SETFL, O_NONBLOCK);

    /* Listeners on a path (stream) and an abstract name (seqpacket), each
     * with an accepted connection holding data. */
    struct sockaddr_un pa, aa;
    socklen_t pal = path_addr(&pa, "listen.sock"), aal = abstract_addr(&aa, "listen");
    int lp = socket(AF_UNIX, SOCK_STREAM, 0), la = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    CHECK(bind(lp, (void *)&pa, pal) == 0 && listen(lp, 7) == 0, "path listener (errno %d)", errno);
    CHECK(bind(la, (void *)&aa, aal) == 0 && listen(la, 3) == 0, "abstract listener (errno %d)", errno);
    int cp = socket(AF_UNIX, SOCK_STREAM, 0), ca = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    CHECK(connect(cp, (void *)&pa, pal) == 0 && connect(ca, (void *)&aa, aal) == 0, "connect (errno %d)", errno);
    int ap = accept(lp, NULL, NULL), aac = accept(la, NULL, NULL);
    CHECK(ap >= 0 && aac >= 0, "accept (errno %d)", errno);
    send_all(cp, "request", 7, "path connection");
    send_all(ap, "response", 8, "path connection");
    send_all(ca, "rec1", 4, "abstract connection");
    send_all(ca, "record-2", 8, "abstract connection");

    /* A datagram socket bound to a path; datagrams queued from an unnamed
     * socket; another socket connected to it. */
    struct sockaddr_un da;
    socklen_t dal = path_addr(&da, "dgram.sock");
    int ds = socket(AF_UNIX, SOCK_DGRAM, 0), us = socket(AF_UNIX, SOCK_DGRAM, 0), cs = socket(AF_UNIX, SOCK_DGRAM, 0);
    CHECK(bind(ds, (void *)&da, dal) == 0, "bind dgram (errno %d)", errno);
    CHECK(sendto(us, "d1", 2, 0, (void *)&da, dal) == 2, "sendto 1");
    CHECK(sendto(us, "d2-longer", 9, 0, (void *)&da, dal) == 9, "sendto 2");
    CHECK(connect(cs, (void *)&da, dal) == 0, "connect dgram (errno %d)", errno);

    /* A stream pair whose other end was closed with data left in it, and
     * one shut down for writing one way. */
    int hc[2], sh[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, hc) == 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, sh) == 0, "pairs");
    send_all(hc[1], "last words", 10, "closed pair");
    close(hc[1]);
    send_all(sh[0], "before-shutdown", 15, "shut-down pair");
    CHECK(shutdown(sh[0], SHUT_WR) == 0, "shutdown");

    /* A datagram pair whose other end was closed with a datagram left. */
    int dd[2];
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, dd) == 0, "dgram pair");
    send_all(dd[1], "orphan", 6, "closed dgram pair");
    close(dd[1]);

    /* A socket whose file was removed; one bound to a relative path (mode
     * 0600) with a datagram socket connected to it by that relative name. */
    struct sockaddr_un ga;
    socklen_t gal = path_addr(&ga, "gone.sock");
    int gs = socket(AF_UNIX, SOCK_DGRAM, 0);
    CHECK(bind(gs, (void *)&ga, gal) == 0 && unlink(ga.sun_path) == 0, "bind and unlink");
    CHECK(chdir(test_dir) == 0, "chdir");
    struct sockaddr_un ra = { .sun_family = AF_UNIX, .sun_path = "rel.sock" };
    socklen_t ral = offsetof(struct sockaddr_un, sun_path) + 9;
    int rs = socket(AF_UNIX, SOCK_DGRAM, 0), rc = socket(AF_UNIX, SOCK_DGRAM, 0);
    CHECK(bind(rs, (void *)&ra, ral) == 0 && chmod("rel.sock", 0600) == 0, "relative bind (errno %d)", errno);
    CHECK(connect(rc, (void *)&ra, ral) == 0, "relative connect (errno %d)", errno);
    send_all(rc, "rel-1", 5, "relative");

    /* Options: SO_PEEK_OFF, SO_RCVBUF, SO_PASSCRED on an unnamed end. */
    int one = 1, five = 5, rcvbuf = 65536;
    CHECK(setsockopt(dd[0], SOL_SOCKET, SO_PEEK_OFF, &five, sizeof five) == 0, "SO_PEEK_OFF");
    CHECK(setsockopt(sv[2][0], SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0, "SO_RCVBUF");
    CHECK(setsockopt(sh[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) == 0, "SO_PASSCRED");
    int rcvbuf_set; socklen_t ol = sizeof rcvbuf_set;
    getsockopt(sv[2][0], SOL_SOCKET, SO_RCVBUF, &rcvbuf_set, &ol);

    /* A pair made, and a listener listening, under another effective uid
     * and gid: their SO_PEERCRED says so. */
    int root = geteuid() == 0, cp2[2] = { -1, -1 }, lq = -1;
    struct sockaddr_un qa;
    socklen_t qal = abstract_addr(&qa, "cred");
    if (root) {
        CHECK(setresgid(-1, 2000, -1) == 0 && setresuid(-1, 2000, -1) == 0, "setresuid");
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, cp2) == 0, "socketpair as 2000");
        lq = socket(AF_UNIX, SOCK_STREAM, 0);
        CHECK(bind(lq, (void *)&qa, qal) == 0 && listen(lq, 2) == 0, "listen as 2000 (errno %d)", errno);
        CHECK(setresuid(-1, 0, -1) == 0 && setresgid(-1, 0, -1) == 0, "back to root");
    }

    /* A seqpacket pair split with a child, messages queued both ways. */
    int spl[2];
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, spl) == 0, "split pair");
    pid_t kid = fork();
    if (kid == 0) {
        close(spl[0]);
        child(spl[1]);
    }
    close(spl[1]);
    send_all(spl[0], "to-child-1", 10, "split pair");
    char peekbuf[16];
    CHECK(recv(spl[0], peekbuf, sizeof peekbuf, MSG_PEEK) == 11, "the child's first message");

    ready();
    wait_go();

    /* The pairs: every message in order with its length, then new traffic. */
    for (int t = 0; t < 3; t++) {
        if (types[t] == SOCK_STREAM) {
            static unsigned char all[5 + sizeof mid + sizeof big];
            memcpy(all, "alpha", 5);
            memcpy(all + 5, mid, sizeof mid);
            memcpy(all + 5 + sizeof mid, big, sizeof big);
            expect_stream(sv[t][1], all, sizeof all, "stream pair, one way");
            unsigned char back[104];
            memcpy(back, "beta", 4);
            memcpy(back + 4, mid, 100);
            expect_stream(sv[t][0], back, sizeof back, "stream pair, the other way");
        } else {
            expect(sv[t][1], "alpha", 5, tname[t]);
            expect(sv[t][1], mid, sizeof mid, tname[t]);
            expect(sv[t][1], "", 0, tname[t]);
            expect(sv[t][1], big, sizeof big, tname[t]);
            expect(sv[t][0], "beta", 4, tname[t]);
            expect(sv[t][0], mid, 100, tname[t]);
        }
        expect_empty(sv[t][0], tname[t]);
        expect_empty(sv[t][1], tname[t]);
        send_all(sv[t][1], "new", 3, tname[t]);
        expect(sv[t][0], "new", 3, tname[t]);
    }
    CHECK(fcntl(sv[1][0], F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
    CHECK(!(fcntl(sv[1][1], F_GETFL) & O_NONBLOCK), "O_NONBLOCK gained");

    /* The listeners: names, the socket file, accepted connections, new ones. */
    struct sockaddr_un got;
    socklen_t gl = sizeof got;
    CHECK(getsockname(lp, (void *)&got, &gl) == 0 && gl == pal && memcmp(&got, &pa, pal) == 0, "path listener's name");
    gl = sizeof got;
    CHECK(getsockname(la, (void *)&got, &gl) == 0 && gl == aal && memcmp(&got, &aa, aal) == 0, "abstract listener's name");
    struct stat st;
    CHECK(stat(pa.sun_path, &st) == 0 && S_ISSOCK(st.st_mode), "socket file of the path listener");
    expect_stream(ap, "request", 7, "accepted path connection");
    expect_stream(cp, "response", 8, "connecting end of the path connection");
    expect(aac, "rec1", 4, "accepted abstract connection");
    expect(aac, "record-2", 8, "accepted abstract connection");
    send_all(aac, "ack", 3, "abstract connection");
    expect(ca, "ack", 3, "connecting end of the abstract connection");
    new_connection(lp, SOCK_STREAM, &pa, pal, "path listener");
    new_connection(la, SOCK_SEQPACKET, &aa, aal, "abstract listener");
    new_connection(lp, SOCK_STREAM, &pa, pal, "path listener, again");

    /* The bound datagram socket. */
    expect(ds, "d1", 2, "bound dgram");
    expect(ds, "d2-longer", 9, "bound dgram");
    expect_empty(ds, "bound dgram");
    CHECK(sendto(us, "d3", 2, 0, (void *)&da, dal) == 2, "sendto after restore (errno %d)", errno);
    expect(ds, "d3", 2, "bound dgram, new datagram");
    CHECK(send(cs, "via-connect", 11, 0) == 11, "send on the connected dgram socket (errno %d)", errno);
    expect(ds, "via-connect", 11, "bound dgram, from the connected socket");

    /* The closed and shut-down pairs. */
    expect_stream(hc[0], "last words", 10, "closed pair");
    char c;
    CHECK(recv(hc[0], &c, 1, MSG_DONTWAIT) == 0, "closed pair: no end of file");
    CHECK(send(hc[0], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "closed pair: send (errno %d)", errno);
    expect_stream(sh[1], "before-shutdown", 15, "shut-down pair");
    CHECK(recv(sh[1], &c, 1, MSG_DONTWAIT) == 0, "shut-down pair: no end of file");
    CHECK(send(sh[0], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "shut-down pair: send after shutdown (errno %d)", errno);
    send_all(sh[1], "reply", 5, "shut-down pair, other way");
    expect_stream(sh[0], "reply", 5, "shut-down pair, other way");

    /* The closed datagram pair, the removed and relative names, options. */
    int v; socklen_t vl = sizeof v;
    CHECK(getsockopt(dd[0], SOL_SOCKET, SO_PEEK_OFF, &v, &vl) == 0 && v == 5, "SO_PEEK_OFF is %d", v);
    v = -1;
    setsockopt(dd[0], SOL_SOCKET, SO_PEEK_OFF, &v, sizeof v);
    expect(dd[0], "orphan", 6, "closed dgram pair");
    expect_empty(dd[0], "closed dgram pair");
    CHECK(send(dd[0], "x", 1, 0) < 0 && errno == ECONNREFUSED, "closed dgram pair: send (errno %d)", errno);
    gl = sizeof got;
    CHECK(getsockname(gs, (void *)&got, &gl) == 0 && gl == gal && memcmp(&got, &ga, gal) == 0, "removed socket file: name lost");
    CHECK(access(ga.sun_path, F_OK) != 0, "removed socket file is back");
    gl = sizeof got;
    CHECK(getsockname(rs, (void *)&got, &gl) == 0 && gl == ral && strcmp(got.sun_path, "rel.sock") == 0, "relative name");
    CHECK(stat("rel.sock", &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 0777) == 0600, "relative socket file mode %o", st.st_mode);
    expect(rs, "rel-1", 5, "relative");
    send_all(rc, "rel-2", 5, "relative");
    expect(rs, "rel-2", 5, "relative");
    vl = sizeof v;
    CHECK(getsockopt(sv[2][0], SOL_SOCKET, SO_RCVBUF, &v, &vl) == 0 && v == rcvbuf_set, "SO_RCVBUF %d, was %d", v, rcvbuf_set);
    vl = sizeof v;
    CHECK(getsockopt(sh[0], SOL_SOCKET, SO_PASSCRED, &v, &vl) == 0 && v == 1, "SO_PASSCRED lost");
    gl = sizeof got;
    CHECK(getsockname(sh[0], (void *)&got, &gl) == 0 && gl == sizeof(sa_family_t), "SO_PASSCRED gave a name (%d bytes)", gl);

    if (root) {
        struct ucred uc;
        socklen_t ul = sizeof uc;
        CHECK(getsockopt(cp2[0], SOL_SOCKET, SO_PEERCRED, &uc, &ul) == 0 && uc.uid == 2000 && uc.gid == 2000,
              "SO_PEERCRED of a pair: uid %u gid %u", uc.uid, uc.gid);
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        CHECK(connect(c, (void *)&qa, qal) == 0, "connect to the listener made as 2000 (errno %d)", errno);
        ul = sizeof uc;
        CHECK(getsockopt(c, SOL_SOCKET, SO_PEERCRED, &uc, &ul) == 0 && uc.uid == 2000 && uc.gid == 2000,
              "SO_PEERCRED of a listener: uid %u gid %u", uc.uid, uc.gid);
        close(c);
        CHECK(geteuid() == 0 && getegid() == 0, "credentials changed");
    }

    /* The pair split with the child. */
    char buf[64];
    CHECK(recv(spl[0], buf, sizeof buf, 0) == 11 && memcmp(buf, "to-parent-1", 11) == 0, "the child's queued message");
    CHECK(recv(spl[0], buf, sizeof buf, 0) == 11 && memcmp(buf, "to-parent-2", 11) == 0, "the child did not read its queued message");
    for (int i = 0; i < 5; i++) {
        char ping[7];
        snprintf(ping, sizeof ping, "ping %d", i);
        send_all(spl[0], ping, 6, "ping");
        CHECK(recv(spl[0], buf, sizeof buf, 0) == 6 && memcmp(buf, "pong ", 5) == 0 && buf[5] == ping[5], "pong %d", i);
    }
    send_all(spl[0], "quit", 4, "quit");
    int status;
    CHECK(waitpid(kid, &status, 0) == kid && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    pass();
}
