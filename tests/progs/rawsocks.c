/* rawsocks DIR MODE: sockets other than TCP/UDP/unix, set up, dumped and
 * restored, then checked by the program itself. Meant to run in a network
 * namespace of its own (loopback up; ping_group_range allowing group 0 for
 * the ping modes).
 *  ping4 / ping6: an ICMP "ping" socket (non-blocking), bound to echo id
 *    4242 on the loopback address (and device, SO_BINDTODEVICE),
 *    connected to it, IP_TTL / IPV6 hops set, with three echo replies queued (not read) before the dump: after
 *    the restore they are read in order, each from the loopback address,
 *    and a new echo gets its reply.
 *  udplite: a UDP-Lite socket with checksum coverage options and three
 *    datagrams queued from a second UDP-Lite socket.
 *  raw: a raw ICMP socket (bound, connected, ICMP_FILTER letting only echo
 *    replies in), a raw UDP socket with IP_HDRINCL and a BPF filter, a raw
 *    ICMPv6 socket with an ICMPV6_FILTER.
 *  packet: a packet socket bound to lo (ETH_P_ALL, PACKET_AUXDATA,
 *    TPACKET_V2, a promiscuous membership, a BPF filter) and an unbound
 *    SOCK_DGRAM one for ETH_P_IP.
 *  netlink: a NETLINK_ROUTE socket bound to a chosen port id in groups 1
 *    (by bind) and 5 (NETLINK_ADD_MEMBERSHIP), NETLINK_NO_ENOBUFS set; a
 *    NETLINK_KOBJECT_UEVENT socket (kernel-chosen port id, group 1).
 *  netlink-pending: a NETLINK_ROUTE socket with an unread reply (the dump
 *    is refused).
 *  nlhold PID: holds the port id the netlink mode of process PID takes,
 *    until killed. */
#include "harness.h"
#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/udp.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/icmp6.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <sys/socket.h>

#ifndef UDPLITE_SEND_CSCOV
#define UDPLITE_SEND_CSCOV 10
#define UDPLITE_RECV_CSCOV 11
#endif
/* linux/icmp.h clashes with net/if.h: its two definitions needed here. */
#define ICMP_FILTER 1
struct icmp_filter { uint32_t data; };
#define ICMPV6_FILTER 1
#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

static int opt(int s, int level, int name) {
    int v = -1;
    socklen_t l = sizeof v;
    if (getsockopt(s, level, name, &v, &l) != 0) fail("getsockopt %d/%d: %s", level, name, strerror(errno));
    return v;
}

static void setopt(int s, int level, int name, int v) {
    if (setsockopt(s, level, name, &v, sizeof v) != 0) fail("setsockopt %d/%d: %s", level, name, strerror(errno));
}

static void wait_readable(int s, const char *what) {
    struct pollfd p = { .fd = s, .events = POLLIN };
    if (poll(&p, 1, 5000) != 1) fail("nothing to read on %s", what);
}

/* ---- ping ---- */
static void echo(int s, int v6, int seq) {
    char b[64];
    struct icmphdr h = { .type = v6 ? 128 : ICMP_ECHO };
    h.un.echo.sequence = htons(seq);
    memcpy(b, &h, sizeof h);
    int n = snprintf(b + sizeof h, sizeof b - sizeof h, "p%d", seq);
    if (send(s, b, sizeof h + n, 0) != (ssize_t)(sizeof h + n)) fail("send echo %d: %s", seq, strerror(errno));
}

static void reply(int s, int v6, int seq) {
    char b[128], want[16];
    struct sockaddr_storage from;
    socklen_t fl = sizeof from;
    wait_readable(s, "the ping socket");
    ssize_t n = recvfrom(s, b, sizeof b, 0, (void *)&from, &fl);
    if (n < 0) fail("recv reply %d: %s", seq, strerror(errno));
    struct icmphdr *h = (void *)b;
    int wn = snprintf(want, sizeof want, "p%d", seq);
    if (h->type != (v6 ? 129 : ICMP_ECHOREPLY)) fail("reply %d: type %d", seq, h->type);
    if (ntohs(h->un.echo.id) != 4242) fail("reply %d: id %d", seq, ntohs(h->un.echo.id));
    if (ntohs(h->un.echo.sequence) != seq) fail("reply %d: seq %d", seq, ntohs(h->un.echo.sequence));
    if (n != (ssize_t)sizeof *h + wn || memcmp(b + sizeof *h, want, wn) != 0) fail("reply %d: payload", seq);
    if (v6) {
        struct sockaddr_in6 *a = (void *)&from;
        if (from.ss_family != AF_INET6 || !IN6_IS_ADDR_LOOPBACK(&a->sin6_addr)) fail("reply %d: sender", seq);
    } else {
        struct sockaddr_in *a = (void *)&from;
        if (from.ss_family != AF_INET || a->sin_addr.s_addr != htonl(INADDR_LOOPBACK)) fail("reply %d: sender", seq);
    }
}

