/*
 * breadth_stopped: a task stopped by SIGSTOP stays stopped across a
 * checkpoint, and continues when told.
 *
 * Before READY: a child fills a pattern, stops itself with SIGSTOP, and the
 * parent sees it stop (waitpid WUNTRACED). After go: the child is still
 * stopped (state T); on SIGCONT it checks its pattern and exits 7, which
 * the parent reaps.
 *
 * Usage: breadth_stopped [--selftest-fail=stopped|status]
 */
#include "common.h"

#include <signal.h>
#include <sys/wait.h>

#define LEN 4096

static char child_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (read_text(path, buf, sizeof buf) <= 0)
        return '?';
    char *p = strrchr(buf, ')');
    return p && p[1] ? p[2] : '?';
}

int main(int argc, char **argv)
{
    app_init("breadth_stopped", argc, argv);
    pid_t c = fork();
    if (c == 0) {
        static uint8_t buf[LEN];
        fill_pattern(buf, LEN, 0x5709);
        raise(SIGSTOP);
        for (size_t i = 0; i < LEN; i++)
            if (buf[i] != pattern_byte(0x5709, i))
                _exit(9);
        _exit(7);
    }
    int status = 0;
    if (waitpid(c, &status, WUNTRACED) != c || !WIFSTOPPED(status)) {
        say("FAIL breadth_stopped: setup: child did not stop\n");
        return 3;
    }
    ready();
    wait_go();
    if (perturb("stopped"))
        kill(c, SIGCONT);
    if (perturb("status"))
        kill(c, SIGKILL);
    /* Give a perturbation time to take effect. */
    sleep_ns(50 * 1000 * 1000L);
    char st = child_state(c);
    if (st != 'T' && st != 't')
        fail("child %d state: expected T (stopped), got %c", (int)c, st);
    kill(c, SIGCONT);
    if (waitpid(c, &status, 0) != c || !WIFEXITED(status) || WEXITSTATUS(status) != 7)
        fail("child exit: expected status 7, got 0x%x", status);
    return finish();
}
