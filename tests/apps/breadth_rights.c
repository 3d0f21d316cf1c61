/*
 * breadth_rights: file descriptors in flight in UNIX sockets (SCM_RIGHTS),
 * each one a description the tree also holds.
 *
 * Before READY:
 *   fds 10/11  a stream socketpair; 11 has sent 10 "one" passing fd 12 (a
 *              memfd holding "memfd-data", offset 3), "two" with nothing,
 *              then "three" passing fds 14 and 15
 *   fds 13/14  a pipe (read end 13, write end 14), empty
 *   fd 15      the regular file "held", "held-file", offset 2
 *   fds 16/17  a datagram socketpair; 17 has sent 16 "dg-a" passing fd 10,
 *              an empty datagram passing fd 13, then "dg-b" with nothing
 *   fd 18      a stream socket whose peer, in a child, has sent it "kid"
 *              passing the child's fd 21 (the file "kid", "kid-file",
 *              offset 4), which only the child holds
 *
 * After go: every message comes back in order with its bytes and with as
 * many descriptors as it passed, each the same open file description as
 * the one sent (kcmp), sharing its offset; a write through the passed pipe
 * end reaches fd 13; the fds of the app are exactly those above.
 *
 * Usage: breadth_rights [--selftest-fail=queue|offset|child|pipe]
 */
#include "common.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>

#ifndef KCMP_FILE
#define KCMP_FILE 0
#endif

static int same_file(pid_t p1, int fd1, pid_t p2, int fd2)
{
    return syscall(SYS_kcmp, p1, p2, KCMP_FILE, fd1, fd2) == 0;
}

static void send_with(int sock, const char *bytes, const int *fds, int n)
{
    struct iovec iov = { (void *)bytes, strlen(bytes) };
    union { struct cmsghdr h; char b[CMSG_SPACE(4 * sizeof(int))]; } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (n > 0) {
        m.msg_control = u.b;
        m.msg_controllen = CMSG_SPACE(n * sizeof(int));
        struct cmsghdr *h = CMSG_FIRSTHDR(&m);
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_RIGHTS;
        h->cmsg_len = CMSG_LEN(n * sizeof(int));
        memcpy(CMSG_DATA(h), fds, n * sizeof(int));
    }
    if (sendmsg(sock, &m, 0) != (ssize_t)iov.iov_len)
        setup_failed("sendmsg");
}

/* Receives one message: its bytes (NUL-ended) and up to 4 fds; returns the
 * number of fds, or -1 when nothing was there. */
