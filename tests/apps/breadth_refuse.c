/*
 * breadth_refuse: holds at fd 7 an object torpor refuses, so a dump must
 * fail with a reason naming fd 7 and its kind, and leave the app running
 * untouched.
 *
 *   netlink  (default) a NETLINK_ROUTE socket with the acknowledgement of a
 *            request waiting unread
 *   perf     a perf_event counter (software task clock) on ourselves
 *   ring     a packet socket with a receive ring (PACKET_RX_RING)
 *   fanout   a packet socket bound to lo, in a fanout group (filter: none
 *            passes)
 *   mclist   a packet socket with a promiscuous membership on lo
 *   packetq  a packet socket bound to lo with a UDP datagram to port P
 *            (from the pid) queued, its filter passing only those
 *   scm      a UNIX socketpair end (fd 7, peer fd 8) with a pidfd of the
 *            app in flight (SCM_RIGHTS), which the app no longer holds
 *   backlog  a UNIX listener with a connection not yet accepted whose client
 *            (fd 8) has sent a byte on it
 *
 * After go: fd 7 is the same object (same inode) and still works: the netlink
 * socket holds the acknowledgement, the counter counts, the packet sockets
 * keep their ring, group and membership and the queued datagram reads back,
 * the descriptor in flight arrives and names the app, the waiting connection
 * is accepted and carries the byte sent before and one more; a memory
 * pattern is intact.
 *
 * Usage: breadth_refuse [--kind=netlink|perf|ring|fanout|mclist|packetq|scm|backlog] [--selftest-fail=fd|memory]
 */
#include "common.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

/* From linux/netlink.h (a stable ABI; the ARM toolchains carry no kernel
 * headers). */
#ifndef AF_NETLINK
#define AF_NETLINK 16
#endif
#define NL_ROUTE 0
#define NL_NOOP 1
#define NL_ERROR 2
#define NL_F_REQUEST 0x1
#define NL_F_ACK 0x4
struct nl_header {
    uint32_t len;
    uint16_t type, flags;
    uint32_t seq, pid;
};

/* From linux/if_packet.h, linux/if_ether.h and linux/filter.h. */
#ifndef AF_PACKET
#define AF_PACKET 17
#endif
#define SOL_PKT 263
#define PKT_ADD_MEMBERSHIP 1
#define PKT_DROP_MEMBERSHIP 2
#define PKT_RX_RING 5
#define PKT_FANOUT 18
#define PKT_MR_PROMISC 1
#define ETHP_ALL 0x0003
#define ETHP_IP 0x0800
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
struct pkt_mreq {
    int ifindex;
    unsigned short type, alen;
    unsigned char address[8];
};
struct pkt_ring {
    unsigned int block_size, block_nr, frame_size, frame_nr;
};

#define BAD_FD 7
#define MEM_LEN (64 * 1024)

#ifndef SYS_perf_event_open
#error "no perf_event_open"
#endif

/* From linux/perf_event.h (a stable ABI), absent from some toolchains. */
struct perf_attr {
    uint32_t type, size;
    uint64_t config, sample_period, sample_type, read_format, flags;
    uint32_t wakeup_events, bp_type;
    uint64_t config1, config2, branch_sample_type, sample_regs_user;
    uint32_t sample_stack_user;
    int32_t clockid;
    uint64_t sample_regs_intr;
    uint32_t aux_watermark;
    uint16_t sample_max_stack, reserved2;
};
#define PERF_TYPE_SOFTWARE 1
#define PERF_COUNT_SW_TASK_CLOCK 1

static const char *kind = "netlink";
static ino_t bad_ino;
static uint8_t *mem;

static socklen_t listen_addr(struct sockaddr_un *a)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "torpor-refuse-%d", (int)getpid());
    return (socklen_t)(sizeof(sa_family_t) + 1 + strlen(a->sun_path + 1));
}

static unsigned short udp_port;
static const char datagram[] = "queued";

/* A packet socket at fd 7 with filter `f` of `n` instructions, bound to
 * `protocol` on lo (nothing reaches it before the filter). */
static void packet_at_7(int type, struct bpf_insn *f, unsigned short n, int protocol)
{
    fd_at(socket(AF_PACKET, type, 0), BAD_FD, "packet socket");
    struct bpf_prog p = { n, f };
    if (n && setsockopt(BAD_FD, SOL_SOCKET, SO_ATTACH_FILTER, &p, sizeof p) != 0)
        setup_failed("filter");
    if (protocol) {
        struct ll_addr a;
        memset(&a, 0, sizeof a);
        a.family = AF_PACKET;
        a.protocol = htons((unsigned short)protocol);
        a.ifindex = (int)if_nametoindex("lo");
        if (bind(BAD_FD, (struct sockaddr *)&a, sizeof a) != 0)
            setup_failed("bind");
    }
}

