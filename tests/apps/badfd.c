/*
 * badfd: holds a file descriptor of a kind a checkpoint must refuse, so a
 * dump has to fail cleanly and leave the app running untouched.
 *
 *   netlink  (default) a NETLINK_ROUTE socket at fd 7 with the reply to an
 *            RTM_GETLINK dump waiting unread
 *   uring    an io_uring instance at fd 7
 *
 * After go: fd 7 is still the very same object (/proc/self/fd/7 names the
 * same inode), it still works (the netlink socket answers an RTM_GETLINK
 * dump waiting since READY; the io_uring fd still maps its rings), a
 * memory pattern is intact, and the process is not left traced (checked
 * for every app by finish()).
 *
 * Usage: badfd [--kind=netlink|uring] [--selftest-fail=fd|memory]
 */
#include "common.h"

#include <sys/mman.h>
#include <sys/socket.h>

/* From linux/netlink.h and linux/rtnetlink.h (absent from some cross toolchains); a stable ABI. */
#define NL_ROUTE 0
#define NL_DONE 3
#define NL_F_REQUEST 0x1
#define NL_F_DUMP 0x300
#define RTM_NEWLINK_TYPE 16
#define RTM_GETLINK_TYPE 18
struct nl_header {
    uint32_t len;
    uint16_t type, flags;
    uint32_t seq, pid;
};

#define BAD_FD 7
#define MEM_LEN (256 * 1024)

#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425
#endif

/* The parameter block of io_uring_setup, from linux/io_uring.h (absent from some toolchains). */
struct uring_params {
    uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd, resv[3];
    uint32_t sq_off[10];
    uint32_t cq_off[10];
};

static int open_kind(const char *kind)
{
    if (strcmp(kind, "netlink") == 0)
        return socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NL_ROUTE);
    if (strcmp(kind, "uring") == 0) {
        struct uring_params p;
        memset(&p, 0, sizeof p);
        return (int)syscall(SYS_io_uring_setup, 4, &p);
    }
    errno = EINVAL;
    return -1;
}

static int place(int fd)
{
    if (fd < 0)
        return -1;
    if (fd != BAD_FD) {
        if (dup2(fd, BAD_FD) != BAD_FD)
            return -1;
        close(fd);
    }
    return BAD_FD;
}

/* An RTM_GETLINK dump request whose reply the app leaves unread until go:
 * a netlink socket with messages waiting is what a dump refuses. */
static void request_links(void)
{
    struct {
        struct nl_header nh;
        unsigned char family;
        unsigned char pad[3];
    } req;
    memset(&req, 0, sizeof req);
    req.nh.len = sizeof req;
    req.nh.type = RTM_GETLINK_TYPE;
    req.nh.flags = NL_F_REQUEST | NL_F_DUMP;
    req.nh.seq = 77;
    req.family = AF_UNSPEC;
    if (send(BAD_FD, &req, sizeof req, 0) != (ssize_t)sizeof req) {
        say("FAIL badfd: netlink send: %s\n", strerror(errno));
        exit(1);
    }
}

static void check_netlink(void)
{
    static char buf[32768] __attribute__((aligned(8)));
    ssize_t n = recv(BAD_FD, buf, sizeof buf, MSG_DONTWAIT);
    if (n < (ssize_t)sizeof(struct nl_header)) {
        fail("netlink reply: expected the reply waiting since READY, got %zd (%s)", n,
             n < 0 ? strerror(errno) : "");
        return;
    }
    struct nl_header *nh = (struct nl_header *)buf;
    if (nh->seq != 77 || (nh->type != RTM_NEWLINK_TYPE && nh->type != NL_DONE))
        fail("netlink reply: expected RTM_NEWLINK or NLMSG_DONE for seq 77, got type %u seq %u", nh->type,
             nh->seq);
    /* Drain the rest of the dump so the socket is left as found. */
    while (recv(BAD_FD, buf, sizeof buf, MSG_DONTWAIT) > 0)
        ;
}

static void check_uring(void)
{
    void *ring = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, BAD_FD, 0);
    if (ring == MAP_FAILED)
        fail("mapping the io_uring submission ring: %s", strerror(errno));
    else
        munmap(ring, 4096);
}

int main(int argc, char **argv)
{
    const char *kind = "netlink";
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], "--kind=", 7) == 0)
            kind = argv[i] + 7;
    app_init("badfd", argc, argv);
    for (int i = 0; i < app_nargs; i++)
        if (strncmp(app_args[i], "--kind=", 7) != 0) {
            say("FAIL badfd: unknown argument '%s'\n", app_args[i]);
            return 2;
        }

    if (place(open_kind(kind)) != BAD_FD) {
        say("FAIL badfd: opening a %s fd at %d: %s\n", kind, BAD_FD, strerror(errno));
        return 1;
    }
    char link_before[128] = "", link_after[128] = "";
    if (readlink("/proc/self/fd/7", link_before, sizeof link_before - 1) < 0) {
        say("FAIL badfd: readlink /proc/self/fd/7: %s\n", strerror(errno));
        return 1;
    }
    uint8_t *mem = malloc(MEM_LEN);
    fill_pattern(mem, MEM_LEN, 60);
    if (strcmp(kind, "netlink") == 0)
        request_links();

    ready();
    wait_go();

    if (perturb("fd"))
        place(open_kind(kind));
    if (perturb("memory"))
        mem[12345] ^= 1;

    if (readlink("/proc/self/fd/7", link_after, sizeof link_after - 1) < 0)
        fail("fd 7: expected the %s fd, got %s", kind, strerror(errno));
    else if (strcmp(link_before, link_after) != 0)
        fail("fd 7: expected '%s', got '%s'", link_before, link_after);
    else if (strcmp(kind, "netlink") == 0)
        check_netlink();
    else
        check_uring();
    check_pattern("memory", mem, MEM_LEN, 60);
    return finish();
}
