/*
 * breadth_segments: memfds of any size, mapped memfds and SysV shared
 * memory come back as the same objects, shared as they were, with the
 * same contents, seals, ids and addresses.
 *
 * Before READY (P: this process, C: its child):
 *   fd 10  memfd "torpor-big", 1 MiB + 12345 pattern bytes, offset 4321
 *   fd 11  memfd "torpor-sparse", 64 MiB, 4096 pattern bytes at 40 MiB
 *   fd 12  memfd "torpor-sealed", 8192 bytes, sealed WRITE|SHRINK|GROW|SEAL,
 *          mapped shared read-only (through a read-only reopening)
 *   fd 13  memfd "torpor-future", 4096 bytes, mapped shared read-write,
 *          then sealed FUTURE_WRITE
 *   fd 14  memfd "torpor-shared", 3 pages mapped shared by P and C
 *   fd 16  a second description of it (reopened read-only), offset 100
 *   ---    memfd "torpor-mapped", 2 pages mapped shared by P and C, no fd
 *   fd 15  memfd "torpor-private", 4 pages mapped MAP_PRIVATE by P, pages
 *          1 and 3 overwritten (copied on write)
 *   SysV segment key 0x5452PPPP (PPPP: low pid bits), 12388 bytes, mode
 *          0640: P attaches it at 0x50000000, C at 0x50100000 SHM_RDONLY
 *   SysV segment key 0x5453PPPP, 8192 bytes: P at 0x50200000, C at
 *          0x50300000, then removed (IPC_RMID) while attached
 *   (segments go where the kernel chooses when it refuses those addresses,
 *   as qemu-user does; after go they must be where they were)
 *
 * After go both check contents byte-exactly, then behaviour: a write
 * through fd 14 shows in C's mapping and C's write in the mapping shows
 * through the fd; P's write to the fd-less memfd and to each segment shows
 * in C; the seals refuse exactly what they refused (EPERM, EACCES); the
 * private mapping sees a write through fd 15 on a page it did not copy and
 * not on one it did; segment ids, size, mode and removal are the same.
 * C reports its first failure through the shared memfd.
 *
 * Usage: breadth_segments [--selftest-fail=big|offset|sparse|sealed|future|
 *        shared|description|mapped|private|sysv|sysv-id|sysv-shared|removed|
 *        rdonly]
 */
#include "common.h"

#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/wait.h>

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#ifndef SHM_DEST
#define SHM_DEST 01000
#endif

#define PAGE 4096
#define BIG_SIZE (1024 * 1024 + 12345)
#define BIG_OFFSET 4321
#define SPARSE_SIZE (64L * 1024 * 1024)
#define SPARSE_AT (40L * 1024 * 1024)
#define SEALED_SIZE 8192
#define SEALED_SEALS (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
#define SHARED_SIZE (3 * PAGE)
#define MAPPED_SIZE (2 * PAGE)
#define PRIV_SIZE (4 * PAGE)
#define SEG1_SIZE (3 * PAGE + 100)
#define SEG2_SIZE (2 * PAGE)
/* Where the segments are attached; the kernel chooses when it refuses
 * these (qemu-user refuses any fixed address). */
#define SEG1_P_AT ((void *)0x50000000UL)
#define SEG1_C_AT ((void *)0x50100000UL)
#define SEG2_P_AT ((void *)0x50200000UL)
#define SEG2_C_AT ((void *)0x50300000UL)
#define WAIT_MS 5000

enum { BIG_SEED = 0xb16, SPARSE_SEED = 0x5a5e, SEALED_SEED = 0x5ea1, FUTURE_SEED = 0xf07e, SHARED_SEED = 0x5a4e,
       MAPPED_SEED = 0x3a9, PRIV_SEED = 0x9e1, PRIV2_SEED = 0x9e2, SEG1_SEED = 0x5e61, SEG2_SEED = 0x5e62 };

