/* udpecho DIR PORT FAMILY PEERPORT [pktinfo]: a UDP echo server on
 * 127.0.0.1:PORT (FAMILY 4) or [::1]:PORT (FAMILY 6), plus a second UDP
 * socket connected to PEERPORT on the same loopback address, which sends
 * "hello" at once and "after" when DIR/say appears. Every datagram read is
 * sent back to its sender. While DIR/pause exists nothing is read (DIR/paused
 * says so), so datagrams stay queued. With "pktinfo" the server socket asks
 * for IP_PKTINFO / IPV6_RECVPKTINFO. Errors go to DIR/result as FAIL. */
#include "harness.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

static int exists(const char *name) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", test_dir, name);
    return access(p, F_OK) == 0;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    if (argc < 5) fail("usage: udpecho DIR PORT FAMILY PEERPORT [pktinfo]");
    int port = atoi(argv[2]), v6 = atoi(argv[3]) == 6, peer = atoi(argv[4]);
    int pktinfo = argc > 5 && strcmp(argv[5], "pktinfo") == 0;
    int fam = v6 ? AF_INET6 : AF_INET;
    struct sockaddr_storage a = {0}, b = {0};
    socklen_t len;
    if (v6) {
        struct sockaddr_in6 *x = (void *)&a, *y = (void *)&b;
        x->sin6_family = y->sin6_family = AF_INET6;
        x->sin6_addr = y->sin6_addr = in6addr_loopback;
        x->sin6_port = htons(port);
        y->sin6_port = htons(peer);
        len = sizeof *x;
    } else {
        struct sockaddr_in *x = (void *)&a, *y = (void *)&b;
        x->sin_family = y->sin_family = AF_INET;
        x->sin_addr.s_addr = y->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        x->sin_port = htons(port);
        y->sin_port = htons(peer);
        len = sizeof *x;
    }
    int s = socket(fam, SOCK_DGRAM, 0), c = socket(fam, SOCK_DGRAM, 0);
    if (bind(s, (void *)&a, len) != 0) fail("bind port %d: %s", port, strerror(errno));
    if (pktinfo) {
        int one = 1;
        if (v6) setsockopt(s, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one);
        else setsockopt(s, IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
    }
    if (connect(c, (void *)&b, len) != 0) fail("connect: %s", strerror(errno));
    if (send(c, "hello", 5, 0) != 5) fail("send hello: %s", strerror(errno));
    ready();
    int said = 0, paused = 0;
    char buf[65536];
    for (;;) {
        if (exists("pause")) {
            if (!paused) put_file("paused", "paused\n");
            paused = 1;
            sleep_ms(10);
            continue;
        }
        paused = 0;
        if (!said && exists("say")) {
            if (send(c, "after", 5, 0) != 5) fail("send after: %s", strerror(errno));
            said = 1;
        }
        struct pollfd pf = { .fd = s, .events = POLLIN };
        if (poll(&pf, 1, 10) <= 0) continue;
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(s, buf, sizeof buf, 0, (void *)&from, &fl);
        if (n < 0) fail("recvfrom: %s", strerror(errno));
        if (sendto(s, buf, n, 0, (void *)&from, fl) != n) fail("sendto: %s", strerror(errno));
    }
}
