/*
 * threads: several threads, each with its own TLS, stack contents, tid and
 * name, each blocked a different way (condition variable, nanosleep loop,
 * raw futex) across the checkpoint.
 *
 * After go every worker checks its __thread values (one set at run time, one
 * from the TLS initialisation image), an 8 KiB pattern on its own stack,
 * gettid() and pthread_self() against what it recorded before READY, and its
 * name in /proc/self/task/TID/comm. Main checks its own TLS, the thread
 * count, and collects the workers' results.
 *
 * Usage: threads [workers, default 4] [--selftest-fail=tls|stack|tid|name|main-tls]
 */
#include "common.h"

#include <pthread.h>

/* From linux/futex.h, which a musl cross toolchain may lack. */
#define FUTEX_WAIT_PRIVATE 128
#define FUTEX_WAKE_PRIVATE 129

#define MAX_WORKERS 16
#define STACK_BYTES 8192

static __thread uint64_t tls_value;
static __thread uint8_t tls_buf[256];
static __thread int tls_initialised = 0x7e57;

static int workers;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int go_flag;
static uint32_t futex_word;
static pthread_barrier_t started, finished;

struct worker {
    int index;
    pthread_t handle;
    pthread_t self;
    pid_t tid;
    uint64_t *tls_addr;
    uint8_t *stack_addr;
    char result[FAIL_MSG_MAX];
    int ok;
};
static struct worker w[MAX_WORKERS];

static void note(struct worker *me, const char *fmt, ...)
{
    if (!me->ok)
        return;
    me->ok = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(me->result, sizeof me->result, fmt, ap);
    va_end(ap);
}

static int read_comm(pid_t tid, char *out, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/comm", (int)tid);
    if (read_text(path, out, cap) <= 0)
        return 0;
    char *nl = strchr(out, '\n');
    if (nl)
        *nl = '\0';
    return 1;
}

static void block_until_go(int mode)
{
    switch (mode) {
    case 0:
        pthread_mutex_lock(&lock);
        while (!go_flag)
            pthread_cond_wait(&cond, &lock);
        pthread_mutex_unlock(&lock);
        break;
    case 1:
        wait_go();
        break;
    default:
        while (__atomic_load_n(&futex_word, __ATOMIC_ACQUIRE) == 0)
            syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
        break;
    }
}

static void *worker_main(void *arg)
{
    struct worker *me = arg;
    uint8_t stack_buf[STACK_BYTES] __attribute__((aligned(16)));
    char name[16];

    me->ok = 1;
    me->tid = tid_of_self();
    me->self = pthread_self();
    tls_value = mix64(500 + (uint64_t)me->index);
    fill_pattern(tls_buf, sizeof tls_buf, 600 + (uint64_t)me->index);
    fill_pattern(stack_buf, STACK_BYTES, 700 + (uint64_t)me->index);
    me->tls_addr = &tls_value;
    me->stack_addr = stack_buf;
    snprintf(name, sizeof name, "worker-%d", me->index);
    pthread_setname_np(pthread_self(), name);
    pthread_barrier_wait(&started);

    block_until_go(me->index % 3);

    if (tls_value != mix64(500 + (uint64_t)me->index))
        note(me, "worker %d TLS value: expected %#llx, got %#llx", me->index,
             (unsigned long long)mix64(500 + (uint64_t)me->index), (unsigned long long)tls_value);
    for (size_t i = 0; i < sizeof tls_buf; i++)
        if (tls_buf[i] != pattern_byte(600 + (uint64_t)me->index, i)) {
            note(me, "worker %d TLS buffer byte %zu: expected 0x%02x, got 0x%02x", me->index, i,
                 pattern_byte(600 + (uint64_t)me->index, i), tls_buf[i]);
            break;
        }
    if (tls_initialised != 0x7e57)
        note(me, "worker %d initialised TLS: expected 0x7e57, got %#x", me->index, tls_initialised);
    for (size_t i = 0; i < STACK_BYTES; i++)
        if (stack_buf[i] != pattern_byte(700 + (uint64_t)me->index, i)) {
            note(me, "worker %d stack byte %zu: expected 0x%02x, got 0x%02x", me->index, i,
                 pattern_byte(700 + (uint64_t)me->index, i), stack_buf[i]);
            break;
        }
    pid_t tid = tid_of_self();
    if (tid != me->tid)
        note(me, "worker %d tid: expected %d, got %d", me->index, (int)me->tid, (int)tid);
    if (!pthread_equal(pthread_self(), me->self))
        note(me, "worker %d pthread_self: expected %#lx, got %#lx", me->index, (unsigned long)me->self,
             (unsigned long)pthread_self());
    char comm[32];
    if (!read_comm(tid, comm, sizeof comm))
        note(me, "worker %d: /proc/self/task/%d/comm unreadable", me->index, (int)tid);
    else if (strcmp(comm, name) != 0)
        note(me, "worker %d name: expected '%s', got '%s'", me->index, name, comm);
    /* Stay alive until main has counted the threads. */
    pthread_barrier_wait(&finished);
    return NULL;
}

static int thread_count(void)
{
    char buf[4096];
    if (read_text("/proc/self/status", buf, sizeof buf) <= 0)
        return -1;
    char *t = strstr(buf, "Threads:");
    return t ? atoi(t + 8) : -1;
}

int main(int argc, char **argv)
{
    app_init("threads", argc, argv);
    workers = (int)app_arg(0, 4);
    if (workers < 4 || workers > MAX_WORKERS) {
        say("FAIL threads: workers must be 4..%d, got %d\n", MAX_WORKERS, workers);
        return 2;
    }
    tls_value = mix64(499);
    pthread_barrier_init(&started, NULL, (unsigned)workers + 1);
    pthread_barrier_init(&finished, NULL, (unsigned)workers + 1);
    for (int i = 0; i < workers; i++) {
        w[i].index = i;
        pthread_create(&w[i].handle, NULL, worker_main, &w[i]);
    }
    pthread_barrier_wait(&started);
    /* Every worker asleep in its blocking call before READY. */
    for (int i = 0; i < workers; i++)
        while (task_state(w[i].tid) != 'S')
            sleep_ns(1000000L);

    /* Compared, not computed: an emulator may run threads of its own. */
    int threads_before = thread_count();

    ready();
    wait_go();

    /* Only workers that wait for main's wake-up (modes 0 and 2) are perturbed. */
    if (perturb("tls"))
        *w[0].tls_addr ^= 1;
    if (perturb("stack"))
        w[2].stack_addr[100] ^= 1;
    if (perturb("tid"))
        w[3].tid += 1;
    if (perturb("name"))
        pthread_setname_np(w[3].handle, "renamed");
    if (perturb("main-tls"))
        tls_value ^= 1;

    int threads_now = thread_count();
    if (threads_now != threads_before || threads_before < workers + 1)
        fail("threads in /proc/self/status: expected %d (at least %d), got %d", threads_before, workers + 1,
             threads_now);
    if (tls_value != mix64(499))
        fail("main TLS value: expected %#llx, got %#llx", (unsigned long long)mix64(499),
             (unsigned long long)tls_value);

    pthread_mutex_lock(&lock);
    go_flag = 1;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    __atomic_store_n(&futex_word, 1, __ATOMIC_RELEASE);
    syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, MAX_WORKERS, NULL, NULL, 0);
    pthread_barrier_wait(&finished);

    for (int i = 0; i < workers; i++) {
        pthread_join(w[i].handle, NULL);
        if (!w[i].ok)
            fail("%s", w[i].result);
    }
    return finish();
}
