/*
 * memory: a pattern in every kind of mapping, verified byte-exact after go.
 *
 *   anon    private anonymous, every 4th page left untouched (must read zero)
 *   cow     private file mapping of W/cow.bin with some pages (and part of one
 *           page) written after mmap; the file itself keeps its old bytes
 *   shared  shared file mapping of W/shared.bin: the file holds the writes and
 *           a write after go still reaches the file
 *   shm     shared anonymous memory, also checked by a forked child; after go
 *           parent and child exchange a token through it (still shared); the
 *           child exits 1 on a wrong byte, 2 when no token came
 *   heap    malloc'd blocks of many sizes
 *   stack   a 32 KiB buffer in main's frame
 *   guard   a PROT_NONE page between two RW pages: reading it still faults
 *           with SEGV_ACCERR at that address
 *   ro      an mprotect'ed read-only region: writing faults, contents intact
 *   big     a large region (MiB, default 64) filled from a seed
 *   maps    each region's VMA keeps its protections, offset, inode and path
 *   proc    /proc/self/exe and /proc/self/cmdline are unchanged
 *
 * Usage: memory [big_mib] [--selftest-fail=anon|cow|shared|shm|heap|stack|guard|ro|big|maps]
 */
#include "common.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define ANON_PAGES 256
#define COW_PAGES 16
#define SHARED_PAGES 8
#define SHM_SIZE (64 * 1024)
#define HEAP_BLOCKS 200
#define STACK_BYTES (32 * 1024)

static size_t page;

static sigjmp_buf fault_jump;
static volatile sig_atomic_t fault_code;
static void *volatile fault_addr;

static void on_segv(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    fault_code = si->si_code;
    fault_addr = si->si_addr;
    siglongjmp(fault_jump, 1);
}

/* Touches p (read or write); returns 1 and the si_code when it faulted. */
static int probe(volatile uint8_t *p, int write, int *code)
{
    fault_code = 0;
    fault_addr = NULL;
    if (sigsetjmp(fault_jump, 1) == 0) {
        if (write)
            *p = 0xee;
        else
            (void)*p;
        return 0;
    }
    *code = fault_code;
    if (fault_addr != (void *)p)
        fail("fault address: expected %p, got %p", (void *)p, fault_addr);
    return 1;
}

static void *map(size_t len, int prot, int flags, int fd)
{
    void *p = mmap(NULL, len, prot, flags, fd, 0);
    if (p == MAP_FAILED) {
        say("FAIL memory: mmap %zu bytes: %s\n", len, strerror(errno));
        exit(1);
    }
    return p;
}

static int make_file(const char *name, size_t len, uint64_t seed)
{
    int fd = open(name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        say("FAIL memory: create %s: %s\n", name, strerror(errno));
        exit(1);
    }
    uint8_t *buf = malloc(len);
    if (seed)
        fill_pattern(buf, len, seed);
    else
        memset(buf, 0, len);
    write_all(fd, buf, len);
    free(buf);
    return fd;
}

static void check_file(const char *what, int fd, size_t off, size_t len, uint64_t seed)
{
    uint8_t *buf = malloc(len);
    ssize_t n = pread(fd, buf, len, (off_t)off);
    if (n != (ssize_t)len)
        fail("%s: pread %zu bytes at %zu: got %zd", what, len, off, n);
    else
        check_pattern(what, buf, len, seed);
    free(buf);
}

/* ---- /proc/self/maps: the VMA holding each region ---- */

struct vma {
    char perms[8];
    unsigned long start, end, offset, inode;
    char path[256];
};

static int find_vma(const void *addr, struct vma *out)
{
    static char buf[256 * 1024];
    if (read_text("/proc/self/maps", buf, sizeof buf) <= 0)
        return 0;
    unsigned long a = (unsigned long)(uintptr_t)addr;
    for (char *line = buf; *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        struct vma v = { 0 };
        unsigned dmaj, dmin;
        int used = 0;
        if (sscanf(line, "%lx-%lx %7s %lx %x:%x %lu %n", &v.start, &v.end, v.perms, &v.offset,
                   &dmaj, &dmin, &v.inode, &used) >= 7) {
            if (a >= v.start && a < v.end) {
                snprintf(v.path, sizeof v.path, "%s", used ? line + used : "");
                *out = v;
                if (nl)
                    *nl = '\n';
                return 1;
            }
        }
        if (!nl)
            break;
        *nl = '\n';
        line = nl + 1;
    }
    return 0;
}

