/*
 * tree: a three-process tree (root → child → grandchild) joined by pipes that
 * hold unread data across the checkpoint.
 *
 *   root → child        5000 bytes; the root keeps its write end open
 *   child → grandchild  40000 bytes; write end closed after writing
 *   grandchild → root   3000 bytes; write end closed after writing
 *   root → grandchild   100000 bytes in a pipe enlarged to 256 KiB
 *
 * The root is a session leader (setsid), the child leads its own process
 * group, the grandchild is in the child's group. After go each process checks
 * its pid, parent, process group and session, reads its pipes and compares
 * every byte, checks nothing more is buffered (and that a closed writer
 * gives EOF) and that the enlarged pipe kept its size. Results travel up
 * through two more pipes, empty at checkpoint time; each parent reaps its
 * child and checks its exit status.
 *
 * Usage: tree [--selftest-fail=pipe|eof|pgid|child-exit|pipe-size]
 */
#include "common.h"

#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>

#define PC_LEN 5000
#define CG_LEN 40000
#define GP_LEN 3000
#define BIG_LEN 100000
#define BIG_PIPE (256 * 1024)

struct ids {
    pid_t pid, ppid, pgid, sid;
};

static struct ids now_ids(void)
{
    struct ids i = { getpid(), getppid(), getpgrp(), getsid(0) };
    return i;
}

static void check_ids(const char *who, struct ids want)
{
    struct ids got = now_ids();
    if (got.pid != want.pid)
        fail("%s pid: expected %d, got %d", who, (int)want.pid, (int)got.pid);
    if (got.ppid != want.ppid)
        fail("%s parent: expected %d, got %d", who, (int)want.ppid, (int)got.ppid);
    if (got.pgid != want.pgid)
        fail("%s process group: expected %d, got %d", who, (int)want.pgid, (int)got.pgid);
    if (got.sid != want.sid)
        fail("%s session: expected %d, got %d", who, (int)want.sid, (int)got.sid);
}

/* Reads exactly len bytes (short only at EOF) and compares them to the pattern. */
static void check_pipe(const char *what, int fd, size_t len, uint64_t seed, int writer_closed)
{
    uint8_t *buf = malloc(len + 1);
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    if (got != len)
        fail("%s: expected %zu buffered bytes, got %zu", what, len, got);
    else
        check_pattern(what, buf, len, seed);
    int left = -1;
    if (ioctl(fd, FIONREAD, &left) != 0 || left != 0)
        fail("%s: expected nothing more buffered, got %d bytes", what, left);
    else if (writer_closed && read(fd, buf, 1) != 0)
        fail("%s: expected EOF after the data (the writer closed its end), got more", what);
    free(buf);
}

static void fill_pipe(int fd, size_t len, uint64_t seed)
{
    uint8_t *buf = malloc(len);
    fill_pattern(buf, len, seed);
    write_all(fd, buf, len);
    free(buf);
}

/* A child's verdict: its first failure, or an empty message. */
static void send_result(int fd)
{
    if (failure_count > 0)
        write_all(fd, first_failure, strlen(first_failure));
    close(fd);
}

static void take_result(const char *who, int fd, pid_t child)
{
    char msg[FAIL_MSG_MAX];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof msg - 1 && ((n = read(fd, msg + len, sizeof msg - 1 - len)) > 0 || (n < 0 && errno == EINTR)))
        if (n > 0)
            len += (size_t)n;
    msg[len] = '\0';
    int status = 0;
    pid_t r;
    while ((r = waitpid(child, &status, 0)) < 0 && errno == EINTR)
        ;
    if (len > 0)
        fail("%s", msg);
    else if (r != child)
        fail("waitpid(%s %d): %s", who, (int)child, strerror(errno));
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("%s exit status: expected 0, got %#x", who, status);
}

static void make_pipe(int p[2])
{
    if (pipe(p) != 0) {
        say("FAIL tree: pipe: %s\n", strerror(errno));
        exit(1);
    }
}

