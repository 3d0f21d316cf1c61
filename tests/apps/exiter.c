/*
 * exiter: exits by itself shortly after READY, for "the task exits while it
 * is being dumped". Around READY it also starts a thread and a child that both
 * end at once, so tasks appear and vanish while a freeze is scanning the tree.
 * It needs no go: after delay_ms (default 50) it reaps the child, checks it
 * exited 0, prints its result and exits. A dump either fails with a clear
 * error, leaving nothing behind, or catches it alive; the restored process
 * then finishes the same way.
 *
 * Usage: exiter [delay_ms] [--selftest-fail=status]
 */
#include "common.h"

#include <pthread.h>
#include <sys/wait.h>

static void *brief_thread(void *arg)
{
    return arg;
}

int main(int argc, char **argv)
{
    app_init("exiter", argc, argv);
    long delay_ms = app_arg(0, 50);
    int token = 0x5a;

    ready();
    /* A thread and a child that end at once, reaped at once: no zombie is left for a dump to find. */
    pthread_t t;
    pthread_create(&t, NULL, brief_thread, &token);
    pid_t child = fork();
    if (child == 0)
        _exit(perturb("status") ? 1 : 0);
    perturb_elsewhere("status");

    void *ret = NULL;
    pthread_join(t, &ret);
    if (ret != &token)
        fail("thread result: expected %p, got %p", (void *)&token, ret);
    int status = 0;
    pid_t r;
    while ((r = waitpid(child, &status, 0)) < 0 && errno == EINTR)
        ;
    if (r != child)
        fail("waitpid(%d): %s", (int)child, strerror(errno));
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("child exit status: expected 0, got %#x", status);

    sleep_ns(delay_ms * 1000000L);
    return finish();
}
