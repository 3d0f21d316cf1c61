/*
 * breadth_pipes: pipes whose other end a process outside the tree holds.
 *
 * Before READY a peer is started outside the tree (forked twice, its parent
 * gone at once, so it belongs to the reaper and not to the app). It holds
 *   the write end of the pipe whose read end is fd 20, and has written
 *   "before" into it, which the app leaves unread;
 *   the read end of the pipe whose write end is fd 21, which it drains.
 * Fd 22/23 is a pipe inside the app, enlarged to 128 KiB, holding 70000
 * bytes, and fd 24 a pipe read end whose writer closed after "closed".
 *
 * After go, with the peer still there (control run): fd 20 reads "before",
 * a write to fd 21 succeeds. After a restore (argument 1: "restored"), the
 * peer's ends are gone, as after its exit: fd 20 reads "before" then end of
 * file, a write to fd 21 fails with EPIPE. Either way the inner pipe keeps
 * its size and every byte, and fd 24 reads "closed" then end of file.
 *
 * Usage: breadth_pipes [restored] [--selftest-fail=data|size|inner|closed]
 */
#include "common.h"

#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>

#define INNER_SIZE (128 * 1024)
#define INNER_LEN 70000

static pid_t start_peer(int from_app, int to_app)
{
    pid_t c = fork();
    if (c < 0)
        setup_failed("fork");
    if (c == 0) {
        pid_t g = fork();
        if (g != 0)
            _exit(g < 0 ? 1 : 0);
        /* The peer: "before" for the app, then drain what it writes. */
        for (int fd = 3; fd < 64; fd++)
            if (fd != from_app && fd != to_app)
                close(fd);
        if (write(to_app, "before", 6) != 6)
            _exit(2);
        char buf[256];
        while (read(from_app, buf, sizeof buf) > 0)
            ;
        _exit(0);
    }
    int status = 0;
    if (waitpid(c, &status, 0) != c || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        setup_failed("the peer's parent");
    return c;
}

int main(int argc, char **argv)
{
    app_init("breadth_pipes", argc, argv);
    int restored = (int)app_arg(0, 0);
    signal(SIGPIPE, SIG_IGN);

    int in[2], out[2], inner[2], closed[2];
    if (pipe(in) != 0 || pipe(out) != 0 || pipe(inner) != 0 || pipe(closed) != 0)
        setup_failed("pipe");
    start_peer(out[0], in[1]);
    close(in[1]);
    close(out[0]);
    fd_at(in[0], 20, "pipe from the peer");
    fd_at(out[1], 21, "pipe to the peer");
    fd_at(inner[0], 22, "inner pipe read end");
    fd_at(inner[1], 23, "inner pipe write end");
    fd_at(closed[0], 24, "closed pipe read end");
    if (fcntl(23, F_SETPIPE_SZ, INNER_SIZE) < INNER_SIZE)
        setup_failed("F_SETPIPE_SZ");
    uint8_t *buf = malloc(INNER_LEN);
    fill_pattern(buf, INNER_LEN, 60);
    write_all(23, buf, INNER_LEN);
    if (write(closed[1], "closed", 6) != 6)
        setup_failed("closed pipe");
    close(closed[1]);
    /* The peer's bytes are there before READY. */
    for (int tries = 0;; tries++) {
        int n = 0;
        if (ioctl(20, FIONREAD, &n) == 0 && n == 6)
            break;
        if (tries > 5000)
            setup_failed("the peer's bytes");
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
    int inner_size = fcntl(22, F_GETPIPE_SZ);

    ready();
    wait_go();

    if (perturb("data"))
        (void)!read(20, buf, 1);
    if (perturb("size"))
        fcntl(22, F_SETPIPE_SZ, 4096 * 64);
    if (perturb("inner"))
        write_all(23, "x", 1);
    if (perturb("closed"))
        (void)!read(24, buf, 1);

    char got[16] = "";
    ssize_t n = read(20, got, 6);
    if (n != 6 || memcmp(got, "before", 6) != 0)
        fail("fd 20: expected \"before\", got %zd bytes \"%.*s\"", n, n > 0 ? (int)n : 0, got);
    if (restored) {
        n = read(20, got, sizeof got);
        if (n != 0)
            fail("fd 20: its writer is gone: expected end of file, got %zd (%s)", n, n < 0 ? strerror(errno) : "data");
        errno = 0;
        n = write(21, "after\n", 6);
        if (n != -1 || errno != EPIPE)
            fail("fd 21: its reader is gone: expected EPIPE, got %zd (%s)", n, strerror(errno));
    } else {
        n = write(21, "after\n", 6);
        if (n != 6)
            fail("fd 21: write to the peer: %zd (%s)", n, strerror(errno));
    }

    if (fcntl(22, F_GETPIPE_SZ) != inner_size)
        fail("fd 22 pipe size: expected %d, got %d", inner_size, fcntl(22, F_GETPIPE_SZ));
    int queued = 0;
    ioctl(22, FIONREAD, &queued);
    if (queued != INNER_LEN)
        fail("fd 22: expected %d bytes queued, got %d", INNER_LEN, queued);
    else {
        memset(buf, 0, INNER_LEN);
        size_t got_inner = 0;
        while (got_inner < INNER_LEN) {
            ssize_t k = read(22, buf + got_inner, INNER_LEN - got_inner);
            if (k <= 0)
                break;
            got_inner += (size_t)k;
        }
        if (got_inner != INNER_LEN)
            fail("fd 22: read %zu of %d bytes", got_inner, INNER_LEN);
        else
            check_pattern("fd 22", buf, INNER_LEN, 60);
    }
    n = read(24, got, sizeof got);
    if (n != 6 || memcmp(got, "closed", 6) != 0)
        fail("fd 24: expected \"closed\", got %zd bytes", n);
    else if ((n = read(24, got, sizeof got)) != 0)
        fail("fd 24: its writer closed: expected end of file, got %zd", n);
    free(buf);
    return finish();
}