struct region {
    const char *name;
    void *addr;
    size_t len;
    struct vma vma;
};

static struct region regions[16];
static int nregions;

static void track(const char *name, void *addr, size_t len)
{
    struct region *r = &regions[nregions++];
    r->name = name;
    r->addr = addr;
    r->len = len;
    if (!find_vma(addr, &r->vma)) {
        say("FAIL memory: %s at %p is in no VMA of /proc/self/maps\n", name, addr);
        exit(1);
    }
}

static void check_maps(void)
{
    for (int i = 0; i < nregions; i++) {
        struct region *r = &regions[i];
        struct vma v;
        if (!find_vma(r->addr, &v)) {
            fail("maps: %s at %p: expected a VMA, got none", r->name, r->addr);
            continue;
        }
        if (strcmp(v.perms, r->vma.perms) != 0)
            fail("maps: %s perms: expected %s, got %s", r->name, r->vma.perms, v.perms);
        unsigned long want_off = r->vma.offset + ((unsigned long)(uintptr_t)r->addr - r->vma.start);
        unsigned long got_off = v.offset + ((unsigned long)(uintptr_t)r->addr - v.start);
        /* Anonymous VMAs show offset 0 however they were merged. */
        if (r->vma.inode != 0 && got_off != want_off)
            fail("maps: %s file offset: expected 0x%lx, got 0x%lx", r->name, want_off, got_off);
        /* A shared anonymous object is a new shmem inode after a restore; files keep theirs. */
        int real_file = r->vma.path[0] == '/' && !strstr(r->vma.path, " (deleted)");
        if (real_file && v.inode != r->vma.inode)
            fail("maps: %s inode: expected %lu, got %lu", r->name, r->vma.inode, v.inode);
        if (strcmp(v.path, r->vma.path) != 0)
            fail("maps: %s path: expected '%s', got '%s'", r->name, r->vma.path, v.path);
        if ((unsigned long)(uintptr_t)r->addr + r->len > v.end)
            fail("maps: %s: expected its VMA to reach 0x%lx, got end 0x%lx", r->name,
                 (unsigned long)(uintptr_t)r->addr + r->len, v.end);
    }
}

/* ---- the shared anonymous mailbox, used by the forked child ---- */

struct mailbox {
    uint32_t token;
    uint32_t ack;
    char msg[256];
};

static int shm_child(uint8_t *shm)
{
    struct mailbox *mb = (struct mailbox *)(shm + SHM_SIZE - page);
    wait_go();
    const uint8_t *b = shm;
    for (size_t i = 0; i < SHM_SIZE - page; i++) {
        if (b[i] != pattern_byte(7, i)) {
            snprintf(mb->msg, sizeof mb->msg, "shm seen by child: byte at +0x%zx: expected 0x%02x, got 0x%02x",
                     i, pattern_byte(7, i), b[i]);
            return 1;
        }
    }
    for (int k = 0; k < 500; k++) {
        uint32_t t = __atomic_load_n(&mb->token, __ATOMIC_ACQUIRE);
        if (t != 0) {
            __atomic_store_n(&mb->ack, t + 1, __ATOMIC_RELEASE);
            return 0;
        }
        sleep_ns(10 * 1000 * 1000L);
    }
    snprintf(mb->msg, sizeof mb->msg, "shm: child saw no token from the parent within 5 s");
    return 2;
}