static void ping(int v6) {
    int s = socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, v6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP);
    if (s < 0) fail("ping socket: %s (ping_group_range?)", strerror(errno));
    struct sockaddr_storage a = {0};
    socklen_t len;
    if (v6) {
        struct sockaddr_in6 *x = (void *)&a;
        x->sin6_family = AF_INET6;
        x->sin6_addr = in6addr_loopback;
        x->sin6_port = htons(4242);
        len = sizeof *x;
        setopt(s, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 33);
    } else {
        struct sockaddr_in *x = (void *)&a;
        x->sin_family = AF_INET;
        x->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        x->sin_port = htons(4242);
        len = sizeof *x;
        setopt(s, IPPROTO_IP, IP_TTL, 33);
    }
    if (setsockopt(s, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3)) fail("SO_BINDTODEVICE: %s", strerror(errno));
    if (bind(s, (void *)&a, len) != 0) fail("bind: %s", strerror(errno));
    if (connect(s, (void *)&a, len) != 0) fail("connect: %s", strerror(errno));
    for (int i = 1; i <= 3; i++) echo(s, v6, i);
    sleep_ms(100);
    ready();
    wait_go();
    if (s != 3) fail("fd %d", s);
    if (!(fcntl(s, F_GETFL) & O_NONBLOCK)) fail("O_NONBLOCK lost");
    if (opt(s, SOL_SOCKET, SO_PROTOCOL) != (v6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP)) fail("protocol");
    char dev[IFNAMSIZ] = "";
    socklen_t dl = sizeof dev;
    if (getsockopt(s, SOL_SOCKET, SO_BINDTODEVICE, dev, &dl) || strcmp(dev, "lo")) fail("SO_BINDTODEVICE lost (%s)", dev);
    if (opt(s, v6 ? IPPROTO_IPV6 : IPPROTO_IP, v6 ? IPV6_UNICAST_HOPS : IP_TTL) != 33) fail("TTL/hops");
    struct sockaddr_storage b = {0};
    socklen_t bl = sizeof b;
    getsockname(s, (void *)&b, &bl);
    if (bl != len || memcmp(&a, &b, len) != 0) fail("bound address/echo id changed");
    for (int i = 1; i <= 3; i++) reply(s, v6, i);
    char x[64];
    if (recv(s, x, sizeof x, 0) >= 0 || errno != EAGAIN) fail("more queued than was");
    echo(s, v6, 4); /* send() without an address: still connected */
    reply(s, v6, 4);
    pass();
}

/* ---- UDP-Lite ---- */
static void udplite(void) {
    int r = socket(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE), w = socket(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE);
    if (r < 0 || w < 0) fail("UDP-Lite socket: %s", strerror(errno));
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = htons(23401) };
    struct sockaddr_in b = a;
    b.sin_port = htons(23402);
    if (bind(r, (void *)&a, sizeof a) || bind(w, (void *)&b, sizeof b)) fail("bind: %s", strerror(errno));
    setopt(r, IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV, 20);
    setopt(r, IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV, 12);
    setopt(w, IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV, 16);
    for (int i = 1; i <= 3; i++) {
        char m[16];
        int n = snprintf(m, sizeof m, "lite%d", i);
        if (sendto(w, m, n, 0, (void *)&a, sizeof a) != n) fail("sendto: %s", strerror(errno));
    }
    sleep_ms(100);
    ready();
    wait_go();
    if (opt(r, SOL_SOCKET, SO_PROTOCOL) != IPPROTO_UDPLITE) fail("protocol");
    if (opt(r, IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV) != 20) fail("SEND_CSCOV");
    if (opt(r, IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV) != 12) fail("RECV_CSCOV");
    if (opt(w, IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV) != 16) fail("writer's SEND_CSCOV");
    for (int i = 1; i <= 4; i++) {
        char m[64], want[16];
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        if (i == 4 && sendto(w, "lite4", 5, 0, (void *)&a, sizeof a) != 5) fail("sendto: %s", strerror(errno));
        wait_readable(r, "the UDP-Lite socket");
        ssize_t n = recvfrom(r, m, sizeof m, MSG_DONTWAIT, (void *)&from, &fl);
        int wn = snprintf(want, sizeof want, "lite%d", i);
        if (n != wn || memcmp(m, want, wn) != 0) fail("datagram %d", i);
        if (from.sin_port != b.sin_port || from.sin_addr.s_addr != b.sin_addr.s_addr) fail("datagram %d: sender", i);
        if (i == 3) {
            char x[8];
            if (recv(r, x, sizeof x, MSG_DONTWAIT) >= 0) fail("more queued than was");
        }
    }
    pass();
}