static void setup_packet(void)
{
    if (strcmp(kind, "ring") == 0) {
        packet_at_7(SOCK_RAW, NULL, 0, 0);
        struct pkt_ring r = { 4096, 1, 2048, 2 };
        if (setsockopt(BAD_FD, SOL_PKT, PKT_RX_RING, &r, sizeof r) != 0)
            setup_failed("PACKET_RX_RING");
    } else if (strcmp(kind, "fanout") == 0) {
        struct bpf_insn none[] = { { 0x06, 0, 0, 0 } };
        packet_at_7(SOCK_RAW, none, 1, ETHP_ALL);
        int v = (getpid() & 0xffff) | (0 << 16); /* PACKET_FANOUT_HASH */
        if (setsockopt(BAD_FD, SOL_PKT, PKT_FANOUT, &v, sizeof v) != 0)
            setup_failed("PACKET_FANOUT");
    } else if (strcmp(kind, "mclist") == 0) {
        packet_at_7(SOCK_RAW, NULL, 0, 0);
        struct pkt_mreq m;
        memset(&m, 0, sizeof m);
        m.ifindex = (int)if_nametoindex("lo");
        m.type = PKT_MR_PROMISC;
        if (setsockopt(BAD_FD, SOL_PKT, PKT_ADD_MEMBERSHIP, &m, sizeof m) != 0)
            setup_failed("PACKET_ADD_MEMBERSHIP");
    } else {
        udp_port = (unsigned short)(20000 + getpid() % 20000);
        /* The IP header first: UDP, not a fragment, to udp_port. */
        struct bpf_insn udp[] = {
            { 0x30, 0, 0, 9 }, { 0x15, 0, 6, 17 }, { 0x28, 0, 0, 6 }, { 0x45, 4, 0, 0x1fff },
            { 0xb1, 0, 0, 0 }, { 0x48, 0, 0, 2 }, { 0x15, 0, 1, udp_port }, { 0x06, 0, 0, 0xffff },
            { 0x06, 0, 0, 0 },
        };
        packet_at_7(SOCK_DGRAM, udp, sizeof udp / sizeof udp[0], ETHP_IP);
        int u = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in to;
        memset(&to, 0, sizeof to);
        to.sin_family = AF_INET;
        to.sin_port = htons(udp_port);
        to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (u < 0 || sendto(u, datagram, sizeof datagram, 0, (struct sockaddr *)&to, sizeof to) < 0)
            setup_failed("sendto");
        close(u);
        struct pollfd p = { BAD_FD, POLLIN, 0 };
        if (poll(&p, 1, 2000) != 1)
            setup_failed("the datagram queued on the packet socket");
    }
}

static void check_packet(void)
{
    if (strcmp(kind, "ring") == 0) {
        void *ring = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, BAD_FD, 0);
        if (ring == MAP_FAILED)
            fail("ring: mapping it: %s", strerror(errno));
        else
            munmap(ring, 4096);
    } else if (strcmp(kind, "fanout") == 0) {
        int v = -1;
        socklen_t l = sizeof v;
        if (getsockopt(BAD_FD, SOL_PKT, PKT_FANOUT, &v, &l) != 0 || v != (getpid() & 0xffff))
            fail("fanout: expected group %d, got %d", getpid() & 0xffff, v);
    } else if (strcmp(kind, "mclist") == 0) {
        struct pkt_mreq m;
        memset(&m, 0, sizeof m);
        m.ifindex = (int)if_nametoindex("lo");
        m.type = PKT_MR_PROMISC;
        if (setsockopt(BAD_FD, SOL_PKT, PKT_DROP_MEMBERSHIP, &m, sizeof m) != 0)
            fail("mclist: dropping the membership: %s", strerror(errno));
    } else {
        char b[256];
        ssize_t n = recv(BAD_FD, b, sizeof b, MSG_DONTWAIT);
        if (n < (ssize_t)(28 + sizeof datagram) || memcmp(b + n - sizeof datagram, datagram, sizeof datagram) != 0)
            fail("packetq: expected the queued datagram, got %zd bytes", n);
    }
}

static int is_packet_kind(void)
{
    return strcmp(kind, "ring") == 0 || strcmp(kind, "fanout") == 0 || strcmp(kind, "mclist") == 0 ||
           strcmp(kind, "packetq") == 0;
}

