/*
 * breadth_sockopts: socket options beyond the common few, and the socket
 * kinds besides TCP and UDP.
 *
 * Before READY:
 *   fd 10  UDP: SO_BROADCAST, IP_TOS 0x10 then SO_PRIORITY 5, IP_TTL 7,
 *          IP_RECVERR, IP_PKTINFO, IP_FREEBIND, bound to 192.0.2.1 (an
 *          address of no interface: only IP_FREEBIND lets it bind)
 *   fd 11  TCP listener on 127.0.0.1, bound to device lo: SO_LINGER {1, 5},
 *          TCP_KEEPIDLE 77, TCP_KEEPINTVL 9, TCP_KEEPCNT 4,
 *          TCP_USER_TIMEOUT 1234, TCP_CONGESTION reno, TCP_NOTSENT_LOWAT
 *          4096, TCP_DEFER_ACCEPT 5, TCP_FASTOPEN 5
 *   fd 12  UDP on 127.0.0.1 with a classic BPF filter dropping everything,
 *          locked (SO_LOCK_FILTER)
 *   fd 13  UDP-Lite on 127.0.0.1: send coverage 20, receive coverage 16,
 *          one datagram "lite" queued
 *   fd 14  raw ICMP socket: ICMP_FILTER blocking every type (so nothing
 *          queues on it), IP_HDRINCL
 *   fds 15/16  a UNIX stream pair, "abcdef" queued on 15, its peek offset
 *          (SO_PEEK_OFF) at 2
 *   fd 17  UDP on 127.0.0.1, a member of multicast group 239.255.7.7 on lo
 *          from any source, of 239.255.7.8 on lo from 127.0.0.1 alone, and
 *          of 239.255.7.10 on lo from any source but 127.0.0.2
 *
 * After go: every option reads back as it did at READY; fd 10 is still
 * bound to 192.0.2.1 at its port; the listener accepts a connection on its
 * port; the filter still drops a datagram sent to fd 12 and cannot be
 * replaced; the UDP-Lite datagram reads "lite"; a peek of fd 15 gives
 * "cdef"; fd 17 is a member of the three groups on lo, the first excluding
 * no source, the second including 127.0.0.1 alone, the third excluding
 * 127.0.0.2, and of no other group.
 *
 * Usage: breadth_sockopts [--selftest-fail=broadcast|keepidle|peek|lite|multicast]
 */
#include "common.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

/* Classic BPF, as <linux/filter.h> has it (the ARM toolchains carry no
 * kernel headers). */
struct sock_filter {
    unsigned short code;
    unsigned char jt, jf;
    unsigned int k;
};
struct sock_fprog {
    unsigned short len;
    struct sock_filter *filter;
};
#define BPF_RET 0x06
#define BPF_K 0x00
#define BPF_STMT(code, k) { (unsigned short)(code), 0, 0, k }
#ifndef SO_ATTACH_FILTER
#define SO_ATTACH_FILTER 26
#endif
#ifndef SO_GET_FILTER
#define SO_GET_FILTER SO_ATTACH_FILTER
#endif

#ifndef IPPROTO_UDPLITE
#define IPPROTO_UDPLITE 136
#endif
#define UDPLITE_SEND_CSCOV 10
#define UDPLITE_RECV_CSCOV 11
#ifndef SO_LOCK_FILTER
#define SO_LOCK_FILTER 44
#endif
#ifndef SO_PEEK_OFF
#define SO_PEEK_OFF 42
#endif
#ifndef TCP_FASTOPEN
#define TCP_FASTOPEN 23
#endif
#ifndef TCP_NOTSENT_LOWAT
#define TCP_NOTSENT_LOWAT 25
#endif
#ifndef SOL_RAW
#define SOL_RAW 255
#endif
#define ICMP_FILTER 1

/* An option as checked: its socket, level, name and value at READY. */
struct opt {
    int fd, level, name;
    const char *what;
    unsigned char value[32];
    socklen_t len;
};

static struct opt opts[32];
static int nopts;

static void set_int(int fd, int level, int name, int v, const char *what)
{
    if (setsockopt(fd, level, name, &v, sizeof v) != 0)
        setup_failed(what);
}