int main(int argc, char **argv)
{
    app_init("memory", argc, argv);
    page = (size_t)sysconf(_SC_PAGESIZE);
    size_t big_len = (size_t)app_arg(0, 64) << 20;

    struct sigaction sa = { 0 };
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);

    /* anon: every 4th page never touched. */
    uint8_t *anon = map(ANON_PAGES * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    for (size_t i = 0; i < ANON_PAGES; i++)
        if (i % 4 != 3)
            fill_pattern(anon + i * page, page, 1000 + i);
    track("anon", anon, ANON_PAGES * page);

    /* cow: file pattern 2, pages 2, 5, 9 replaced by pattern 3, page 12 partly by pattern 4. */
    int cow_fd = make_file("cow.bin", COW_PAGES * page, 2);
    uint8_t *cow = map(COW_PAGES * page, PROT_READ | PROT_WRITE, MAP_PRIVATE, cow_fd);
    static const int cow_dirty[] = { 2, 5, 9 };
    for (size_t k = 0; k < 3; k++)
        fill_pattern(cow + cow_dirty[k] * page, page, 3000 + (uint64_t)cow_dirty[k]);
    fill_pattern(cow + 12 * page, 100, 4);
    track("cow", cow, COW_PAGES * page);

    /* shared: a shared file mapping written through memory. */
    int shared_fd = make_file("shared.bin", SHARED_PAGES * page, 0);
    uint8_t *shared = map(SHARED_PAGES * page, PROT_READ | PROT_WRITE, MAP_SHARED, shared_fd);
    fill_pattern(shared, SHARED_PAGES * page, 5);
    track("shared", shared, SHARED_PAGES * page);

    /* shm: shared anonymous, the last page is the parent/child mailbox. */
    uint8_t *shm = map(SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1);
    fill_pattern(shm, SHM_SIZE - page, 7);
    struct mailbox *mb = (struct mailbox *)(shm + SHM_SIZE - page);
    track("shm", shm, SHM_SIZE);

    /* heap */
    uint8_t *blocks[HEAP_BLOCKS];
    size_t sizes[HEAP_BLOCKS];
    for (size_t i = 0; i < HEAP_BLOCKS; i++) {
        sizes[i] = (i * 7919) % 20000 + 1;
        blocks[i] = malloc(sizes[i]);
        fill_pattern(blocks[i], sizes[i], 100 + i);
    }

    /* stack */
    uint8_t stack_buf[STACK_BYTES] __attribute__((aligned(16)));
    fill_pattern(stack_buf, STACK_BYTES, 8);

    /* guard: RW | NONE | RW */
    uint8_t *guard = map(3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    fill_pattern(guard, 3 * page, 9);
    mprotect(guard + page, page, PROT_NONE);
    track("guard-low", guard, page);
    track("guard", guard + page, page);
    track("guard-high", guard + 2 * page, page);

    /* ro */
    uint8_t *ro = map(2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    fill_pattern(ro, 2 * page, 10);
    mprotect(ro, 2 * page, PROT_READ);
    track("ro", ro, 2 * page);

    /* big */
    uint8_t *big = map(big_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    fill_pattern(big, big_len, 11);
    track("big", big, big_len);

    static char exe[512], cmdline[4096];
    ssize_t exe_len = readlink("/proc/self/exe", exe, sizeof exe);
    ssize_t cmd_len = read_text("/proc/self/cmdline", cmdline, sizeof cmdline);

    int code = 0;
    if (!probe(guard + page, 0, &code) || !probe(ro, 1, &code)) {
        say("FAIL memory: the guard page or the read-only region did not fault before the checkpoint\n");
        return 1;
    }

    pid_t child = fork();
    if (child == 0)
        _exit(shm_child(shm));

    ready();
    wait_go();

    if (perturb("anon"))
        anon[5 * page + 17] ^= 1;
    if (perturb("cow"))
        cow[9 * page + 1] ^= 1;
    if (perturb("shared"))
        shared[3 * page] ^= 1;
    if (perturb("shm"))
        shm[100] ^= 1;
    if (perturb("heap"))
        blocks[HEAP_BLOCKS / 2][0] ^= 1;
    if (perturb("stack"))
        stack_buf[STACK_BYTES - 1] ^= 1;
    if (perturb("guard"))
        mprotect(guard + page, page, PROT_READ);
    if (perturb("ro"))
        mprotect(ro, 2 * page, PROT_READ | PROT_WRITE);
    if (perturb("big"))
        big[big_len - 1] ^= 1;
    if (perturb("maps"))
        mprotect(anon, page, PROT_READ);

    check_maps();

    for (size_t i = 0; i < ANON_PAGES; i++) {
        if (i % 4 == 3)
            check_zero("anon untouched page", anon + i * page, page);
        else
            check_pattern("anon", anon + i * page, page, 1000 + i);
    }

    for (size_t i = 0; i < COW_PAGES; i++) {
        uint8_t *p = cow + i * page;
        if (i == 2 || i == 5 || i == 9) {
            check_pattern("cow written page", p, page, 3000 + i);
        } else if (i == 12) {
            check_pattern("cow partly written page", p, 100, 4);
            for (size_t j = 100; j < page; j++)
                if (p[j] != pattern_byte(2, i * page + j)) {
                    fail("cow partly written page: byte at +0x%zx: expected 0x%02x, got 0x%02x", j,
                         pattern_byte(2, i * page + j), p[j]);
                    break;
                }
        } else {
            for (size_t j = 0; j < page; j++)
                if (p[j] != pattern_byte(2, i * page + j)) {
                    fail("cow clean page %zu: byte at +0x%zx: expected 0x%02x, got 0x%02x", i, j,
                         pattern_byte(2, i * page + j), p[j]);
                    break;
                }
        }
    }
    check_file("cow.bin file under the private mapping", cow_fd, 0, COW_PAGES * page, 2);

    check_pattern("shared", shared, SHARED_PAGES * page, 5);
    check_file("shared.bin file", shared_fd, 0, SHARED_PAGES * page, 5);
    fill_pattern(shared, page, 6);
    check_file("shared.bin after a write through the mapping", shared_fd, 0, page, 6);

    check_pattern("shm", shm, SHM_SIZE - page, 7);
    __atomic_store_n(&mb->token, 0x5eed, __ATOMIC_RELEASE);
    int status = 0;
    if (waitpid(child, &status, 0) != child)
        fail("shm: waitpid(%d): %s", (int)child, strerror(errno));
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        if (mb->msg[0])
            fail("%s", mb->msg);
        else if (WIFSIGNALED(status))
            fail("shm: child: expected exit 0, got killed by signal %d", WTERMSIG(status));
        else if (WEXITSTATUS(status) == 2)
            fail("shm: the child saw no token from the parent within 5 s and its message did not reach "
                 "the parent: the mapping is no longer shared");
        else
            fail("shm: the child found a wrong byte but its message did not reach the parent: the mapping "
                 "is no longer shared (child exit %d)", WEXITSTATUS(status));
    else if (__atomic_load_n(&mb->ack, __ATOMIC_ACQUIRE) != 0x5eee)
        fail("shm: child ack: expected 0x5eee, got 0x%x", mb->ack);

    for (size_t i = 0; i < HEAP_BLOCKS; i++)
        check_pattern("heap block", blocks[i], sizes[i], 100 + i);

    check_pattern("stack", stack_buf, STACK_BYTES, 8);

    check_pattern("guard-low", guard, page, 9);
    for (size_t j = 0; j < page; j++)
        if (guard[2 * page + j] != pattern_byte(9, 2 * page + j)) {
            fail("guard-high: byte at +0x%zx: expected 0x%02x, got 0x%02x", j,
                 pattern_byte(9, 2 * page + j), guard[2 * page + j]);
            break;
        }
    if (!probe(guard + page, 0, &code))
        fail("guard: expected reading the PROT_NONE page to fault, got no fault");
    else if (code != SEGV_ACCERR)
        fail("guard: fault si_code: expected SEGV_ACCERR (%d), got %d", SEGV_ACCERR, code);

    if (!probe(ro + page + 5, 1, &code))
        fail("ro: expected writing the read-only region to fault, got no fault");
    else if (code != SEGV_ACCERR)
        fail("ro: fault si_code: expected SEGV_ACCERR (%d), got %d", SEGV_ACCERR, code);
    check_pattern("ro", ro, 2 * page, 10);

    check_pattern("big", big, big_len, 11);

    static char exe2[512], cmdline2[4096];
    ssize_t exe2_len = readlink("/proc/self/exe", exe2, sizeof exe2);
    if (exe2_len != exe_len || memcmp(exe, exe2, (size_t)(exe_len > 0 ? exe_len : 0)) != 0)
        fail("/proc/self/exe: expected '%.*s', got '%.*s'", (int)exe_len, exe, (int)exe2_len, exe2);
    ssize_t cmd2_len = read_text("/proc/self/cmdline", cmdline2, sizeof cmdline2);
    if (cmd2_len != cmd_len || cmd_len < 0 || memcmp(cmdline, cmdline2, (size_t)cmd_len) != 0)
        fail("/proc/self/cmdline: expected %zd bytes starting '%s', got %zd bytes starting '%s'", cmd_len,
             cmdline, cmd2_len, cmdline2);

    return finish();
}
