/*
 * The test-app protocol shared by every app the bench runs:
 *   - the app starts in a fresh working directory W, stdout and stderr go to
 *     W/app.log;
 *   - it sets up its state, then prints "READY <name>";
 *   - it waits (polling, so a checkpoint can land at any moment) until the
 *     file W/go exists;
 *   - it verifies every property it set up and prints "PASS <name>" or
 *     "FAIL <name>: <what differed>", exiting 0 or 1.
 */
#ifndef PZ_APP_COMMON_H
#define PZ_APP_COMMON_H

#include <errno.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static void app_ready(const char *name)
{
	/* stdout may be a file: make each protocol line reach it at once. */
	setvbuf(stdout, NULL, _IONBF, 0);
	printf("READY %s\n", name);
}

static void app_wait_for_go(void)
{
	struct timespec tick = { 0, 20 * 1000 * 1000 };

	while (access("go", F_OK) != 0) {
		struct timespec left = tick;

		while (nanosleep(&left, &left) < 0 && errno == EINTR)
			;
	}
}

#define APP_FAIL(name, ...)                     \
	do {                                    \
		printf("FAIL %s: ", (name));    \
		printf(__VA_ARGS__);            \
		printf("\n");                   \
		return 1;                       \
	} while (0)

#endif
