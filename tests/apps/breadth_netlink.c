/*
 * breadth_netlink: netlink sockets, kept with their port ids, multicast
 * groups, destinations and options.
 *
 * Before READY:
 *   fd 10  NETLINK_ROUTE, bound with port id 0 (the kernel picks the pid)
 *          and the group mask RTMGRP_IPV4_IFADDR, then joined to
 *          RTNLGRP_IPV6_PREFIX (18) and RTNLGRP_BRVLAN (33, above the
 *          32 a bind mask can name) by NETLINK_ADD_MEMBERSHIP;
 *          NETLINK_PKTINFO, NETLINK_NO_ENOBUFS, SO_RCVBUF 98304, O_NONBLOCK
 *   fd 11  NETLINK_ROUTE bound to port id 0x5e000000 + pid: NETLINK_EXT_ACK,
 *          NETLINK_CAP_ACK, NETLINK_GET_STRICT_CHK,
 *          NETLINK_BROADCAST_ERROR
 *   fd 12  NETLINK_KOBJECT_UEVENT (SOCK_DGRAM) bound to port id
 *          0x5f000000 + pid, no group, connected to group 1
 *   fd 13  NETLINK_GENERIC, never bound (port id 0), SO_PRIORITY 3
 *
 * After go: type, protocol, port id, destination, every group word of
 * NETLINK_LIST_MEMBERSHIPS, every kept option, SO_RCVBUF, SO_PRIORITY and
 * the status flags read as at READY; fd 11 adds 198.18.X.Y/32 (X.Y from the pid) to
 * lo and deletes it, and fd 10 receives the RTM_NEWADDR and RTM_DELADDR
 * of that address; an RTM_GETLINK dump on fd 11 answers with lo and
 * NLMSG_DONE. Needs CAP_NET_ADMIN (root).
 *
 * Usage: breadth_netlink [--selftest-fail=port|groups|option|event]
 */
#include "common.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <poll.h>
#include <sys/socket.h>

/* From linux/netlink.h and linux/rtnetlink.h (a stable ABI; the ARM
 * toolchains carry no kernel headers). */
#ifndef AF_NETLINK
#define AF_NETLINK 16
#endif
#define NL_ROUTE 0
#define NL_GENERIC 16
#define NL_UEVENT 15
#define SOL_NL 270
#define NL_ADD_MEMBERSHIP 1
#define NL_DROP_MEMBERSHIP 2
#define NL_PKTINFO 3
#define NL_BROADCAST_ERROR 4
#define NL_NO_ENOBUFS 5
#define NL_LISTEN_ALL_NSID 8
#define NL_LIST_MEMBERSHIPS 9
#define NL_CAP_ACK 10
#define NL_EXT_ACK 11
#define NL_GET_STRICT_CHK 12
#define NLM_REQUEST 0x1
#define NLM_ACK 0x4
#define NLM_EXCL 0x200
#define NLM_CREATE 0x400
#define NLM_DUMP 0x300
#define NLMSG_ERR 2
#define NLMSG_END 3
#define RTM_NEWLINK_T 16
#define RTM_GETLINK_T 18
#define RTM_NEWADDR_T 20
#define RTM_DELADDR_T 21
#define GRPMASK_IPV4_IFADDR 0x10
#define GRP_IPV4_IFADDR 5
#define GRP_IPV6_PREFIX 18
#define GRP_BRVLAN 33
#define IFA_LOCAL_T 2
#define IFA_ADDRESS_T 1

struct nl_addr {
    uint16_t family, pad;
    uint32_t pid, groups;
};
struct nl_header {
    uint32_t len;
    uint16_t type, flags;
    uint32_t seq, pid;
};
struct ifaddr_msg {
    uint8_t family, prefixlen, flags, scope;
    uint32_t index;
};
struct rt_attr {
    uint16_t len, type;
};

#define NFD 4
static const int fds[NFD] = { 10, 11, 12, 13 };
static const int opts[] = { NL_PKTINFO, NL_BROADCAST_ERROR, NL_NO_ENOBUFS, NL_LISTEN_ALL_NSID,
                            NL_CAP_ACK, NL_EXT_ACK, NL_GET_STRICT_CHK };
