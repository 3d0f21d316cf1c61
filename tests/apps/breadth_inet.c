/*
 * breadth_inet: TCP listeners and UDP sockets come back on their loopback
 * addresses and ports; an established TCP connection comes back reset by
 * its peer (ECONNRESET on the next read, then EOF, EPIPE on a write), as
 * after a network drop; socket options keep their values.
 *
 * Before READY, at fixed fd numbers:
 *   10    TCP listener on 127.0.0.1 (kernel-chosen port), SO_REUSEADDR, backlog 7
 *   12/13 a client of 10 and its accepted socket; 12 with TCP_NODELAY,
 *         SO_KEEPALIVE, SO_RCVTIMEO 1.5 s, SO_SNDTIMEO 2.5 s, SO_RCVBUF
 *         32 KiB, SO_SNDBUF 48 KiB; 13 holds unread bytes
 *   14    UDP socket bound on 127.0.0.1 (kernel-chosen port), holding the
 *         datagrams "q1" and "qq2" sent by a socket since closed
 *   15    UDP socket connected to 14
 * After go: the listener has its port, its options and accepts a new
 * connection; 12 and 13 report ECONNRESET, then EOF, then EPIPE, and 12
 * kept its options; 14 and 15 have their addresses and carry a datagram.
 *
 * Without a checkpoint (no argument) the connection must instead still be
 * up: 13 reads "unread" and both ends carry a byte. The checkpoint runs pass
 * 1 ("restored") to expect the reset.
 *
 * Usage: breadth_inet [restored] [--selftest-fail=listener|port|reset|options|udp|peer|queue]
 */
#include "common.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

static struct sockaddr_in listen_addr, udp_addr, udp_client_addr;
static int rcvbuf12, sndbuf12;
static long rcvtimeo12, sndtimeo12;

