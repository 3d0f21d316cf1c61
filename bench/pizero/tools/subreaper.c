/*
 * subreaper: run a command as a child subreaper.
 *
 *   subreaper [--pid N] CMD [ARGS...]
 *
 * Marks itself PR_SET_CHILD_SUBREAPER and execs CMD, which keeps the mark.
 * `torpor restore` returns once the restored tree runs; its root, a child of
 * torpor until then, is reparented to the nearest subreaper, so the shell
 * that started the app before the checkpoint is its parent again (the host
 * end-to-end tests do the same). With --pid N the command runs in a child
 * that gets pid N (through /proc/sys/kernel/ns_last_pid), so a job started
 * this way has the same pid in every boot: an app restored after a power cut
 * finds its parent under the pid it had. subreaper then waits for that child
 * and exits with its status.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static int run(char **argv)
{
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
        fprintf(stderr, "subreaper: PR_SET_CHILD_SUBREAPER: %s\n", strerror(errno));
        return 1;
    }
    execvp(argv[0], argv);
    fprintf(stderr, "subreaper: exec %s: %s\n", argv[0], strerror(errno));
    return 127;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && strcmp(argv[1], "--pid") == 0) {
        long want = strtol(argv[2], NULL, 10);
        FILE *f = fopen("/proc/sys/kernel/ns_last_pid", "w");
        if (!f || fprintf(f, "%ld", want - 1) < 0 || fclose(f) != 0) {
            fprintf(stderr, "subreaper: ns_last_pid: %s\n", strerror(errno));
            return 1;
        }
        pid_t child = fork();
        if (child < 0) {
            fprintf(stderr, "subreaper: fork: %s\n", strerror(errno));
            return 1;
        }
        if (child == 0)
            return run(argv + 3);
        if (child != want)
            fprintf(stderr, "subreaper: pid %ld was taken, running as %d\n", want, (int)child);
        int status = 0;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR)
            ;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (argc < 2) {
        fprintf(stderr, "usage: subreaper [--pid N] CMD [ARGS...]\n");
        return 2;
    }
    return run(argv + 1);
}