/* ---- raw ---- */
static struct sock_filter accept_all[] = { BPF_STMT(BPF_RET | BPF_K, 0xffff) };

static void raw(void) {
    int r = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    int u = socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK, IPPROTO_UDP);
    int r6 = socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6);
    if (r < 0 || u < 0 || r6 < 0) fail("raw socket: %s", strerror(errno));
    struct icmp_filter f = { .data = ~(1U << ICMP_ECHOREPLY) };
    if (setsockopt(r, SOL_RAW, ICMP_FILTER, &f, sizeof f)) fail("ICMP_FILTER: %s", strerror(errno));
    struct sockaddr_in lo = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(r, (void *)&lo, sizeof lo) || connect(r, (void *)&lo, sizeof lo)) fail("bind/connect: %s", strerror(errno));
    setopt(r, IPPROTO_IP, IP_TTL, 21);
    setopt(u, IPPROTO_IP, IP_HDRINCL, 1);
    struct sock_fprog prog = { .len = 1, .filter = accept_all };
    if (setsockopt(u, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog)) fail("SO_ATTACH_FILTER: %s", strerror(errno));
    struct icmp6_filter f6;
    memset(&f6, 0xff, sizeof f6);
    f6.icmp6_filt[129 >> 5] &= ~(1U << (129 & 31));
    if (setsockopt(r6, IPPROTO_ICMPV6, ICMPV6_FILTER, &f6, sizeof f6)) fail("ICMPV6_FILTER: %s", strerror(errno));
    ready();
    wait_go();
    if (opt(r, SOL_SOCKET, SO_PROTOCOL) != IPPROTO_ICMP || opt(u, SOL_SOCKET, SO_PROTOCOL) != IPPROTO_UDP
        || opt(r6, SOL_SOCKET, SO_PROTOCOL) != IPPROTO_ICMPV6) fail("protocols");
    if (opt(r, SOL_SOCKET, SO_TYPE) != SOCK_RAW) fail("type");
    if (opt(r, IPPROTO_IP, IP_TTL) != 21) fail("IP_TTL");
    if (opt(u, IPPROTO_IP, IP_HDRINCL) != 1) fail("IP_HDRINCL");
    if (!(fcntl(u, F_GETFL) & O_NONBLOCK)) fail("O_NONBLOCK lost");
    struct icmp_filter g;
    socklen_t gl = sizeof g;
    if (getsockopt(r, SOL_RAW, ICMP_FILTER, &g, &gl) || g.data != f.data) fail("ICMP_FILTER lost");
    struct icmp6_filter g6;
    gl = sizeof g6;
    if (getsockopt(r6, IPPROTO_ICMPV6, ICMPV6_FILTER, &g6, &gl) || memcmp(&g6, &f6, sizeof f6)) fail("ICMPV6_FILTER lost");
    struct sock_filter back[4];
    socklen_t bl = 4;
    if (getsockopt(u, SOL_SOCKET, SO_ATTACH_FILTER, back, &bl) || bl != 1 || memcmp(back, accept_all, sizeof accept_all))
        fail("BPF filter lost (%u)", bl);
    struct sockaddr_in b;
    socklen_t l = sizeof b;
    getsockname(r, (void *)&b, &l);
    if (b.sin_addr.s_addr != htonl(INADDR_LOOPBACK)) fail("bound address lost");
    /* Connected: send() needs no address; the filter lets the echo reply
     * in but not our own echo request. */
    char pkt[16] = {0};
    struct icmphdr *h = (void *)pkt;
    h->type = ICMP_ECHO;
    h->un.echo.id = htons(77);
    uint32_t sum = 0;
    for (int i = 0; i < 16; i += 2) sum += (uint8_t)pkt[i] << 8 | (uint8_t)pkt[i + 1];
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    h->checksum = htons(~sum);
    if (send(r, pkt, sizeof pkt, 0) != sizeof pkt) fail("send on the connected raw socket: %s", strerror(errno));
    wait_readable(r, "the raw socket");
    char in[128];
    ssize_t n = recv(r, in, sizeof in, 0);
    if (n < 20 + 8) fail("short packet");
    struct icmphdr *rh = (void *)(in + (in[0] & 15) * 4);
    if (rh->type != ICMP_ECHOREPLY || ntohs(rh->un.echo.id) != 77) fail("got ICMP type %d, not our echo reply", rh->type);
    pass();
}