#define NOPTS ((int)(sizeof opts / sizeof opts[0]))
#define WORDS 8

struct seen {
    int type, protocol, flags, rcvbuf, priority;
    uint32_t port, dst_pid, dst_groups;
    uint32_t groups[WORDS];
    int opt[NOPTS];
};
static struct seen at_ready[NFD];
static uint32_t addr_be;

static void nl_bind(int fd, uint32_t port, uint32_t groups)
{
    struct nl_addr a = { AF_NETLINK, 0, port, groups };
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0)
        setup_failed("bind");
}

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

static void read_state(int fd, struct seen *s)
{
    memset(s, 0, sizeof *s);
    s->type = get_opt(fd, SOL_SOCKET, SO_TYPE);
    s->protocol = get_opt(fd, SOL_SOCKET, SO_PROTOCOL);
    s->rcvbuf = get_opt(fd, SOL_SOCKET, SO_RCVBUF);
    s->priority = get_opt(fd, SOL_SOCKET, SO_PRIORITY);
    s->flags = fcntl(fd, F_GETFL);
    struct nl_addr a;
    socklen_t l = sizeof a;
    memset(&a, 0, sizeof a);
    if (getsockname(fd, (struct sockaddr *)&a, &l) == 0)
        s->port = a.pid;
    l = sizeof a;
    memset(&a, 0, sizeof a);
    if (getpeername(fd, (struct sockaddr *)&a, &l) == 0) {
        s->dst_pid = a.pid;
        s->dst_groups = a.groups;
    }
    l = sizeof s->groups;
    if (getsockopt(fd, SOL_NL, NL_LIST_MEMBERSHIPS, s->groups, &l) != 0)
        s->groups[0] = 0xdeadbeef;
    for (int i = 0; i < NOPTS; i++)
        s->opt[i] = get_opt(fd, SOL_NL, opts[i]);
}

static void setup(void)
{
    pid_t pid = getpid();
    fd_at(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NL_ROUTE), 10, "route socket");
    nl_bind(10, 0, GRPMASK_IPV4_IFADDR);
    set_opt(10, SOL_NL, NL_ADD_MEMBERSHIP, GRP_IPV6_PREFIX);
    set_opt(10, SOL_NL, NL_ADD_MEMBERSHIP, GRP_BRVLAN);
    set_opt(10, SOL_NL, NL_PKTINFO, 1);
    set_opt(10, SOL_NL, NL_NO_ENOBUFS, 1);
    set_opt(10, SOL_SOCKET, SO_RCVBUF, 98304);
    if (fcntl(10, F_SETFL, O_NONBLOCK) != 0)
        setup_failed("O_NONBLOCK");

    fd_at(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NL_ROUTE), 11, "request socket");
    nl_bind(11, 0x5e000000u + (uint32_t)pid, 0);
    set_opt(11, SOL_NL, NL_EXT_ACK, 1);
    set_opt(11, SOL_NL, NL_CAP_ACK, 1);
    set_opt(11, SOL_NL, NL_GET_STRICT_CHK, 1);
    set_opt(11, SOL_NL, NL_BROADCAST_ERROR, 1);

    fd_at(socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NL_UEVENT), 12, "uevent socket");
    nl_bind(12, 0x5f000000u + (uint32_t)pid, 0);
    struct nl_addr dst = { AF_NETLINK, 0, 0, 1 };
    if (connect(12, (struct sockaddr *)&dst, sizeof dst) != 0)
        setup_failed("connect");

    fd_at(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NL_GENERIC), 13, "generic socket");
    set_opt(13, SOL_SOCKET, SO_PRIORITY, 3);

    for (int i = 0; i < NFD; i++)
        read_state(fds[i], &at_ready[i]);
    if (at_ready[0].port == 0 || !(at_ready[0].groups[0] & (1u << (GRP_IPV4_IFADDR - 1))) ||
        !(at_ready[0].groups[1] & 1u))
        setup_failed("route socket groups");
    addr_be = htonl(0xc6120000u | (((uint32_t)pid % 254 + 1) << 8) | ((uint32_t)pid / 254 % 254 + 1));
}

