/*
 * breadth_flight: file descriptors in flight in a UNIX socket (SCM_RIGHTS)
 * that no process holds any more: the sender closed its copies after
 * sending them.
 *
 * Before READY, fds 10/11 are a stream socketpair; 11 has sent 10:
 *   "a"  passing the regular file "flight" (O_RDWR|O_APPEND, holding
 *        "flight-file-data", offset 7), the read end of a pipe holding
 *        "piped" whose write end is closed, and a memfd "flight" holding
 *        "memfd-data" (offset 2)
 *   "b"  passing an eventfd (count 42, EFD_NONBLOCK), a UNIX stream
 *        socket whose own queue holds "inner" passing the regular file
 *        "inner" ("inner-file", offset 3), its peer closed, a monotonic
 *        timerfd (every 100 s, first in 100 s) and a signalfd (SIGUSR2,
 *        SFD_NONBLOCK)
 *   "c"  passing a UDP socket bound to 127.0.0.1 (a port the kernel
 *        chose, SO_RCVBUF 65536) and an inotify instance watching the
 *        directory "watched" for IN_CREATE (IN_NONBLOCK)
 * and every one of those descriptors is closed in the app.
 *
 * After go: both messages come back in order with their bytes and
 * descriptors; each descriptor reads as sent: the file's flags, offset and
 * contents, the pipe's bytes then end of file, the memfd's offset and
 * contents, the eventfd's count and flags, the socket's message with its
 * file (offset, contents) then end of file, the timerfd's interval and
 * time left, the signalfd's mask and flags; the UDP socket's address and
 * receive buffer, and a datagram sent to it then arrives; the inotify
 * instance's flags, and creating "notified" in "watched" gives one
 * IN_CREATE event with that name and the watch's number; the fds of the
 * app are exactly those above.
 *
 * Usage: breadth_flight [--selftest-fail=queue|nested|data|inet|notify]
 */
#include "common.h"

#include <signal.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/uio.h>

static void send_with(int sock, const char *bytes, const int *fds, int n)
{
    struct iovec iov = { (void *)bytes, strlen(bytes) };
    union { struct cmsghdr h; char b[CMSG_SPACE(4 * sizeof(int))]; } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
    m.msg_control = u.b;
    m.msg_controllen = CMSG_SPACE(n * sizeof(int));
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(n * sizeof(int));
    memcpy(CMSG_DATA(h), fds, n * sizeof(int));
    if (sendmsg(sock, &m, 0) != (ssize_t)iov.iov_len)
        setup_failed("sendmsg");
}

/* Receives one message: its bytes (NUL-ended) and up to 4 fds; returns the
 * number of fds, or -1 when nothing was there (0 bytes: end of file). */
static int recv_with(int sock, char *bytes, size_t cap, int *fds, ssize_t *len)
{
    struct iovec iov = { bytes, cap - 1 };
    union { struct cmsghdr h; char b[CMSG_SPACE(4 * sizeof(int))]; } u;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b };
    ssize_t n = recvmsg(sock, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    *len = n;
    if (n < 0)
        return -1;
    bytes[n] = '\0';
    int count = 0;
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h)) {
        if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
            int k = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < k && count < 4; i++)
                memcpy(&fds[count++], CMSG_DATA(h) + i * sizeof(int), sizeof(int));
        }
    }
    return count;
}

/* One message: its bytes and as many fds as `n`, else a failure (0). */
static int expect_msg(int sock, const char *what, const char *bytes, int *fds, int n)
{
    char got[64];
    ssize_t len;
    int k = recv_with(sock, got, sizeof got, fds, &len);
    if (k < 0) {
        fail("%s: expected \"%s\", got nothing (%s)", what, bytes, strerror(errno));
        return 0;
    }
    if (strcmp(got, bytes) != 0)
        fail("%s: expected \"%s\", got \"%s\"", what, bytes, got);
    if (k != n) {
        fail("%s: expected %d descriptors, got %d", what, n, k);
        for (int i = 0; i < k; i++)
            close(fds[i]);
        return 0;
    }
    return 1;
}

