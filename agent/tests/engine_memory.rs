//! Every kind of memory comes back byte-exact: 64 MiB of anonymous memory
//! (with an all-zero page and untouched pages), heap (which still grows from
//! where it was), stack, a PROT_NONE page with contents, a read-only page, a
//! private file mapping with one copied-on-write page, a shared file mapping
//! (still the file), and shared anonymous memory. The program checks itself
//! after restore.

mod engine_util;
use engine_util::*;

const MEMORY: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#define PG 4096
#define BIG (64UL << 20)
static volatile sig_atomic_t usr1;
static void on_usr1(int s) { (void)s; usr1++; }
static int fails;
#define CHECK(c) do { if (!(c)) { printf("FAIL %s\n", #c); fails++; } } while (0)

static void fill(unsigned char *p, size_t n, unsigned long seed) {
    unsigned long s = seed * 0x9E3779B97F4A7C15UL + 1;
    for (size_t i = 0; i < n; i += 8) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        memcpy(p + i, &s, n - i < 8 ? n - i : 8);
    }
}
static int same(const unsigned char *p, size_t n, unsigned long seed) {
    unsigned char *q = malloc(n);
    fill(q, n, seed);
    int r = memcmp(p, q, n) == 0;
    free(q);
    return r;
}
static int all_zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) if (p[i]) return 0;
    return 1;
}
static int perms_of(void *addr, char *out) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    unsigned long a = (unsigned long)addr, s, e;
    while (fgets(line, sizeof line, f)) {
        char perm[8];
        if (sscanf(line, "%lx-%lx %7s", &s, &e, perm) == 3 && a >= s && a < e) {
            strcpy(out, perm);
            fclose(f);
            return 1;
        }
    }
    fclose(f);
    return 0;
}

int main(int argc, char **argv) {
    (void)argc;
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGUSR1, on_usr1);
    /* 64 MiB anonymous: pattern, one zero page in the middle, the last
       16 pages never touched. */
    unsigned char *big = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    fill(big, BIG - 16 * PG, 1);
    memset(big + 1000 * PG, 0, PG);
    /* heap */
    unsigned char *heap = sbrk(0);
    sbrk(3 * PG + 100);
    fill(heap, 3 * PG + 100, 2);
    unsigned char *brk_end = sbrk(0);
    /* stack */
    unsigned char stack[20000];
    fill(stack, sizeof stack, 3);
    /* guard pages: [r--][---][rw- untouched] */
    unsigned char *g = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    fill(g, 2 * PG, 4);
    mprotect(g, PG, PROT_READ);
    mprotect(g + PG, PG, PROT_NONE);
    /* private file mapping, page 1 written */
    int fd = open(argv[1], O_RDONLY);
    unsigned char *pf = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    fill(pf + PG, PG, 5);
    /* shared file mapping */
    int sfd = open(argv[2], O_RDWR);
    char *sf = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
    close(sfd);
    strcpy(sf + 100, "hello-shared");
    /* shared anonymous */
    unsigned char *sa = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    fill(sa, 2 * PG, 6);
    printf("ready\n");

    while (!usr1)
        pause();

    /* Before anything allocates: the break is where it was and grows. */
    CHECK(sbrk(0) == brk_end);
    unsigned char *more = sbrk(1 << 20);
    CHECK(more == brk_end);
    if (more != (void *)-1) {
        memset(more, 0xab, 1 << 20);
        CHECK(more[(1 << 20) - 1] == 0xab);
    }

    CHECK(same(big, 1000 * PG, 1));
    CHECK(all_zero(big + 1000 * PG, PG));
    {
        unsigned char *q = malloc(BIG);
        fill(q, BIG - 16 * PG, 1);
        CHECK(memcmp(big + 1001 * PG, q + 1001 * PG, BIG - 16 * PG - 1001 * PG) == 0);
        free(q);
    }
    CHECK(all_zero(big + BIG - 16 * PG, 16 * PG));
    CHECK(same(heap, 3 * PG + 100, 2));
    CHECK(same(stack, sizeof stack, 3));
    char perm[8];
    CHECK(perms_of(g, perm) && strcmp(perm, "r--p") == 0);
    CHECK(perms_of(g + PG, perm) && strcmp(perm, "---p") == 0);
    CHECK(perms_of(g + 2 * PG, perm) && strcmp(perm, "rw-p") == 0);
    CHECK(same(g, PG, 4));
    mprotect(g + PG, PG, PROT_READ);
    {
        unsigned char q[2 * PG];
        fill(q, 2 * PG, 4);
        CHECK(memcmp(g + PG, q + PG, PG) == 0);
    }
    CHECK(all_zero(g + 2 * PG, PG));
    {
        int f2 = open(argv[1], O_RDONLY);
        unsigned char file[4 * PG];
        CHECK(read(f2, file, sizeof file) == (ssize_t)sizeof file);
        close(f2);
        CHECK(memcmp(pf, file, PG) == 0);
        CHECK(same(pf + PG, PG, 5));
        CHECK(memcmp(pf + 2 * PG, file + 2 * PG, 2 * PG) == 0);
    }
    CHECK(strcmp(sf + 100, "hello-shared") == 0);
    strcpy(sf + 200, "written-after-restore");
    CHECK(same(sa, 2 * PG, 6));
    CHECK(perms_of(sa, perm) && strcmp(perm, "rw-s") == 0);
    unsigned char *m = malloc(8 << 20);
    CHECK(m != NULL);
    if (m) memset(m, 1, 8 << 20);
    printf(fails ? "DONE\n" : "PASS\n");
    return 0;
}
"#;

