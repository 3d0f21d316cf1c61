/*
 * breadth_fanotify: fanotify groups, kept with their flags and marks.
 *
 * The app mounts two tmpfs of its own in the work directory, mnt/ and fs/
 * (a mount mark on the work directory's own mount would see every open of
 * the system, and a dump refuses a group with events queued), and unmounts
 * them when it ends.
 *
 * Before READY:
 *   fd 10  FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK, event flags
 *          O_RDONLY | O_LARGEFILE: an inode mark on mnt/watched
 *          (FAN_MODIFY | FAN_CLOSE_WRITE) ignoring FAN_OPEN, surviving
 *          modification; a mount mark on mnt/ (FAN_OPEN)
 *   fd 11  FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_REPORT_FID, a filesystem
 *          mark on fs/ (FAN_CREATE | FAN_DELETE), when the kernel allows
 *          (else fd 11 is not made)
 *
 * After go: the fanotify lines of each group's fdinfo (flags, event
 * flags, every mark with its inode, handle, mount, masks and flags) and
 * its status flags read as at READY; a write to mnt/watched and an open of
 * mnt/other arrive on fd 10 as FAN_MODIFY on mnt/watched (the event's fd
 * reaches it) with no FAN_OPEN of it (ignored), and FAN_OPEN on mnt/other;
 * a file created in fs/ arrives on fd 11 as FAN_CREATE. Needs
 * CAP_SYS_ADMIN (root).
 *
 * Usage: breadth_fanotify [--selftest-fail=mask|event]
 */
#include "common.h"

#include <poll.h>
#include <sys/mount.h>
#include <sys/stat.h>

/* From linux/fanotify.h (a stable ABI; the ARM toolchains carry no kernel
 * headers). */
#define F_CLOEXEC 0x1
#define F_NONBLOCK 0x2
#define F_CLASS_NOTIF 0x0
#define F_REPORT_FID 0x200
#define F_MARK_ADD 0x1
#define F_MARK_MOUNT 0x10
#define F_MARK_IGNORED_MASK 0x20
#define F_MARK_IGNORED_SURV_MODIFY 0x40
#define F_MARK_FILESYSTEM 0x100
#define F_ACCESS 0x1ULL
#define F_MODIFY 0x2ULL
#define F_CLOSE_WRITE 0x8ULL
#define F_OPEN 0x20ULL
#define F_CREATE 0x100ULL
#define F_DELETE 0x200ULL
#define F_NOFD (-1)

#if defined(__x86_64__)
#define NR_FANOTIFY_INIT 300
#define NR_FANOTIFY_MARK 301
#elif defined(__aarch64__)
#define NR_FANOTIFY_INIT 262
#define NR_FANOTIFY_MARK 263
#elif defined(__arm__)
#define NR_FANOTIFY_INIT 367
#define NR_FANOTIFY_MARK 368
#else
#error "fanotify syscall numbers for this architecture"
#endif

#ifndef O_LARGEFILE_KERNEL
#if defined(__x86_64__)
#define O_LARGEFILE_KERNEL 0100000
#else
#define O_LARGEFILE_KERNEL 0400000
#endif
#endif

struct fan_event {
    uint32_t event_len;
    uint8_t vers, reserved;
    uint16_t metadata_len;
    uint64_t mask;
    int32_t fd, pid;
};

static int fan_init(unsigned flags, unsigned event_flags)
{
    return (int)syscall(NR_FANOTIFY_INIT, flags, event_flags);
}

static int fan_mark(int fd, unsigned flags, uint64_t mask, const char *path)
{
#if defined(__arm__)
    /* The 64-bit mask takes the register pair r2/r3, low word first. */
    return (int)syscall(NR_FANOTIFY_MARK, fd, flags, (unsigned long)(mask & 0xffffffffu),
                        (unsigned long)(mask >> 32), AT_FDCWD, path);
#else
    return (int)syscall(NR_FANOTIFY_MARK, fd, flags, mask, AT_FDCWD, path);
#endif
}

#define NFD 2
static const int fds[NFD] = { 10, 11 };
static int made[NFD];
static char work[512], mnt_dir[600], fs_dir[600], watched[640], other[640];

struct seen {
    int flags;
    char lines[2048];
};
static struct seen at_ready[NFD];

static void unmount_all(void)
{
    umount2(mnt_dir, MNT_DETACH);
    umount2(fs_dir, MNT_DETACH);
}

static void read_state(int fd, struct seen *s)
{
    char path[64], text[4096];
    memset(s, 0, sizeof *s);
    s->flags = fcntl(fd, F_GETFL);
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    if (read_text(path, text, sizeof text) < 0)
        return;
    size_t len = 0;
    for (char *l = strtok(text, "\n"); l; l = strtok(NULL, "\n")) {
        if (strncmp(l, "fanotify ", 9) != 0)
            continue;
        int n = snprintf(s->lines + len, sizeof s->lines - len, "%s; ", l);
        if (n < 0 || (size_t)n >= sizeof s->lines - len)
            break;
        len += (size_t)n;
    }
}

static void make_file(const char *path)
{
    int f = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (f < 0)
        setup_failed(path);
    close(f);
}