/* Tokens of the after-go exchange between P and C. */
enum { T_FD = 0x11110001, T_MAP = 0x22220002, T_NOFD = 0x33330003, T_NOFD_SEEN = 0x44440004,
       T_SEG1 = 0x55550005, T_SEG2 = 0x66660006 };

static uint8_t *sealed_map, *future_map, *shared_map, *mapped_map, *priv_map;
static uint8_t *seg1_p, *seg1_c, *seg2_p, *seg2_c;
static int seg1 = -1, seg2 = -1, extra_seg = -1;
static key_t key1, key2;
static pid_t child;

/* Words of the shared memfd's first page: the exchange; its second page
 * holds C's first failure. */
#define WORD(map, i) (((volatile uint32_t *)(void *)(map))[i])

static void cleanup(void)
{
    if (seg1 >= 0)
        shmctl(seg1, IPC_RMID, NULL);
    if (seg2 >= 0)
        shmctl(seg2, IPC_RMID, NULL);
    if (extra_seg >= 0)
        shmctl(extra_seg, IPC_RMID, NULL);
}

/* What a failed setup leaves behind: the segments and the child. */
static void setup_leftovers(void)
{
    cleanup();
    if (child > 0)
        kill(child, SIGKILL);
}

static int make_memfd(const char *name, unsigned flags)
{
    return (int)syscall(SYS_memfd_create, name, flags);
}

static void fill_fd(int fd, size_t size, uint64_t seed, off_t where)
{
    static uint8_t buf[64 * 1024];
    for (size_t done = 0; done < size;) {
        size_t n = size - done < sizeof buf ? size - done : sizeof buf;
        /* The pattern of the whole range, not of each piece. */
        for (size_t i = 0; i < n; i++)
            buf[i] = pattern_byte(seed, done + i);
        if (pwrite(fd, buf, n, where + (off_t)done) != (ssize_t)n)
            setup_failed("fill");
        done += n;
    }
}

static void *map_fd(int fd, size_t len, int prot, int flags, const char *what)
{
    void *p = mmap(NULL, len, prot, flags, fd, 0);
    if (p == MAP_FAILED)
        setup_failed(what);
    return p;
}

static void setup_memfds(void)
{
    fd_at(make_memfd("torpor-big", 0), 10, "memfd big");
    if (ftruncate(10, BIG_SIZE) != 0)
        setup_failed("big size");
    fill_fd(10, BIG_SIZE, BIG_SEED, 0);
    if (lseek(10, BIG_OFFSET, SEEK_SET) != BIG_OFFSET)
        setup_failed("big offset");

    fd_at(make_memfd("torpor-sparse", 0), 11, "memfd sparse");
    if (ftruncate(11, SPARSE_SIZE) != 0)
        setup_failed("sparse size");
    fill_fd(11, PAGE, SPARSE_SEED, SPARSE_AT);

    fd_at(make_memfd("torpor-sealed", MFD_ALLOW_SEALING), 12, "memfd sealed");
    if (ftruncate(12, SEALED_SIZE) != 0)
        setup_failed("sealed size");
    fill_fd(12, SEALED_SIZE, SEALED_SEED, 0);
    if (fcntl(12, F_ADD_SEALS, SEALED_SEALS) != 0)
        setup_failed("sealing");
    /* A read-only description maps a write-sealed memfd shared on every kernel. */
    int ro = open("/proc/self/fd/12", O_RDONLY | O_CLOEXEC);
    if (ro < 0)
        setup_failed("reopening sealed read-only");
    sealed_map = map_fd(ro, SEALED_SIZE, PROT_READ, MAP_SHARED, "mmap sealed");
    close(ro);

    fd_at(make_memfd("torpor-future", MFD_ALLOW_SEALING), 13, "memfd future");
    if (ftruncate(13, PAGE) != 0)
        setup_failed("future size");
    future_map = map_fd(13, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, "mmap future");
    fill_pattern(future_map, PAGE, FUTURE_SEED);
    if (fcntl(13, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) != 0)
        setup_failed("sealing future");

    fd_at(make_memfd("torpor-shared", 0), 14, "memfd shared");
    if (ftruncate(14, SHARED_SIZE) != 0)
        setup_failed("shared size");
    shared_map = map_fd(14, SHARED_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, "mmap shared");
    fill_pattern(shared_map + 2 * PAGE, PAGE, SHARED_SEED);
    fd_at(open("/proc/self/fd/14", O_RDONLY), 16, "reopening the shared memfd");
    if (lseek(16, 100, SEEK_SET) != 100)
        setup_failed("offset of fd 16");

    int m = make_memfd("torpor-mapped", 0);
    if (m < 0 || ftruncate(m, MAPPED_SIZE) != 0)
        setup_failed("memfd mapped");
    mapped_map = map_fd(m, MAPPED_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, "mmap mapped");
    close(m);

    fd_at(make_memfd("torpor-private", 0), 15, "memfd private");
    if (ftruncate(15, PRIV_SIZE) != 0)
        setup_failed("private size");
    fill_fd(15, PRIV_SIZE, PRIV_SEED, 0);
    priv_map = map_fd(15, PRIV_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, "mmap private");
    fill_pattern(priv_map + PAGE, PAGE, PRIV2_SEED);
    fill_pattern(priv_map + 3 * PAGE, PAGE, PRIV2_SEED + 1);
}

