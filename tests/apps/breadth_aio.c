/*
 * breadth_aio: an AIO context (io_setup) with a completion not yet reaped,
 * and membarrier registrations.
 *
 * Before READY:
 *   membarrier: registered for private expedited barriers, and for
 *               private expedited sync-core ones where the kernel has
 *               them; not for private expedited rseq ones
 *   fd 10       aio.dat in the work directory, 4096 pattern bytes, read-only
 *   ctx         io_setup(8): its ring mapped at ctx; nr - 1 reads completed
 *               and reaped (the ring's head and tail at its last event),
 *               then one read (IOCB_CMD_PREAD) of 512 bytes at offset 1024
 *               into `first`, submitted with data 0x1234abcd5678ef01 and
 *               completed (the ring's tail wrapped round to 0), not reaped
 *
 * After go: a private expedited barrier (and a sync-core one where
 * registered) returns 0, a private expedited rseq barrier fails with EPERM
 * (where the kernel has it); the ring's header is the kernel's, its head
 * at nr - 1 and its tail at 0; io_getevents returns exactly that
 * completion (data, obj: the address of its iocb, res 512, res2 0) and
 * then none; `first` holds the file's bytes 1024..1536; a second read of 256 bytes at 2048
 * submitted now completes with res 256 and its bytes; io_destroy returns 0.
 *
 * Under qemu-user (the emulated ARM checks), which has no io_setup
 * (ENOSYS), the AIO part is left out: the two reads are plain preads.
 *
 * With argument 1 the app overwrites its ring's magic before READY: a ring
 * the kernel would not have made, which a dump refuses (the app still
 * passes, expecting that magic).
 *
 * Usage: breadth_aio [1] [--selftest-fail=event|data|membarrier]
 */
#include "common.h"

/* The kernel's structs (linux/aio_abi.h), the same on every architecture
 * (little-endian). */
struct k_iocb {
    uint64_t aio_data;
    uint32_t aio_key;
    uint32_t aio_rw_flags;
    uint16_t aio_lio_opcode;
    int16_t aio_reqprio;
    uint32_t aio_fildes;
    uint64_t aio_buf;
    uint64_t aio_nbytes;
    int64_t aio_offset;
    uint64_t aio_reserved2;
    uint32_t aio_flags;
    uint32_t aio_resfd;
};

struct k_io_event {
    uint64_t data;
    uint64_t obj;
    int64_t res;
    int64_t res2;
};

struct k_aio_ring {
    uint32_t id;
    uint32_t nr;
    uint32_t head;
    uint32_t tail;
    uint32_t magic;
    uint32_t compat_features;
    uint32_t incompat_features;
    uint32_t header_length;
};

#define IOCB_CMD_PREAD 0
#define AIO_RING_MAGIC 0xa10a10a1u

#define MEMBARRIER_CMD_QUERY 0
#define MEMBARRIER_CMD_PRIVATE_EXPEDITED 8
#define MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED 16
#define MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE 32
#define MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE 64
#define MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ 128
#define MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ 256

#ifndef SYS_membarrier
#if defined(__x86_64__)
#define SYS_membarrier 324
#elif defined(__aarch64__)
#define SYS_membarrier 283
#elif defined(__arm__)
#define SYS_membarrier 389
#endif
#endif

#define DATA_FD 10
#define FILE_BYTES 4096
#define SEED 0xa10a10a1ULL
#define FIRST_DATA 0x1234abcd5678ef01ULL
#define FIRST_OFFSET 1024
#define FIRST_BYTES 512
#define SECOND_DATA 2
#define SECOND_OFFSET 2048
#define SECOND_BYTES 256

static unsigned long ctx;
static struct k_iocb first_cb, second_cb;
static uint8_t first[FIRST_BYTES] __attribute__((aligned(64)));
static uint8_t second[SECOND_BYTES] __attribute__((aligned(64)));
static int sync_core;
static int bad_ring;
static int no_aio;
/* Reads completed and reaped before the one left waiting: all but one
 * slot of the ring, so its head is at its last event and the waiting
 * completion's tail wraps round to 0. */