static int recv_with(int sock, char *bytes, size_t cap, int *fds)
{
    struct iovec iov = { bytes, cap - 1 };
    union { struct cmsghdr h; char b[CMSG_SPACE(4 * sizeof(int))]; } u;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b };
    ssize_t n = recvmsg(sock, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
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

/* Checks one received message: its bytes, its fd count, and that each fd is
 * the description `want[i]` of process `holder`. The fds are closed. */
static void expect_msg(int sock, const char *what, const char *bytes, pid_t holder, const int *want, int n)
{
    char got[64];
    int fds[4];
    int k = recv_with(sock, got, sizeof got, fds);
    if (k < 0) {
        fail("%s: expected \"%s\", got nothing", what, bytes);
        return;
    }
    if (strcmp(got, bytes) != 0)
        fail("%s: expected \"%s\", got \"%s\"", what, bytes, got);
    if (k != n)
        fail("%s: expected %d descriptors, got %d", what, n, k);
    for (int i = 0; i < k && i < n; i++) {
        if (!same_file(getpid(), fds[i], holder, want[i]))
            fail("%s: descriptor %d is not the description of fd %d of process %d", what, i, want[i], (int)holder);
    }
    for (int i = 0; i < k; i++)
        close(fds[i]);
}

static void fill(int fd, const char *text, off_t at)
{
    write_all(fd, text, strlen(text));
    if (lseek(fd, at, SEEK_SET) != at)
        setup_failed("lseek");
}

int main(int argc, char **argv)
{
    app_init("breadth_rights", argc, argv);
    int sv[2], p[2], dg[2], kid[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        setup_failed("socketpair");
    fd_at(sv[0], 10, "stream end");
    fd_at(sv[1], 11, "stream end");
    fd_at((int)syscall(SYS_memfd_create, "rights", 0), 12, "memfd");
    fill(12, "memfd-data", 3);
    if (pipe(p) != 0)
        setup_failed("pipe");
    fd_at(p[0], 13, "pipe read end");
    fd_at(p[1], 14, "pipe write end");
    fd_at(open("held", O_RDWR | O_CREAT | O_TRUNC, 0600), 15, "held file");
    fill(15, "held-file", 2);
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) != 0)
        setup_failed("datagram socketpair");
    fd_at(dg[0], 16, "datagram end");
    fd_at(dg[1], 17, "datagram end");
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, kid) != 0)
        setup_failed("child socketpair");
    fd_at(kid[0], 18, "child's peer");
    fd_at(kid[1], 19, "child's end");

    int ready_pipe[2];
    if (pipe2(ready_pipe, O_CLOEXEC) != 0)
        setup_failed("pipe");
    pid_t child = fork();
    if (child == 0) {
        for (int fd = 10; fd <= 18; fd++)
            close(fd);
        close(ready_pipe[0]);
        int f = open("kid", O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (f < 0 || dup2(f, 21) != 21)
            _exit(9);
        close(f);
        fill(21, "kid-file", 4);
        int pass = 21;
        send_with(19, "kid", &pass, 1);
        write_all(ready_pipe[1], "k", 1);
        close(ready_pipe[1]);
        for (;;)
            pause();
    }
    close(19);
    close(ready_pipe[1]);
    char b;
    if (read(ready_pipe[0], &b, 1) != 1)
        setup_failed("the child did not send");
    close(ready_pipe[0]);

    int one = 12, three[2] = { 14, 15 }, dga = 10, empty = 13;
    send_with(11, "one", &one, 1);
    send_with(11, "two", NULL, 0);
    send_with(11, "three", three, 2);
    send_with(17, "dg-a", &dga, 1);
    send_with(17, "", &empty, 1);
    send_with(17, "dg-b", NULL, 0);

    ready();
    wait_go();
    if (perturb("queue")) {
        char got[64];
        int fds[4];
        int k = recv_with(10, got, sizeof got, fds);
        for (int i = 0; i < k; i++)
            close(fds[i]);
    }
    if (perturb("offset"))
        lseek(12, 0, SEEK_SET);
    if (perturb("child")) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    }
    if (perturb("pipe"))
        write_all(14, "x", 1);

    /* The stream: "two" and "three" come in one read, as before. */
    expect_msg(10, "stream message 1", "one", getpid(), &one, 1);
    expect_msg(10, "stream message 2", "twothree", getpid(), three, 2);
    expect_msg(16, "datagram 1", "dg-a", getpid(), &dga, 1);
    expect_msg(16, "datagram 2", "", getpid(), &empty, 1);
    expect_msg(16, "datagram 3", "dg-b", getpid(), NULL, 0);
    expect_msg(18, "the child's message", "kid", child, (int[]){ 21 }, 1);

    /* The passed descriptions share their offsets and pipe. */
    char got[16] = "";
    if (read(12, got, 4) != 4 || memcmp(got, "fd-d", 4) != 0)
        fail("memfd: expected \"fd-d\" at offset 3, got \"%.4s\"", got);
    off_t at = lseek(15, 0, SEEK_CUR);
    if (at != 2)
        fail("held file offset: expected 2, got %lld", (long long)at);
    write_all(14, "zz", 2);
    memset(got, 0, sizeof got);
    ssize_t n = read(13, got, sizeof got);
    if (n != 2 || memcmp(got, "zz", 2) != 0)
        fail("pipe: expected \"zz\", got %zd bytes \"%.*s\"", n, n > 0 ? (int)n : 0, got);

    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return finish();
}