static uint8_t *attach_at(int id, void *addr, int flags, const char *what)
{
    void *p = shmat(id, addr, flags);
    if (p == (void *)-1)
        p = shmat(id, NULL, flags);
    if (p == (void *)-1)
        setup_failed(what);
    return p;
}

/* Waits until word i of map reads want; 0 after WAIT_MS. */
static int await_word(volatile void *map, int i, uint32_t want)
{
    for (int waited = 0; waited < WAIT_MS; waited++) {
        if (WORD(map, i) == want)
            return 1;
        sleep_ns(1000000L);
    }
    return 0;
}

static void check_maps_name(const void *addr, const char *want)
{
    char buf[16384], head[32];
    if (read_text("/proc/self/maps", buf, sizeof buf) <= 0) {
        fail("reading /proc/self/maps");
        return;
    }
    snprintf(head, sizeof head, "%lx-", (unsigned long)(uintptr_t)addr);
    for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, head, strlen(head)) != 0)
            continue;
        char *end = strchr(line, '\n');
        if (end)
            *end = '\0';
        if (!strstr(line, want))
            fail("mapping at %p: expected %s, got: %s", addr, want, line);
        return;
    }
    fail("mapping at %p: gone (expected %s)", addr, want);
}

/* C: checks its views, answers P, reports through the shared memfd. */
static void child_main(int ready_fd)
{
    seg1_c = attach_at(seg1, SEG1_C_AT, SHM_RDONLY, "child attaching segment 1 read-only");
    seg2_c = attach_at(seg2, SEG2_C_AT, 0, "child attaching segment 2");
    char one = 1;
    if (write(ready_fd, &one, 1) != 1)
        setup_failed("child ready");
    close(ready_fd);
    wait_go();
    if (perturb("rdonly")) {
        if (shmdt(seg1_c) != 0 || shmat(seg1, seg1_c, 0) != seg1_c)
            _exit(3);
    }
    check_pattern("C: segment 1", seg1_c, SEG1_SIZE, SEG1_SEED);
    check_pattern("C: segment 2", seg2_c, SEG2_SIZE, SEG2_SEED);
    check_pattern("C: shared memfd", shared_map + 2 * PAGE, PAGE, SHARED_SEED);
    check_pattern("C: fd-less memfd", mapped_map + 8, MAPPED_SIZE - 8, MAPPED_SEED);
    check_maps_name(seg1_c, "/SYSV");
    check_maps_name(mapped_map, "/memfd:torpor-mapped (deleted)");
    if (mprotect(seg1_c, PAGE, PROT_READ | PROT_WRITE) == 0 || errno != EACCES)
        fail("C: segment 1 attached SHM_RDONLY: mprotect writable should fail with EACCES, got %s",
             strerror(errno));
    if (!await_word(shared_map, 0, T_FD))
        fail("C: P's write through fd 14 never showed in the shared mapping (got %#x)", WORD(shared_map, 0));
    WORD(shared_map, 1) = T_MAP;
    if (!await_word(mapped_map, 0, T_NOFD))
        fail("C: P's write to the fd-less memfd never showed (got %#x)", WORD(mapped_map, 0));
    WORD(shared_map, 2) = T_NOFD_SEEN;
    if (!await_word(seg1_c, 0, T_SEG1))
        fail("C: P's write to segment 1 never showed (got %#x)", WORD(seg1_c, 0));
    WORD(seg2_c, 0) = T_SEG2;
    if (failure_count)
        memcpy(shared_map + PAGE, first_failure, strlen(first_failure) + 1);
    _exit(failure_count ? 1 : 0);
}

