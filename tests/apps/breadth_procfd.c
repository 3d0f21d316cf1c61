/*
 * breadth_procfd: descriptors open on /proc files and directories of the
 * tree's own processes.
 *
 * Before READY: fd 10 is /proc/PID/status of the app, read 20 bytes in;
 * fd 11 is /proc/CHILD/stat of a child that waits; fd 12 is the app's
 * /proc/PID/task directory (close-on-exec); fd 13 is /proc/PID/task/TID/comm
 * of a second thread named "worker".
 *
 * After go: each fd leads to the same place (its /proc link), fd 10 is at
 * offset 20 and starts with the app's Name line, fd 11 reads the child's
 * stat, fd 12 lists both threads, fd 13 reads "worker\n".
 *
 * Usage: breadth_procfd [--selftest-fail=offset|target|fdnum|cloexec]
 */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#define FD_STATUS 10
#define FD_STAT 11
#define FD_TASKS 12
#define FD_COMM 13

static pid_t worker_tid;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t started = PTHREAD_COND_INITIALIZER;

static void *worker(void *arg)
{
    (void)arg;
    prctl(PR_SET_NAME, "worker");
    pthread_mutex_lock(&lock);
    worker_tid = tid_of_self();
    pthread_cond_signal(&started);
    pthread_mutex_unlock(&lock);
    for (;;)
        pause();
    return NULL;
}

static void open_at(const char *path, int at, int flags)
{
    int fd = open(path, flags);
    if (fd < 0 || dup3(fd, at, flags & O_CLOEXEC) != at)
        setup_failed(path);
    close(fd);
}

static void check_link_is(int fd, const char *want)
{
    char path[64], got[256];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, got, sizeof got - 1);
    got[n > 0 ? n : 0] = 0;
    if (strcmp(got, want) != 0)
        fail("fd %d: expected %s, got %s", fd, want, got);
}

int main(int argc, char **argv)
{
    app_init("breadth_procfd", argc, argv);
    pid_t child = fork();
    if (child == 0) {
        for (;;)
            pause();
    }
    pthread_t t;
    pthread_mutex_lock(&lock);
    if (pthread_create(&t, NULL, worker, NULL) != 0)
        setup_failed("pthread_create");
    while (worker_tid == 0)
        pthread_cond_wait(&started, &lock);
    pthread_mutex_unlock(&lock);

    pid_t me = getpid();
    char status[64], stat[64], tasks[64], comm[96];
    snprintf(status, sizeof status, "/proc/%d/status", (int)me);
    snprintf(stat, sizeof stat, "/proc/%d/stat", (int)child);
    snprintf(tasks, sizeof tasks, "/proc/%d/task", (int)me);
    snprintf(comm, sizeof comm, "/proc/%d/task/%d/comm", (int)me, (int)worker_tid);
    open_at(status, FD_STATUS, O_RDONLY);
    open_at(stat, FD_STAT, O_RDONLY);
    open_at(tasks, FD_TASKS, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    open_at(comm, FD_COMM, O_RDONLY);
    char head[20];
    if (read(FD_STATUS, head, sizeof head) != (ssize_t)sizeof head)
        setup_failed("reading status");

    ready();
    wait_go();
    if (perturb("offset"))
        lseek(FD_STATUS, 0, SEEK_SET);
    if (perturb("target")) {
        char other[64];
        snprintf(other, sizeof other, "/proc/%d/stat", (int)me);
        open_at(other, FD_STAT, O_RDONLY);
    }
    if (perturb("fdnum")) {
        dup2(FD_COMM, 14);
        close(FD_COMM);
    }
    if (perturb("cloexec"))
        fcntl(FD_TASKS, F_SETFD, 0);

    check_link_is(FD_STATUS, status);
    check_link_is(FD_STAT, stat);
    check_link_is(FD_TASKS, tasks);
    check_link_is(FD_COMM, comm);
    off_t at = lseek(FD_STATUS, 0, SEEK_CUR);
    if (at != 20)
        fail("fd %d offset: expected 20, got %ld", FD_STATUS, (long)at);
    char name[17] = { 0 }, want[64], buf[512];
    prctl(PR_GET_NAME, name);
    snprintf(want, sizeof want, "Name:\t%s\n", name);
    ssize_t n = pread(FD_STATUS, buf, strlen(want), 0);
    if (n != (ssize_t)strlen(want) || memcmp(buf, want, strlen(want)) != 0)
        fail("fd %d: expected it to start with the Name line, got %zd bytes", FD_STATUS, n);
    int fdf = fcntl(FD_TASKS, F_GETFD);
    if (fdf != FD_CLOEXEC)
        fail("fd %d close-on-exec: expected %d, got %d", FD_TASKS, FD_CLOEXEC, fdf);

    snprintf(want, sizeof want, "%d (%s) S ", (int)child, name);
    n = pread(FD_STAT, buf, sizeof buf - 1, 0);
    if (n < (ssize_t)strlen(want) || memcmp(buf, want, strlen(want)) != 0) {
        buf[n > 0 ? n : 0] = 0;
        fail("fd %d: expected \"%s...\", got \"%.40s\"", FD_STAT, want, buf);
    }

    /* The task directory lists the two threads. */
    int dirfd = dup(FD_TASKS);
    DIR *d = dirfd >= 0 ? fdopendir(dirfd) : NULL;
    /* (An emulator's syscall layer may run threads of its own here.) */
    int seen_me = 0, seen_worker = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        long id = strtol(e->d_name, NULL, 10);
        if (id == me)
            seen_me = 1;
        else if (id == worker_tid)
            seen_worker = 1;
    }
    if (d)
        closedir(d);
    if (!seen_me || !seen_worker)
        fail("fd %d lists: expected threads %d and %d, got main %d, worker %d", FD_TASKS, (int)me,
             (int)worker_tid, seen_me, seen_worker);

    n = pread(FD_COMM, buf, sizeof buf, 0);
    if (n != 7 || memcmp(buf, "worker\n", 7) != 0)
        fail("fd %d: expected \"worker\\n\", got %zd bytes", FD_COMM, n);

    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return finish();
}