/* Records the option's value now, to compare after go. */
static void keep(int fd, int level, int name, const char *what)
{
    struct opt *o = &opts[nopts++];
    o->fd = fd;
    o->level = level;
    o->name = name;
    o->what = what;
    o->len = sizeof o->value;
    if (getsockopt(fd, level, name, o->value, &o->len) != 0)
        setup_failed(what);
}

static void check_opts(void)
{
    for (int i = 0; i < nopts; i++) {
        struct opt *o = &opts[i];
        unsigned char now[32];
        socklen_t len = sizeof now;
        if (getsockopt(o->fd, o->level, o->name, now, &len) != 0) {
            fail("fd %d %s: getsockopt failed", o->fd, o->what);
            continue;
        }
        if (len != o->len || memcmp(now, o->value, len) != 0) {
            int was = 0, is = 0;
            memcpy(&was, o->value, o->len < 4 ? o->len : 4);
            memcpy(&is, now, len < 4 ? len : 4);
            fail("fd %d %s: expected %d (%u bytes), got %d (%u bytes)", o->fd, o->what, was,
                 (unsigned)o->len, is, (unsigned)len);
        }
    }
}

static struct sockaddr_in loopback(void)
{
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static unsigned short port_of(int fd, struct in_addr *addr)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        return 0;
    if (addr)
        *addr = a.sin_addr;
    return ntohs(a.sin_port);
}

static int readable(int fd, int ms)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

static struct sock_filter drop_all[] = { BPF_STMT(BPF_RET | BPF_K, 0) };

/* fd 17's filter for `group` on lo: its mode and sources, or -1 when it
 * is no member (errno EADDRNOTAVAIL). */
static int msfilter(const char *group, unsigned *mode, unsigned *nsrc, struct sockaddr_in *src)
{
    union { struct group_filter f; char b[GROUP_FILTER_SIZE(4)]; } u;
    memset(&u, 0, sizeof u);
    u.f.gf_interface = if_nametoindex("lo");
    struct sockaddr_in *g = (struct sockaddr_in *)&u.f.gf_group;
    g->sin_family = AF_INET;
    inet_pton(AF_INET, group, &g->sin_addr);
    u.f.gf_numsrc = 4;
    socklen_t len = sizeof u;
    if (getsockopt(17, IPPROTO_IP, MCAST_MSFILTER, &u, &len) != 0)
        return -1;
    *mode = u.f.gf_fmode;
    *nsrc = u.f.gf_numsrc;
    if (u.f.gf_numsrc > 0)
        memcpy(src, &u.f.gf_slist[0], sizeof *src);
    return 0;
}

static void join_group(const char *group, const char *source, int block)
{
    struct sockaddr_in g = { .sin_family = AF_INET };
    inet_pton(AF_INET, group, &g.sin_addr);
    unsigned lo = if_nametoindex("lo");
    if (!source || block) {
        struct group_req r = { .gr_interface = lo };
        memcpy(&r.gr_group, &g, sizeof g);
        if (setsockopt(17, IPPROTO_IP, MCAST_JOIN_GROUP, &r, sizeof r) != 0)
            setup_failed("MCAST_JOIN_GROUP");
        if (!block)
            return;
    }
    struct sockaddr_in s = { .sin_family = AF_INET };
    inet_pton(AF_INET, source, &s.sin_addr);
    struct group_source_req r = { .gsr_interface = lo };
    memcpy(&r.gsr_group, &g, sizeof g);
    memcpy(&r.gsr_source, &s, sizeof s);
    if (setsockopt(17, IPPROTO_IP, block ? MCAST_BLOCK_SOURCE : MCAST_JOIN_SOURCE_GROUP, &r, sizeof r) != 0)
        setup_failed(block ? "MCAST_BLOCK_SOURCE" : "MCAST_JOIN_SOURCE_GROUP");
}