static void setup_segments(void)
{
    key1 = (key_t)(0x54520000 | (getpid() & 0xffff));
    key2 = (key_t)(0x54530000 | (getpid() & 0xffff));
    seg1 = shmget(key1, SEG1_SIZE, IPC_CREAT | IPC_EXCL | 0640);
    if (seg1 < 0)
        setup_failed("shmget segment 1");
    seg2 = shmget(key2, SEG2_SIZE, IPC_CREAT | IPC_EXCL | 0600);
    if (seg2 < 0)
        setup_failed("shmget segment 2");
    int ready_pipe[2];
    if (pipe(ready_pipe) != 0)
        setup_failed("pipe");
    child = fork();
    if (child < 0)
        setup_failed("fork");
    if (child == 0) {
        close(ready_pipe[0]);
        child_main(ready_pipe[1]);
    }
    close(ready_pipe[1]);
    char b;
    if (read(ready_pipe[0], &b, 1) != 1)
        setup_failed("child setup");
    close(ready_pipe[0]);
    seg1_p = attach_at(seg1, SEG1_P_AT, 0, "attaching segment 1");
    seg2_p = attach_at(seg2, SEG2_P_AT, 0, "attaching segment 2");
    fill_pattern(seg1_p, SEG1_SIZE, SEG1_SEED);
    fill_pattern(seg2_p, SEG2_SIZE, SEG2_SEED);
    /* Both attached: removed now, it lives until the last detach. */
    if (shmctl(seg2, IPC_RMID, NULL) != 0)
        setup_failed("removing segment 2");
    /* The fd-less memfd's exchange word is its first; its pattern starts after. */
    fill_pattern(mapped_map + 8, MAPPED_SIZE - 8, MAPPED_SEED);
}

static void flip(int fd, off_t where)
{
    uint8_t b;
    if (pread(fd, &b, 1, where) != 1)
        _exit(3);
    b ^= 1;
    if (pwrite(fd, &b, 1, where) != 1)
        _exit(3);
}

