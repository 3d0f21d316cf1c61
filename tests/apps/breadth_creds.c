/*
 * breadth_creds: the credentials of queued UNIX messages (SCM_CREDENTIALS).
 *
 * Before READY:
 *   fd 10  a datagram socket with SO_PASSCRED, fd 11 its peer; queued:
 *          "from-child", sent on 11 by a child, then "from-parent", sent
 *          by us
 *   fd 12  a stream socket with SO_PASSCRED, fd 13 its peer; queued: "cc"
 *          from the child, then "pp" from us
 *   fd 14  a datagram socket with SO_PASSCRED off, fd 15 its peer with it
 *          on; queued: "late" from us (the kernel records our credentials
 *          for the peer's sake)
 *   fd 16  a datagram socket, fd 17 its peer; queued: "none", sent while
 *          neither had SO_PASSCRED (no credentials recorded); 16 has it on
 *          since
 * The child, running as uid and gid 1000 when we are root (else as us),
 * keeps fds 11 and 13 and waits in read(2) on a pipe for "x", then exits 0.
 *
 * After go: each message comes back alone, in order, with the credentials
 * of its sender exactly: "from-child" and "cc" the child's pid, uid and
 * gid, "from-parent", "pp" and "late" ours; SO_PASSCRED of fd 14 is still
 * off (read after turning it on); "none" reads with pid 0 and the kernel's
 * overflow uid and gid (no credentials); the child exits 0.
 *
 * Usage: breadth_creds [--selftest-fail=queue|stream|passcred|child]
 */
#include "common.h"

#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static void pair_at(int type, int a_at, int b_at, const char *what)
{
    int p[2];
    if (socketpair(AF_UNIX, type, 0, p) != 0)
        setup_failed(what);
    fd_at(p[0], a_at, what);
    fd_at(p[1], b_at, what);
}

static void passcred(int fd, int on, const char *what)
{
    if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0)
        setup_failed(what);
}

static void send_text(int fd, const char *text)
{
    if (send(fd, text, strlen(text), MSG_NOSIGNAL) != (ssize_t)strlen(text))
        _exit(8);
}

static unsigned overflow_id(const char *what)
{
    char path[64], buf[32];
    snprintf(path, sizeof path, "/proc/sys/kernel/%s", what);
    if (read_text(path, buf, sizeof buf) <= 0)
        return 65534;
    return (unsigned)strtoul(buf, NULL, 10);
}

/* One read of `fd`, within 3 s: `want` exactly, with credentials
 * pid/uid/gid. */
static void expect_message(int fd, const char *what, const char *want, pid_t pid, uid_t uid, gid_t gid)
{
    struct pollfd p = { fd, POLLIN, 0 };
    if (poll(&p, 1, 3000) != 1) {
        fail("%s: expected \"%s\", nothing to read", what, want);
        return;
    }
    char got[32] = "";
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(struct ucred))];
    } control;
    memset(&control, 0, sizeof control);
    struct iovec iov;
    iov.iov_base = got;
    iov.iov_len = sizeof got;
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = control.buf;
    m.msg_controllen = sizeof control.buf;
    ssize_t n = recvmsg(fd, &m, MSG_DONTWAIT);
    if (n != (ssize_t)strlen(want) || memcmp(got, want, strlen(want)) != 0) {
        fail("%s: expected \"%s\", got %zd bytes \"%.*s\"", what, want, n, n > 0 ? (int)n : 0, got);
        return;
    }
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    if (!c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_CREDENTIALS ||
        c->cmsg_len != CMSG_LEN(sizeof(struct ucred))) {
        fail("%s: \"%s\" came without SCM_CREDENTIALS", what, want);
        return;
    }
    struct ucred u;
    memcpy(&u, CMSG_DATA(c), sizeof u);
    if (u.pid != pid || u.uid != uid || u.gid != gid)
        fail("%s: \"%s\": expected pid %d uid %u gid %u, got pid %d uid %u gid %u", what, want, (int)pid,
             (unsigned)uid, (unsigned)gid, (int)u.pid, (unsigned)u.uid, (unsigned)u.gid);
}