static void setup(void)
{
    if (!getcwd(work, sizeof work))
        setup_failed("getcwd");
    snprintf(mnt_dir, sizeof mnt_dir, "%s/mnt", work);
    snprintf(fs_dir, sizeof fs_dir, "%s/fs", work);
    snprintf(watched, sizeof watched, "%s/watched", mnt_dir);
    snprintf(other, sizeof other, "%s/other", mnt_dir);
    if ((mkdir(mnt_dir, 0755) != 0 && errno != EEXIST) || (mkdir(fs_dir, 0755) != 0 && errno != EEXIST))
        setup_failed("mkdir");
    if (mount("torpor-fan", mnt_dir, "tmpfs", 0, "size=64k") != 0)
        setup_failed("mounting mnt");
    setup_cleanup = unmount_all;
    if (mount("torpor-fan", fs_dir, "tmpfs", 0, "size=64k") != 0)
        setup_failed("mounting fs");
    make_file(watched);
    make_file(other);

    fd_at(fan_init(F_CLASS_NOTIF | F_CLOEXEC | F_NONBLOCK, O_RDONLY | O_LARGEFILE_KERNEL), 10, "fanotify_init");
    if (fan_mark(10, F_MARK_ADD, F_MODIFY | F_CLOSE_WRITE, watched) != 0)
        setup_failed("inode mark");
    if (fan_mark(10, F_MARK_ADD | F_MARK_IGNORED_MASK | F_MARK_IGNORED_SURV_MODIFY, F_OPEN, watched) != 0)
        setup_failed("ignored mask");
    if (fan_mark(10, F_MARK_ADD | F_MARK_MOUNT, F_OPEN, mnt_dir) != 0)
        setup_failed("mount mark");
    made[0] = 1;

    int g = fan_init(F_CLASS_NOTIF | F_CLOEXEC | F_REPORT_FID, O_RDONLY);
    if (g >= 0 && fan_mark(g, F_MARK_ADD | F_MARK_FILESYSTEM, F_CREATE | F_DELETE, fs_dir) == 0) {
        fd_at(g, 11, "fanotify_init with FAN_REPORT_FID");
        made[1] = 1;
    } else if (g >= 0) {
        close(g);
    }
    for (int i = 0; i < NFD; i++)
        if (made[i])
            read_state(fds[i], &at_ready[i]);
}

static void compare(int i)
{
    struct seen now;
    read_state(fds[i], &now);
    const struct seen *w = &at_ready[i];
    if (strcmp(now.lines, w->lines) != 0)
        fail("fd %d: expected fdinfo %sgot %s", fds[i], w->lines, now.lines);
    if (now.flags != w->flags)
        fail("fd %d: expected status flags %#x, got %#x", fds[i], w->flags, now.flags);
}

/* Reads the events of `fd` for up to 2 s, until `enough` says so; each
 * event's mask is added to that of the path its fd reaches (or to *nofd). */
static void gather(int fd, uint64_t *on_watched, uint64_t *on_other, uint64_t *nofd)
{
    static unsigned char buf[4096];
    for (int tries = 0; tries < 20; tries++) {
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, 100) <= 0) {
            if (*on_watched || *on_other || *nofd)
                return;
            continue;
        }
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0)
            continue;
        for (ssize_t at = 0; at + (ssize_t)sizeof(struct fan_event) <= n;) {
            struct fan_event e;
            memcpy(&e, buf + at, sizeof e);
            if (e.event_len < sizeof e)
                break;
            if (e.fd == F_NOFD || e.fd < 0) {
                *nofd |= e.mask;
            } else {
                char link[64], got[700] = "";
                snprintf(link, sizeof link, "/proc/self/fd/%d", e.fd);
                ssize_t l = readlink(link, got, sizeof got - 1);
                got[l > 0 ? l : 0] = '\0';
                if (strcmp(got, watched) == 0)
                    *on_watched |= e.mask;
                else if (strcmp(got, other) == 0)
                    *on_other |= e.mask;
                close(e.fd);
            }
            at += e.event_len;
        }
    }
}

static void events(void)
{
    const char *target = watched;
    if (perturb("event"))
        target = other;
    int f = open(target, O_WRONLY | O_CLOEXEC);
    if (f < 0 || write(f, "x", 1) != 1)
        fail("writing %s: %s", target, strerror(errno));
    if (f >= 0)
        close(f);
    f = open(other, O_RDONLY | O_CLOEXEC);
    if (f >= 0)
        close(f);
    uint64_t w = 0, o = 0, none = 0;
    gather(10, &w, &o, &none);
    if (!(w & F_MODIFY))
        fail("fd 10: expected FAN_MODIFY on %s, got mask %#llx (other %#llx)", watched, (unsigned long long)w,
             (unsigned long long)o);
    if (w & F_OPEN)
        fail("fd 10: expected FAN_OPEN of %s ignored, got mask %#llx", watched, (unsigned long long)w);
    if (!(o & F_OPEN))
        fail("fd 10: expected FAN_OPEN on %s (mount mark), got mask %#llx", other, (unsigned long long)o);
    if (made[1]) {
        char created[700];
        snprintf(created, sizeof created, "%s/created", fs_dir);
        f = open(created, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        if (f >= 0)
            close(f);
        uint64_t a = 0, b = 0, fid = 0;
        gather(11, &a, &b, &fid);
        if (!(fid & F_CREATE))
            fail("fd 11: expected FAN_CREATE in %s, got mask %#llx", fs_dir, (unsigned long long)fid);
    }
}

int main(int argc, char **argv)
{
    app_init("breadth_fanotify", argc, argv);
    setup();
    ready();
    wait_go();
    if (perturb("mask"))
        fan_mark(10, F_MARK_ADD, F_ACCESS, watched);
    for (int i = 0; i < NFD; i++)
        if (made[i])
            compare(i);
    events();
    unmount_all();
    return finish();
}
