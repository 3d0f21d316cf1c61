/*
 * breadth_packet: packet sockets, kept with their protocol, interface and
 * options.
 *
 * Before READY (each made with protocol 0, which receives nothing, given
 * its filter, then bound, so nothing queues on it):
 *   fd 10  SOCK_DGRAM bound to ETH_P_IP on lo, a classic BPF filter
 *          passing only UDP to port P (from the pid): PACKET_VERSION
 *          TPACKET_V2, PACKET_RESERVE 64, PACKET_AUXDATA, PACKET_ORIGDEV,
 *          PACKET_TIMESTAMP 0x10, PACKET_COPY_THRESH 128,
 *          PACKET_QDISC_BYPASS, PACKET_LOSS, PACKET_IGNORE_OUTGOING,
 *          O_NONBLOCK
 *   fd 11  SOCK_RAW bound to ETH_P_ALL on every interface, a filter
 *          dropping everything: PACKET_VNET_HDR, PACKET_TX_HAS_OFF
 *
 * After go: type, protocol and interface (getsockname), every option
 * getsockopt reads, and the status flags as at READY; a UDP datagram sent
 * to 127.0.0.1 port P arrives on fd 10 from lo, with its auxiliary data.
 * Needs CAP_NET_RAW (root).
 *
 * Usage: breadth_packet [--selftest-fail=option|bind]
 */
#include "common.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

/* From linux/if_packet.h, linux/if_ether.h and linux/filter.h (a stable
 * ABI; the ARM toolchains carry no kernel headers). */
#ifndef AF_PACKET
#define AF_PACKET 17
#endif
#define SOL_PKT 263
#define PKT_COPY_THRESH 7
#define PKT_AUXDATA 8
#define PKT_ORIGDEV 9
#define PKT_VERSION 10
#define PKT_RESERVE 12
#define PKT_LOSS 14
#define PKT_VNET_HDR 15
#define PKT_TIMESTAMP 17
#define PKT_TX_HAS_OFF 19
#define PKT_QDISC_BYPASS 20
#define PKT_IGNORE_OUTGOING 23
#define ETHP_ALL 0x0003
#define ETHP_IP 0x0800
#define ETHP_ARP 0x0806
#ifndef SO_ATTACH_FILTER
#define SO_ATTACH_FILTER 26
#endif

struct ll_addr {
    unsigned short family;
    unsigned short protocol;
    int ifindex;
    unsigned short hatype;
    unsigned char pkttype, halen;
    unsigned char addr[8];
};
struct bpf_insn {
    unsigned short code;
    unsigned char jt, jf;
    unsigned int k;
};
struct bpf_prog {
    unsigned short len;
    struct bpf_insn *filter;
};

#define NFD 2
static const int fds[NFD] = { 10, 11 };
static const int opts[] = { PKT_VERSION, PKT_RESERVE, PKT_AUXDATA, PKT_ORIGDEV, PKT_VNET_HDR, PKT_TIMESTAMP,
                            PKT_QDISC_BYPASS, PKT_LOSS, PKT_TX_HAS_OFF, PKT_IGNORE_OUTGOING };
#define NOPTS ((int)(sizeof opts / sizeof opts[0]))

struct seen {
    int type, flags, ifindex, protocol;
    int opt[NOPTS];
};
static struct seen at_ready[NFD];
static unsigned short port;
static int lo;

static void set_opt(int fd, int level, int opt, int v)
{
    if (setsockopt(fd, level, opt, &v, sizeof v) != 0)
        setup_failed("setsockopt");
}

static int get_opt(int fd, int level, int opt)
{
    int v = -1;
    socklen_t l = sizeof v;
    if (getsockopt(fd, level, opt, &v, &l) != 0)
        return -errno;
    return v;
}

static void ll_bind(int fd, int protocol, int ifindex)
{
    struct ll_addr a;
    memset(&a, 0, sizeof a);
    a.family = AF_PACKET;
    a.protocol = htons((unsigned short)protocol);
    a.ifindex = ifindex;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0)
        setup_failed("bind");
}

static void read_state(int fd, struct seen *s)
{
    memset(s, 0, sizeof *s);
    s->type = get_opt(fd, SOL_SOCKET, SO_TYPE);
    s->flags = fcntl(fd, F_GETFL);
    struct ll_addr a;
    socklen_t l = sizeof a;
    memset(&a, 0, sizeof a);
    if (getsockname(fd, (struct sockaddr *)&a, &l) == 0) {
        s->ifindex = a.ifindex;
        s->protocol = ntohs(a.protocol);
    }
    for (int i = 0; i < NOPTS; i++)
        s->opt[i] = get_opt(fd, SOL_PKT, opts[i]);
}