/* One request on fd 11 and its acknowledgement (error 0). */
static void addr_request(int type, int flags, uint32_t seq)
{
    struct {
        struct nl_header nh;
        struct ifaddr_msg ifa;
        struct rt_attr a1;
        uint32_t v1;
        struct rt_attr a2;
        uint32_t v2;
    } req;
    memset(&req, 0, sizeof req);
    req.nh.len = sizeof req;
    req.nh.type = (uint16_t)type;
    req.nh.flags = (uint16_t)(NLM_REQUEST | NLM_ACK | flags);
    req.nh.seq = seq;
    req.ifa.family = AF_INET;
    req.ifa.prefixlen = 32;
    req.ifa.index = if_nametoindex("lo");
    req.a1.len = 8;
    req.a1.type = IFA_LOCAL_T;
    req.v1 = addr_be;
    req.a2.len = 8;
    req.a2.type = IFA_ADDRESS_T;
    req.v2 = addr_be;
    if (send(11, &req, sizeof req, 0) != (ssize_t)sizeof req) {
        fail("address request %d: send: %s", type, strerror(errno));
        return;
    }
    static char buf[8192] __attribute__((aligned(8)));
    ssize_t n = recv(11, buf, sizeof buf, 0);
    struct nl_header *h = (struct nl_header *)buf;
    if (n < (ssize_t)(sizeof *h + 4) || h->type != NLMSG_ERR || h->seq != seq)
        fail("address request %d: expected an acknowledgement, got %zd bytes type %d", type, n,
             n >= (ssize_t)sizeof *h ? h->type : -1);
    else if (*(int32_t *)(buf + sizeof *h) != 0)
        fail("address request %d: error %d", type, *(int32_t *)(buf + sizeof *h));
}

/* Waits up to 3 s on fd 10 for a message of `type` about our address. */
static void expect_event(int type)
{
    static char buf[65536] __attribute__((aligned(8)));
    for (int tries = 0; tries < 30; tries++) {
        struct pollfd p = { 10, POLLIN, 0 };
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t n;
        while ((n = recv(10, buf, sizeof buf, 0)) > 0) {
            for (char *m = buf; m + sizeof(struct nl_header) <= buf + n;) {
                struct nl_header *h = (struct nl_header *)m;
                if (h->len < sizeof *h || m + h->len > buf + n)
                    break;
                if (h->type == type) {
                    char *a = m + sizeof *h + sizeof(struct ifaddr_msg);
                    while (a + sizeof(struct rt_attr) <= m + h->len) {
                        struct rt_attr *ra = (struct rt_attr *)a;
                        if (ra->len < sizeof *ra)
                            break;
                        if (ra->type == IFA_LOCAL_T && ra->len == 8 && *(uint32_t *)(a + 4) == addr_be)
                            return;
                        a += (ra->len + 3u) & ~3u;
                    }
                }
                m += (h->len + 3u) & ~3u;
            }
        }
    }
    fail("route socket: expected the %s of our address within 3 s, got none",
         type == RTM_NEWADDR_T ? "RTM_NEWADDR" : "RTM_DELADDR");
}