/// /proc/PID/stat fields 26-28 and 45-51: code, stack start, data, brk
/// start, arguments and environment bounds.
fn mm_fields(pid: i32) -> Vec<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let f: Vec<&str> = s[s.rfind(')').expect("comm") + 2..]
        .split_whitespace()
        .collect();
    [26, 27, 28, 45, 46, 47, 48, 49, 50, 51]
        .iter()
        .map(|n| f[n - 3].parse().expect("number"))
        .collect()
}

#[test]
fn every_memory_kind_comes_back_byte_exact() {
    become_subreaper();
    let dir = scratch("memory");
    let bin = compile(&dir, "memory", MEMORY, &[]);
    let data = dir.join("data.bin");
    let content: Vec<u8> = (0..4 * 4096u32)
        .map(|i| ((i * 7 + i / 4096) % 251) as u8)
        .collect();
    std::fs::write(&data, &content).expect("data file");
    let shared = dir.join("shared.bin");
    std::fs::write(&shared, vec![0u8; 2 * 4096]).expect("shared file");
    let out = dir.join("out.txt");
    let img = dir.join("memory.img");
    let pid = spawn(
        &bin,
        &[data.to_str().expect("utf8"), shared.to_str().expect("utf8")],
        Some(&out),
    );
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("ready", || lines(&out).contains(&"ready".to_string()));

    let mm_before = mm_fields(pid);
    let auxv = std::fs::read(format!("/proc/{pid}/auxv")).expect("auxv");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    let size = std::fs::metadata(&img).expect("image").len();
    // 64 MiB minus the zero and untouched pages, plus the other kinds.
    assert!(size > 63 << 20 && size < 66 << 20, "image size {size}");

    restore(&img);
    assert_eq!(
        mm_fields(pid),
        mm_before,
        "code, data, brk, stack, args and env bounds"
    );
    assert_eq!(
        std::fs::read(format!("/proc/{pid}/auxv")).expect("auxv"),
        auxv
    );
    assert_eq!(
        std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline"),
        cmdline
    );
    assert_eq!(
        std::fs::read(format!("/proc/{pid}/environ")).expect("environ"),
        environ
    );
    // SAFETY: kill with plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    wait_for("the verdict", || lines(&out).len() >= 2);
    assert_eq!(reap(pid), 0);
    assert_eq!(lines(&out), vec!["ready".to_string(), "PASS".to_string()]);
    let after = std::fs::read(&shared).expect("shared file");
    assert_eq!(&after[100..112], b"hello-shared");
    assert_eq!(
        &after[200..221],
        b"written-after-restore",
        "the shared mapping is the file"
    );
    assert_eq!(
        std::fs::read(&data).expect("data"),
        content,
        "private writes never reach the file"
    );
}