static void perturbations(void)
{
    perturb_elsewhere("rdonly");
    if (perturb("big"))
        flip(10, 500000);
    if (perturb("offset"))
        lseek(10, BIG_OFFSET + 1, SEEK_SET);
    if (perturb("sparse") && pwrite(11, "s", 1, 0) != 1)
        _exit(3);
    if (perturb("sealed")) {
        fd_at(make_memfd("torpor-sealed", MFD_ALLOW_SEALING), 12, "memfd sealed again");
        if (ftruncate(12, SEALED_SIZE) != 0)
            _exit(3);
        fill_fd(12, SEALED_SIZE, SEALED_SEED, 0);
    }
    if (perturb("future"))
        fcntl(13, F_ADD_SEALS, F_SEAL_GROW);
    if (perturb("shared")) {
        static uint8_t copy[SHARED_SIZE];
        memcpy(copy, shared_map, SHARED_SIZE);
        if (mmap(shared_map, SHARED_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) !=
            shared_map)
            _exit(3);
        memcpy(shared_map, copy, SHARED_SIZE);
    }
    if (perturb("description")) {
        fd_at(make_memfd("torpor-shared", 0), 16, "memfd shared again");
        if (ftruncate(16, SHARED_SIZE) != 0 || lseek(16, 100, SEEK_SET) != 100)
            _exit(3);
    }
    if (perturb("mapped"))
        mapped_map[100] ^= 1;
    if (perturb("private"))
        WORD(priv_map, 0) = WORD(priv_map, 0);
    if (perturb("sysv"))
        seg1_p[200] ^= 1;
    if (perturb("sysv-id"))
        shmctl(seg1, IPC_RMID, NULL);
    if (perturb("sysv-shared")) {
        static uint8_t copy[SEG1_SIZE];
        memcpy(copy, seg1_p, SEG1_SIZE);
        if (shmdt(seg1_p) != 0 ||
            mmap(seg1_p, SEG1_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != seg1_p)
            _exit(3);
        memcpy(seg1_p, copy, SEG1_SIZE);
    }
    if (perturb("removed"))
        extra_seg = shmget(key2, PAGE, IPC_CREAT | 0600);
}

static void check_size(int fd, long long want)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size != want)
        fail("fd %d size: expected %lld, got %lld", fd, want, (long long)st.st_size);
}

static void check_fd_pattern(const char *what, int fd, size_t n, off_t where, uint64_t seed)
{
    static uint8_t buf[BIG_SIZE];
    if (pread(fd, buf, n, where) != (ssize_t)n) {
        fail("%s: short read", what);
        return;
    }
    check_pattern(what, buf, n, seed);
}

static void check_errno(const char *what, int failed, int want)
{
    if (!failed)
        fail("%s: expected %s, it succeeded", what, strerror(want));
    else if (errno != want)
        fail("%s: expected %s, got %s", what, strerror(want), strerror(errno));
}

