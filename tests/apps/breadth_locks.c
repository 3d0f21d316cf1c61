/*
 * breadth_locks: file locks are held again after a checkpoint, and status
 * flags such as O_SYNC are kept.
 *
 * Before READY, in the work directory:
 *   10 flock(LOCK_EX) on "flocked"
 *   11 an OFD write lock on bytes 0-99 of "ofd"
 *   12 POSIX locks on "posix": read on bytes 10-19, write from 100 to EOF
 *   13 "synced" opened O_WRONLY|O_SYNC
 *   14 "leased" opened O_RDONLY with a read lease, break signal SIGRTMIN+2
 *   15 the read end of a pipe (16 its write end) with O_ASYNC, owned by us,
 *      signal SIGRTMIN+3
 * After go, a forked child (another process, other descriptions) finds
 * every lock held: flock(LOCK_NB) fails with EWOULDBLOCK, F_OFD_GETLK and
 * F_GETLK report the same types, ranges and (POSIX) our pid, opening
 * "leased" for writing fails with EWOULDBLOCK and breaks the lease, which
 * brings us SIGRTMIN+2 for fd 14; fd 13 keeps O_SYNC; F_GETLEASE, F_GETSIG,
 * F_GETOWN and O_ASYNC read back, and a byte written into the pipe brings
 * SIGRTMIN+3 for fd 15 with POLLIN.
 *
 * Usage: breadth_locks [--selftest-fail=flock|ofd|posix|range|sync|lease|async|sigio]
 */
#include "common.h"

#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <time.h>

#define LEASE_SIG (SIGRTMIN + 2)
#define IO_SIG (SIGRTMIN + 3)

static int lock(int fd, int cmd, short type, off_t start, off_t len)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = start;
    fl.l_len = len;
    return fcntl(fd, cmd, &fl);
}

static void setup(void)
{
    fd_at(open("flocked", O_RDWR | O_CREAT, 0644), 10, "flocked");
    if (flock(10, LOCK_EX) != 0)
        setup_failed("flock");
    fd_at(open("ofd", O_RDWR | O_CREAT, 0644), 11, "ofd");
    if (lock(11, F_OFD_SETLK, F_WRLCK, 0, 100) != 0)
        setup_failed("ofd lock");
    fd_at(open("posix", O_RDWR | O_CREAT, 0644), 12, "posix");
    if (lock(12, F_SETLK, F_RDLCK, 10, 10) != 0 || lock(12, F_SETLK, F_WRLCK, 100, 0) != 0)
        setup_failed("posix lock");
    fd_at(open("synced", O_WRONLY | O_CREAT | O_SYNC, 0644), 13, "synced");

    /* Queued, not delivered: read with sigtimedwait after go. */
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, LEASE_SIG);
    sigaddset(&m, IO_SIG);
    if (sigprocmask(SIG_BLOCK, &m, NULL) != 0)
        setup_failed("sigprocmask");
    close(open("leased", O_RDWR | O_CREAT, 0644));
    fd_at(open("leased", O_RDONLY), 14, "leased");
    if (fcntl(14, F_SETSIG, LEASE_SIG) != 0 || fcntl(14, F_SETLEASE, F_RDLCK) != 0)
        setup_failed("lease");
    int p[2];
    if (pipe(p) != 0)
        setup_failed("pipe");
    fd_at(p[0], 15, "pipe read end");
    fd_at(p[1], 16, "pipe write end");
    if (fcntl(15, F_SETOWN, getpid()) != 0 || fcntl(15, F_SETSIG, IO_SIG) != 0 ||
        fcntl(15, F_SETFL, O_ASYNC | O_NONBLOCK) != 0)
        setup_failed("O_ASYNC");
}

/* Waits up to 5 s for `sig`; its si_fd and si_band in *info. */
static int wait_signal(int sig, siginfo_t *info)
{
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, sig);
    struct timespec t = { 5, 0 };
    return sigtimedwait(&m, info, &t);
}

static void perturbations(void)
{
    if (perturb("flock"))
        flock(10, LOCK_UN);
    if (perturb("ofd"))
        lock(11, F_OFD_SETLK, F_UNLCK, 0, 100);
    if (perturb("posix"))
        lock(12, F_SETLK, F_UNLCK, 10, 10);
    if (perturb("range"))
        lock(12, F_SETLK, F_UNLCK, 100, 50);
    if (perturb("sync"))
        fd_at(open("synced", O_WRONLY), 13, "synced again");
    if (perturb("lease"))
        fcntl(14, F_SETLEASE, F_UNLCK);
    if (perturb("async"))
        fcntl(15, F_SETFL, O_NONBLOCK);
    if (perturb("sigio"))
        fcntl(15, F_SETSIG, 0);
}