const SHARED: &str = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    volatile unsigned long *shm = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    memset((void *)shm, 0x5a, 2 * 4096);
    shm[0] = 0;
    shm[600] = 0;
    pid_t c = fork();
    if (c == 0) {
        /* The child publishes a count the parent prints. */
        for (unsigned long i = 1;; i++) {
            shm[600] = i;
            while (shm[0] != i) usleep(500);
        }
    }
    for (;;) {
        unsigned long v = shm[600];
        if (v != shm[0]) {
            printf("%lu %s\n", v, ((unsigned char *)shm)[4096 + 17] == 0x5a ? "ok" : "FAIL");
            shm[0] = v;
        }
        usleep(2000);
    }
}
"#;

/// A shared anonymous mapping between a parent and its child stays one
/// object after restore: the child's writes reach the parent.
#[test]
fn shared_memory_between_processes_stays_shared() {
    become_subreaper();
    let dir = scratch("shared-mem");
    let bin = compile(&dir, "shared", SHARED, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("shared.img");
    let root = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(root);
    wait_for("a few handshakes", || lines(&out).len() >= 5);
    let child: i32 = std::fs::read_to_string(format!("/proc/{root}/task/{root}/children"))
        .expect("children")
        .trim()
        .parse()
        .expect("one child");
    reaper.add(child);
    // Twice: the second dump sees the object as the memfd the first
    // restore made.
    for _ in 0..2 {
        dump(root, &img, &[]);
        assert_eq!(reap(root), libc::SIGKILL);
        assert_eq!(reap(child), libc::SIGKILL);
        let n = lines(&out).len();
        restore(&img);
        wait_for("handshakes through the restored mapping", || {
            lines(&out).len() >= n + 20
        });
    }
    kill_and_reap(root);
    kill_and_reap(child);
    let l = lines(&out);
    let seq: Vec<u64> = l
        .iter()
        .map(|x| {
            let (v, ok) = x.split_once(' ').expect("two fields");
            assert_eq!(ok, "ok", "object contents intact");
            v.parse().expect("number")
        })
        .collect();
    let want: Vec<u64> = (1..=seq.len() as u64).collect();
    assert_eq!(seq, want, "every count handed over once, in order");
}

const SPARSE: &str = r#"
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGUSR1, on_usr1);
    size_t size = 64UL << 30;
    unsigned char *r = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) { printf("mmap failed\n"); return 1; }
    unsigned char *w = r + (40UL << 30);
    mprotect(w, 1 << 20, PROT_READ | PROT_WRITE);
    for (int i = 0; i < (1 << 20); i += 4096) w[i + 7] = (unsigned char)(i >> 12);
    printf("ready %p\n", (void *)r);
    while (!go) pause();
    int ok = 1;
    for (int i = 0; i < (1 << 20); i += 4096) ok &= w[i + 7] == (unsigned char)(i >> 12) && w[i] == 0;
    char line[256], want[64];
    snprintf(want, sizeof want, "%lx-%lx ---p", (unsigned long)r, (unsigned long)w);
    FILE *f = fopen("/proc/self/maps", "r");
    int found = 0;
    while (fgets(line, sizeof line, f)) found |= strncmp(line, want, strlen(want)) == 0;
    printf(ok && found ? "PASS\n" : "FAIL\n");
    return 0;
}
"#;

/// A 64 GiB PROT_NONE reservation with 1 MiB made writable inside it comes
/// back with the same layout and contents.
#[test]
fn sparse_reservation_comes_back() {
    become_subreaper();
    let dir = scratch("sparse");
    let bin = compile(&dir, "sparse", SPARSE, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("sparse.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("ready", || {
        lines(&out).iter().any(|l| l.starts_with("ready"))
    });
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    assert!(
        std::fs::metadata(&img).expect("image").len() < 4 << 20,
        "only the touched megabyte is stored"
    );
    restore(&img);
    // SAFETY: kill with plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    wait_for("the verdict", || lines(&out).len() >= 2);
    assert_eq!(reap(pid), 0);
    assert_eq!(lines(&out)[1], "PASS");
}
