/*
 * breadth_locks: file locks are held again after a checkpoint, and status
 * flags such as O_SYNC are kept.
 *
 * Before READY, in the work directory:
 *   10 flock(LOCK_EX) on "flocked"
 *   11 an OFD write lock on bytes 0-99 of "ofd"
 *   12 POSIX locks on "posix": read on bytes 10-19, write from 100 to EOF
 *   13 "synced" opened O_WRONLY|O_SYNC
 * After go, a forked child (another process, other descriptions) finds
 * every lock held: flock(LOCK_NB) fails with EWOULDBLOCK, F_OFD_GETLK and
 * F_GETLK report the same types, ranges and (POSIX) our pid; fd 13 keeps
 * O_SYNC.
 *
 * Usage: breadth_locks [--selftest-fail=flock|ofd|posix|range|sync]
 */
#include "common.h"

#include <sys/file.h>
#include <sys/wait.h>

static void die(const char *what)
{
    say("FAIL breadth_locks: setup: %s: %s\n", what, strerror(errno));
    _exit(3);
}

static void at(int fd, int want, const char *what)
{
    if (fd < 0)
        die(what);
    if (fd != want) {
        if (dup2(fd, want) != want)
            die(what);
        close(fd);
    }
}

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
    at(open("flocked", O_RDWR | O_CREAT, 0644), 10, "flocked");
    if (flock(10, LOCK_EX) != 0)
        die("flock");
    at(open("ofd", O_RDWR | O_CREAT, 0644), 11, "ofd");
    if (lock(11, F_OFD_SETLK, F_WRLCK, 0, 100) != 0)
        die("ofd lock");
    at(open("posix", O_RDWR | O_CREAT, 0644), 12, "posix");
    if (lock(12, F_SETLK, F_RDLCK, 10, 10) != 0 || lock(12, F_SETLK, F_WRLCK, 100, 0) != 0)
        die("posix lock");
    at(open("synced", O_WRONLY | O_CREAT | O_SYNC, 0644), 13, "synced");
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
        at(open("synced", O_WRONLY), 13, "synced again");
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
    return bad;
}

int main(int argc, char **argv)
{
    app_init("breadth_locks", argc, argv);
    setup();
    ready();
    wait_go();
    perturbations();
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
    return finish();
}
