/*
 * breadth_pidfd: pidfds of processes of the tree.
 *
 * Before READY: fd 10 is a pidfd (close-on-exec) of a child that waits for
 * a signal, fd 11 a pidfd of a child that has exited with status 5 and is
 * left unreaped (a zombie), fd 12 a pidfd of the app itself opened with
 * PIDFD_NONBLOCK.
 *
 * After go: each fd is a pidfd of the same process (fdinfo Pid) with its
 * flags and close-on-exec bit; the zombie's pidfd is readable and waitid
 * through it reaps status 5; the self pidfd takes a duplicate of stdin
 * (pidfd_getfd); a signal sent through fd 10 (pidfd_send_signal) ends the
 * first child with status 21, which its pidfd shows (readable) and waitid
 * through it reaps.
 *
 * Usage: breadth_pidfd [--selftest-fail=child|zombie|flags|fdnum|cloexec]
 */
#include "common.h"

#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

#define FD_CHILD 10
#define FD_ZOMBIE 11
#define FD_SELF 12

static void on_usr1(int sig)
{
    (void)sig;
    _exit(21);
}

static int pidfd_open(pid_t pid, unsigned flags)
{
    return (int)syscall(SYS_pidfd_open, pid, flags);
}

/* The Pid: line of the fd's fdinfo, or -2. */
static long fdinfo_pid(int fd)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    if (read_text(path, buf, sizeof buf) <= 0)
        return -2;
    char *p = strstr(buf, "\nPid:");
    return p ? strtol(p + 5, NULL, 10) : -2;
}

static char process_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (read_text(path, buf, sizeof buf) <= 0)
        return '?';
    char *p = strrchr(buf, ')');
    return p && p[1] ? p[2] : '?';
}

static int readable(int fd, int ms)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

static void place(int fd, int at, int cloexec)
{
    if (fd < 0 || dup3(fd, at, cloexec ? O_CLOEXEC : 0) != at)
        setup_failed("placing a pidfd");
    close(fd);
}

int main(int argc, char **argv)
{
    app_init("breadth_pidfd", argc, argv);
    int go_pipe[2];
    if (pipe2(go_pipe, O_CLOEXEC) != 0)
        setup_failed("pipe");

    pid_t waiter = fork();
    if (waiter == 0) {
        signal(SIGUSR1, on_usr1);
        for (;;)
            pause();
    }
    pid_t ender = fork();
    if (ender == 0) {
        char b;
        close(go_pipe[1]);
        if (read(go_pipe[0], &b, 1) != 1)
            _exit(9);
        _exit(5);
    }
    close(go_pipe[0]);
    place(pidfd_open(waiter, 0), FD_CHILD, 1);
    place(pidfd_open(ender, 0), FD_ZOMBIE, 0);
    place(pidfd_open(getpid(), O_NONBLOCK), FD_SELF, 0);
    /* The second child ends; its pidfd becomes readable; it stays a zombie. */
    write_all(go_pipe[1], "x", 1);
    close(go_pipe[1]);
    if (!readable(FD_ZOMBIE, 5000))
        setup_failed("the second child did not end");
    if (process_state(ender) != 'Z')
        setup_failed("the second child is not a zombie");
    /* The waiter has its handler once it pauses. */
    sleep_ns(50 * 1000 * 1000L);

    ready();
    wait_go();
    if (perturb("child"))
        kill(waiter, SIGKILL);
    if (perturb("zombie"))
        waitpid(ender, NULL, 0);
    if (perturb("flags"))
        fcntl(FD_SELF, F_SETFL, 0);
    if (perturb("fdnum")) {
        dup2(FD_CHILD, 13);
        close(FD_CHILD);
    }
    if (perturb("cloexec"))
        fcntl(FD_ZOMBIE, F_SETFD, FD_CLOEXEC);

    long want[3] = { waiter, ender, getpid() };
    int want_cloexec[3] = { FD_CLOEXEC, 0, 0 };
    int want_fl[3] = { 0, 0, O_NONBLOCK };
    for (int i = 0; i < 3; i++) {
        int fd = FD_CHILD + i;
        long pid = fdinfo_pid(fd);
        if (pid != want[i])
            fail("fd %d: expected a pidfd of process %ld, got Pid %ld", fd, want[i], pid);
        int fdf = fcntl(fd, F_GETFD);
        if (fdf != want_cloexec[i])
            fail("fd %d close-on-exec: expected %d, got %d", fd, want_cloexec[i], fdf);
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || (fl & O_NONBLOCK) != want_fl[i])
            fail("fd %d O_NONBLOCK: expected %d, got %d", fd, want_fl[i], fl < 0 ? fl : fl & O_NONBLOCK);
    }

    /* The zombie: readable, reaped through its pidfd. */
    if (!readable(FD_ZOMBIE, 0))
        fail("the zombie's pidfd: expected readable, got not readable");
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (syscall(SYS_waitid, P_PIDFD, FD_ZOMBIE, &si, WEXITED, NULL) != 0)
        fail("waitid on the zombie's pidfd: expected 0, got %s", strerror(errno));
    else if (si.si_pid != ender || si.si_code != CLD_EXITED || si.si_status != 5)
        fail("the zombie's status: expected pid %d exited 5, got pid %d code %d status %d", (int)ender,
             (int)si.si_pid, si.si_code, si.si_status);

    /* The self pidfd: a duplicate of stdin through it. */
    int dup_in = (int)syscall(SYS_pidfd_getfd, FD_SELF, 0, 0);
    struct stat a, b;
    if (dup_in < 0)
        fail("pidfd_getfd through the self pidfd: %s", strerror(errno));
    else if (fstat(0, &a) != 0 || fstat(dup_in, &b) != 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev)
        fail("pidfd_getfd through the self pidfd: expected stdin's file, got another");
    if (dup_in >= 0)
        close(dup_in);

    /* The waiter: alive, then ended through a signal sent by its pidfd. */
    if (readable(FD_CHILD, 0))
        fail("the waiter's pidfd: expected not readable (alive), got readable");
    if (syscall(SYS_pidfd_send_signal, FD_CHILD, SIGUSR1, NULL, 0) != 0)
        fail("pidfd_send_signal: expected 0, got %s", strerror(errno));
    if (!readable(FD_CHILD, 5000))
        fail("the waiter's pidfd: expected readable after the signal, got not readable");
    memset(&si, 0, sizeof si);
    if (syscall(SYS_waitid, P_PIDFD, FD_CHILD, &si, WEXITED, NULL) != 0)
        fail("waitid on the waiter's pidfd: expected 0, got %s", strerror(errno));
    else if (si.si_pid != waiter || si.si_code != CLD_EXITED || si.si_status != 21)
        fail("the waiter's status: expected pid %d exited 21, got pid %d code %d status %d", (int)waiter,
             (int)si.si_pid, si.si_code, si.si_status);
    if (perturb("fdnum"))
        kill(waiter, SIGKILL);
    return finish();
}
