/*
 * breadth_pty: pseudo-terminal pairs the app holds itself, and a session
 * whose controlling terminal is one of them (a terminal multiplexer's
 * shape).
 *
 * Before READY: pair A (master at fd 10) gets line settings of its own
 * (no echo, a 19200 baud speed, other erase and kill characters), a 33x91
 * window with pixels and its slave's mode 0620. A child starts a session
 * on A's slave (its controlling terminal, its own group in the
 * foreground) and writes "queued\n" there, which the master leaves unread.
 * Pair B (master at fd 11) is in packet mode, locked, with a 10x20 window
 * and no slave open.
 *
 * After go: A's master reads exactly "queued\r\n" and nothing more; both
 * pairs have their index, name, line settings, window, packet mode and
 * lock; the slave's mode is 0620. The master writes "after\n": the child
 * reads that line and checks its session, its controlling terminal
 * (through /dev/tty too), its foreground group and its window, and answers
 * "ok\n", which the master reads as "ok\r\n"; the child exits 0.
 *
 * Usage: breadth_pty [--selftest-fail=queued|winsize|termios|packet|lock|child]
 */
#include "common.h"

#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>

#define FD_A 10
#define FD_B 11

struct pair {
    int master;
    int index;
    char name[64];
    struct termios tio;
    struct winsize ws;
    int packet;
    int locked;
    /* Whether TIOCGPKT and TIOCGPTLCK answer: every kernel since 3.8 does;
     * an emulator's syscall layer may not, and then there is nothing to
     * compare. */
    int has_packet;
    int has_lock;
};

static void probe(struct pair *p)
{
    int v;
    p->has_packet = ioctl(p->master, TIOCGPKT, &v) == 0;
    if (p->has_packet && v != p->packet)
        setup_failed("TIOCGPKT disagrees with TIOCPKT");
    p->has_lock = ioctl(p->master, TIOCGPTLCK, &v) == 0;
    if (p->has_lock && v != p->locked)
        setup_failed("TIOCGPTLCK disagrees with TIOCSPTLCK");
}

static void open_pair(struct pair *p, int at)
{
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0)
        setup_failed("posix_openpt");
    if (grantpt(m) != 0 || unlockpt(m) != 0)
        setup_failed("grantpt/unlockpt");
    if (dup2(m, at) != at)
        setup_failed("dup2 master");
    close(m);
    p->master = at;
    if (ioctl(at, TIOCGPTN, &p->index) != 0)
        setup_failed("TIOCGPTN");
    snprintf(p->name, sizeof p->name, "/dev/pts/%d", p->index);
}