static void check_memfds(void)
{
    check_link(10, "/memfd:torpor-big (deleted)");
    check_size(10, BIG_SIZE);
    check_fd_pattern("fd 10 contents", 10, BIG_SIZE, 0, BIG_SEED);
    off_t off = lseek(10, 0, SEEK_CUR);
    if (off != BIG_OFFSET)
        fail("fd 10 offset: expected %d, got %lld", BIG_OFFSET, (long long)off);

    check_link(11, "/memfd:torpor-sparse (deleted)");
    check_size(11, SPARSE_SIZE);
    off = lseek(11, 0, SEEK_DATA);
    if (off != SPARSE_AT)
        fail("fd 11: first data expected at %ld (a hole before), got %lld", SPARSE_AT, (long long)off);
    check_fd_pattern("fd 11 contents", 11, PAGE, SPARSE_AT, SPARSE_SEED);

    check_link(12, "/memfd:torpor-sealed (deleted)");
    int seals = fcntl(12, F_GET_SEALS);
    if (seals != SEALED_SEALS)
        fail("fd 12 seals: expected %#x, got %#x", SEALED_SEALS, seals);
    check_fd_pattern("fd 12 contents", 12, SEALED_SIZE, 0, SEALED_SEED);
    check_pattern("fd 12 mapping", sealed_map, SEALED_SIZE, SEALED_SEED);
    check_errno("fd 12: write under F_SEAL_WRITE", pwrite(12, "x", 1, 0) < 0, EPERM);
    check_errno("fd 12: grow under F_SEAL_GROW", ftruncate(12, 2 * SEALED_SIZE) != 0, EPERM);
    void *w = mmap(NULL, SEALED_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, 12, 0);
    check_errno("fd 12: writable shared mmap under F_SEAL_WRITE", w == MAP_FAILED, EPERM);
    if (w != MAP_FAILED)
        munmap(w, SEALED_SIZE);
    check_errno("fd 12 mapping: mprotect writable", mprotect(sealed_map, SEALED_SIZE, PROT_READ | PROT_WRITE) != 0,
                EACCES);

    check_link(13, "/memfd:torpor-future (deleted)");
    seals = fcntl(13, F_GET_SEALS);
    if (seals != F_SEAL_FUTURE_WRITE)
        fail("fd 13 seals: expected %#x, got %#x", F_SEAL_FUTURE_WRITE, seals);
    check_pattern("fd 13 mapping", future_map, PAGE, FUTURE_SEED);
    check_errno("fd 13: write under F_SEAL_FUTURE_WRITE", pwrite(13, "x", 1, 0) < 0, EPERM);
    w = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, 13, 0);
    check_errno("fd 13: new writable shared mmap under F_SEAL_FUTURE_WRITE", w == MAP_FAILED, EPERM);
    if (w != MAP_FAILED)
        munmap(w, PAGE);
    /* The mapping made before the seal still writes, into the memfd. */
    future_map[7] ^= 0xff;
    uint8_t b = 0;
    if (pread(13, &b, 1, 7) != 1 || b != future_map[7])
        fail("fd 13: a write through the mapping made before the seal is not in the memfd");

    check_link(14, "/memfd:torpor-shared (deleted)");
    check_pattern("shared memfd mapping", shared_map + 2 * PAGE, PAGE, SHARED_SEED);
    check_fd_pattern("fd 14 contents", 14, PAGE, 2 * PAGE, SHARED_SEED);
    /* fd 16: its own description (offset, read-only) of the same memfd. */
    check_link(16, "/memfd:torpor-shared (deleted)");
    struct stat s14, s16;
    if (fstat(14, &s14) != 0 || fstat(16, &s16) != 0 || s14.st_ino != s16.st_ino)
        fail("fd 16: expected the memfd of fd 14 (inode %lu), got inode %lu", (unsigned long)s14.st_ino,
             (unsigned long)s16.st_ino);
    off = lseek(16, 0, SEEK_CUR);
    if (off != 100)
        fail("fd 16 offset: expected 100, got %lld", (long long)off);
    if ((fcntl(16, F_GETFL) & O_ACCMODE) != O_RDONLY)
        fail("fd 16: expected O_RDONLY, got flags %#x", fcntl(16, F_GETFL));
    check_fd_pattern("fd 16 contents", 16, PAGE, 2 * PAGE, SHARED_SEED);
    check_maps_name(mapped_map, "/memfd:torpor-mapped (deleted)");
    check_pattern("fd-less memfd mapping", mapped_map + 8, MAPPED_SIZE - 8, MAPPED_SEED);

    check_link(15, "/memfd:torpor-private (deleted)");
    check_pattern("private mapping page 0", priv_map, PAGE, PRIV_SEED);
    check_pattern("private mapping page 1 (copied)", priv_map + PAGE, PAGE, PRIV2_SEED);
    check_pattern("private mapping page 3 (copied)", priv_map + 3 * PAGE, PAGE, PRIV2_SEED + 1);
    static uint8_t page2[PAGE];
    for (size_t i = 0; i < PAGE; i++)
        page2[i] = pattern_byte(PRIV_SEED, 2 * PAGE + i);
    if (memcmp(priv_map + 2 * PAGE, page2, PAGE) != 0)
        fail("private mapping page 2: not the memfd's contents");
    check_fd_pattern("fd 15 contents", 15, PRIV_SIZE, 0, PRIV_SEED);
    /* A page never written reads the memfd; a copied page no longer does. */
    uint8_t x = (uint8_t)(pattern_byte(PRIV_SEED, 5) ^ 0x80), y = (uint8_t)(pattern_byte(PRIV_SEED, PAGE + 5) ^ 0x80);
    if (pwrite(15, &x, 1, 5) != 1 || pwrite(15, &y, 1, PAGE + 5) != 1)
        fail("fd 15: write failed: %s", strerror(errno));
    if (priv_map[5] != x)
        fail("private mapping page 0: a write through fd 15 does not show (got %#x, want %#x)", priv_map[5], x);
    if (priv_map[PAGE + 5] != pattern_byte(PRIV2_SEED, 5))
        fail("private mapping page 1: a write through fd 15 shows in a copied page");
}

