/* tcpecho DIR PORT FAMILY [CONNS]: a TCP echo server on 127.0.0.1:PORT
 * (FAMILY 4), [::1]:PORT (FAMILY 6) or [::]:PORT dual-stack (FAMILY 46,
 * IPv4 clients then show as IPv4-mapped addresses). Creates DIR/ready once listening,
 * accepts CONNS connections (default 1) and echoes every byte of the first
 * one back; the others are only held open. Any read or write error, or the
 * peer closing, is written to DIR/result as FAIL, and the program exits. Its
 * client is the test itself, which checks the echoed stream. */
#include "harness.h"
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
    if (r != 0 || listen(l, 4) != 0) fail("listen on port %d: %s", port, strerror(errno));
    ready();
    int c = accept(l, NULL, NULL);
    if (c < 0) fail("accept: %s", strerror(errno));
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    for (int i = 1; i < conns; i++)
        if (accept(l, NULL, NULL) < 0) fail("accept %d: %s", i, strerror(errno));
    static char buf[65536];
    long total = 0;
    for (;;) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail("read returned %zd after %ld bytes: %s", n, total, n ? strerror(errno) : "EOF");
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(c, buf + off, n - off);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) fail("write after %ld bytes: %s", total, strerror(errno));
            off += w;
        }
        total += n;
    }
}