static void check_groups(void)
{
    unsigned mode = 99, nsrc = 99;
    struct sockaddr_in src = { 0 };
    if (msfilter("239.255.7.7", &mode, &nsrc, &src) != 0)
        fail("239.255.7.7 on lo: expected a member, got %s", strerror(errno));
    else if (mode != MCAST_EXCLUDE || nsrc != 0)
        fail("239.255.7.7 on lo: expected exclude mode with no sources, got mode %u with %u", mode, nsrc);
    if (msfilter("239.255.7.8", &mode, &nsrc, &src) != 0)
        fail("239.255.7.8 on lo: expected a member, got %s", strerror(errno));
    else if (mode != MCAST_INCLUDE || nsrc != 1 || src.sin_family != AF_INET ||
             src.sin_addr.s_addr != htonl(INADDR_LOOPBACK))
        fail("239.255.7.8 on lo: expected include mode with 127.0.0.1, got mode %u with %u (%s)", mode, nsrc,
             inet_ntoa(src.sin_addr));
    if (msfilter("239.255.7.10", &mode, &nsrc, &src) != 0)
        fail("239.255.7.10 on lo: expected a member, got %s", strerror(errno));
    else if (mode != MCAST_EXCLUDE || nsrc != 1 || src.sin_addr.s_addr != htonl(0x7f000002))
        fail("239.255.7.10 on lo: expected exclude mode with 127.0.0.2, got mode %u with %u (%s)", mode, nsrc,
             inet_ntoa(src.sin_addr));
    if (msfilter("239.255.7.9", &mode, &nsrc, &src) == 0 || errno != EADDRNOTAVAIL)
        fail("239.255.7.9 on lo: expected no member (EADDRNOTAVAIL), got %s", strerror(errno));
}

