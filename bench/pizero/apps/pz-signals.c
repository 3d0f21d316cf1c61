/*
 * pz-signals: a signal handler, a blocked signal left pending, and a pipe
 * holding unread bytes. After "go" the handler must still run, the blocked
 * signal must still be pending and blocked, and the pipe must return exactly
 * the bytes written before the checkpoint.
 */
#include <signal.h>
#include <string.h>

#include "common.h"

#define NAME "pz-signals"

static volatile sig_atomic_t usr1_seen;

static void on_usr1(int sig)
{
	(void)sig;
	usr1_seen++;
}

int main(void)
{
	static const char msg[] = "bytes in flight";
	struct sigaction sa, now;
	sigset_t block, mask, pending;
	char back[sizeof(msg)];
	int fds[2];

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL) < 0)
		APP_FAIL(NAME, "sigaction: %s", strerror(errno));
	sigemptyset(&block);
	sigaddset(&block, SIGUSR2);
	if (sigprocmask(SIG_BLOCK, &block, NULL) < 0 || raise(SIGUSR2) != 0)
		APP_FAIL(NAME, "cannot leave SIGUSR2 pending: %s", strerror(errno));
	if (pipe(fds) < 0 || write(fds[1], msg, sizeof(msg)) != (ssize_t)sizeof(msg))
		APP_FAIL(NAME, "cannot fill pipe: %s", strerror(errno));

	app_ready(NAME);
	app_wait_for_go();

	if (sigaction(SIGUSR1, NULL, &now) < 0 || now.sa_handler != on_usr1)
		APP_FAIL(NAME, "SIGUSR1 handler lost");
	if (sigprocmask(SIG_BLOCK, NULL, &mask) < 0 || !sigismember(&mask, SIGUSR2))
		APP_FAIL(NAME, "SIGUSR2 no longer blocked");
	if (sigpending(&pending) < 0 || !sigismember(&pending, SIGUSR2))
		APP_FAIL(NAME, "SIGUSR2 no longer pending");
	raise(SIGUSR1);
	if (usr1_seen != 1)
		APP_FAIL(NAME, "SIGUSR1 handler ran %d times, expected 1", (int)usr1_seen);
	memset(back, 0, sizeof(back));
	if (read(fds[0], back, sizeof(back)) != (ssize_t)sizeof(back) ||
	    memcmp(back, msg, sizeof(msg)) != 0)
		APP_FAIL(NAME, "pipe contents changed");
	printf("PASS %s\n", NAME);
	return 0;
}
