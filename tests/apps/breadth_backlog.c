/*
 * breadth_backlog: a UNIX stream listener with two connections waiting to
 * be accepted.
 *
 * Before READY:
 *   fd 10  a listener on the abstract name "torpor-backlog-PID", backlog 4
 *   fd 11  client A, connected to it first
 *          a child whose fd 12 is client B, connected second; it waits in
 *          read(2) for "to-b", answers "from-b" and exits 0
 * Neither connection is accepted.
 *
 * After go: the first accept(2) is A's connection and the second B's, each
 * carrying bytes both ways ("to-a"/"from-a", "to-b"/"from-b"); an accepted
 * socket's name and A's peer name are the listener's; SO_PEERCRED of an
 * accepted socket and of A names our uid and gid; SO_ACCEPTCONN is set on
 * the listener only; no third connection waits; the child exits 0.
 *
 * Usage: breadth_backlog [--selftest-fail=order|child]
 */
#include "common.h"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static struct sockaddr_un addr;
static socklen_t addr_len;

static void set_addr(void)
{
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "torpor-backlog-%d", (int)getpid());
    addr_len = (socklen_t)(sizeof(sa_family_t) + 1 + strlen(addr.sun_path + 1));
}

/* Waits up to 3 s for `fd` to be readable. */
static int readable(int fd)
{
    struct pollfd p = { fd, POLLIN, 0 };
    return poll(&p, 1, 3000) == 1;
}

static void expect_bytes(int fd, const char *what, const char *want)
{
    char got[16] = "";
    size_t len = strlen(want);
    ssize_t n = readable(fd) ? recv(fd, got, len, MSG_DONTWAIT | MSG_WAITALL) : -1;
    if (n != (ssize_t)len || memcmp(got, want, len) != 0)
        fail("%s: expected \"%s\", got %zd bytes \"%.*s\"", what, want, n, n > 0 ? (int)n : 0, got);
}

static void expect_name(int fd, int peer, const char *what)
{
    struct sockaddr_un a;
    socklen_t len = sizeof a;
    memset(&a, 0, sizeof a);
    int r = peer ? getpeername(fd, (struct sockaddr *)&a, &len) : getsockname(fd, (struct sockaddr *)&a, &len);
    if (r != 0 || len != addr_len || memcmp(&a, &addr, len) != 0)
        fail("%s: expected the listener's name @%s, got %d bytes @%.*s", what, addr.sun_path + 1, (int)len,
             len > sizeof(sa_family_t) + 1 ? (int)(len - sizeof(sa_family_t) - 1) : 0, a.sun_path + 1);
}

static void expect_creds(int fd, const char *what)
{
    struct ucred c;
    socklen_t len = sizeof c;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c, &len) != 0 || len != sizeof c)
        fail("%s: SO_PEERCRED: %s", what, strerror(errno));
    else if (c.uid != getuid() || c.gid != getgid() || c.pid <= 0)
        fail("%s: SO_PEERCRED: expected uid %d gid %d, got pid %d uid %d gid %d", what, (int)getuid(),
             (int)getgid(), (int)c.pid, (int)c.uid, (int)c.gid);
}

static void expect_acceptconn(int fd, int want, const char *what)
{
    int v = -1;
    socklen_t len = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) != 0 || v != want)
        fail("%s: SO_ACCEPTCONN: expected %d, got %d", what, want, v);
}

static void send_bytes(int fd, const char *what, const char *bytes)
{
    ssize_t n = send(fd, bytes, strlen(bytes), MSG_NOSIGNAL);
    if (n != (ssize_t)strlen(bytes))
        fail("%s: sending \"%s\": %s", what, bytes, n < 0 ? strerror(errno) : "short");
}

/* The next waiting connection, within 3 s; -1 if none. */
static int accept_one(void)
{
    if (!readable(10))
        return -1;
    return accept4(10, NULL, NULL, SOCK_CLOEXEC);
}

int main(int argc, char **argv)
{
    app_init("breadth_backlog", argc, argv);
    set_addr();
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&addr, addr_len) != 0 || listen(l, 4) != 0)
        setup_failed("listener");
    fd_at(l, 10, "listener");
    int a = socket(AF_UNIX, SOCK_STREAM, 0);
    if (a < 0 || connect(a, (struct sockaddr *)&addr, addr_len) != 0)
        setup_failed("client A");
    fd_at(a, 11, "client A");

    int ready_pipe[2];
    if (pipe2(ready_pipe, O_CLOEXEC) != 0)
        setup_failed("pipe");
    pid_t child = fork();
    if (child < 0)
        setup_failed("fork");
    if (child == 0) {
        close(10);
        close(11);
        close(ready_pipe[0]);
        int b = socket(AF_UNIX, SOCK_STREAM, 0);
        if (b < 0 || connect(b, (struct sockaddr *)&addr, addr_len) != 0 || dup2(b, 12) != 12)
            _exit(9);
        close(b);
        write_all(ready_pipe[1], "b", 1);
        close(ready_pipe[1]);
        char got[4];
        size_t have = 0;
        while (have < sizeof got) {
            ssize_t n = read(12, got + have, sizeof got - have);
            if (n <= 0)
                _exit(7);
            have += (size_t)n;
        }
        if (memcmp(got, "to-b", 4) != 0)
            _exit(6);
        write_all(12, "from-b", 6);
        _exit(0);
    }
    close(ready_pipe[1]);
    char c;
    if (read(ready_pipe[0], &c, 1) != 1)
        setup_failed("the child did not connect");
    close(ready_pipe[0]);

    ready();
    wait_go();
    if (perturb("order")) {
        int s = accept_one();
        if (s >= 0)
            close(s);
    }
    if (perturb("child")) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    }

    expect_acceptconn(10, 1, "the listener");
    expect_acceptconn(11, 0, "client A");
    expect_name(11, 1, "client A's peer");
    expect_creds(11, "client A");
    int s1 = accept_one();
    if (s1 < 0) {
        fail("first accept: expected A's connection, got %s", strerror(errno));
    } else {
        expect_name(s1, 0, "A's accepted socket");
        expect_creds(s1, "A's accepted socket");
        expect_acceptconn(s1, 0, "A's accepted socket");
        send_bytes(s1, "A's accepted socket", "to-a");
        expect_bytes(11, "client A", "to-a");
        send_bytes(11, "client A", "from-a");
        expect_bytes(s1, "A's accepted socket", "from-a");
        close(s1);
    }
    int s2 = accept_one();
    if (s2 < 0) {
        fail("second accept: expected B's connection, got %s", strerror(errno));
    } else {
        expect_name(s2, 0, "B's accepted socket");
        expect_creds(s2, "B's accepted socket");
        send_bytes(s2, "B's accepted socket", "to-b");
        expect_bytes(s2, "B's accepted socket", "from-b");
        close(s2);
    }
    struct pollfd p = { 10, POLLIN, 0 };
    if (poll(&p, 1, 0) != 0)
        fail("the listener: expected no third connection waiting, got revents %#x", p.revents);
    int status = -1;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("the child (client B): expected exit 0, got status %#x", status);
    return finish();
}