static unsigned earlier;

static long membarrier(int cmd)
{
    return syscall(SYS_membarrier, cmd, 0, 0);
}

static int submit(struct k_iocb *cb, uint64_t data, void *buf, uint64_t len, int64_t offset)
{
    memset(cb, 0, sizeof *cb);
    cb->aio_data = data;
    cb->aio_lio_opcode = IOCB_CMD_PREAD;
    cb->aio_fildes = DATA_FD;
    cb->aio_buf = (uint64_t)(uintptr_t)buf;
    cb->aio_nbytes = len;
    cb->aio_offset = offset;
    struct k_iocb *list[1] = { cb };
    return (int)syscall(SYS_io_submit, ctx, 1L, list);
}

/* Completions available now, without waiting (min_nr 0, no timeout). */
static long reap(struct k_io_event *ev, long most)
{
    return syscall(SYS_io_getevents, ctx, 0L, most, ev, NULL);
}

static const volatile struct k_aio_ring *ring(void)
{
    return (const volatile struct k_aio_ring *)(uintptr_t)ctx;
}

static void expect_event(const struct k_io_event *e, uint64_t data, const struct k_iocb *cb, int64_t res,
                         const char *what)
{
    if (e->data != data || e->obj != (uint64_t)(uintptr_t)cb || e->res != res || e->res2 != 0)
        fail("%s: expected data %#llx obj %#llx res %lld res2 0, got data %#llx obj %#llx res %lld res2 %lld", what,
             (unsigned long long)data, (unsigned long long)(uintptr_t)cb, (long long)res,
             (unsigned long long)e->data, (unsigned long long)e->obj, (long long)e->res, (long long)e->res2);
}

static void setup(void)
{
    long have = membarrier(MEMBARRIER_CMD_QUERY);
    if (have < 0 || !(have & MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED))
        setup_failed("membarrier without private expedited barriers");
    if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0)
        setup_failed("membarrier(REGISTER_PRIVATE_EXPEDITED)");
    if (have & MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE) {
        if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE) != 0)
            setup_failed("membarrier(REGISTER_PRIVATE_EXPEDITED_SYNC_CORE)");
        sync_core = 1;
    }
    if (membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0)
        setup_failed("membarrier(PRIVATE_EXPEDITED) once registered");

    uint8_t bytes[FILE_BYTES];
    fill_pattern(bytes, sizeof bytes, SEED);
    int fd = open("aio.dat", O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0)
        setup_failed("create aio.dat");
    write_all(fd, bytes, sizeof bytes);
    close(fd);
    fd_at(open("aio.dat", O_RDONLY | O_CLOEXEC), DATA_FD, "open aio.dat");

    if (syscall(SYS_io_setup, 8L, &ctx) != 0) {
        if (errno != ENOSYS)
            setup_failed("io_setup");
        /* qemu-user: the same bytes, read plainly. */
        no_aio = 1;
        if (pread(DATA_FD, first, FIRST_BYTES, FIRST_OFFSET) != FIRST_BYTES)
            setup_failed("pread");
        return;
    }
    /* Reads reaped before: the ring's head and tail are not at its start. */
    earlier = ring()->nr - 1;
    for (unsigned i = 0; i < earlier; i++) {
        struct k_io_event ev[1];
        long n = 0;
        if (submit(&first_cb, (uint64_t)i, first, FIRST_BYTES, 0) != 1)
            setup_failed("io_submit (earlier)");
        for (int k = 0; k < 150 && n == 0; k++)
            if ((n = reap(ev, 1)) == 0)
                sleep_ns(POLL_NS);
        if (n != 1)
            setup_failed("io_getevents (earlier)");
    }
    memset(first, 0, sizeof first);
    if (submit(&first_cb, FIRST_DATA, first, FIRST_BYTES, FIRST_OFFSET) != 1)
        setup_failed("io_submit");
    /* A buffered read completes at once; wait up to 3 s all the same. */
    for (int i = 0; i < 150 && ring()->head == ring()->tail; i++)
        sleep_ns(POLL_NS);
    if (ring()->tail != (ring()->head + 1) % ring()->nr) {
        errno = EAGAIN;
        setup_failed("the read did not complete");
    }
    /* The kernel never reads the magic again; a dump must refuse it. */
    if (bad_ring)
        ((volatile struct k_aio_ring *)(uintptr_t)ctx)->magic = 0;
}

