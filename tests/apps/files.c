/*
 * files: open file descriptions at exact fd numbers with offsets and flags.
 *
 *   10  data.bin  O_RDWR, offset 1234, FD_CLOEXEC
 *   20  dup of 10: the same open file description (one shared offset)
 *   11  append.log  O_WRONLY|O_APPEND, 100 bytes written
 *   12  data.bin  O_RDONLY|O_NONBLOCK, offset 4321
 *   13  /dev/null O_WRONLY;  14  /dev/zero O_RDONLY
 *   15  the work directory, O_RDONLY|O_DIRECTORY
 *   16  gone.bin  O_RDWR, unlinked, 3000 bytes, offset 100
 *   21  big.bin   O_RDWR, unlinked, 1 MiB of data, a 512 KiB hole, 40000
 *                 bytes of data; offset 777777
 *   22  big.bin   O_RDONLY|O_NONBLOCK, a second description of it, offset 5
 *
 * Mappings of unlinked files: the first 64 KiB of big.bin MAP_SHARED; its
 * tail (after the hole) MAP_PRIVATE with one byte written (a copied page);
 * solo.bin (20000 bytes) MAP_SHARED, its fd closed, then unlinked.
 *   1,2 app.log shared by stdout and stderr, not O_APPEND
 *
 * After go: exactly the same set of fds is open (checked by finish(), as for
 * every app); for each, F_GETFD, F_GETFL,
 * the offset and the identity (inode, or device number for /dev/null and
 * /dev/zero) are unchanged; reads continue at the offsets and return the
 * right bytes; a write through fd 10 lands at its offset and moves fd 20's
 * offset too; appending appends; /dev/zero reads zeros; the directory fd
 * resolves data.bin; the unlinked files still have no name and all their
 * bytes (the hole reads as zeros), and fds 21 and 22 are one file again: a
 * write through one is read through the other; the shared mapping of big.bin
 * is that file too (a write through the mapping is read through fd 22, a
 * write through fd 21 seen in the mapping), the private one keeps its
 * written byte and the file does not, solo.bin's mapping holds its bytes;
 * stdout's offset is the end of app.log.
 *
 * Usage: files [--selftest-fail=offset|flags|cloexec|fdnum|append|content|unlinked|bigunlinked|cow|solo|dup|stdout]
 */
#include "common.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#define DATA_LEN 8192
#define GONE_LEN 3000
#define BIG_HEAD (1024 * 1024)
#define BIG_HOLE (512 * 1024)
#define BIG_TAIL 40000
#define BIG_LEN (BIG_HEAD + BIG_HOLE + BIG_TAIL)
#define SHARED_LEN (64 * 1024)
#define PRIV_LEN 40960
#define PRIV_AT 100
#define SOLO_LEN 20000
#define SOLO_MAP 20480

/* The byte written into the private mapping of big.bin. */
static uint8_t cow_byte(void)
{
    return (uint8_t)(pattern_byte(44, PRIV_AT) ^ 0xff);
}

static uint8_t *shared_map, *priv_map, *solo_map;

struct fdstate {
    int fd;
    const char *what;
    int fdflags, flflags;
    off_t offset;
    dev_t dev;
    ino_t ino;
    dev_t rdev;
};

static const int tracked[] = { 1, 2, 10, 11, 12, 13, 14, 15, 16, 20, 21, 22 };
#define NTRACKED (int)(sizeof tracked / sizeof tracked[0])
static struct fdstate before[NTRACKED];

static void put_at(int fd, int want, const char *what)
{
    if (fd < 0) {
        say("FAIL files: open %s: %s\n", what, strerror(errno));
        exit(1);
    }
    if (fd != want) {
        if (dup2(fd, want) != want) {
            say("FAIL files: dup2 %s to %d: %s\n", what, want, strerror(errno));
            exit(1);
        }
        close(fd);
    }
}

