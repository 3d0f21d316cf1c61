/*
 * sleepy-counter.c: a counter that hibernates itself through torpor daemon
 * and checks, once resumed, that nothing of its memory was lost.
 *
 *   cc -O2 -o sleepy-counter examples/sleepy-counter.c
 *   sleepy-counter SOCKET SLEEP_AT END_AT [checkpoint]
 *
 * It fills 1 MiB of heap with a pattern, then counts, printing each value.
 * At SLEEP_AT (after a Checkpoint request first, with "checkpoint") it
 * sends Hibernate and blocks in recv(): the reply comes after the power
 * cut, the boot and the restore, on the same fd. It then checks the pattern
 * and the counter, prints "memory verified" and counts on to END_AT, and
 * prints "PASS sleepy-counter". A refused Hibernate is printed and the
 * counter runs on to END_AT ("PASS sleepy-counter (not hibernated)").
 * Any mismatch or other error: "FAIL ...", exit 1. With SLEEPY_UID=N in
 * the environment it first drops to uid and gid N (a test of refusals).
 * The wire format is docs/protocol.md's, built by hand.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_MESSAGE 512
#define PATTERN_BYTES (1 << 20)

static const char *const clocks[] = { "rtc", "wall", "unknown" };

static int fail(const char *what)
{
    printf("FAIL sleepy-counter: %s\n", what);
    fflush(stdout);
    return 1;
}

static int get_varint(const uint8_t *p, size_t len, size_t *pos, uint64_t *v)
{
    uint64_t value = 0;
    for (unsigned shift = 0; shift < 70; shift += 7) {
        if (*pos >= len)
            return -1;
        uint8_t b = p[(*pos)++];
        value |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = value;
            return 0;
        }
    }
    return -1;
}

static uint8_t pattern_byte(size_t i)
{
    return (uint8_t)((i * 2654435761u) >> 13);
}

/* Sends one request and waits for its reply; returns the reply length. */
static ssize_t ask(int fd, const uint8_t *req, size_t len, uint8_t *reply)
{
    ssize_t got;
    if (send(fd, req, len, MSG_NOSIGNAL) < 0)
        return -1;
    do
        got = recv(fd, reply, MAX_MESSAGE, 0);
    while (got < 0 && errno == EINTR);
    return got;
}

/* Prints an Error reply's text; -1 when the reply is not an error. */
static int print_error(const uint8_t *p, size_t n)
{
    size_t pos = 2;
    uint64_t tag, kind, len;
    if (n < 3 || get_varint(p, n, &pos, &tag) || tag != 3)
        return -1;
    if (get_varint(p, n, &pos, &kind) || get_varint(p, n, &pos, &len) || len > n - pos)
        return -1;
    printf("daemon error (kind %" PRIu64 "): %.*s\n", kind, (int)len, (const char *)p + pos);
    return 0;
}

int main(int argc, char **argv)
{
    static const uint8_t hibernate[] = { 1, 0, 0, 0, 0 }; /* Hibernate { Caller, None } */
    static const uint8_t checkpoint[] = { 1, 0, 1, 0 };   /* Checkpoint { Caller } */
    uint8_t reply[MAX_MESSAGE];
    struct sockaddr_un addr;
    struct timespec tick = { 0, 100 * 1000 * 1000 };
    volatile uint64_t counter;
    int hibernated = 0;
    unsigned long sleep_at, end_at;
    uint8_t *heap;
    ssize_t got;
    int fd;

    if (argc < 4) {
        fprintf(stderr, "usage: %s SOCKET SLEEP_AT END_AT [checkpoint]\n", argv[0]);
        return 2;
    }
    if (getenv("SLEEPY_UID")) {
        unsigned long id = strtoul(getenv("SLEEPY_UID"), NULL, 10);
        if (setgid((gid_t)id) || setuid((uid_t)id))
            return fail("cannot drop to SLEEPY_UID");
    }
    sleep_at = strtoul(argv[2], NULL, 10);
    end_at = strtoul(argv[3], NULL, 10);
    setvbuf(stdout, NULL, _IOLBF, 0);
    heap = malloc(PATTERN_BYTES);
    if (!heap)
        return fail("malloc");
    for (size_t i = 0; i < PATTERN_BYTES; i++)
        heap[i] = pattern_byte(i);

    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(argv[1]) >= sizeof addr.sun_path)
        return fail("socket path too long");
    strcpy(addr.sun_path, argv[1]);
    fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        return fail("cannot connect to the daemon");
    printf("connected to %s on fd %d\n", argv[1], fd);

    for (counter = 1; counter <= end_at; counter++) {
        printf("counter %" PRIu64 "\n", (uint64_t)counter);
        if (counter == sleep_at) {
            if (argc > 4 && strcmp(argv[4], "checkpoint") == 0) {
                uint64_t tag, gen, bytes;
                size_t pos = 2;
                got = ask(fd, checkpoint, sizeof checkpoint, reply);
                if (got < 3 || get_varint(reply, (size_t)got, &pos, &tag))
                    return fail("no reply to Checkpoint");
                if (tag != 1) {
                    print_error(reply, (size_t)got);
                    return fail("Checkpoint refused");
                }
                if (get_varint(reply, (size_t)got, &pos, &gen) || get_varint(reply, (size_t)got, &pos, &bytes))
                    return fail("bad Checkpointed reply");
                printf("checkpointed: generation %" PRIu64 ", %" PRIu64 " bytes; still running\n", gen, bytes);
            }
            printf("hibernating at counter %" PRIu64 "\n", (uint64_t)counter);
            got = ask(fd, hibernate, sizeof hibernate, reply);
            if (got <= 0)
                return fail("no reply to Hibernate");
            size_t pos = 2;
            uint64_t tag, ms = 0, clock, gen;
            if (get_varint(reply, (size_t)got, &pos, &tag))
                return fail("bad reply");
            if (tag != 0) {
                if (print_error(reply, (size_t)got))
                    return fail("bad reply to Hibernate");
                printf("hibernate refused; running on\n");
                nanosleep(&tick, NULL);
                continue;
            }
            hibernated = 1;
            int known = reply[pos++];
            if ((known && get_varint(reply, (size_t)got, &pos, &ms)) ||
                get_varint(reply, (size_t)got, &pos, &clock) || clock > 2 ||
                get_varint(reply, (size_t)got, &pos, &gen))
                return fail("bad Resumed reply");
            if (known)
                printf("resumed on fd %d: slept %" PRIu64 " ms (%s clock), image generation %" PRIu64 "\n", fd,
                       ms, clocks[clock], gen);
            else
                printf("resumed on fd %d: slept an unknown time (%s clock), image generation %" PRIu64 "\n",
                       fd, clocks[clock], gen);
            for (size_t i = 0; i < PATTERN_BYTES; i++)
                if (heap[i] != pattern_byte(i))
                    return fail("heap pattern changed");
            if (counter != sleep_at)
                return fail("counter changed");
            printf("memory verified: %d bytes and counter %" PRIu64 "\n", PATTERN_BYTES, (uint64_t)counter);
        }
        nanosleep(&tick, NULL);
    }
    printf(hibernated ? "PASS sleepy-counter\n" : "PASS sleepy-counter (not hibernated)\n");
    return 0;
}
