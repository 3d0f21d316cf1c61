/*
 * breadth_refuse: holds at fd 7 an object torpor refuses, so a dump must
 * fail with a reason naming fd 7 and its kind, and leave the app running
 * untouched.
 *
 *   netlink  (default) a NETLINK_ROUTE socket with the acknowledgement of a
 *            request waiting unread
 *   perf     a perf_event counter (software task clock) on ourselves
 *   scm      a UNIX socketpair end (fd 7, peer fd 8) with a file descriptor
 *            in flight (SCM_RIGHTS)
 *   backlog  a UNIX listener with a connection not yet accepted (client fd 8)
 *
 * After go: fd 7 is the same object (same inode) and still works: the netlink
 * socket holds the acknowledgement, the counter counts, the descriptor in flight
 * arrives and reads back, the waiting connection is accepted and carries a
 * byte; a memory pattern is intact.
 *
 * Usage: breadth_refuse [--kind=netlink|perf|scm|backlog] [--selftest-fail=fd|memory]
 */
#include "common.h"

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

static void setup(void)
{
    if (strcmp(kind, "netlink") == 0) {
        fd_at(socket(AF_NETLINK, SOCK_RAW, NL_ROUTE), BAD_FD, "netlink socket");
        struct nl_header h = { sizeof h, NL_NOOP, NL_F_REQUEST | NL_F_ACK, 5, 0 };
        if (send(BAD_FD, &h, sizeof h, 0) != (ssize_t)sizeof h)
            setup_failed("netlink request");
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
        int f = open("passed", O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (f < 0 || write(f, "inflight", 8) != 8)
            setup_failed("passed file");
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
            char b[9] = "";
            if (pread(f, b, 8, 0) != 8 || memcmp(b, "inflight", 8) != 0)
                fail("scm: the descriptor in flight reads \"%s\"", b);
            close(f);
        }
    } else {
        int s = accept(BAD_FD, NULL, NULL);
        char c = 0;
        if (s < 0 || write(8, "b", 1) != 1 || read(s, &c, 1) != 1 || c != 'b')
            fail("backlog: the waiting connection was not accepted and carried nothing");
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