/* In a child: what another process sees of the locks. Exits with the number of differences. */
static int child_checks(void)
{
    int bad = 0;
    int f = open("flocked", O_RDWR);
    if (flock(f, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK) {
        say("flock on flocked: expected EWOULDBLOCK\n");
        bad++;
    }
    int o = open("ofd", O_RDWR);
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0;
    fl.l_len = 0;
    if (fcntl(o, F_OFD_GETLK, &fl) != 0 || fl.l_type != F_WRLCK || fl.l_start != 0 || fl.l_len != 100) {
        say("ofd lock: expected write 0+100, got type %d %lld+%lld\n", fl.l_type, (long long)fl.l_start,
            (long long)fl.l_len);
        bad++;
    }
    int p = open("posix", O_RDWR);
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0;
    fl.l_len = 50;
    if (fcntl(p, F_GETLK, &fl) != 0 || fl.l_type != F_RDLCK || fl.l_start != 10 || fl.l_len != 10 ||
        fl.l_pid != app_pid) {
        say("posix lock: expected read 10+10 by %d, got type %d %lld+%lld by %d\n", (int)app_pid, fl.l_type,
            (long long)fl.l_start, (long long)fl.l_len, (int)fl.l_pid);
        bad++;
    }
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_RDLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 50;
    fl.l_len = 0;
    if (fcntl(p, F_GETLK, &fl) != 0 || fl.l_type != F_WRLCK || fl.l_start != 100 || fl.l_len != 0 ||
        fl.l_pid != app_pid) {
        say("posix lock: expected write 100+EOF by %d, got type %d %lld+%lld by %d\n", (int)app_pid, fl.l_type,
            (long long)fl.l_start, (long long)fl.l_len, (int)fl.l_pid);
        bad++;
    }
    errno = 0;
    int w = open("leased", O_WRONLY | O_NONBLOCK);
    if (w >= 0 || errno != EWOULDBLOCK) {
        say("opening leased for writing: expected EWOULDBLOCK, got fd %d (%s)\n", w, strerror(errno));
        bad++;
    }
    return bad;
}

int main(int argc, char **argv)
{
    app_init("breadth_locks", argc, argv);
    setup();
    ready();
    wait_go();
    perturbations();
    /* Before the child's open starts breaking it. */
    int lease = fcntl(14, F_GETLEASE);
    /* The child's report lines would break the one-line protocol: it writes
     * them to a file of its own. */
    pid_t c = fork();
    if (c == 0) {
        int log = open("child.log", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(log, 1);
        _exit(child_checks());
    }
    int status = 0;
    waitpid(c, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char buf[512] = "";
        read_text("child.log", buf, sizeof buf);
        buf[strcspn(buf, "\n")] = '\0';
        fail("locks seen from another process: %s", buf);
    }
    int fl = fcntl(13, F_GETFL);
    if ((fl & O_SYNC) != O_SYNC)
        fail("fd 13 flags: expected O_SYNC, got 0%o", fl);

    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (lease != F_RDLCK)
        fail("fd 14 lease: expected F_RDLCK (%d), got %d", F_RDLCK, lease);
    else if (fcntl(14, F_GETSIG) != LEASE_SIG)
        fail("fd 14 F_GETSIG: expected %d, got %d", LEASE_SIG, fcntl(14, F_GETSIG));
    else if (wait_signal(LEASE_SIG, &si) != LEASE_SIG)
        fail("lease break: no SIGRTMIN+2 within 5 s (%s)", strerror(errno));
    else if (si.si_fd != 14)
        fail("lease break: signal for fd %d, expected 14", si.si_fd);
    fcntl(14, F_SETLEASE, F_UNLCK);

    fl = fcntl(15, F_GETFL);
    memset(&si, 0, sizeof si);
    if ((fl & O_ASYNC) == 0)
        fail("fd 15 flags: expected O_ASYNC, got 0%o", fl);
    else if (fcntl(15, F_GETOWN) != app_pid)
        fail("fd 15 F_GETOWN: expected %d, got %d", (int)app_pid, fcntl(15, F_GETOWN));
    else if (fcntl(15, F_GETSIG) != IO_SIG)
        fail("fd 15 F_GETSIG: expected %d, got %d", IO_SIG, fcntl(15, F_GETSIG));
    else if (write(16, "x", 1) != 1)
        fail("pipe write: %s", strerror(errno));
    else if (wait_signal(IO_SIG, &si) != IO_SIG)
        fail("O_ASYNC pipe: no SIGRTMIN+3 within 5 s after a write (%s)", strerror(errno));
    else if (si.si_fd != 15 || (si.si_band & POLLIN) == 0)
        fail("O_ASYNC pipe: signal for fd %d band %#lx, expected fd 15 with POLLIN", si.si_fd, (long)si.si_band);
    return finish();
}