/* ---- packet ---- */
static void packet(void) {
    int p = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    int d = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
    if (p < 0 || d < 0) fail("packet socket: %s", strerror(errno));
    int lo = if_nametoindex("lo");
    setopt(p, SOL_PACKET, PACKET_VERSION, TPACKET_V2);
    setopt(p, SOL_PACKET, PACKET_AUXDATA, 1);
    struct sock_fprog prog = { .len = 1, .filter = accept_all };
    if (setsockopt(p, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog)) fail("SO_ATTACH_FILTER: %s", strerror(errno));
    struct sockaddr_ll a = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = lo };
    if (bind(p, (void *)&a, sizeof a)) fail("bind: %s", strerror(errno));
    struct packet_mreq m = { .mr_ifindex = lo, .mr_type = PACKET_MR_PROMISC };
    if (setsockopt(p, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &m, sizeof m)) fail("PACKET_ADD_MEMBERSHIP: %s", strerror(errno));
    struct packet_mreq mc = { .mr_ifindex = lo, .mr_type = PACKET_MR_MULTICAST, .mr_alen = 6,
                              .mr_address = { 0x01, 0x00, 0x5e, 0x01, 0x02, 0x03 } };
    if (setsockopt(p, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mc, sizeof mc)) fail("PACKET_ADD_MEMBERSHIP: %s", strerror(errno));
    ready();
    wait_go();
    struct sockaddr_ll b;
    socklen_t l = sizeof b;
    getsockname(p, (void *)&b, &l);
    if (b.sll_ifindex != lo || b.sll_protocol != htons(ETH_P_ALL)) fail("binding lost (%d)", b.sll_ifindex);
    l = sizeof b;
    getsockname(d, (void *)&b, &l);
    if (opt(d, SOL_SOCKET, SO_TYPE) != SOCK_DGRAM || b.sll_protocol != htons(ETH_P_IP)) fail("dgram socket");
    if (opt(p, SOL_PACKET, PACKET_VERSION) != TPACKET_V2) fail("PACKET_VERSION");
    if (opt(p, SOL_PACKET, PACKET_AUXDATA) != 1) fail("PACKET_AUXDATA");
    struct sock_filter back[4];
    socklen_t bl = 4;
    if (getsockopt(p, SOL_SOCKET, SO_ATTACH_FILTER, back, &bl) || bl != 1) fail("BPF filter lost");
    /* The multicast membership is the device's again. */
    FILE *f = fopen("/proc/net/dev_mcast", "r");
    char line[256];
    int found = 0;
    while (f && fgets(line, sizeof line, f)) found |= strstr(line, "lo") && strstr(line, "01005e010203");
    if (f) fclose(f);
    if (!found) fail("multicast membership lost");
    /* It sees traffic on lo, with auxiliary data. */
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = htons(9) };
    if (sendto(u, "x", 1, 0, (void *)&to, sizeof to) != 1) fail("sendto: %s", strerror(errno));
    wait_readable(p, "the packet socket");
    char buf[2048], ctl[256];
    struct iovec iov = { buf, sizeof buf };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl };
    if (recvmsg(p, &mh, 0) <= 0) fail("recvmsg: %s", strerror(errno));
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    if (!c || c->cmsg_level != SOL_PACKET || c->cmsg_type != PACKET_AUXDATA) fail("no PACKET_AUXDATA");
    wait_readable(d, "the SOCK_DGRAM packet socket");
    pass();
}

