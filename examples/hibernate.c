/*
 * hibernate.c: ask the torpor daemon to hibernate this process, with no
 * library: the request is a handful of bytes built by hand, and the reply is
 * decoded field by field, exactly as docs/protocol.md describes (protocol 1.0).
 *
 *   cc -o hibernate examples/hibernate.c
 *   ./hibernate [SOCKET [WAKE_AFTER_SECONDS]]
 *
 * The call returns only after power has come back and this process has been
 * restored; it then prints how long it slept. Exit status: 0 when resumed,
 * 1 on any error (printed on stderr).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_MESSAGE 512
#define PROTOCOL_MAJOR 1
#define PROTOCOL_MINOR 0

enum { REQ_HIBERNATE = 0 };
enum { TARGET_CALLER = 0 };
enum { REPLY_RESUMED = 0, REPLY_CHECKPOINTED = 1, REPLY_STATUS = 2, REPLY_ERROR = 3 };

static const char *const error_kinds[] = {
    "Unauthorized", "Malformed",  "Oversized",   "UnsupportedVersion",
    "Busy",         "NoSuchProcess", "Unsupported", "DumpFailed",
    "StoreFailed",  "PowerFailed", "Internal",
};
static const char *const clocks[] = { "rtc", "wall", "unknown" };

/* Unsigned LEB128, as postcard encodes u32 and u64. */
static size_t put_varint(uint8_t *out, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

/* Reads a varint at *pos; 0 on success, -1 when truncated or too long. */
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

static int bad_reply(const char *why)
{
    fprintf(stderr, "error: the daemon's reply does not decode: %s\n", why);
    return 1;
}

static int print_reply(const uint8_t *p, size_t n)
{
    size_t pos = 2;
    uint64_t tag, a, b, c;

    if (n < 2)
        return bad_reply("shorter than the version header");
    if (p[0] != PROTOCOL_MAJOR) {
        fprintf(stderr, "error: the daemon speaks protocol %u.%u, this program %u.%u\n", p[0], p[1],
                PROTOCOL_MAJOR, PROTOCOL_MINOR);
        return 1;
    }
    if (get_varint(p, n, &pos, &tag))
        return bad_reply("no reply tag");
    switch (tag) {
    case REPLY_RESUMED: {
        int known;
        if (pos >= n || p[pos] > 1)
            return bad_reply("bad option byte");
        known = p[pos++];
        a = 0;
        if (known && get_varint(p, n, &pos, &a))
            return bad_reply("truncated slept_for_ms");
        if (get_varint(p, n, &pos, &b) || b > 2)
            return bad_reply("bad clock");
        if (get_varint(p, n, &pos, &c))
            return bad_reply("truncated generation");
        if (pos != n)
            return bad_reply("trailing bytes");
        if (known)
            printf("resumed: slept_for_ms=%" PRIu64 " clock=%s generation=%" PRIu64 "\n", a, clocks[b], c);
        else
            printf("resumed: slept_for_ms=unknown clock=%s generation=%" PRIu64 "\n", clocks[b], c);
        return 0;
    }
    case REPLY_ERROR: {
        uint64_t kind, len;
        if (get_varint(p, n, &pos, &kind) || get_varint(p, n, &pos, &len))
            return bad_reply("truncated error");
        if (len > n - pos)
            return bad_reply("error message longer than the packet");
        if (pos + len != n)
            return bad_reply("trailing bytes");
        fprintf(stderr, "error: %s: %.*s\n",
                kind < sizeof error_kinds / sizeof *error_kinds ? error_kinds[kind] : "(unknown kind)",
                (int)len, (const char *)p + pos);
        return 1;
    }
    case REPLY_CHECKPOINTED:
    case REPLY_STATUS:
        return bad_reply("a reply to another request");
    default:
        return bad_reply("unknown reply tag");
    }
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "/run/torpor.sock";
    uint8_t request[16], reply[MAX_MESSAGE];
    size_t len = 0;
    struct sockaddr_un addr;
    ssize_t got;
    int fd;

    /* 01 00 | 00 Hibernate | 00 Target::Caller | 00 None, or 01 + varint seconds */
    request[len++] = PROTOCOL_MAJOR;
    request[len++] = PROTOCOL_MINOR;
    request[len++] = REQ_HIBERNATE;
    request[len++] = TARGET_CALLER;
    if (argc > 2) {
        char *end;
        unsigned long secs;
        errno = 0;
        secs = strtoul(argv[2], &end, 10);
        if (errno || *end || end == argv[2] || secs > UINT32_MAX) {
            fprintf(stderr, "error: %s is not a number of seconds\n", argv[2]);
            return 1;
        }
        request[len++] = 1;
        len += put_varint(request + len, secs);
    } else {
        request[len++] = 0;
    }

    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) {
        fprintf(stderr, "error: socket path %s is too long\n", path);
        return 1;
    }
    strcpy(addr.sun_path, path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        fprintf(stderr, "error: cannot connect to %s: %s\n", path, strerror(errno));
        return 1;
    }
    if (send(fd, request, len, MSG_NOSIGNAL) < 0) {
        fprintf(stderr, "error: send: %s\n", strerror(errno));
        return 1;
    }
    /* Blocks across the power cut: after the restore this recv() restarts
     * on the same, live socket and receives Resumed. */
    do
        got = recv(fd, reply, sizeof reply, MSG_TRUNC);
    while (got < 0 && errno == EINTR);
    if (got < 0) {
        fprintf(stderr, "error: recv: %s\n", strerror(errno));
        return 1;
    }
    if (got == 0)
        return bad_reply("the daemon closed the connection");
    if ((size_t)got > sizeof reply)
        return bad_reply("longer than 512 bytes");
    close(fd);
    return print_reply(reply, (size_t)got);
}