static struct fdstate capture(int fd)
{
    struct fdstate s = { .fd = fd };
    struct stat st;
    s.fdflags = fcntl(fd, F_GETFD);
    s.flflags = fcntl(fd, F_GETFL);
    s.offset = lseek(fd, 0, SEEK_CUR);
    if (fstat(fd, &st) == 0) {
        s.dev = st.st_dev;
        s.ino = st.st_ino;
        s.rdev = st.st_rdev;
    }
    return s;
}

static void expect_bytes(const char *what, int fd, size_t len, uint64_t seed, size_t at)
{
    uint8_t buf[256];
    ssize_t n = read(fd, buf, len);
    if (n != (ssize_t)len) {
        fail("%s: read %zu bytes: got %zd (%s)", what, len, n, n < 0 ? strerror(errno) : "short");
        return;
    }
    for (size_t i = 0; i < len; i++)
        if (buf[i] != pattern_byte(seed, at + i)) {
            fail("%s: byte at file offset %zu: expected 0x%02x, got 0x%02x", what, at + i,
                 pattern_byte(seed, at + i), buf[i]);
            return;
        }
}

static void make_file(const char *name, size_t len, uint64_t seed)
{
    int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    uint8_t *buf = malloc(len);
    fill_pattern(buf, len, seed);
    write_all(fd, buf, len);
    free(buf);
    close(fd);
}

