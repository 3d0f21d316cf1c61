/*
 * breadth_cgroup: control group (v2) membership.
 *
 * Before READY: finds the v2 hierarchy (mounting it on /sys/fs/cgroup when
 * none is mounted and that is an empty directory, as on the emulated
 * boards), makes torpor-breadth-PID/app and torpor-breadth-PID/kid below
 * its root, sets pids.max 77 in app where the pids controller can be
 * enabled, moves itself into app and a child into kid.
 *
 * After go: the app's /proc/self/cgroup and the child's /proc/PID/cgroup
 * name exactly those cgroups, app's pids.max is 77 where it was set (after
 * a power cycle torpor has made the cgroups again, with the setting); then
 * both go back to the root and the cgroups are removed.
 *
 * Usage: breadth_cgroup [--selftest-fail=cgroup|child|limit]
 */
#include "common.h"

#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>

static char mnt[256], root[256], base[512];
static pid_t child;

/* The first cgroup2 mount's point and root, from mountinfo. */
static int find_mount(void)
{
    static char info[16384];
    if (read_text("/proc/self/mountinfo", info, sizeof info) <= 0)
        return -1;
    for (char *line = strtok(info, "\n"); line; line = strtok(NULL, "\n")) {
        char *dash = strstr(line, " - cgroup2 ");
        if (!dash)
            continue;
        *dash = '\0';
        char r[256], m[256];
        if (sscanf(line, "%*s %*s %*s %255s %255s", r, m) != 2)
            continue;
        snprintf(root, sizeof root, "%s", strcmp(r, "/") == 0 ? "" : r);
        snprintf(mnt, sizeof mnt, "%s", m);
        return 0;
    }
    return -1;
}

static int put_text(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

static int join(const char *dir, pid_t pid)
{
    char path[640], num[16];
    snprintf(path, sizeof path, "%s/cgroup.procs", dir);
    snprintf(num, sizeof num, "%d", (int)pid);
    return put_text(path, num);
}

/* The v2 line of /proc/PID/cgroup, without "0::" and the newline. */
static void cgroup_of(pid_t pid, char *out, size_t cap)
{
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/cgroup", (int)pid);
    out[0] = '\0';
    if (read_text(path, buf, sizeof buf) <= 0)
        return;
    char *v = strstr(buf, "0::");
    if (!v)
        return;
    v += 3;
    size_t n = strcspn(v, "\n");
    snprintf(out, cap, "%.*s", (int)n, v);
}

static void cleanup(void)
{
    char dir[640];
    if (child > 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        child = 0;
    }
    join(mnt, getpid());
    snprintf(dir, sizeof dir, "%s/app", base);
    rmdir(dir);
    snprintf(dir, sizeof dir, "%s/kid", base);
    rmdir(dir);
    rmdir(base);
}

int main(int argc, char **argv)
{
    app_init("breadth_cgroup", argc, argv);
    if (find_mount() != 0) {
        if (mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0
            || find_mount() != 0)
            setup_failed("no cgroup2 mount, and none could be made on /sys/fs/cgroup");
    }
    snprintf(base, sizeof base, "%s/torpor-breadth-%d", mnt, (int)getpid());
    char app[640], kid[640], path[700];
    snprintf(app, sizeof app, "%s/app", base);
    snprintf(kid, sizeof kid, "%s/kid", base);
    if (mkdir(base, 0755) != 0 || mkdir(app, 0755) != 0 || mkdir(kid, 0755) != 0)
        setup_failed("mkdir of the cgroups");
    setup_cleanup = cleanup;
    /* The pids controller, where the kernel has it in the v2 hierarchy. */
    int limited = 0;
    char controllers[512] = "";
    snprintf(path, sizeof path, "%s/cgroup.controllers", mnt);
    read_text(path, controllers, sizeof controllers);
    if (strstr(controllers, "pids")) {
        snprintf(path, sizeof path, "%s/cgroup.subtree_control", mnt);
        int a = put_text(path, "+pids");
        snprintf(path, sizeof path, "%s/cgroup.subtree_control", base);
        int b = put_text(path, "+pids");
        snprintf(path, sizeof path, "%s/pids.max", app);
        if (a != 0 || b != 0 || put_text(path, "77") != 0)
            setup_failed("pids.max 77");
        limited = 1;
    }
    pid_t c = fork();
    if (c == 0) {
        for (;;)
            pause();
    }
    if (c < 0)
        setup_failed("fork");
    child = c;
    if (join(app, getpid()) != 0 || join(kid, c) != 0)
        setup_failed("joining the cgroups");
    char want_app[700], want_kid[700], got[700];
    snprintf(want_app, sizeof want_app, "%s/torpor-breadth-%d/app", root, (int)getpid());
    snprintf(want_kid, sizeof want_kid, "%s/torpor-breadth-%d/kid", root, (int)getpid());
    ready();
    wait_go();
    if (perturb("cgroup"))
        join(base, getpid());
    if (perturb("child"))
        join(base, c);
    snprintf(path, sizeof path, "%s/pids.max", app);
    if (limited && perturb("limit"))
        put_text(path, "78");
    cgroup_of(getpid(), got, sizeof got);
    if (strcmp(got, want_app) != 0)
        fail("cgroup: expected %s, got %s", want_app, got);
    cgroup_of(c, got, sizeof got);
    if (strcmp(got, want_kid) != 0)
        fail("child's cgroup: expected %s, got %s", want_kid, got);
    if (limited) {
        char max[64] = "";
        read_text(path, max, sizeof max);
        if (strcmp(max, "77\n") != 0)
            fail("pids.max: expected 77, got %s", max);
    }
    kill(c, SIGKILL);
    int status = 0;
    if (waitpid(c, &status, 0) != c || !WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
        fail("child: expected killed by SIGKILL, got 0x%x", status);
    child = 0;
    cleanup();
    return finish();
}