static void setup(void)
{
    if (strcmp(kind, "netlink") == 0) {
        fd_at(socket(AF_NETLINK, SOCK_RAW, NL_ROUTE), BAD_FD, "netlink socket");
        struct nl_header h = { sizeof h, NL_NOOP, NL_F_REQUEST | NL_F_ACK, 5, 0 };
        if (send(BAD_FD, &h, sizeof h, 0) != (ssize_t)sizeof h)
            setup_failed("netlink request");
    } else if (is_packet_kind()) {
        setup_packet();
    } else if (strcmp(kind, "perf") == 0) {
        struct perf_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.type = PERF_TYPE_SOFTWARE;
        attr.size = sizeof attr;
        attr.config = PERF_COUNT_SW_TASK_CLOCK;
        fd_at((int)syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0), BAD_FD, "perf_event_open");
    } else if (strcmp(kind, "scm") == 0) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
            setup_failed("socketpair");
        fd_at(sv[0], BAD_FD, "pair end");
        fd_at(sv[1], 8, "pair end");
        int f = (int)syscall(SYS_pidfd_open, getpid(), 0);
        if (f < 0)
            setup_failed("pidfd_open");
        char c = 'm';
        struct iovec iov = { &c, 1 };
        union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int))]; } u;
        struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b };
        struct cmsghdr *h = CMSG_FIRSTHDR(&m);
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_RIGHTS;
        h->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(h), &f, sizeof f);
        if (sendmsg(8, &m, 0) != 1)
            setup_failed("sendmsg");
        close(f);
    } else if (strcmp(kind, "backlog") == 0) {
        struct sockaddr_un a;
        socklen_t len = listen_addr(&a);
        int l = socket(AF_UNIX, SOCK_STREAM, 0);
        if (l < 0 || bind(l, (struct sockaddr *)&a, len) != 0 || listen(l, 4) != 0)
            setup_failed("listener");
        fd_at(l, BAD_FD, "listener");
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (struct sockaddr *)&a, len) != 0)
            setup_failed("connect");
        fd_at(c, 8, "client");
        if (write(8, "e", 1) != 1)
            setup_failed("early byte");
    } else {
        say("FAIL breadth_refuse: unknown kind '%s'\n", kind);
        _exit(2);
    }
    struct stat st;
    if (fstat(BAD_FD, &st) != 0)
        setup_failed("fstat");
    bad_ino = st.st_ino;
    mem = mmap(NULL, MEM_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        setup_failed("mmap");
    fill_pattern(mem, MEM_LEN, 0x7e7e);
}

static void check_works(void)
{
    if (strcmp(kind, "netlink") == 0) {
        struct {
            struct nl_header h;
            int32_t error;
            struct nl_header req;
        } ack;
        memset(&ack, 0, sizeof ack);
        ssize_t n = recv(BAD_FD, &ack, sizeof ack, MSG_DONTWAIT);
        if (n != (ssize_t)sizeof ack || ack.h.type != NL_ERROR || ack.h.seq != 5 || ack.error != 0)
            fail("netlink: expected the acknowledgement of request 5, got %zd bytes, type %u, seq %u, error %d",
                 n, ack.h.type, ack.h.seq, ack.error);
    } else if (is_packet_kind()) {
        check_packet();
    } else if (strcmp(kind, "perf") == 0) {
        uint64_t a = 0, b = 0;
        if (read(BAD_FD, &a, 8) != 8)
            fail("perf counter: read: %s", strerror(errno));
        for (volatile int i = 0; i < 2000000; i++)
            ;
        if (read(BAD_FD, &b, 8) != 8 || b <= a)
            fail("perf counter: expected it to count, got %llu then %llu", (unsigned long long)a,
                 (unsigned long long)b);
    } else if (strcmp(kind, "scm") == 0) {
        char c = 0;
        struct iovec iov = { &c, 1 };
        union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int))]; } u;
        struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b };
        struct cmsghdr *h;
        int f = -1;
        if (recvmsg(BAD_FD, &m, MSG_DONTWAIT) != 1 || c != 'm' || !(h = CMSG_FIRSTHDR(&m)) ||
            h->cmsg_type != SCM_RIGHTS) {
            fail("scm: expected the message with its descriptor");
        } else {
            memcpy(&f, CMSG_DATA(h), sizeof f);
            char path[40], info[1024] = "", want[32];
            snprintf(path, sizeof path, "/proc/self/fdinfo/%d", f);
            snprintf(want, sizeof want, "\nPid:\t%d\n", (int)getpid());
            if (read_text(path, info, sizeof info) <= 0 || !strstr(info, want))
                fail("scm: the pidfd in flight names another process: %s", info);
            close(f);
        }
    } else {
        int s = accept(BAD_FD, NULL, NULL);
        char c[2] = "";
        if (s < 0 || write(8, "b", 1) != 1 || recv(s, c, 2, MSG_WAITALL) != 2 || c[0] != 'e' ||
            c[1] != 'b')
            fail("backlog: the waiting connection was not accepted or did not carry \"eb\"");
        if (s >= 0)
            close(s);
    }
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], "--kind=", 7) == 0)
            kind = argv[i] + 7;
    char *args[8];
    int n = 0;
    for (int i = 0; i < argc && n < 8; i++)
        if (strncmp(argv[i], "--kind=", 7) != 0)
            args[n++] = argv[i];
    app_init("breadth_refuse", n, args);
    setup();
    ready();
    wait_go();
    if (perturb("fd"))
        fd_at(socket(AF_UNIX, SOCK_DGRAM, 0), BAD_FD, "replacement");
    if (perturb("memory"))
        mem[MEM_LEN / 2] ^= 1;
    struct stat st;
    if (fstat(BAD_FD, &st) != 0 || st.st_ino != bad_ino)
        fail("fd %d: expected inode %lu, got %lu", BAD_FD, (unsigned long)bad_ino, (unsigned long)st.st_ino);
    else
        check_works();
    check_pattern("memory", mem, MEM_LEN, 0x7e7e);
    return finish();
}