static void setup(void)
{
    lo = (int)if_nametoindex("lo");
    if (lo <= 0)
        setup_failed("lo");
    port = (unsigned short)(20000 + getpid() % 20000);
    /* SOCK_DGRAM sees the IP header first: UDP (protocol 17, byte 9), not
     * a fragment, destination port `port`. */
    struct bpf_insn udp[] = {
        { 0x30, 0, 0, 9 },          /* ldb [9] */
        { 0x15, 0, 6, 17 },         /* jeq #17 */
        { 0x28, 0, 0, 6 },          /* ldh [6] */
        { 0x45, 4, 0, 0x1fff },     /* jset #0x1fff */
        { 0xb1, 0, 0, 0 },          /* ldxb 4*([0]&0xf) */
        { 0x48, 0, 0, 2 },          /* ldh [x+2] */
        { 0x15, 0, 1, port },       /* jeq #port */
        { 0x06, 0, 0, 0xffff },     /* ret #0xffff */
        { 0x06, 0, 0, 0 },          /* ret #0 */
    };
    struct bpf_prog p = { sizeof udp / sizeof udp[0], udp };
    fd_at(socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0), 10, "dgram packet socket");
    if (setsockopt(10, SOL_SOCKET, SO_ATTACH_FILTER, &p, sizeof p) != 0)
        setup_failed("filter");
    set_opt(10, SOL_PKT, PKT_VERSION, 1);
    set_opt(10, SOL_PKT, PKT_RESERVE, 64);
    set_opt(10, SOL_PKT, PKT_AUXDATA, 1);
    set_opt(10, SOL_PKT, PKT_ORIGDEV, 1);
    set_opt(10, SOL_PKT, PKT_TIMESTAMP, 0x10);
    set_opt(10, SOL_PKT, PKT_COPY_THRESH, 128);
    set_opt(10, SOL_PKT, PKT_QDISC_BYPASS, 1);
    set_opt(10, SOL_PKT, PKT_LOSS, 1);
    set_opt(10, SOL_PKT, PKT_IGNORE_OUTGOING, 1);
    ll_bind(10, ETHP_IP, lo);
    if (fcntl(10, F_SETFL, O_NONBLOCK) != 0)
        setup_failed("O_NONBLOCK");

    struct bpf_insn none[] = { { 0x06, 0, 0, 0 } };
    struct bpf_prog q = { 1, none };
    fd_at(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0), 11, "raw packet socket");
    if (setsockopt(11, SOL_SOCKET, SO_ATTACH_FILTER, &q, sizeof q) != 0)
        setup_failed("filter");
    set_opt(11, SOL_PKT, PKT_VNET_HDR, 1);
    set_opt(11, SOL_PKT, PKT_TX_HAS_OFF, 1);
    ll_bind(11, ETHP_ALL, 0);

    for (int i = 0; i < NFD; i++)
        read_state(fds[i], &at_ready[i]);
}

static void compare(int i)
{
    struct seen now;
    read_state(fds[i], &now);
    const struct seen *w = &at_ready[i];
    int fd = fds[i];
    if (now.type != w->type)
        fail("fd %d: expected type %d, got %d", fd, w->type, now.type);
    if (now.protocol != w->protocol || now.ifindex != w->ifindex)
        fail("fd %d: expected protocol %#x on interface %d, got %#x on %d", fd, w->protocol, w->ifindex,
             now.protocol, now.ifindex);
    for (int o = 0; o < NOPTS; o++)
        if (now.opt[o] != w->opt[o])
            fail("fd %d: expected option %d = %d, got %d", fd, opts[o], w->opt[o], now.opt[o]);
    if (now.flags != w->flags)
        fail("fd %d: expected status flags %#x, got %#x", fd, w->flags, now.flags);
}

/* A datagram to 127.0.0.1:port reaches fd 10 from lo, with auxdata. */
static void receive(void)
{
    static const char payload[] = "torpor-packet";
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (u < 0 || sendto(u, payload, sizeof payload, 0, (struct sockaddr *)&to, sizeof to) != (ssize_t)sizeof payload) {
        fail("sending the datagram: %s", strerror(errno));
        return;
    }
    close(u);
    static unsigned char buf[2048];
    union { struct cmsghdr h; char b[256]; } ctl;
    struct ll_addr from;
    for (int tries = 0; tries < 20; tries++) {
        struct pollfd p = { 10, POLLIN, 0 };
        if (poll(&p, 1, 100) <= 0)
            continue;
        struct iovec iov = { buf, sizeof buf };
        struct msghdr m = { .msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1,
                            .msg_control = ctl.b, .msg_controllen = sizeof ctl.b };
        ssize_t n = recvmsg(10, &m, 0);
        if (n < 0)
            continue;
        if ((size_t)n < 28 + sizeof payload || memcmp(buf + n - sizeof payload, payload, sizeof payload) != 0) {
            fail("fd 10: expected the datagram's IP packet, got %zd bytes", n);
            return;
        }
        if (from.ifindex != lo)
            fail("fd 10: expected the packet from lo (%d), got interface %d", lo, from.ifindex);
        struct cmsghdr *h = CMSG_FIRSTHDR(&m);
        if (!h || h->cmsg_level != SOL_PKT || h->cmsg_type != PKT_AUXDATA)
            fail("fd 10: expected PACKET_AUXDATA with the packet");
        return;
    }
    fail("fd 10: expected the datagram to port %u within 2 s, got nothing", port);
}

int main(int argc, char **argv)
{
    app_init("breadth_packet", argc, argv);
    setup();
    ready();
    wait_go();
    if (perturb("option"))
        set_opt(10, SOL_PKT, PKT_AUXDATA, 0);
    if (perturb("bind"))
        ll_bind(10, ETHP_ARP, lo);
    for (int i = 0; i < NFD; i++)
        compare(i);
    receive();
    return finish();
}