static void getlink(void)
{
    struct {
        struct nl_header nh;
        uint8_t family, pad;
        uint16_t type;
        int32_t index;
        uint32_t flags, change;
    } req;
    memset(&req, 0, sizeof req);
    req.nh.len = sizeof req;
    req.nh.type = RTM_GETLINK_T;
    req.nh.flags = NLM_REQUEST | NLM_DUMP;
    req.nh.seq = 4242;
    req.family = AF_UNSPEC;
    if (send(11, &req, sizeof req, 0) != (ssize_t)sizeof req) {
        fail("RTM_GETLINK: send: %s", strerror(errno));
        return;
    }
    static char buf[32768] __attribute__((aligned(8)));
    int links = 0, done = 0;
    while (!done) {
        ssize_t n = recv(11, buf, sizeof buf, 0);
        if (n <= 0) {
            fail("RTM_GETLINK: recv: %s", n < 0 ? strerror(errno) : "EOF");
            return;
        }
        for (char *m = buf; m + sizeof(struct nl_header) <= buf + n;) {
            struct nl_header *h = (struct nl_header *)m;
            if (h->len < sizeof *h || m + h->len > buf + n)
                break;
            if (h->seq != 4242) {
                fail("RTM_GETLINK: a reply of seq %u", h->seq);
                return;
            }
            if (h->type == RTM_NEWLINK_T)
                links++;
            else if (h->type == NLMSG_END)
                done = 1;
            else {
                fail("RTM_GETLINK: message type %u", h->type);
                return;
            }
            m += (h->len + 3u) & ~3u;
        }
    }
    if (links < 1)
        fail("RTM_GETLINK: expected at least lo, got %d links", links);
}

static void compare(int i)
{
    struct seen now;
    read_state(fds[i], &now);
    const struct seen *w = &at_ready[i];
    int fd = fds[i];
    if (now.type != w->type || now.protocol != w->protocol)
        fail("fd %d: expected type %d protocol %d, got %d %d", fd, w->type, w->protocol, now.type, now.protocol);
    if (now.port != w->port)
        fail("fd %d: expected port id %#x, got %#x", fd, w->port, now.port);
    if (now.dst_pid != w->dst_pid || now.dst_groups != w->dst_groups)
        fail("fd %d: expected destination %u/%#x, got %u/%#x", fd, w->dst_pid, w->dst_groups, now.dst_pid,
             now.dst_groups);
    for (int g = 0; g < WORDS; g++)
        if (now.groups[g] != w->groups[g])
            fail("fd %d: expected group word %d %#x, got %#x", fd, g, w->groups[g], now.groups[g]);
    for (int o = 0; o < NOPTS; o++)
        if (now.opt[o] != w->opt[o])
            fail("fd %d: expected option %d = %d, got %d", fd, opts[o], w->opt[o], now.opt[o]);
    if (now.rcvbuf != w->rcvbuf)
        fail("fd %d: expected SO_RCVBUF %d, got %d", fd, w->rcvbuf, now.rcvbuf);
    if (now.priority != w->priority)
        fail("fd %d: expected SO_PRIORITY %d, got %d", fd, w->priority, now.priority);
    if (now.flags != w->flags)
        fail("fd %d: expected status flags %#x, got %#x", fd, w->flags, now.flags);
}

int main(int argc, char **argv)
{
    app_init("breadth_netlink", argc, argv);
    setup();
    ready();
    wait_go();
    if (perturb("port")) {
        fd_at(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NL_ROUTE), 11, "replacement");
        set_opt(11, SOL_NL, NL_EXT_ACK, 1);
        set_opt(11, SOL_NL, NL_CAP_ACK, 1);
        set_opt(11, SOL_NL, NL_GET_STRICT_CHK, 1);
        set_opt(11, SOL_NL, NL_BROADCAST_ERROR, 1);
        nl_bind(11, 0, 0);
    }
    if (perturb("groups"))
        set_opt(10, SOL_NL, NL_DROP_MEMBERSHIP, GRP_BRVLAN);
    if (perturb("option"))
        set_opt(10, SOL_NL, NL_PKTINFO, 0);
    for (int i = 0; i < NFD; i++)
        compare(i);
    /* After the comparison, which would see the group gone. */
    if (perturb("event"))
        set_opt(10, SOL_NL, NL_DROP_MEMBERSHIP, GRP_IPV4_IFADDR);
    addr_request(RTM_NEWADDR_T, NLM_CREATE | NLM_EXCL, 1);
    expect_event(RTM_NEWADDR_T);
    addr_request(RTM_DELADDR_T, 0, 2);
    expect_event(RTM_DELADDR_T);
    getlink();
    return finish();
}
