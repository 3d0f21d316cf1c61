/*
 * breadth_unix: UNIX domain sockets keep their connections, queued data,
 * names and options across a checkpoint.
 *
 * Before READY, at fixed fd numbers:
 *   10/11 stream socketpair: 11 holds "hello " + "world", 10 holds "back";
 *         10 is O_NONBLOCK
 *   12/13 datagram socketpair: 13 holds "d1", "dd2", "ddd3"; 13 has SO_PASSCRED
 *   14/15 seqpacket socketpair: 15 holds "s1", "s22"; 15 shut down for writing
 *   16    stream listener on W/listen.sock (absolute), backlog 5, SO_RCVBUF 48 KiB
 *   17/18 a client of 16 and its accepted socket: 18 holds "c2s", 17 "s2c"
 *   19    stream listener on an abstract name
 *   20    unconnected datagram socket on W/dgram.sock holding "u1", "u22"
 *   22    datagram socket connected to W/dgram.sock
 * After go: every queue reads back in order and nothing more (EAGAIN, or
 * EOF on 14 whose peer shut down), names and options are the same, the
 * listeners accept new connections, and every connection carries new data
 * both ways.
 *
 * Usage: breadth_unix [--selftest-fail=stream|dgram|seqpacket|listener|
 *        accepted|abstract|bound|rcvbuf]
 */
#include "common.h"

#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

static char listen_path[512], dgram_path[512];
static char abstract_name[64];
static int rcvbuf_at_ready;

static socklen_t addr_of(struct sockaddr_un *a, const char *name, int abstract)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    size_t n = strlen(name);
    if (abstract) {
        memcpy(a->sun_path + 1, name, n);
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
    }
    memcpy(a->sun_path, name, n);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}

static void send_str(int fd, const char *s)
{
    if (send(fd, s, strlen(s), MSG_NOSIGNAL) != (ssize_t)strlen(s))
        setup_failed("send");
}

static int listener(const char *name, int abstract, int want)
{
    struct sockaddr_un a;
    socklen_t len = addr_of(&a, name, abstract);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0 || bind(s, (struct sockaddr *)&a, len) != 0 || listen(s, 5) != 0)
        setup_failed("listener");
    fd_at(s, want, "listener");
    return want;
}

static int connect_to(const char *name, int abstract, int type)
{
    struct sockaddr_un a;
    socklen_t len = addr_of(&a, name, abstract);
    int s = socket(AF_UNIX, type, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, len) != 0)
        return -1;
    return s;
}

static void setup(void)
{
    char cwd[400];
    if (!getcwd(cwd, sizeof cwd))
        setup_failed("getcwd");
    snprintf(listen_path, sizeof listen_path, "%s/listen.sock", cwd);
    snprintf(dgram_path, sizeof dgram_path, "%s/dgram.sock", cwd);
    snprintf(abstract_name, sizeof abstract_name, "torpor-breadth-%d", (int)getpid());

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        setup_failed("stream pair");
    fd_at(sv[0], 10, "10");
    fd_at(sv[1], 11, "11");
    send_str(10, "hello ");
    send_str(10, "world");
    send_str(11, "back");
    fcntl(10, F_SETFL, O_NONBLOCK);

    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0)
        setup_failed("dgram pair");
    fd_at(sv[0], 12, "12");
    fd_at(sv[1], 13, "13");
    send_str(12, "d1");
    send_str(12, "dd2");
    send_str(12, "ddd3");
    int one = 1;
    setsockopt(13, SOL_SOCKET, SO_PASSCRED, &one, sizeof one);

    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) != 0)
        setup_failed("seqpacket pair");
    fd_at(sv[0], 14, "14");
    fd_at(sv[1], 15, "15");
    send_str(14, "s1");
    send_str(14, "s22");
    shutdown(15, SHUT_WR);

    listener(listen_path, 0, 16);
    int rb = 48 * 1024;
    setsockopt(16, SOL_SOCKET, SO_RCVBUF, &rb, sizeof rb);
    socklen_t l = sizeof rcvbuf_at_ready;
    getsockopt(16, SOL_SOCKET, SO_RCVBUF, &rcvbuf_at_ready, &l);
    fd_at(connect_to(listen_path, 0, SOCK_STREAM), 17, "client 17");
    fd_at(accept(16, NULL, NULL), 18, "accepted 18");
    send_str(17, "c2s");
    send_str(18, "s2c");

    listener(abstract_name, 1, 19);

    struct sockaddr_un a;
    socklen_t len = addr_of(&a, dgram_path, 0);
    int d = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (d < 0 || bind(d, (struct sockaddr *)&a, len) != 0)
        setup_failed("bound dgram");
    fd_at(d, 20, "20");
    int u = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (sendto(u, "u1", 2, 0, (struct sockaddr *)&a, len) != 2 || sendto(u, "u22", 3, 0, (struct sockaddr *)&a, len) != 3)
        setup_failed("sendto 20");
    close(u);
    fd_at(connect_to(dgram_path, 0, SOCK_DGRAM), 22, "22");
}

static void perturbations(void)
{
    char b[16];
    if (perturb("stream") && recv(11, b, 1, 0) != 1)
        _exit(3);
    if (perturb("dgram") && recv(13, b, sizeof b, 0) <= 0)
        _exit(3);
    if (perturb("seqpacket"))
        send_str(14, "extra");
    if (perturb("listener"))
        fd_at(socket(AF_UNIX, SOCK_STREAM, 0), 16, "16 again");
    if (perturb("accepted") && recv(18, b, 1, 0) != 1)
        _exit(3);
    if (perturb("abstract"))
        fd_at(socket(AF_UNIX, SOCK_STREAM, 0), 19, "19 again");
    if (perturb("bound") && recv(20, b, sizeof b, 0) <= 0)
        _exit(3);
    if (perturb("rcvbuf")) {
        int rb = 20 * 1024;
        setsockopt(16, SOL_SOCKET, SO_RCVBUF, &rb, sizeof rb);
    }
}