int main(int argc, char **argv)
{
    app_init("breadth_sockopts", argc, argv);

    /* fd 10: UDP, bound by IP_FREEBIND to an address no interface has. */
    fd_at(socket(AF_INET, SOCK_DGRAM, 0), 10, "udp socket");
    set_int(10, SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST");
    set_int(10, IPPROTO_IP, IP_TOS, 0x10, "IP_TOS");
    set_int(10, SOL_SOCKET, SO_PRIORITY, 5, "SO_PRIORITY");
    set_int(10, IPPROTO_IP, IP_TTL, 7, "IP_TTL");
    set_int(10, IPPROTO_IP, IP_RECVERR, 1, "IP_RECVERR");
    set_int(10, IPPROTO_IP, IP_PKTINFO, 1, "IP_PKTINFO");
    set_int(10, IPPROTO_IP, IP_FREEBIND, 1, "IP_FREEBIND");
    struct sockaddr_in far = { .sin_family = AF_INET };
    inet_pton(AF_INET, "192.0.2.1", &far.sin_addr);
    if (bind(10, (struct sockaddr *)&far, sizeof far) != 0)
        setup_failed("bind to 192.0.2.1");
    unsigned short far_port = port_of(10, NULL);
    keep(10, SOL_SOCKET, SO_BROADCAST, "SO_BROADCAST");
    keep(10, IPPROTO_IP, IP_TOS, "IP_TOS");
    keep(10, SOL_SOCKET, SO_PRIORITY, "SO_PRIORITY");
    keep(10, IPPROTO_IP, IP_TTL, "IP_TTL");
    keep(10, IPPROTO_IP, IP_RECVERR, "IP_RECVERR");
    keep(10, IPPROTO_IP, IP_PKTINFO, "IP_PKTINFO");
    keep(10, IPPROTO_IP, IP_FREEBIND, "IP_FREEBIND");

    /* fd 11: a TCP listener with its options. */
    fd_at(socket(AF_INET, SOCK_STREAM, 0), 11, "tcp listener");
    struct linger lg = { 1, 5 };
    if (setsockopt(11, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) != 0)
        setup_failed("SO_LINGER");
    if (setsockopt(11, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3) != 0)
        setup_failed("SO_BINDTODEVICE");
    set_int(11, IPPROTO_TCP, TCP_KEEPIDLE, 77, "TCP_KEEPIDLE");
    set_int(11, IPPROTO_TCP, TCP_KEEPINTVL, 9, "TCP_KEEPINTVL");
    set_int(11, IPPROTO_TCP, TCP_KEEPCNT, 4, "TCP_KEEPCNT");
    set_int(11, IPPROTO_TCP, TCP_USER_TIMEOUT, 1234, "TCP_USER_TIMEOUT");
    if (setsockopt(11, IPPROTO_TCP, TCP_CONGESTION, "reno", 4) != 0)
        setup_failed("TCP_CONGESTION");
    set_int(11, IPPROTO_TCP, TCP_NOTSENT_LOWAT, 4096, "TCP_NOTSENT_LOWAT");
    set_int(11, IPPROTO_TCP, TCP_DEFER_ACCEPT, 5, "TCP_DEFER_ACCEPT");
    set_int(11, IPPROTO_TCP, TCP_FASTOPEN, 5, "TCP_FASTOPEN");
    struct sockaddr_in lo = loopback();
    if (bind(11, (struct sockaddr *)&lo, sizeof lo) != 0 || listen(11, 8) != 0)
        setup_failed("listener");
    unsigned short listen_port = port_of(11, NULL);
    keep(11, SOL_SOCKET, SO_LINGER, "SO_LINGER");
    keep(11, SOL_SOCKET, SO_BINDTODEVICE, "SO_BINDTODEVICE");
    keep(11, IPPROTO_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE");
    keep(11, IPPROTO_TCP, TCP_KEEPINTVL, "TCP_KEEPINTVL");
    keep(11, IPPROTO_TCP, TCP_KEEPCNT, "TCP_KEEPCNT");
    keep(11, IPPROTO_TCP, TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT");
    keep(11, IPPROTO_TCP, TCP_CONGESTION, "TCP_CONGESTION");
    keep(11, IPPROTO_TCP, TCP_NOTSENT_LOWAT, "TCP_NOTSENT_LOWAT");
    keep(11, IPPROTO_TCP, TCP_DEFER_ACCEPT, "TCP_DEFER_ACCEPT");
    keep(11, IPPROTO_TCP, TCP_FASTOPEN, "TCP_FASTOPEN");

    /* fd 12: a locked filter that drops every datagram. */
    fd_at(socket(AF_INET, SOCK_DGRAM, 0), 12, "filtered socket");
    struct sock_fprog prog = { 1, drop_all };
    if (setsockopt(12, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) != 0)
        setup_failed("SO_ATTACH_FILTER");
    set_int(12, SOL_SOCKET, SO_LOCK_FILTER, 1, "SO_LOCK_FILTER");
    lo = loopback();
    if (bind(12, (struct sockaddr *)&lo, sizeof lo) != 0)
        setup_failed("bind the filtered socket");
    keep(12, SOL_SOCKET, SO_LOCK_FILTER, "SO_LOCK_FILTER");

    /* fd 13: UDP-Lite with partial checksum coverage and a queued datagram. */
    fd_at(socket(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE), 13, "udp-lite socket");
    set_int(13, IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV, 20, "UDPLITE_SEND_CSCOV");
    set_int(13, IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV, 16, "UDPLITE_RECV_CSCOV");
    lo = loopback();
    if (bind(13, (struct sockaddr *)&lo, sizeof lo) != 0)
        setup_failed("bind the udp-lite socket");
    keep(13, IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV, "UDPLITE_SEND_CSCOV");
    keep(13, IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV, "UDPLITE_RECV_CSCOV");
    struct sockaddr_in lite = loopback();
    lite.sin_port = htons(port_of(13, NULL));
    int s = socket(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE);
    if (s < 0 || sendto(s, "lite", 4, 0, (struct sockaddr *)&lite, sizeof lite) != 4)
        setup_failed("sending to the udp-lite socket");
    close(s);
    if (!readable(13, 2000))
        setup_failed("the udp-lite datagram did not arrive");

    /* fd 14: raw ICMP with its type filter and IP_HDRINCL. */
    fd_at(socket(AF_INET, SOCK_RAW, IPPROTO_ICMP), 14, "raw socket");
    set_int(14, SOL_RAW, ICMP_FILTER, ~0, "ICMP_FILTER");
    set_int(14, IPPROTO_IP, IP_HDRINCL, 1, "IP_HDRINCL");
    keep(14, SOL_RAW, ICMP_FILTER, "ICMP_FILTER");
    keep(14, IPPROTO_IP, IP_HDRINCL, "IP_HDRINCL");

    /* fds 15/16: a peek offset into a queue. */
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        setup_failed("socketpair");
    fd_at(sv[0], 15, "pair end");
    fd_at(sv[1], 16, "pair end");
    write_all(16, "abcdef", 6);
    set_int(15, SOL_SOCKET, SO_PEEK_OFF, 2, "SO_PEEK_OFF");
    keep(15, SOL_SOCKET, SO_PEEK_OFF, "SO_PEEK_OFF");

    /* fd 17: multicast memberships, which no getsockopt lists. */
    fd_at(socket(AF_INET, SOCK_DGRAM, 0), 17, "multicast socket");
    struct sockaddr_in m17 = loopback();
    if (bind(17, (struct sockaddr *)&m17, sizeof m17) != 0)
        setup_failed("bind fd 17");
    join_group("239.255.7.7", NULL, 0);
    join_group("239.255.7.8", "127.0.0.1", 0);
    join_group("239.255.7.10", "127.0.0.2", 1);

    ready();
    wait_go();
    if (perturb("broadcast"))
        set_int(10, SOL_SOCKET, SO_BROADCAST, 0, "SO_BROADCAST");
    if (perturb("keepidle"))
        set_int(11, IPPROTO_TCP, TCP_KEEPIDLE, 78, "TCP_KEEPIDLE");
    if (perturb("peek"))
        set_int(15, SOL_SOCKET, SO_PEEK_OFF, 0, "SO_PEEK_OFF");
    if (perturb("lite")) {
        char b[8];
        recv(13, b, sizeof b, MSG_DONTWAIT);
    }
    if (perturb("multicast")) {
        struct group_req r = { .gr_interface = if_nametoindex("lo") };
        struct sockaddr_in g = { .sin_family = AF_INET };
        inet_pton(AF_INET, "239.255.7.7", &g.sin_addr);
        memcpy(&r.gr_group, &g, sizeof g);
        setsockopt(17, IPPROTO_IP, MCAST_LEAVE_GROUP, &r, sizeof r);
    }
    check_groups();

    check_opts();
    struct in_addr at;
    unsigned short p = port_of(10, &at);
    if (at.s_addr != far.sin_addr.s_addr || p != far_port)
        fail("fd 10 name: expected 192.0.2.1:%u, got %s:%u", far_port, inet_ntoa(at), p);

    /* The listener takes a connection on its port. */
    if (port_of(11, NULL) != listen_port)
        fail("listener port: expected %u, got %u", listen_port, port_of(11, NULL));
    int c = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to = loopback();
    to.sin_port = htons(listen_port);
    if (c < 0 || connect(c, (struct sockaddr *)&to, sizeof to) != 0) {
        fail("listener: connecting to port %u failed", listen_port);
    } else {
        /* TCP_DEFER_ACCEPT holds the connection until data arrives. */
        write_all(c, "x", 1);
        if (!readable(11, 5000)) {
            fail("listener: no connection to accept");
        } else {
            int a = accept(11, NULL, NULL);
            if (a < 0)
                fail("listener: accept failed");
            else
                close(a);
        }
    }
    if (c >= 0)
        close(c);

    /* The filter still drops, and is still locked. */
    struct sockaddr_in f12 = loopback();
    f12.sin_port = htons(port_of(12, NULL));
    s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0 || sendto(s, "drop", 4, 0, (struct sockaddr *)&f12, sizeof f12) != 4)
        fail("filter: sending to fd 12 failed");
    if (s >= 0)
        close(s);
    if (readable(12, 200))
        fail("filter: a datagram passed the filter that drops everything");
    struct sock_filter back[4];
    socklen_t n = 4;
    if (getsockopt(12, SOL_SOCKET, SO_GET_FILTER, back, &n) != 0 || n != 1 ||
        memcmp(back, drop_all, sizeof drop_all) != 0)
        fail("filter: expected its 1 instruction back, got %u", (unsigned)n);
    struct sock_filter accept_all[] = { BPF_STMT(BPF_RET | BPF_K, 0xffff) };
    struct sock_fprog other = { 1, accept_all };
    if (setsockopt(12, SOL_SOCKET, SO_ATTACH_FILTER, &other, sizeof other) == 0)
        fail("filter: replaced although locked");

    /* The UDP-Lite datagram, and the peek offset. */
    char got[16] = "";
    ssize_t k = recv(13, got, sizeof got - 1, MSG_DONTWAIT);
    if (k != 4 || memcmp(got, "lite", 4) != 0)
        fail("udp-lite: expected \"lite\", got %zd bytes", k);
    memset(got, 0, sizeof got);
    k = recv(15, got, sizeof got - 1, MSG_PEEK | MSG_DONTWAIT);
    if (k != 4 || memcmp(got, "cdef", 4) != 0)
        fail("peek: expected \"cdef\" at offset 2, got %zd bytes \"%s\"", k, got);
    return finish();
}