static int make_file(const char *name, const char *text, off_t at, int flags)
{
    int f = open(name, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (f < 0)
        setup_failed(name);
    write_all(f, text, strlen(text));
    close(f);
    f = open(name, flags);
    if (f < 0 || lseek(f, at, SEEK_SET) != at)
        setup_failed(name);
    return f;
}

/* The link of fd `fd` ends with `tail`. */
static void link_ends(int fd, const char *what, const char *tail)
{
    char path[32], got[256] = "";
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, got, sizeof got - 1);
    got[n > 0 ? n : 0] = '\0';
    size_t g = strlen(got), t = strlen(tail);
    if (g < t || strcmp(got + g - t, tail) != 0)
        fail("%s: expected a link ending in %s, got %s", what, tail, got);
}

/* Reads `len` bytes at the offset of `fd` and compares them. */
static void expect_read(int fd, const char *what, const char *want)
{
    char got[64] = "";
    size_t len = strlen(want);
    ssize_t n = read(fd, got, len);
    if (n != (ssize_t)len || memcmp(got, want, len) != 0)
        fail("%s: expected \"%s\", got %zd bytes \"%.*s\"", what, want, n, n > 0 ? (int)n : 0, got);
}

static void expect_offset(int fd, const char *what, off_t want)
{
    off_t at = lseek(fd, 0, SEEK_CUR);
    if (at != want)
        fail("%s offset: expected %lld, got %lld", what, (long long)want, (long long)at);
}

static void expect_flags(int fd, const char *what, int mask, int want)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || (fl & mask) != want)
        fail("%s flags: expected %#o, got %#o", what, want, fl < 0 ? -1 : fl & mask);
}

