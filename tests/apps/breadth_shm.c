/*
 * breadth_shm: memfds keep their name, size, contents, seals and offset
 * across a checkpoint.
 *
 * Before READY: fd 10, memfd "torpor-breadth" (sealing allowed), 10000
 * pattern bytes in 12288, offset 777, sealed against shrinking and growing;
 * fd 11, memfd "plain" without sealing, empty. After go: names, sizes,
 * contents (the tail reads as zeros), offsets and seals are the same, the
 * seals still refuse growing and shrinking, writes inside the size work.
 *
 * Also a POSIX shared memory object /dev/shm/torpor-breadth-PID (mode
 * 0640, 8192 pattern bytes) mapped shared, its fd closed: after go the
 * mapping holds the pattern and is still the file (a write through the
 * mapping shows in the file); the object is unlinked at the end.
 *
 * Usage: breadth_shm [--selftest-fail=content|seals|offset|name|size|
 *        posix-shm|posix-shared]
 */
#include "common.h"

#include <sys/mman.h>
#include <sys/stat.h>

#define SIZE 12288
#define FILLED 10000
#define SEED 0x5eedULL
#define SHM_LEN 8192
#define SHM_SEED 0x5a5aULL

static char shm_name[64];
static uint8_t *shm;

static int make_memfd(const char *name, unsigned flags)
{
    return (int)syscall(SYS_memfd_create, name, flags);
}

static void setup(void)
{
    fd_at(make_memfd("torpor-breadth", MFD_ALLOW_SEALING), 10, "memfd 10");
    static uint8_t buf[FILLED];
    fill_pattern(buf, sizeof buf, SEED);
    if (ftruncate(10, SIZE) != 0 || pwrite(10, buf, sizeof buf, 0) != (ssize_t)sizeof buf)
        setup_failed("fill");
    if (lseek(10, 777, SEEK_SET) != 777 || fcntl(10, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0)
        setup_failed("seal");
    fd_at(make_memfd("plain", 0), 11, "memfd 11");

    snprintf(shm_name, sizeof shm_name, "/torpor-breadth-%d", (int)getpid());
    int s = shm_open(shm_name, O_RDWR | O_CREAT | O_EXCL, 0640);
    if (s < 0 || fchmod(s, 0640) != 0 || ftruncate(s, SHM_LEN) != 0)
        setup_failed("shm_open");
    shm = mmap(NULL, SHM_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, s, 0);
    if (shm == MAP_FAILED)
        setup_failed("mmap shm");
    close(s);
    fill_pattern(shm, SHM_LEN, SHM_SEED);
}

static void perturbations(void)
{
    if (perturb("content") && pwrite(10, "!", 1, 4096) != 1)
        _exit(3);
    if (perturb("seals"))
        fcntl(10, F_ADD_SEALS, F_SEAL_SEAL);
    if (perturb("offset"))
        lseek(10, 778, SEEK_SET);
    if (perturb("name"))
        fd_at(make_memfd("other", 0), 11, "memfd 11 again");
    if (perturb("size"))
        fd_at(make_memfd("torpor-breadth", MFD_ALLOW_SEALING), 10, "memfd 10 again");
    if (perturb("posix-shm"))
        shm[100] ^= 1;
    if (perturb("posix-shared")) {
        static uint8_t copy[SHM_LEN];
        memcpy(copy, shm, SHM_LEN);
        if (mmap(shm, SHM_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != shm)
            _exit(3);
        memcpy(shm, copy, SHM_LEN);
    }
}

static void check_posix_shm(void)
{
    check_pattern("posix shm mapping", shm, SHM_LEN, SHM_SEED);
    int s = shm_open(shm_name, O_RDWR, 0);
    if (s < 0) {
        fail("shm_open %s after go: %s", shm_name, strerror(errno));
        return;
    }
    struct stat st;
    if (fstat(s, &st) != 0 || (st.st_mode & 07777) != 0640 || st.st_size != SHM_LEN)
        fail("posix shm: expected mode 0640 size %d, got 0%o size %lld", SHM_LEN, (unsigned)(st.st_mode & 07777),
             (long long)st.st_size);
    shm[SHM_LEN - 1] ^= 0xff;
    uint8_t b = 0;
    if (pread(s, &b, 1, SHM_LEN - 1) != 1 || b != shm[SHM_LEN - 1])
        fail("posix shm: a write through the mapping is not in the file (mapping no longer shared)");
    close(s);
    shm_unlink(shm_name);
}

int main(int argc, char **argv)
{
    app_init("breadth_shm", argc, argv);
    setup();
    ready();
    wait_go();
    perturbations();

    check_link(10, "/memfd:torpor-breadth (deleted)");
    check_link(11, "/memfd:plain (deleted)");
    struct stat st;
    if (fstat(10, &st) != 0 || st.st_size != SIZE)
        fail("fd 10 size: expected %d, got %lld", SIZE, (long long)st.st_size);
    static uint8_t buf[SIZE];
    if (pread(10, buf, SIZE, 0) != SIZE)
        fail("fd 10: short read");
    check_pattern("fd 10 contents", buf, FILLED, SEED);
    check_zero("fd 10 tail", buf + FILLED, SIZE - FILLED);
    off_t off = lseek(10, 0, SEEK_CUR);
    if (off != 777)
        fail("fd 10 offset: expected 777, got %lld", (long long)off);
    int seals = fcntl(10, F_GET_SEALS);
    if (seals != (F_SEAL_SHRINK | F_SEAL_GROW))
        fail("fd 10 seals: expected 0x%x, got 0x%x", F_SEAL_SHRINK | F_SEAL_GROW, seals);
    if (ftruncate(10, SIZE + 4096) == 0 || errno != EPERM)
        fail("fd 10: growing should be refused by its seal");
    if (ftruncate(10, 4096) == 0 || errno != EPERM)
        fail("fd 10: shrinking should be refused by its seal");
    if (pwrite(10, "w", 1, SIZE - 1) != 1)
        fail("fd 10: a write inside the size failed: %s", strerror(errno));
    seals = fcntl(11, F_GET_SEALS);
    if (seals != F_SEAL_SEAL)
        fail("fd 11 seals: expected F_SEAL_SEAL, got 0x%x", seals);
    if (fstat(11, &st) != 0 || st.st_size != 0)
        fail("fd 11 size: expected 0, got %lld", (long long)st.st_size);
    check_posix_shm();
    return finish();
}