int main(int argc, char **argv)
{
    app_init("tree", argc, argv);
    setsid();

    int pc[2], cg[2], gp[2], big[2], rc[2], rg[2];
    make_pipe(pc);
    make_pipe(cg);
    make_pipe(gp);
    make_pipe(big);
    make_pipe(rc);
    make_pipe(rg);
    if (fcntl(big[1], F_SETPIPE_SZ, BIG_PIPE) < BIG_PIPE) {
        say("FAIL tree: F_SETPIPE_SZ %d: %s\n", BIG_PIPE, strerror(errno));
        return 1;
    }
    int big_size = fcntl(big[0], F_GETPIPE_SZ);
    int pc_size = fcntl(pc[1], F_GETPIPE_SZ);
    struct ids root = now_ids();

    pid_t child = fork();
    if (child == 0) {
        app_pid = getpid();
        setpgid(0, 0);
        struct ids me = now_ids();
        close(pc[1]);
        close(gp[0]);
        close(big[1]);
        close(rc[0]);
        pid_t grandchild = fork();
        if (grandchild == 0) {
            app_pid = getpid();
            struct ids gme = now_ids();
            close(pc[0]);
            close(cg[1]);
            close(rg[0]);
            close(rc[1]);
            fill_pipe(gp[1], GP_LEN, 32);
            close(gp[1]);
            write_all(rg[1], "r", 1);
            wait_go();
            if (perturb("pgid"))
                setpgid(0, 0);
            check_ids("grandchild", gme);
            check_pipe("child → grandchild pipe", cg[0], CG_LEN, 31, 1);
            if (fcntl(big[0], F_GETPIPE_SZ) != big_size)
                fail("enlarged pipe size: expected %d, got %d", big_size, fcntl(big[0], F_GETPIPE_SZ));
            check_pipe("root → grandchild enlarged pipe", big[0], BIG_LEN, 33, 1);
            check_process_identity();
            send_result(rg[1]);
            _exit(failure_count ? 1 : 0);
        }
        close(gp[1]);
        close(big[0]);
        close(cg[0]);
        close(rg[1]);
        fill_pipe(cg[1], CG_LEN, 31);
        close(cg[1]);
        char r;
        if (read(rg[0], &r, 1) != 1)
            _exit(1);
        write_all(rc[1], "r", 1);
        wait_go();
        check_ids("child", me);
        check_pipe("root → child pipe", pc[0], PC_LEN, 30, 0);
        check_process_identity();
        take_result("grandchild", rg[0], grandchild);
        send_result(rc[1]);
        _exit(perturb("child-exit") ? 3 : (failure_count ? 1 : 0));
    }

    close(pc[0]);
    close(cg[0]);
    close(cg[1]);
    close(gp[1]);
    close(big[0]);
    close(rc[1]);
    close(rg[0]);
    close(rg[1]);
    fill_pipe(pc[1], PC_LEN, 30);
    fill_pipe(big[1], BIG_LEN, 33);
    close(big[1]);
    char r;
    if (read(rc[0], &r, 1) != 1) {
        say("FAIL tree: the child did not report ready\n");
        return 1;
    }
    /* Before READY: the child reads this pipe as soon as it sees go. */
    if (perturb("pipe"))
        write_all(pc[1], "x", 1);
    ready();
    wait_go();

    perturb_elsewhere("pgid");
    perturb_elsewhere("child-exit");
    if (perturb("eof")) {
        char c;
        (void)read(gp[0], &c, 1);
    }
    if (perturb("pipe-size"))
        fcntl(pc[1], F_SETPIPE_SZ, BIG_PIPE);

    check_ids("root", root);
    check_pipe("grandchild → root pipe", gp[0], GP_LEN, 32, 1);
    if (fcntl(pc[1], F_GETPIPE_SZ) != pc_size)
        fail("root → child pipe size: expected %d, got %d", pc_size, fcntl(pc[1], F_GETPIPE_SZ));
    take_result("child", rc[0], child);
    return finish();
}