int main(int argc, char **argv)
{
    app_init("breadth_creds", argc, argv);
    pair_at(SOCK_DGRAM, 10, 11, "datagram pair");
    pair_at(SOCK_STREAM, 12, 13, "stream pair");
    pair_at(SOCK_DGRAM, 14, 15, "datagram pair, receiver without SO_PASSCRED");
    pair_at(SOCK_DGRAM, 16, 17, "datagram pair, sent without credentials");
    passcred(10, 1, "SO_PASSCRED");
    passcred(12, 1, "SO_PASSCRED");
    passcred(15, 1, "SO_PASSCRED");
    uid_t child_uid = getuid() == 0 ? 1000 : getuid();
    gid_t child_gid = getuid() == 0 ? 1000 : getgid();

    int ready_pipe[2], go_pipe[2];
    if (pipe2(ready_pipe, O_CLOEXEC) != 0)
        setup_failed("pipe");
    if (pipe(go_pipe) != 0)
        setup_failed("pipe");
    fd_at(go_pipe[1], 18, "go pipe");
    fd_at(go_pipe[0], 19, "go pipe");
    pid_t child = fork();
    if (child < 0)
        setup_failed("fork");
    if (child == 0) {
        close(10);
        close(12);
        close(14);
        close(15);
        close(16);
        close(17);
        close(18);
        close(ready_pipe[0]);
        if (getuid() == 0 &&
            (setgroups(0, NULL) != 0 || setresgid(1000, 1000, 1000) != 0 || setresuid(1000, 1000, 1000) != 0))
            _exit(9);
        send_text(11, "from-child");
        send_text(13, "cc");
        write_all(ready_pipe[1], "c", 1);
        close(ready_pipe[1]);
        char x;
        if (read(19, &x, 1) != 1 || x != 'x')
            _exit(7);
        _exit(0);
    }
    close(19);
    close(ready_pipe[1]);
    char c;
    if (read(ready_pipe[0], &c, 1) != 1)
        setup_failed("the child did not send");
    close(ready_pipe[0]);
    send_text(11, "from-parent");
    send_text(13, "pp");
    send_text(15, "late");
    send_text(17, "none");
    passcred(16, 1, "SO_PASSCRED");

    ready();
    wait_go();
    if (perturb("queue")) {
        char b[32];
        recv(10, b, sizeof b, MSG_DONTWAIT);
    }
    if (perturb("stream")) {
        char b;
        recv(12, &b, 1, MSG_DONTWAIT);
    }
    if (perturb("passcred"))
        passcred(14, 1, "SO_PASSCRED");
    int killed = perturb("child");
    if (killed) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    }

    pid_t me = getpid();
    expect_message(10, "fd 10", "from-child", child, child_uid, child_gid);
    expect_message(10, "fd 10", "from-parent", me, getuid(), getgid());
    expect_message(12, "fd 12", "cc", child, child_uid, child_gid);
    expect_message(12, "fd 12", "pp", me, getuid(), getgid());
    int on = -1;
    socklen_t len = sizeof on;
    if (getsockopt(14, SOL_SOCKET, SO_PASSCRED, &on, &len) != 0 || on != 0)
        fail("fd 14: SO_PASSCRED: expected 0, got %d", on);
    passcred(14, 1, "SO_PASSCRED");
    expect_message(14, "fd 14", "late", me, getuid(), getgid());
    expect_message(16, "fd 16", "none", 0, overflow_id("overflowuid"), overflow_id("overflowgid"));
    struct pollfd p[3] = { { 10, POLLIN, 0 }, { 12, POLLIN, 0 }, { 14, POLLIN, 0 } };
    if (poll(p, 3, 0) != 0)
        fail("expected no other message queued, got revents %#x %#x %#x", p[0].revents, p[1].revents,
             p[2].revents);
    if (!killed)
        write_all(18, "x", 1);
    int status = -1;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("the child: expected exit 0, got status %#x", status);
    return finish();
}