static void loopback(struct sockaddr_in *a)
{
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

static void local_of(int fd, struct sockaddr_in *a)
{
    socklen_t l = sizeof *a;
    if (getsockname(fd, (struct sockaddr *)a, &l) != 0)
        setup_failed("getsockname");
}

static int getint(int fd, int level, int opt)
{
    int v = -1;
    socklen_t l = sizeof v;
    getsockopt(fd, level, opt, &v, &l);
    return v;
}

static long timeo_us(int fd, int opt)
{
    struct timeval tv = { 0, 0 };
    socklen_t l = sizeof tv;
    getsockopt(fd, SOL_SOCKET, opt, &tv, &l);
    return (long)tv.tv_sec * 1000000 + (long)tv.tv_usec;
}

static void setup(void)
{
    int one = 1;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    loopback(&a);
    if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 7) != 0)
        setup_failed("listener");
    fd_at(l, 10, "10");
    local_of(10, &listen_addr);

    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&listen_addr, sizeof listen_addr) != 0)
        setup_failed("connect");
    fd_at(c, 12, "12");
    fd_at(accept(10, NULL, NULL), 13, "accept");
    setsockopt(12, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(12, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    struct timeval rt = { 1, 500000 }, st = { 2, 500000 };
    setsockopt(12, SOL_SOCKET, SO_RCVTIMEO, &rt, sizeof rt);
    setsockopt(12, SOL_SOCKET, SO_SNDTIMEO, &st, sizeof st);
    int rb = 32 * 1024, sb = 48 * 1024;
    setsockopt(12, SOL_SOCKET, SO_RCVBUF, &rb, sizeof rb);
    setsockopt(12, SOL_SOCKET, SO_SNDBUF, &sb, sizeof sb);
    rcvtimeo12 = timeo_us(12, SO_RCVTIMEO);
    sndtimeo12 = timeo_us(12, SO_SNDTIMEO);
    rcvbuf12 = getint(12, SOL_SOCKET, SO_RCVBUF);
    sndbuf12 = getint(12, SOL_SOCKET, SO_SNDBUF);
    if (send(12, "unread", 6, 0) != 6)
        setup_failed("send");

    int u = socket(AF_INET, SOCK_DGRAM, 0);
    loopback(&a);
    if (u < 0 || bind(u, (struct sockaddr *)&a, sizeof a) != 0)
        setup_failed("udp bind");
    fd_at(u, 14, "14");
    local_of(14, &udp_addr);
    int q = socket(AF_INET, SOCK_DGRAM, 0);
    if (q < 0 || sendto(q, "q1", 2, 0, (struct sockaddr *)&udp_addr, sizeof udp_addr) != 2 ||
        sendto(q, "qq2", 3, 0, (struct sockaddr *)&udp_addr, sizeof udp_addr) != 3)
        setup_failed("udp queue");
    close(q);
    int v = socket(AF_INET, SOCK_DGRAM, 0);
    if (v < 0 || connect(v, (struct sockaddr *)&udp_addr, sizeof udp_addr) != 0)
        setup_failed("udp connect");
    fd_at(v, 15, "15");
    local_of(15, &udp_client_addr);
}

static void perturbations(void)
{
    int zero = 0;
    char b[16];
    if (perturb("listener"))
        fd_at(socket(AF_INET, SOCK_STREAM, 0), 10, "10 again");
    if (perturb("port")) {
        int l = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a;
        loopback(&a);
        if (bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 7) != 0)
            setup_failed("port");
        fd_at(l, 10, "10 again");
    }
    if (perturb("reset") && !app_arg(0, 0))
        fd_at(socket(AF_INET, SOCK_STREAM, 0), 13, "13 again");
    else if (selftest_what && strcmp(selftest_what, "reset") == 0) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = listen_addr;
        if (connect(c, (struct sockaddr *)&a, sizeof a) != 0)
            setup_failed("reset");
        fd_at(c, 12, "12 again");
    }
    if (perturb("options"))
        setsockopt(12, IPPROTO_TCP, TCP_NODELAY, &zero, sizeof zero);
    if (perturb("udp"))
        fd_at(socket(AF_INET, SOCK_DGRAM, 0), 14, "14 again");
    if (perturb("queue") && recv(14, b, sizeof b, 0) <= 0)
        _exit(3);
    if (perturb("peer"))
        fd_at(socket(AF_INET, SOCK_DGRAM, 0), 15, "15 again");
}