static void check_segments(void)
{
    int id = shmget(key1, 0, 0);
    if (id != seg1)
        fail("segment 1 key %#x: expected id %d, got %d (%s)", (unsigned)key1, seg1, id, id < 0 ? strerror(errno) : "");
    struct shmid_ds ds;
    if (shmctl(seg1, IPC_STAT, &ds) != 0)
        fail("segment 1 IPC_STAT: %s", strerror(errno));
    else if (ds.shm_segsz != SEG1_SIZE || (ds.shm_perm.mode & 0777) != 0640 || ds.shm_perm.uid != getuid() ||
             (ds.shm_perm.mode & SHM_DEST))
        fail("segment 1: expected %d bytes mode 0640 uid %d not removed, got %lu bytes mode 0%o uid %d", SEG1_SIZE,
             (int)getuid(), (unsigned long)ds.shm_segsz, (unsigned)ds.shm_perm.mode, (int)ds.shm_perm.uid);
    check_pattern("segment 1", seg1_p, SEG1_SIZE, SEG1_SEED);
    check_maps_name(seg1_p, "/SYSV");

    if (shmctl(seg2, IPC_STAT, &ds) != 0)
        fail("segment 2 IPC_STAT by id %d: %s", seg2, strerror(errno));
    else if (ds.shm_segsz != SEG2_SIZE || !(ds.shm_perm.mode & SHM_DEST))
        fail("segment 2: expected %d bytes marked for removal, got %lu bytes mode 0%o", SEG2_SIZE,
             (unsigned long)ds.shm_segsz, (unsigned)ds.shm_perm.mode);
    check_errno("segment 2: shmget by its old key after removal", shmget(key2, 0, 0) < 0, ENOENT);
    /* The maps name keeps the key it was created with. */
    char name[32];
    snprintf(name, sizeof name, "/SYSV%08x (deleted)", (unsigned)key2);
    check_maps_name(seg2_p, name);
    check_pattern("segment 2", seg2_p, SEG2_SIZE, SEG2_SEED);
}

static void exchange(void)
{
    uint32_t t = T_FD, got = 0;
    if (pwrite(14, &t, 4, 0) != 4)
        fail("fd 14: write failed: %s", strerror(errno));
    if (!await_word(shared_map, 1, T_MAP))
        fail("C's write to the shared memfd mapping never showed in P's (got %#x)", WORD(shared_map, 1));
    else if (pread(14, &got, 4, 4) != 4 || got != T_MAP)
        fail("C's write to the shared memfd mapping is not in fd 14 (got %#x)", got);
    WORD(mapped_map, 0) = T_NOFD;
    if (!await_word(shared_map, 2, T_NOFD_SEEN))
        fail("C never saw P's write to the fd-less memfd");
    WORD(seg1_p, 0) = T_SEG1;
    if (!await_word(seg2_p, 0, T_SEG2))
        fail("C's write to segment 2 never showed in P's attachment (got %#x)", WORD(seg2_p, 0));
}

int main(int argc, char **argv)
{
    app_init("breadth_segments", argc, argv);
    setup_cleanup = setup_leftovers;
    setup_memfds();
    setup_segments();
    ready();
    wait_go();
    perturbations();
    check_memfds();
    check_segments();
    exchange();
    int status = 0;
    if (waitpid(child, &status, 0) != child)
        fail("waiting for C: %s", strerror(errno));
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("%s (status %#x)", (char *)shared_map + PAGE, status);
    cleanup();
    return finish();
}
