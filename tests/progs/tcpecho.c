/* tcpecho DIR PORT FAMILY [CONNS [MODE]]: a TCP echo server on
 * 127.0.0.1:PORT (FAMILY 4), [::1]:PORT (FAMILY 6) or [::]:PORT dual-stack
 * (FAMILY 46, IPv4 clients then show as IPv4-mapped addresses). Creates
 * DIR/ready once listening, accepts CONNS connections (default 1) and
 * echoes every byte of the first one back; the others are only held open.
 * While DIR/pause exists it reads nothing. Any read or write error, or the
 * peer closing, is written to DIR/result as FAIL, and the program exits.
 * MODE "eof": the peer closing is fine: DIR/eof gets the byte count, our
 * side is shut down too, and the socket is kept. MODE "shutfirst": our side
 * is shut down at once (FIN_WAIT2), nothing is echoed; DIR/count and, at
 * the peer's EOF, DIR/eof get "BYTES FNV1A-HASH" of what was read. MODE
 * "scm": also holds a unix socket pair with a message queued carrying an
 * epoll descriptor (SCM_RIGHTS), a kind godwit does not keep in flight. MODE
 * "udp": also holds a UDP socket bound to 127.0.0.1:PORT+100. Its
 * client is the test itself, which checks the echoed stream. */
#include "harness.h"
#include <sys/epoll.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    setup(argc, argv);
    if (argc < 4) fail("usage: tcpecho DIR PORT FAMILY [CONNS]");
    int port = atoi(argv[2]), v6 = atoi(argv[3]) == 6, dual = atoi(argv[3]) == 46;
    v6 |= dual;
    int conns = argc > 4 ? atoi(argv[4]) : 1;
    const char *mode = argc > 5 ? argv[5] : "echo";
    int eof_ok = strcmp(mode, "eof") == 0, shutfirst = strcmp(mode, "shutfirst") == 0;
    int l = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int r;
    if (v6) {
        struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(port),
                                  .sin6_addr = IN6ADDR_LOOPBACK_INIT };
        if (dual) {
            int zero = 0;
            a.sin6_addr = in6addr_any;
            setsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        }
        r = bind(l, (void *)&a, sizeof a);
    } else {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        r = bind(l, (void *)&a, sizeof a);
    }
    if (r != 0 || listen(l, 4) != 0) {
        fprintf(stderr, "listen on port %d: %s\n", port, strerror(errno));
        fail("listen on port %d: %s", port, strerror(errno));
    }
    ready();
    int c = accept(l, NULL, NULL);
    if (c < 0) fail("accept: %s", strerror(errno));
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    for (int i = 1; i < conns; i++)
        if (accept(l, NULL, NULL) < 0) fail("accept %d: %s", i, strerror(errno));
    if (strcmp(mode, "scm") == 0) {
        int sv[2], fd0 = epoll_create1(0);
        if (fd0 < 0) fail("epoll_create1: %s", strerror(errno));
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) fail("socketpair: %s", strerror(errno));
        char ctl[CMSG_SPACE(sizeof(int))] = {0};
        struct iovec iov = { .iov_base = "x", .iov_len = 1 };
        struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl };
        struct cmsghdr *h = CMSG_FIRSTHDR(&m);
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_RIGHTS;
        h->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(h), &fd0, sizeof fd0);
        if (sendmsg(sv[0], &m, 0) != 1) fail("sendmsg: %s", strerror(errno));
    }
    if (strcmp(mode, "udp") == 0) {
        int u = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port + 100),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        if (bind(u, (void *)&a, sizeof a) != 0) fail("bind udp: %s", strerror(errno));
    }
    if (shutfirst && shutdown(c, SHUT_WR) != 0) fail("shutdown: %s", strerror(errno));
    static char buf[65536];
    char pause[4200], line[64];
    snprintf(pause, sizeof pause, "%s/pause", test_dir);
    long total = 0;
    uint64_t hash = 14695981039346656037ULL;
    for (;;) {
        if (access(pause, F_OK) == 0) { sleep_ms(10); continue; }
        ssize_t n = read(c, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n == 0 && (eof_ok || shutfirst)) {
            snprintf(line, sizeof line, "%ld %llu\n", total, (unsigned long long)hash);
            put_file("eof", line);
            if (eof_ok && shutdown(c, SHUT_WR) != 0) fail("shutdown: %s", strerror(errno));
            for (;;) sleep_ms(1000);
        }
        if (n <= 0) fail("read returned %zd after %ld bytes: %s", n, total, n ? strerror(errno) : "EOF");
        if (shutfirst) {
            for (ssize_t i = 0; i < n; i++) hash = (hash ^ (unsigned char)buf[i]) * 1099511628211ULL;
            total += n;
            snprintf(line, sizeof line, "%ld %llu\n", total, (unsigned long long)hash);
            put_file("count", line);
            continue;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(c, buf + off, n - off);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) fail("write after %ld bytes: %s", total, strerror(errno));
            off += w;
        }
        total += n;
    }
}