int main(int argc, char **argv)
{
    app_init("files", argc, argv);

    make_file("data.bin", DATA_LEN, 40);
    make_file("append.log", 100, 41);
    make_file("gone.bin", GONE_LEN, 42);

    put_at(open("data.bin", O_RDWR | O_CLOEXEC), 10, "data.bin");
    fcntl(10, F_SETFD, FD_CLOEXEC); /* dup2 cleared it */
    lseek(10, 1234, SEEK_SET);
    if (dup2(10, 20) != 20) {
        say("FAIL files: dup2 10 to 20: %s\n", strerror(errno));
        return 1;
    }
    put_at(open("append.log", O_WRONLY | O_APPEND), 11, "append.log");
    put_at(open("data.bin", O_RDONLY | O_NONBLOCK), 12, "data.bin");
    lseek(12, 4321, SEEK_SET);
    put_at(open("/dev/null", O_WRONLY), 13, "/dev/null");
    put_at(open("/dev/zero", O_RDONLY), 14, "/dev/zero");
    put_at(open(".", O_RDONLY | O_DIRECTORY), 15, "the work directory");
    put_at(open("gone.bin", O_RDWR), 16, "gone.bin");
    lseek(16, 100, SEEK_SET);
    unlink("gone.bin");

    put_at(open("big.bin", O_RDWR | O_CREAT | O_TRUNC, 0600), 21, "big.bin");
    uint8_t *big = malloc(BIG_HEAD);
    fill_pattern(big, BIG_HEAD, 43);
    write_all(21, big, BIG_HEAD);
    fill_pattern(big, BIG_TAIL, 44);
    if (pwrite(21, big, BIG_TAIL, BIG_HEAD + BIG_HOLE) != BIG_TAIL) {
        say("FAIL files: writing the tail of big.bin: %s\n", strerror(errno));
        return 1;
    }
    free(big);
    lseek(21, 777777, SEEK_SET);
    put_at(open("big.bin", O_RDONLY | O_NONBLOCK), 22, "big.bin");
    lseek(22, 5, SEEK_SET);
    shared_map = mmap(NULL, SHARED_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, 21, 0);
    priv_map = mmap(NULL, PRIV_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE, 21, BIG_HEAD + BIG_HOLE);
    if (shared_map == MAP_FAILED || priv_map == MAP_FAILED) {
        say("FAIL files: mapping big.bin: %s\n", strerror(errno));
        return 1;
    }
    priv_map[PRIV_AT] = cow_byte();
    unlink("big.bin");

    make_file("solo.bin", SOLO_LEN, 45);
    int solo = open("solo.bin", O_RDWR | O_CLOEXEC);
    solo_map = mmap(NULL, SOLO_MAP, PROT_READ | PROT_WRITE, MAP_SHARED, solo, 0);
    if (solo < 0 || solo_map == MAP_FAILED) {
        say("FAIL files: mapping solo.bin: %s\n", strerror(errno));
        return 1;
    }
    close(solo);
    unlink("solo.bin");

    ready(); /* before capturing, so stdout's offset includes the READY line */
    for (int i = 0; i < NTRACKED; i++)
        before[i] = capture(tracked[i]);
    struct stat data_st;
    stat("data.bin", &data_st);

    wait_go();

    if (perturb("offset"))
        lseek(12, 1, SEEK_CUR);
    if (perturb("flags"))
        fcntl(12, F_SETFL, 0);
    if (perturb("cloexec"))
        fcntl(10, F_SETFD, 0);
    if (perturb("fdnum")) {
        dup2(14, 17);
        close(14);
    }
    if (perturb("append"))
        write_all(11, "+", 1);
    if (perturb("content")) {
        uint8_t b = (uint8_t)(pattern_byte(40, 1240) ^ 1);
        (void)pwrite(10, &b, 1, 1240);
    }
    if (perturb("unlinked")) {
        uint8_t b = (uint8_t)(pattern_byte(42, 2999) ^ 1);
        (void)pwrite(16, &b, 1, 2999);
    }
    if (perturb("bigunlinked")) {
        uint8_t b = (uint8_t)(pattern_byte(44, BIG_TAIL - 1) ^ 1);
        (void)pwrite(21, &b, 1, BIG_LEN - 1);
    }
    if (perturb("cow"))
        priv_map[PRIV_AT] = pattern_byte(44, PRIV_AT);
    if (perturb("solo"))
        solo_map[SOLO_LEN - 1] ^= 1;
    if (perturb("dup")) {
        close(20);
        int fd = open("data.bin", O_RDWR | O_CLOEXEC);
        dup2(fd, 20);
        close(fd);
        lseek(20, 1234, SEEK_SET);
        fcntl(20, F_SETFD, 0);
    }
    if (perturb("stdout")) {
        /* app.log grows behind stdout's back; our result line then overwrites the extra byte. */
        int log = open("app.log", O_WRONLY | O_APPEND);
        write_all(log, "\n", 1);
        close(log);
    }

    for (int i = 0; i < NTRACKED; i++) {
        struct fdstate a = capture(tracked[i]), b = before[i];
        int fd = tracked[i];
        if (a.fdflags != b.fdflags)
            fail("fd %d F_GETFD: expected %#x, got %#x", fd, b.fdflags, a.fdflags);
        if (a.flflags != b.flflags)
            fail("fd %d F_GETFL: expected %#o, got %#o", fd, b.flflags, a.flflags);
        if (a.offset != b.offset)
            fail("fd %d offset: expected %lld, got %lld", fd, (long long)b.offset, (long long)a.offset);
        /* The unlinked files are recreated from their contents: their inodes may change. */
        if (fd != 16 && fd != 21 && fd != 22 && (a.dev != b.dev || a.ino != b.ino))
            fail("fd %d identity: expected dev %#llx inode %llu, got dev %#llx inode %llu", fd,
                 (unsigned long long)b.dev, (unsigned long long)b.ino, (unsigned long long)a.dev,
                 (unsigned long long)a.ino);
        if ((fd == 13 || fd == 14) && a.rdev != b.rdev)
            fail("fd %d device: expected %u:%u, got %u:%u", fd, major(b.rdev), minor(b.rdev), major(a.rdev),
                 minor(a.rdev));
    }
    if (failure_count)
        return finish();

    /* The recorded values matched; they must also be what the files were opened with. */
    static const struct {
        int fd, mask, want;
        const char *what;
    } opened[] = {
        { 10, O_ACCMODE, O_RDWR, "O_RDWR" },
        { 11, O_ACCMODE | O_APPEND, O_WRONLY | O_APPEND, "O_WRONLY|O_APPEND" },
        { 12, O_ACCMODE | O_NONBLOCK, O_RDONLY | O_NONBLOCK, "O_RDONLY|O_NONBLOCK" },
        { 13, O_ACCMODE, O_WRONLY, "O_WRONLY" },
        { 14, O_ACCMODE, O_RDONLY, "O_RDONLY" },
        { 1, O_APPEND, 0, "no O_APPEND" },
    };
    for (size_t i = 0; i < sizeof opened / sizeof opened[0]; i++)
        if ((fcntl(opened[i].fd, F_GETFL) & opened[i].mask) != opened[i].want)
            fail("fd %d F_GETFL: expected %s, got %#o", opened[i].fd, opened[i].what, fcntl(opened[i].fd, F_GETFL));
    if (!(fcntl(10, F_GETFD) & FD_CLOEXEC) || (fcntl(20, F_GETFD) & FD_CLOEXEC))
        fail("close-on-exec: expected fd 10 set and fd 20 clear, got %#x and %#x", fcntl(10, F_GETFD),
             fcntl(20, F_GETFD));
    struct stat st;
    if (fstat(13, &st) != 0 || st.st_rdev != makedev(1, 3))
        fail("fd 13: expected /dev/null (1:3), got %u:%u", major(st.st_rdev), minor(st.st_rdev));
    if (fstat(14, &st) != 0 || st.st_rdev != makedev(1, 5))
        fail("fd 14: expected /dev/zero (1:5), got %u:%u", major(st.st_rdev), minor(st.st_rdev));

    expect_bytes("fd 10 read at its offset", 10, 100, 40, 1234);
    if (lseek(20, 0, SEEK_CUR) != 1334)
        fail("fd 20 (dup of 10) offset after reading fd 10: expected 1334, got %lld",
             (long long)lseek(20, 0, SEEK_CUR));
    expect_bytes("fd 12 read at its offset", 12, 50, 40, 4321);

    static const char stamp[] = "written-at-1334";
    if (write(10, stamp, sizeof stamp) != (ssize_t)sizeof stamp)
        fail("write through fd 10: %s", strerror(errno));
    char back[sizeof stamp];
    if (pread(12, back, sizeof back, 1334) != (ssize_t)sizeof back || memcmp(back, stamp, sizeof stamp) != 0)
        fail("bytes written through fd 10: expected '%s' at offset 1334, got '%.*s'", stamp, (int)sizeof back, back);

    if (write(11, "tail!", 5) != 5)
        fail("append through fd 11: %s", strerror(errno));
    off_t end = lseek(11, 0, SEEK_CUR);
    if (stat("append.log", &st) != 0 || st.st_size != 105 || end != 105)
        fail("append.log after appending 5 bytes: expected size and offset 105, got size %lld offset %lld",
             (long long)st.st_size, (long long)end);

    uint8_t zeros[64];
    memset(zeros, 0xff, sizeof zeros);
    if (read(14, zeros, sizeof zeros) != (ssize_t)sizeof zeros)
        fail("read /dev/zero: %s", strerror(errno));
    else
        check_zero("/dev/zero", zeros, sizeof zeros);
    if (write(13, "discard", 7) != 7)
        fail("write /dev/null: %s", strerror(errno));

    if (fstatat(15, "data.bin", &st, 0) != 0)
        fail("data.bin through the directory fd: %s", strerror(errno));
    else if (st.st_ino != data_st.st_ino)
        fail("data.bin through the directory fd: expected inode %llu, got %llu",
             (unsigned long long)data_st.st_ino, (unsigned long long)st.st_ino);

    if (fstat(16, &st) != 0 || st.st_nlink != 0 || st.st_size != GONE_LEN)
        fail("unlinked gone.bin: expected 0 links and %d bytes, got %lu links and %lld bytes", GONE_LEN,
             (unsigned long)st.st_nlink, (long long)st.st_size);
    expect_bytes("unlinked gone.bin read at its offset", 16, 200, 42, 100);
    uint8_t *gone = malloc(GONE_LEN);
    if (pread(16, gone, GONE_LEN, 0) != GONE_LEN)
        fail("unlinked gone.bin: short read");
    else
        check_pattern("unlinked gone.bin", gone, GONE_LEN, 42);
    free(gone);

    struct stat big_st, big2_st;
    if (fstat(21, &big_st) != 0 || big_st.st_nlink != 0 || big_st.st_size != BIG_LEN)
        fail("unlinked big.bin: expected 0 links and %d bytes, got %lu links and %lld bytes", BIG_LEN,
             (unsigned long)big_st.st_nlink, (long long)big_st.st_size);
    else if (fstat(22, &big2_st) != 0 || big2_st.st_ino != big_st.st_ino || big2_st.st_dev != big_st.st_dev)
        fail("unlinked big.bin: fds 21 and 22 are not one file (inodes %llu and %llu)",
             (unsigned long long)big_st.st_ino, (unsigned long long)big2_st.st_ino);
    else {
        uint8_t *b = malloc(BIG_LEN);
        if (pread(22, b, BIG_LEN, 0) != BIG_LEN)
            fail("unlinked big.bin: short read through fd 22");
        else if (check_pattern("unlinked big.bin, first MiB", b, BIG_HEAD, 43) &&
                 check_pattern("unlinked big.bin, after the hole", b + BIG_HEAD + BIG_HOLE, BIG_TAIL, 44)) {
            for (size_t i = BIG_HEAD; i < BIG_HEAD + BIG_HOLE; i++)
                if (b[i] != 0) {
                    fail("unlinked big.bin: byte %zu of the hole is 0x%02x, not 0", i, b[i]);
                    break;
                }
        }
        free(b);
        uint8_t mark[4] = { 0xde, 0xad, 0xbe, 0xef }, back[4] = { 0 };
        if (pwrite(21, mark, 4, BIG_HEAD + 10) != 4 || pread(22, back, 4, BIG_HEAD + 10) != 4 ||
            memcmp(mark, back, 4) != 0)
            fail("unlinked big.bin: a write through fd 21 is not read through fd 22");

        if (check_pattern("shared mapping of unlinked big.bin", shared_map, SHARED_LEN, 43)) {
            uint8_t v = 0, w = 0x5a;
            shared_map[7] = 0xa5;
            if (pread(22, &v, 1, 7) != 1 || v != 0xa5)
                fail("shared mapping of unlinked big.bin: a write through it reads back 0x%02x through fd 22", v);
            if (pwrite(21, &w, 1, 100) != 1 || shared_map[100] != 0x5a)
                fail("shared mapping of unlinked big.bin: a write through fd 21 shows 0x%02x in it", shared_map[100]);
        }
        uint8_t file_at = 0;
        if (priv_map[PRIV_AT] != cow_byte())
            fail("private mapping of unlinked big.bin: written byte is 0x%02x, not 0x%02x", priv_map[PRIV_AT],
                 cow_byte());
        else if (pread(22, &file_at, 1, BIG_HEAD + BIG_HOLE + PRIV_AT) != 1 || file_at != pattern_byte(44, PRIV_AT))
            fail("private mapping of unlinked big.bin: its write reached the file (0x%02x)", file_at);
        else {
            for (size_t i = 0; i < PRIV_LEN; i++) {
                uint8_t want = i == PRIV_AT ? cow_byte() : i < BIG_TAIL ? pattern_byte(44, i) : 0;
                if (priv_map[i] != want) {
                    fail("private mapping of unlinked big.bin: byte %zu is 0x%02x, not 0x%02x", i, priv_map[i], want);
                    break;
                }
            }
        }
    }
    if (check_pattern("shared mapping of unlinked solo.bin", solo_map, SOLO_LEN, 45)) {
        for (size_t i = SOLO_LEN; i < SOLO_MAP; i++)
            if (solo_map[i] != 0) {
                fail("shared mapping of unlinked solo.bin: byte %zu past the end is 0x%02x", i, solo_map[i]);
                break;
            }
    }

    struct stat out;
    fstat(1, &out);
    off_t out_off = lseek(1, 0, SEEK_CUR);
    if (out_off != out.st_size)
        fail("stdout offset: expected the end of app.log (%lld), got %lld", (long long)out.st_size,
             (long long)out_off);
    if (lseek(2, 0, SEEK_CUR) != out_off)
        fail("stderr offset: expected %lld (shared with stdout), got %lld", (long long)out_off,
             (long long)lseek(2, 0, SEEK_CUR));
    return finish();
}