static void check_local(int fd, const struct sockaddr_in *want)
{
    struct sockaddr_in a;
    socklen_t l = sizeof a;
    memset(&a, 0, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    if (a.sin_port != want->sin_port || a.sin_addr.s_addr != want->sin_addr.s_addr)
        fail("fd %d address: expected port %d, got %d", fd, ntohs(want->sin_port), ntohs(a.sin_port));
}

/* A connection reset by its peer: ECONNRESET, then EOF, then EPIPE. */
static void check_reset(int fd)
{
    char b[16];
    ssize_t r = recv(fd, b, sizeof b, MSG_DONTWAIT);
    if (r != -1 || errno != ECONNRESET) {
        fail("fd %d first read: expected ECONNRESET, got %zd (%s)", fd, r, r < 0 ? strerror(errno) : "data");
        return;
    }
    r = recv(fd, b, sizeof b, MSG_DONTWAIT);
    if (r != 0)
        fail("fd %d second read: expected EOF, got %zd (%s)", fd, r, r < 0 ? strerror(errno) : "data");
    r = send(fd, "x", 1, MSG_NOSIGNAL);
    if (r != -1 || errno != EPIPE)
        fail("fd %d write: expected EPIPE, got %zd (%s)", fd, r, r < 0 ? strerror(errno) : "sent");
}

int main(int argc, char **argv)
{
    app_init("breadth_inet", argc, argv);
    setup();
    ready();
    wait_go();
    perturbations();

    if (getint(10, SOL_SOCKET, SO_ACCEPTCONN) != 1)
        fail("fd 10: expected a listener");
    check_local(10, &listen_addr);
    if (getint(10, SOL_SOCKET, SO_REUSEADDR) != 1)
        fail("fd 10 SO_REUSEADDR: expected 1");
    int c = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = listen_addr;
    if (connect(c, (struct sockaddr *)&a, sizeof a) != 0) {
        fail("connect to the listener: %s", strerror(errno));
    } else {
        int s = accept(10, NULL, NULL);
        char ch = 0;
        if (s < 0 || send(c, "n", 1, 0) != 1 || recv(s, &ch, 1, 0) != 1 || ch != 'n')
            fail("new connection through the listener carried nothing");
        close(s);
    }
    close(c);

    if (getint(12, IPPROTO_TCP, TCP_NODELAY) != 1)
        fail("fd 12 TCP_NODELAY: expected 1, got %d", getint(12, IPPROTO_TCP, TCP_NODELAY));
    if (getint(12, SOL_SOCKET, SO_KEEPALIVE) != 1)
        fail("fd 12 SO_KEEPALIVE: expected 1");
    /* The kernel keeps timeouts in jiffies: compare with what it reported. */
    if (timeo_us(12, SO_RCVTIMEO) != rcvtimeo12 || timeo_us(12, SO_SNDTIMEO) != sndtimeo12)
        fail("fd 12 timeouts: expected %ld/%ld us, got %ld/%ld", rcvtimeo12, sndtimeo12, timeo_us(12, SO_RCVTIMEO),
             timeo_us(12, SO_SNDTIMEO));
    if (getint(12, SOL_SOCKET, SO_RCVBUF) != rcvbuf12 || getint(12, SOL_SOCKET, SO_SNDBUF) != sndbuf12)
        fail("fd 12 buffers: expected %d/%d, got %d/%d", rcvbuf12, sndbuf12, getint(12, SOL_SOCKET, SO_RCVBUF),
             getint(12, SOL_SOCKET, SO_SNDBUF));
    if (app_arg(0, 0)) {
        check_reset(12);
        check_reset(13);
    } else {
        char u[8] = "";
        if (recv(13, u, 6, MSG_WAITALL) != 6 || memcmp(u, "unread", 6) != 0)
            fail("fd 13: expected \"unread\", got \"%.6s\"", u);
        if (send(13, "k", 1, MSG_NOSIGNAL) != 1 || recv(12, u, 1, 0) != 1 || u[0] != 'k')
            fail("fd 12: the connection carried nothing");
    }

    check_local(14, &udp_addr);
    check_local(15, &udp_client_addr);
    struct sockaddr_in p;
    socklen_t pl = sizeof p;
    if (getpeername(15, (struct sockaddr *)&p, &pl) != 0 || p.sin_port != udp_addr.sin_port)
        fail("fd 15: expected connected to port %d", ntohs(udp_addr.sin_port));
    char b[16];
    const char *queued[2] = { "q1", "qq2" };
    for (int i = 0; i < 2; i++) {
        ssize_t r = recv(14, b, sizeof b, MSG_DONTWAIT);
        if (r != (ssize_t)strlen(queued[i]) || memcmp(b, queued[i], (size_t)r) != 0) {
            fail("fd 14 queued datagram %d: expected \"%s\", got %zd bytes", i, queued[i], r);
            break;
        }
    }
    struct sockaddr_in from;
    socklen_t fl = sizeof from;
    struct pollfd pf = { 14, POLLIN, 0 };
    if (send(15, "dgram", 5, 0) != 5 || poll(&pf, 1, 1000) != 1 ||
        recvfrom(14, b, sizeof b, MSG_DONTWAIT, (struct sockaddr *)&from, &fl) != 5 ||
        memcmp(b, "dgram", 5) != 0 || from.sin_port != udp_client_addr.sin_port)
        fail("udp: a datagram from fd 15 did not reach fd 14 from its port");
    return finish();
}