/* ---- netlink ---- */
static void netlink(int pending) {
    int s = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    int ue = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_KOBJECT_UEVENT);
    if (s < 0 || ue < 0) fail("netlink socket: %s", strerror(errno));
    struct sockaddr_nl a = { .nl_family = AF_NETLINK, .nl_pid = 0x70000000u + getpid(), .nl_groups = RTMGRP_LINK };
    if (bind(s, (void *)&a, sizeof a)) fail("bind: %s", strerror(errno));
    setopt(s, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_IPV4_IFADDR);
    setopt(s, SOL_NETLINK, NETLINK_NO_ENOBUFS, 1);
    struct sockaddr_nl u = { .nl_family = AF_NETLINK, .nl_groups = 1 };
    if (bind(ue, (void *)&u, sizeof u)) fail("bind uevent: %s", strerror(errno));
    struct sockaddr_nl ub;
    socklen_t ul = sizeof ub;
    getsockname(ue, (void *)&ub, &ul);
    struct { struct nlmsghdr h; struct rtgenmsg g; } req = {
        .h = { .nlmsg_len = sizeof req, .nlmsg_type = RTM_GETLINK, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = 1 },
        .g = { .rtgen_family = AF_UNSPEC },
    };
    if (pending && send(s, &req, sizeof req, 0) != sizeof req) fail("send: %s", strerror(errno));
    sleep_ms(50);
    ready();
    wait_go();
    struct sockaddr_nl b;
    socklen_t l = sizeof b;
    getsockname(s, (void *)&b, &l);
    if (b.nl_pid != a.nl_pid) fail("port id %u, was %u", b.nl_pid, a.nl_pid);
    uint32_t groups[4] = {0};
    socklen_t gl = sizeof groups;
    if (getsockopt(s, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, groups, &gl)) fail("LIST_MEMBERSHIPS: %s", strerror(errno));
    if (groups[0] != ((1u << (RTNLGRP_LINK - 1)) | (1u << (RTNLGRP_IPV4_IFADDR - 1)))) fail("groups %#x", groups[0]);
    if (opt(s, SOL_NETLINK, NETLINK_NO_ENOBUFS) != 1) fail("NETLINK_NO_ENOBUFS");
    l = sizeof b;
    getsockname(ue, (void *)&b, &l);
    if (b.nl_pid != ub.nl_pid || b.nl_groups != 1) fail("uevent socket: port id %u (was %u), groups %u", b.nl_pid, ub.nl_pid, b.nl_groups);
    if (opt(ue, SOL_SOCKET, SO_PROTOCOL) != NETLINK_KOBJECT_UEVENT || opt(ue, SOL_SOCKET, SO_TYPE) != SOCK_DGRAM) fail("uevent socket kind");
    /* It works: a link dump is answered. */
    if (send(s, &req, sizeof req, 0) != sizeof req) fail("send: %s", strerror(errno));
    wait_readable(s, "the netlink socket");
    char buf[8192];
    ssize_t n = recv(s, buf, sizeof buf, 0);
    struct nlmsghdr *h = (void *)buf;
    if (n < (ssize_t)sizeof *h || h->nlmsg_type != RTM_NEWLINK) fail("no link dump reply");
    pass();
}

int main(int argc, char **argv) {
    setup(argc, argv);
    if (argc < 3) fail("usage: rawsocks DIR MODE");
    const char *m = argv[2];
    if (!strcmp(m, "ping4")) ping(0);
    else if (!strcmp(m, "ping6")) ping(1);
    else if (!strcmp(m, "udplite")) udplite();
    else if (!strcmp(m, "raw")) raw();
    else if (!strcmp(m, "packet")) packet();
    else if (!strcmp(m, "netlink")) netlink(0);
    else if (!strcmp(m, "netlink-pending")) netlink(1);
    else if (!strcmp(m, "nlhold") && argc > 3) {
        int s = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
        struct sockaddr_nl a = { .nl_family = AF_NETLINK, .nl_pid = 0x70000000u + atoi(argv[3]) };
        if (bind(s, (void *)&a, sizeof a)) fail("bind: %s", strerror(errno));
        ready();
        for (;;) pause();
    }
    fail("unknown mode %s", m);
}