/* Reads the expected messages from fd in order, then expects nothing more. */
static void expect_msgs(int fd, const char *const *want, int n, int stream)
{
    char buf[256];
    for (int i = 0; i < n; i++) {
        size_t wl = strlen(want[i]);
        ssize_t r = stream ? recv(fd, buf, wl, MSG_DONTWAIT | MSG_WAITALL) : recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r < 0) {
            fail("fd %d message %d: expected \"%s\", got %s", fd, i, want[i], strerror(errno));
            return;
        }
        if ((size_t)r != wl || memcmp(buf, want[i], wl) != 0) {
            fail("fd %d message %d: expected \"%s\", got \"%.*s\"", fd, i, want[i], (int)r, buf);
            return;
        }
    }
    ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r >= 0 || errno != EAGAIN)
        fail("fd %d: expected an empty queue, got %zd (%.*s)", fd, r, r > 0 ? (int)r : 0, buf);
}

/* One byte each way over a connected pair. */
static void roundtrip(int a, int b, const char *what)
{
    char c = 0;
    if (send(a, "p", 1, MSG_NOSIGNAL) != 1 || recv(b, &c, 1, 0) != 1 || c != 'p')
        fail("%s: a byte from fd %d did not reach fd %d", what, a, b);
    c = 0;
    if (send(b, "q", 1, MSG_NOSIGNAL) != 1 || recv(a, &c, 1, 0) != 1 || c != 'q')
        fail("%s: a byte from fd %d did not reach fd %d", what, b, a);
}

static void check_name(int fd, const char *name, int abstract)
{
    struct sockaddr_un a, want;
    socklen_t len = sizeof a, wl = addr_of(&want, name, abstract);
    if (getsockname(fd, (struct sockaddr *)&a, &len) != 0 || len != wl ||
        memcmp(a.sun_path, want.sun_path, wl - offsetof(struct sockaddr_un, sun_path)) != 0)
        fail("fd %d name: expected %s%s, got %.*s (len %u)", fd, abstract ? "@" : "", name,
             (int)(len > 2 ? len - 2 : 0), a.sun_path + (abstract ? 1 : 0), (unsigned)len);
}

static void check_accepts(int lfd, const char *name, int abstract)
{
    int c = connect_to(name, abstract, SOCK_STREAM);
    if (c < 0) {
        fail("listener %d: connect: %s", lfd, strerror(errno));
        return;
    }
    int s = accept(lfd, NULL, NULL);
    if (s < 0) {
        fail("listener %d: accept: %s", lfd, strerror(errno));
        close(c);
        return;
    }
    roundtrip(c, s, "new connection");
    close(c);
    close(s);
}

static int getint(int fd, int opt)
{
    int v = -1;
    socklen_t l = sizeof v;
    getsockopt(fd, SOL_SOCKET, opt, &v, &l);
    return v;
}

int main(int argc, char **argv)
{
    app_init("breadth_unix", argc, argv);
    setup();
    ready();
    wait_go();
    perturbations();

    expect_msgs(11, (const char *const[]){ "hello world" }, 1, 1);
    expect_msgs(10, (const char *const[]){ "back" }, 1, 1);
    if (!(fcntl(10, F_GETFL) & O_NONBLOCK))
        fail("fd 10: expected O_NONBLOCK");
    if (fcntl(11, F_GETFL) & O_NONBLOCK)
        fail("fd 11: expected blocking");
    roundtrip(10, 11, "stream pair");

    expect_msgs(13, (const char *const[]){ "d1", "dd2", "ddd3" }, 3, 0);
    if (getint(13, SO_PASSCRED) != 1)
        fail("fd 13 SO_PASSCRED: expected 1, got %d", getint(13, SO_PASSCRED));
    if (getint(13, SO_TYPE) != SOCK_DGRAM)
        fail("fd 13 SO_TYPE: expected SOCK_DGRAM");
    roundtrip(12, 13, "datagram pair");

    expect_msgs(15, (const char *const[]){ "s1", "s22" }, 2, 0);
    char b[8];
    ssize_t r = recv(14, b, sizeof b, MSG_DONTWAIT);
    if (r != 0)
        fail("fd 14: expected EOF (peer shut down), got %zd", r);
    if (getint(14, SO_TYPE) != SOCK_SEQPACKET)
        fail("fd 14 SO_TYPE: expected SOCK_SEQPACKET");
    send_str(14, "more");
    expect_msgs(15, (const char *const[]){ "more" }, 1, 0);

    if (getint(16, SO_ACCEPTCONN) != 1)
        fail("fd 16: expected a listener");
    if (getint(16, SO_RCVBUF) != rcvbuf_at_ready)
        fail("fd 16 SO_RCVBUF: expected %d, got %d", rcvbuf_at_ready, getint(16, SO_RCVBUF));
    check_name(16, listen_path, 0);
    check_accepts(16, listen_path, 0);

    expect_msgs(18, (const char *const[]){ "c2s" }, 1, 1);
    expect_msgs(17, (const char *const[]){ "s2c" }, 1, 1);
    roundtrip(17, 18, "accepted connection");

    if (getint(19, SO_ACCEPTCONN) != 1)
        fail("fd 19: expected a listener");
    check_name(19, abstract_name, 1);
    check_accepts(19, abstract_name, 1);

    check_name(20, dgram_path, 0);
    expect_msgs(20, (const char *const[]){ "u1", "u22" }, 2, 0);
    send_str(22, "to20");
    expect_msgs(20, (const char *const[]){ "to20" }, 1, 0);
    return finish();
}
