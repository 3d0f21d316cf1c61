/*
 * counter: counts up and prints "count N" every interval (ms, default 1000),
 * polling for go in between. After go it checks that the count went on
 * consecutively (the value kept in a register-bound local, a global, a heap
 * history ring and a running sum must agree) and that app.log holds exactly
 * "READY counter" followed by "count 0".."count last": no gap, no repeat, no
 * overwrite, which also proves the log offset came back exactly.
 *
 * Usage: counter [interval_ms] [--selftest-fail=skip|log]
 */
#include "common.h"

#define HIST 64

static long last_printed = -1;

/* Length of the line starting at s, without its newline. */
static int line_len(const char *s)
{
    const char *nl = strchr(s, '\n');
    return nl ? (int)(nl - s) : (int)strlen(s);
}

static void check_log(long last)
{
    static char buf[1 << 20];
    if (read_text("app.log", buf, sizeof buf) < 0) {
        fail("reading app.log: %s", strerror(errno));
        return;
    }

    char *line = buf;
    char *nl = strchr(line, '\n');
    if (!nl || strncmp(line, "READY counter\n", 14) != 0) {
        fail("app.log line 1: expected 'READY counter', got '%.*s'", line_len(line), line);
        return;
    }
    line = nl + 1;
    for (long want = 0; want <= last; want++) {
        nl = strchr(line, '\n');
        char expect[48];
        int el = snprintf(expect, sizeof expect, "count %ld", want);
        if (!nl || nl - line != el || memcmp(line, expect, (size_t)el) != 0) {
            fail("app.log line %ld: expected '%s', got '%.*s'", want + 2, expect, line_len(line), line);
            return;
        }
        line = nl + 1;
    }
    if (*line != '\0')
        fail("app.log after 'count %ld': expected end of file, got '%.*s'", last, line_len(line), line);
}

int main(int argc, char **argv)
{
    app_init("counter", argc, argv);
    long interval_ms = app_arg(0, 1000);
    long polls = interval_ms * 1000000L / POLL_NS;
    if (polls < 1)
        polls = 1;
    long *hist = calloc(HIST, sizeof *hist);
    unsigned long long sum = 0;
    long n = 0;

    ready();
    for (;;) {
        if (n != last_printed + 1)
            fail("count: expected %ld after %ld, got %ld", last_printed + 1, last_printed, n);
        say("count %ld\n", n);
        last_printed = n;
        hist[n % HIST] = n;
        sum += (unsigned long long)n;
        n++;
        for (long k = 0; k < polls; k++) {
            if (go_exists())
                goto verify;
            sleep_ns(POLL_NS);
        }
    }
verify:
    if (perturb("skip"))
        last_printed++;
    if (perturb("log"))
        say("count %ld\n", n - 1);
    if (last_printed != n - 1)
        fail("last printed: expected %ld, got %ld", n - 1, last_printed);
    unsigned long long want_sum = (unsigned long long)(n - 1) * (unsigned long long)n / 2;
    if (sum != want_sum)
        fail("running sum of 0..%ld: expected %llu, got %llu", n - 1, want_sum, sum);
    for (long i = n - 1; i >= 0 && i > n - 1 - HIST; i--)
        if (hist[i % HIST] != i)
            fail("history slot %ld: expected %ld, got %ld", i % HIST, i, hist[i % HIST]);
    check_log(n - 1);
    return finish();
}
