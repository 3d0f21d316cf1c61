/*
 * blocking: threads blocked in three different syscalls across the checkpoint.
 *
 *   sleeper  nanosleep of 3 s (ms as the first argument), retried with the
 *            remaining time after EINTR: must return 0, and must have slept
 *            the whole time (measured only when the boot id is unchanged:
 *            after a reboot CLOCK_MONOTONIC starts again)
 *   reader   read() of 1000 bytes on an empty pipe; a helper child polls for
 *            go and then writes them
 *   waiter   waitpid() on a child that polls for go and then exits with 42
 *
 * All three are asleep in their syscalls before READY. After go, main joins
 * them and checks their return values, the bytes read, the exit status, and
 * reaps the helper.
 *
 * Usage: blocking [sleep_ms] [--selftest-fail=sleep|read|status|helper]
 */
#include "common.h"

#include <pthread.h>
#include <sys/wait.h>

#define READ_LEN 1000

static long sleep_ms;
static int pipefd[2];
static pid_t exiter, helper;

struct result {
    pid_t tid;
    int ok;
    char msg[FAIL_MSG_MAX];
};
static struct result sleeper_r, reader_r, waiter_r;

static void note(struct result *r, const char *fmt, ...)
{
    if (!r->ok)
        return;
    r->ok = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The kernel's boot id: when it changes, the machine rebooted and CLOCK_MONOTONIC restarted. */
static void boot_id(char out[40])
{
    if (read_text("/proc/sys/kernel/random/boot_id", out, 40) < 0)
        out[0] = '\0';
}

static void *sleeper(void *arg)
{
    (void)arg;
    sleeper_r.tid = tid_of_self();
    long ms = perturb("sleep") ? sleep_ms - 1000 : sleep_ms;
    struct timespec req = { ms / 1000, (ms % 1000) * 1000000L }, rem;
    char boot_before[40], boot_after[40];
    boot_id(boot_before);
    int64_t start = mono_ns();
    int r, eintr = 0;
    while ((r = nanosleep(&req, &rem)) == -1 && errno == EINTR) {
        eintr++;
        req = rem;
    }
    int64_t end = mono_ns();
    boot_id(boot_after);
    int same_boot = strcmp(boot_before, boot_after) == 0;
    if (r != 0)
        note(&sleeper_r, "nanosleep: expected 0, got %d (%s) after %d EINTR", r, strerror(errno), eintr);
    else if (same_boot && end - start < (int64_t)sleep_ms * 1000000)
        note(&sleeper_r, "nanosleep of %ld ms: expected to sleep at least that long, got %lld ms (%d EINTR)",
             sleep_ms, (long long)((end - start) / 1000000), eintr);
    return NULL;
}

static void *reader(void *arg)
{
    (void)arg;
    reader_r.tid = tid_of_self();
    uint8_t buf[READ_LEN + 16];
    ssize_t n;
    int eintr = 0;
    while ((n = read(pipefd[0], buf, sizeof buf)) < 0 && errno == EINTR)
        eintr++;
    if (n != READ_LEN) {
        note(&reader_r, "read on the pipe: expected %d bytes, got %zd (%s)", READ_LEN, n,
             n < 0 ? strerror(errno) : "");
        return NULL;
    }
    for (size_t i = 0; i < READ_LEN; i++)
        if (buf[i] != pattern_byte(50, i)) {
            note(&reader_r, "read on the pipe: byte %zu: expected 0x%02x, got 0x%02x", i, pattern_byte(50, i),
                 buf[i]);
            break;
        }
    return NULL;
}

static void *waiter(void *arg)
{
    (void)arg;
    waiter_r.tid = tid_of_self();
    int status = 0;
    pid_t r;
    while ((r = waitpid(exiter, &status, 0)) < 0 && errno == EINTR)
        ;
    if (r != exiter)
        note(&waiter_r, "waitpid(%d): expected %d, got %d (%s)", (int)exiter, (int)exiter, (int)r,
             r < 0 ? strerror(errno) : "");
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 42)
        note(&waiter_r, "waitpid(%d) status: expected exit 42, got %#x", (int)exiter, status);
    return NULL;
}

int main(int argc, char **argv)
{
    app_init("blocking", argc, argv);
    sleep_ms = app_arg(0, 3000);
    if (sleep_ms < 1500) {
        say("FAIL blocking: sleep_ms must be at least 1500, got %ld\n", sleep_ms);
        return 2;
    }
    if (pipe(pipefd) != 0) {
        say("FAIL blocking: pipe: %s\n", strerror(errno));
        return 1;
    }
    exiter = fork();
    if (exiter == 0) {
        wait_go();
        _exit(perturb("status") ? 43 : 42);
    }
    helper = fork();
    if (helper == 0) {
        uint8_t buf[READ_LEN];
        fill_pattern(buf, READ_LEN, perturb("read") ? 51 : 50);
        wait_go();
        write_all(pipefd[1], buf, READ_LEN);
        _exit(perturb("helper") ? 1 : 0);
    }
    close(pipefd[1]);

    sleeper_r.ok = reader_r.ok = waiter_r.ok = 1;
    pthread_t ts, tr, tw;
    pthread_create(&ts, NULL, sleeper, NULL);
    pthread_create(&tr, NULL, reader, NULL);
    pthread_create(&tw, NULL, waiter, NULL);
    struct result *rs[] = { &sleeper_r, &reader_r, &waiter_r };
    for (int i = 0; i < 3; i++) {
        while (__atomic_load_n(&rs[i]->tid, __ATOMIC_ACQUIRE) == 0 || task_state(rs[i]->tid) != 'S')
            sleep_ns(1000000L);
    }

    ready();
    wait_go();
    perturb_elsewhere("status");
    perturb_elsewhere("read");
    perturb_elsewhere("helper");

    pthread_join(ts, NULL);
    pthread_join(tr, NULL);
    pthread_join(tw, NULL);
    for (int i = 0; i < 3; i++)
        if (!rs[i]->ok)
            fail("%s", rs[i]->msg);
    int status = 0;
    pid_t r;
    while ((r = waitpid(helper, &status, 0)) < 0 && errno == EINTR)
        ;
    if (r != helper)
        fail("waitpid(helper %d): %s", (int)helper, strerror(errno));
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("helper exit status: expected 0, got %#x", status);
    return finish();
}