int main(int argc, char **argv)
{
    app_init("breadth_flight", argc, argv);
    int sv[2], p[2], inner[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        setup_failed("socketpair");
    fd_at(sv[0], 10, "stream end");
    fd_at(sv[1], 11, "stream end");

    int file = make_file("flight", "flight-file-data", 7, O_RDWR | O_APPEND);
    if (pipe(p) != 0)
        setup_failed("pipe");
    write_all(p[1], "piped", 5);
    close(p[1]);
    int mfd = (int)syscall(SYS_memfd_create, "flight", 0);
    if (mfd < 0)
        setup_failed("memfd");
    write_all(mfd, "memfd-data", 10);
    if (lseek(mfd, 2, SEEK_SET) != 2)
        setup_failed("lseek");
    int efd = eventfd(42, EFD_NONBLOCK);
    if (efd < 0)
        setup_failed("eventfd");
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, inner) != 0)
        setup_failed("inner socketpair");
    int ifile = make_file("inner", "inner-file", 3, O_RDONLY);
    send_with(inner[1], "inner", &ifile, 1);
    close(ifile);
    close(inner[1]);

    int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec every = { { 100, 0 }, { 100, 0 } };
    if (tfd < 0 || timerfd_settime(tfd, 0, &every, NULL) != 0)
        setup_failed("timerfd");
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    int sfd = signalfd(-1, &usr2, SFD_NONBLOCK);
    if (sfd < 0)
        setup_failed("signalfd");

    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in at = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof at;
    int rcvbuf = 65536;
    if (udp < 0 || setsockopt(udp, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) != 0 ||
        bind(udp, (struct sockaddr *)&at, sizeof at) != 0 ||
        getsockname(udp, (struct sockaddr *)&at, &alen) != 0)
        setup_failed("udp socket");
    socklen_t olen = sizeof rcvbuf;
    int rcvbuf_set = 0;
    if (getsockopt(udp, SOL_SOCKET, SO_RCVBUF, &rcvbuf_set, &olen) != 0)
        setup_failed("SO_RCVBUF");
    int ino = inotify_init1(IN_NONBLOCK);
    unlink("watched/notified");
    unlink("watched/elsewhere");
    rmdir("watched");
    if (mkdir("watched", 0700) != 0)
        setup_failed("mkdir watched");
    int wd = ino < 0 ? -1 : inotify_add_watch(ino, "watched", IN_CREATE);
    if (wd < 0)
        setup_failed("inotify");

    int a[3] = { file, p[0], mfd }, b[4] = { efd, inner[0], tfd, sfd }, c3[2] = { udp, ino };
    send_with(11, "a", a, 3);
    send_with(11, "b", b, 4);
    send_with(11, "c", c3, 2);
    for (int i = 0; i < 3; i++)
        close(a[i]);
    for (int i = 0; i < 4; i++)
        close(b[i]);
    for (int i = 0; i < 2; i++)
        close(c3[i]);

    ready();
    wait_go();
    if (perturb("queue")) {
        int fds[4];
        ssize_t len;
        char got[64];
        int k = recv_with(10, got, sizeof got, fds, &len);
        for (int i = 0; i < k; i++)
            close(fds[i]);
    }
    int nested = perturb("nested");
    int to_udp = socket(AF_INET, SOCK_DGRAM, 0);
    if (perturb("inet"))
        sendto(to_udp, "early", 5, 0, (struct sockaddr *)&at, sizeof at);
    if (perturb("notify"))
        close(open("watched/elsewhere", O_WRONLY | O_CREAT, 0600));
    if (perturb("data")) {
        int f = open("flight", O_WRONLY);
        if (f >= 0) {
            write_all(f, "FLIGHT", 6);
            close(f);
        }
    }

    int fds[4];
    if (expect_msg(10, "message a", "a", fds, 3)) {
        link_ends(fds[0], "the file", "/flight");
        expect_flags(fds[0], "the file", O_ACCMODE | O_APPEND, O_RDWR | O_APPEND);
        expect_offset(fds[0], "the file", 7);
        char got[32] = "";
        if (pread(fds[0], got, 16, 0) != 16 || memcmp(got, "flight-file-data", 16) != 0)
            fail("the file: expected \"flight-file-data\", got \"%s\"", got);

        expect_flags(fds[1], "the pipe", O_ACCMODE, O_RDONLY);
        expect_flags(fds[1], "the pipe", O_NONBLOCK, 0);
        expect_read(fds[1], "the pipe", "piped");
        char c;
        ssize_t n = read(fds[1], &c, 1);
        if (n != 0)
            fail("the pipe: expected end of file after its bytes, got %zd", n);

        link_ends(fds[2], "the memfd", "/memfd:flight (deleted)");
        expect_offset(fds[2], "the memfd", 2);
        expect_read(fds[2], "the memfd", "mfd-");
        for (int i = 0; i < 3; i++)
            close(fds[i]);
    }
    if (expect_msg(10, "message b", "b", fds, 4)) {
        link_ends(fds[0], "the eventfd", "anon_inode:[eventfd]");
        expect_flags(fds[0], "the eventfd", O_NONBLOCK, O_NONBLOCK);
        uint64_t count = 0;
        if (read(fds[0], &count, 8) != 8 || count != 42)
            fail("the eventfd: expected count 42, got %llu", (unsigned long long)count);

        int in = fds[1];
        if (nested) {
            int f[4];
            ssize_t len;
            char got[64];
            int k = recv_with(in, got, sizeof got, f, &len);
            for (int i = 0; i < k; i++)
                close(f[i]);
        }
        int g[4];
        if (expect_msg(in, "the socket in flight", "inner", g, 1)) {
            link_ends(g[0], "the socket's file", "/inner");
            expect_flags(g[0], "the socket's file", O_ACCMODE, O_RDONLY);
            expect_offset(g[0], "the socket's file", 3);
            expect_read(g[0], "the socket's file", "er-f");
            close(g[0]);
        }
        char got[8];
        ssize_t len;
        int k = recv_with(in, got, sizeof got, g, &len);
        if (k != 0 || len != 0)
            fail("the socket in flight: expected end of file, got %zd bytes and %d descriptors", len, k);

        link_ends(fds[2], "the timerfd", "anon_inode:[timerfd]");
        struct itimerspec t;
        if (timerfd_gettime(fds[2], &t) != 0)
            fail("the timerfd: timerfd_gettime: %s", strerror(errno));
        else if (t.it_interval.tv_sec != 100 || t.it_interval.tv_nsec != 0 || ts_ns(t.it_value) <= 0 ||
                 ts_ns(t.it_value) > MS(100000))
            fail("the timerfd: expected every 100 s with up to 100 s left, got every %lld ns with %lld ns left",
                 (long long)ts_ns(t.it_interval), (long long)ts_ns(t.it_value));

        link_ends(fds[3], "the signalfd", "anon_inode:[signalfd]");
        expect_flags(fds[3], "the signalfd", O_NONBLOCK, O_NONBLOCK);
        char path[40], info[512] = "";
        snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fds[3]);
        if (read_text(path, info, sizeof info) <= 0 || !strstr(info, "sigmask:\t0000000000000800"))
            fail("the signalfd: expected the mask of SIGUSR2 alone, got %s", info);
        for (int i = 0; i < 4; i++)
            close(fds[i]);
    }
    if (expect_msg(10, "message c", "c", fds, 2)) {
        struct sockaddr_in got_at;
        socklen_t glen = sizeof got_at;
        int type = 0, got_buf = 0;
        socklen_t tl = sizeof type, bl = sizeof got_buf;
        if (getsockname(fds[0], (struct sockaddr *)&got_at, &glen) != 0 || got_at.sin_family != AF_INET ||
            got_at.sin_addr.s_addr != at.sin_addr.s_addr || got_at.sin_port != at.sin_port)
            fail("the UDP socket: expected 127.0.0.1:%d, got port %d", ntohs(at.sin_port), ntohs(got_at.sin_port));
        if (getsockopt(fds[0], SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_DGRAM)
            fail("the UDP socket: expected SOCK_DGRAM, got %d", type);
        if (getsockopt(fds[0], SOL_SOCKET, SO_RCVBUF, &got_buf, &bl) != 0 || got_buf != rcvbuf_set)
            fail("the UDP socket: expected SO_RCVBUF %d, got %d", rcvbuf_set, got_buf);
        if (sendto(to_udp, "ping", 4, 0, (struct sockaddr *)&at, sizeof at) != 4)
            fail("sending to the UDP socket: %s", strerror(errno));
        char dg[16] = "";
        ssize_t n = -1;
        for (int tries = 0; tries < 200 && n < 0; tries++) {
            n = recv(fds[0], dg, sizeof dg - 1, MSG_DONTWAIT);
            if (n < 0)
                sleep_ns(10 * 1000 * 1000L);
        }
        if (n != 4 || memcmp(dg, "ping", 4) != 0)
            fail("the UDP socket: expected the datagram \"ping\", got %zd bytes \"%.*s\"", n, n > 0 ? (int)n : 0, dg);

        link_ends(fds[1], "the inotify instance", "anon_inode:inotify");
        expect_flags(fds[1], "the inotify instance", O_NONBLOCK, O_NONBLOCK);
        close(open("watched/notified", O_WRONLY | O_CREAT, 0600));
        union { struct inotify_event e; char b[sizeof(struct inotify_event) + 64]; } ev;
        n = read(fds[1], &ev, sizeof ev);
        if (n < (ssize_t)sizeof ev.e || ev.e.wd != wd || ev.e.mask != IN_CREATE || strcmp(ev.e.name, "notified") != 0)
            fail("the inotify instance: expected IN_CREATE of \"notified\" on watch %d, got %zd bytes (watch %d, mask %#x, \"%s\")",
                 wd, n, n > 0 ? ev.e.wd : -1, n > 0 ? ev.e.mask : 0, n > (ssize_t)sizeof ev.e ? ev.e.name : "");
        n = read(fds[1], &ev, sizeof ev);
        if (n >= 0)
            fail("the inotify instance: expected one event, got another of %zd bytes", n);
        unlink("watched/notified");
        unlink("watched/elsewhere");
        rmdir("watched");
        for (int i = 0; i < 2; i++)
            close(fds[i]);
    }
    close(to_udp);
    return finish();
}