static void verify(void)
{
    if (membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0)
        fail("private expedited barrier: expected 0, got %s", strerror(errno));
    if (sync_core && membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE) != 0)
        fail("private expedited sync-core barrier: expected 0, got %s", strerror(errno));
    long have = membarrier(MEMBARRIER_CMD_QUERY);
    if (have >= 0 && (have & MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ)) {
        long r = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ);
        if (r != -1 || errno != EPERM)
            fail("private expedited rseq barrier (never registered): expected EPERM, got %ld (%s)", r,
                 r == 0 ? "done" : strerror(errno));
    }

    if (no_aio) {
        check_pattern("first read", first, FIRST_BYTES, SEED + FIRST_OFFSET / 8);
        if (pread(DATA_FD, second, SECOND_BYTES, SECOND_OFFSET) != SECOND_BYTES)
            fail("pread: %s", strerror(errno));
        check_pattern("second read", second, SECOND_BYTES, SEED + SECOND_OFFSET / 8);
        return;
    }
    const volatile struct k_aio_ring *r = ring();
    if (r->magic != (bad_ring ? 0 : AIO_RING_MAGIC) || r->header_length != sizeof(struct k_aio_ring) || r->nr < 8)
        fail("ring at %#lx: magic %#x, header %u, nr %u", ctx, r->magic, r->header_length, r->nr);
    else if (r->head != earlier || r->tail != 0)
        fail("ring: head %u tail %u of %u: expected %u and 0", r->head, r->tail, r->nr, earlier);

    struct k_io_event ev[4];
    memset(ev, 0, sizeof ev);
    long n = reap(ev, 4);
    if (n != 1)
        fail("io_getevents: expected the one completion, got %ld (%s)", n, n < 0 ? strerror(errno) : "");
    else
        expect_event(&ev[0], FIRST_DATA, &first_cb, FIRST_BYTES, "completion");
    if ((n = reap(ev, 4)) != 0)
        fail("io_getevents again: expected none, got %ld", n);
    check_pattern("first read", first, FIRST_BYTES, SEED + FIRST_OFFSET / 8);

    if (submit(&second_cb, SECOND_DATA, second, SECOND_BYTES, SECOND_OFFSET) != 1) {
        fail("io_submit after the restore: %s", strerror(errno));
    } else {
        n = 0;
        for (int i = 0; i < 150 && n == 0; i++) {
            n = reap(ev, 4);
            if (n == 0)
                sleep_ns(POLL_NS);
        }
        if (n != 1)
            fail("io_getevents after the restore: expected 1, got %ld", n);
        else
            expect_event(&ev[0], SECOND_DATA, &second_cb, SECOND_BYTES, "second completion");
        check_pattern("second read", second, SECOND_BYTES, SEED + SECOND_OFFSET / 8);
    }
    if (syscall(SYS_io_destroy, ctx) != 0)
        fail("io_destroy: %s", strerror(errno));
}

int main(int argc, char **argv)
{
    app_init("breadth_aio", argc, argv);
    bad_ring = app_arg(0, 0) == 1;
    setup();
    ready();
    wait_go();
    if (perturb("event") && !no_aio) {
        struct k_io_event ev[4];
        reap(ev, 4);
    }
    if (perturb("data"))
        first[7] ^= 0x40;
    if (perturb("membarrier")) {
        long have = membarrier(MEMBARRIER_CMD_QUERY);
        if (have < 0 || !(have & MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ) ||
            membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ) != 0)
            fail("membarrier: cannot register for rseq barriers to perturb");
    }
    verify();
    return finish();
}