/* What can be read from the master within 300 ms, up to cap bytes. */
static ssize_t drain(int fd, char *buf, size_t cap)
{
    size_t got = 0;
    while (got < cap) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        if (poll(&pfd, 1, 300) <= 0)
            break;
        ssize_t n = read(fd, buf + got, cap - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

static void check_pair(const char *what, const struct pair *p)
{
    int index = -1;
    if (ioctl(p->master, TIOCGPTN, &index) != 0 || index != p->index)
        fail("%s index: expected %d, got %d", what, p->index, index);
    char *name = ptsname(p->master);
    if (!name || strcmp(name, p->name) != 0)
        fail("%s name: expected %s, got %s", what, p->name, name ? name : "(none)");
    struct termios t;
    memset(&t, 0, sizeof t);
    if (tcgetattr(p->master, &t) != 0)
        fail("%s termios: tcgetattr: %s", what, strerror(errno));
    if (t.c_iflag != p->tio.c_iflag || t.c_oflag != p->tio.c_oflag || t.c_cflag != p->tio.c_cflag ||
        t.c_lflag != p->tio.c_lflag)
        fail("%s termios modes: expected %o %o %o %o, got %o %o %o %o", what, p->tio.c_iflag,
             p->tio.c_oflag, p->tio.c_cflag, p->tio.c_lflag, t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag);
    if (memcmp(t.c_cc, p->tio.c_cc, sizeof t.c_cc) != 0)
        fail("%s termios control characters differ (VERASE %d, VKILL %d, expected %d, %d)", what,
             t.c_cc[VERASE], t.c_cc[VKILL], p->tio.c_cc[VERASE], p->tio.c_cc[VKILL]);
    if (cfgetospeed(&t) != cfgetospeed(&p->tio) || cfgetispeed(&t) != cfgetispeed(&p->tio))
        fail("%s speed: expected %o, got %o", what, (unsigned)cfgetospeed(&p->tio), (unsigned)cfgetospeed(&t));
    struct winsize ws;
    memset(&ws, 0, sizeof ws);
    if (ioctl(p->master, TIOCGWINSZ, &ws) != 0 || memcmp(&ws, &p->ws, sizeof ws) != 0)
        fail("%s window: expected %ux%u (%ux%u px), got %ux%u (%ux%u px)", what, p->ws.ws_row, p->ws.ws_col,
             p->ws.ws_xpixel, p->ws.ws_ypixel, ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel);
    int packet = -1, locked = -1;
    if (p->has_packet && (ioctl(p->master, TIOCGPKT, &packet) != 0 || packet != p->packet))
        fail("%s packet mode: expected %d, got %d", what, p->packet, packet);
    if (p->has_lock && (ioctl(p->master, TIOCGPTLCK, &locked) != 0 || locked != p->locked))
        fail("%s lock: expected %d, got %d", what, p->locked, locked);
}

/* The session leader on A's slave: exits 0 when all holds, else a code
 * naming the first check that failed. */
static int child_main(const char *slave, int ready_w)
{
    if (setsid() < 0)
        return 10;
    /* Without O_NOCTTY: the session's controlling terminal. */
    int s = open(slave, O_RDWR);
    if (s < 0)
        return 11;
    if (tcsetpgrp(s, getpid()) != 0)
        return 12;
    write_all(s, "queued\n", 7);
    write_all(ready_w, "r", 1);
    close(ready_w);
    char line[64];
    ssize_t n = read(s, line, sizeof line);
    if (n != 6 || memcmp(line, "after\n", 6) != 0)
        return 13;
    /* Its own session; that A's slave is its controlling terminal shows
     * through /dev/tty below. */
    if (getsid(0) != getpid())
        return 14;
    if (tcgetpgrp(s) != getpgrp() || getpgrp() != getpid())
        return 15;
    int tty = open("/dev/tty", O_RDWR | O_NOCTTY);
    if (tty < 0)
        return 16;
    struct winsize ws;
    if (ioctl(tty, TIOCGWINSZ, &ws) != 0 || ws.ws_row != 33 || ws.ws_col != 91 || ws.ws_xpixel != 728 ||
        ws.ws_ypixel != 594)
        return 17;
    close(tty);
    write_all(s, "ok\n", 3);
    return 0;
}

int main(int argc, char **argv)
{
    app_init("breadth_pty", argc, argv);
    static struct pair a, b;
    open_pair(&a, FD_A);
    open_pair(&b, FD_B);

    /* Pair A: settings of its own, set through the master. */
    if (tcgetattr(FD_A, &a.tio) != 0)
        setup_failed("tcgetattr A");
    a.tio.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK | ECHOCTL | ECHOKE);
    a.tio.c_cc[VERASE] = 0x08;
    a.tio.c_cc[VKILL] = 0x18;
    cfsetispeed(&a.tio, B19200);
    cfsetospeed(&a.tio, B19200);
    if (tcsetattr(FD_A, TCSANOW, &a.tio) != 0 || tcgetattr(FD_A, &a.tio) != 0)
        setup_failed("tcsetattr A");
    a.ws = (struct winsize){ .ws_row = 33, .ws_col = 91, .ws_xpixel = 728, .ws_ypixel = 594 };
    if (ioctl(FD_A, TIOCSWINSZ, &a.ws) != 0)
        setup_failed("TIOCSWINSZ A");
    if (chmod(a.name, 0620) != 0)
        setup_failed("chmod slave A");

    /* Pair B: packet mode, locked, a window, no slave. */
    if (tcgetattr(FD_B, &b.tio) != 0)
        setup_failed("tcgetattr B");
    b.ws = (struct winsize){ .ws_row = 10, .ws_col = 20, .ws_xpixel = 0, .ws_ypixel = 0 };
    b.packet = 1;
    b.locked = 1;
    if (ioctl(FD_B, TIOCSWINSZ, &b.ws) != 0 || ioctl(FD_B, TIOCPKT, &b.packet) != 0 ||
        ioctl(FD_B, TIOCSPTLCK, &b.locked) != 0)
        setup_failed("pair B settings");
    probe(&a);
    probe(&b);

    int rp[2];
    if (pipe2(rp, O_CLOEXEC) != 0)
        setup_failed("pipe");
    pid_t c = fork();
    if (c == 0) {
        close(rp[0]);
        close(FD_A);
        close(FD_B);
        _exit(child_main(a.name, rp[1]));
    }
    close(rp[1]);
    char r;
    if (read(rp[0], &r, 1) != 1) {
        say("FAIL breadth_pty: setup: the session leader did not start\n");
        return 3;
    }
    close(rp[0]);
    struct stat st;
    if (stat(a.name, &st) != 0)
        setup_failed("stat slave A");
    mode_t mode = st.st_mode & 07777;

    ready();
    wait_go();
    char buf[256];
    if (perturb("queued"))
        drain(FD_A, buf, sizeof buf);
    if (perturb("winsize")) {
        struct winsize w = { .ws_row = 34, .ws_col = 91, .ws_xpixel = 728, .ws_ypixel = 594 };
        ioctl(FD_A, TIOCSWINSZ, &w);
    }
    if (perturb("termios")) {
        struct termios t = a.tio;
        t.c_cc[VKILL] = 0x15;
        tcsetattr(FD_A, TCSANOW, &t);
    }
    if (perturb("packet")) {
        int off = 0;
        ioctl(FD_B, TIOCPKT, &off);
    }
    if (perturb("lock")) {
        int off = 0;
        ioctl(FD_B, TIOCSPTLCK, &off);
    }

    ssize_t n = drain(FD_A, buf, sizeof buf);
    if (n != 8 || memcmp(buf, "queued\r\n", 8) != 0)
        fail("unread output of A: expected 8 bytes \"queued\\r\\n\", got %zd bytes \"%.*s\"", n,
             n > 0 ? (int)n : 0, buf);
    check_pair("pair A", &a);
    check_pair("pair B", &b);
    if (stat(a.name, &st) != 0 || (st.st_mode & 07777) != mode)
        fail("mode of %s: expected %o, got %o", a.name, (unsigned)mode, (unsigned)(st.st_mode & 07777));

    const char *line = perturb("child") ? "wrong\n" : "after\n";
    write_all(FD_A, line, 6);
    int status = 0;
    if (waitpid(c, &status, 0) != c || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("session leader %d: expected exit 0, got status 0x%x", (int)c, status);
    n = drain(FD_A, buf, sizeof buf);
    if (n != 4 || memcmp(buf, "ok\r\n", 4) != 0)
        fail("the session leader's answer: expected \"ok\\r\\n\", got %zd bytes \"%.*s\"", n,
             n > 0 ? (int)n : 0, buf);
    return finish();
}
