/*
 * brk: the program break and malloc around a checkpoint.
 *
 * Before READY: small and large malloc blocks with patterns, then the break
 * is raised by 1 MiB + 123 bytes with the raw brk syscall and the new bytes
 * are filled. After go: start_brk (/proc/self/stat) and the current break are
 * unchanged, every pattern is intact, the heap grows by another 8 MiB (written
 * and read back), shrinks back, and fresh malloc/realloc work and keep data.
 *
 * The raw syscall keeps libc's own idea of the break out of the way (musl's
 * sbrk refuses to grow); the break is put back before malloc runs again.
 *
 * Usage: brk [--selftest-fail=break|region|small|large|grow]
 */
#include "common.h"

#define SMALL_BLOCKS 100
#define LARGE_BLOCKS 4
#define REGION (1024 * 1024 + 123)
#define GROW (8 * 1024 * 1024)

static uintptr_t sys_brk(uintptr_t want)
{
    return (uintptr_t)syscall(SYS_brk, want);
}

/* Field 47 of /proc/self/stat: where the heap starts. */
static unsigned long start_brk(void)
{
    char buf[2048];
    if (read_text("/proc/self/stat", buf, sizeof buf) <= 0)
        return 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    p += 2; /* field 3 */
    for (int field = 3; field < 47 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    return p ? strtoul(p, NULL, 10) : 0;
}

int main(int argc, char **argv)
{
    app_init("brk", argc, argv);

    uint8_t *small[SMALL_BLOCKS];
    for (size_t i = 0; i < SMALL_BLOCKS; i++) {
        small[i] = malloc(24 + i * 8);
        fill_pattern(small[i], 24 + i * 8, 200 + i);
    }
    uint8_t *large[LARGE_BLOCKS];
    for (size_t i = 0; i < LARGE_BLOCKS; i++) {
        large[i] = malloc((i + 1) << 20);
        fill_pattern(large[i], (i + 1) << 20, 300 + i);
    }

    unsigned long heap_start = start_brk();
    uintptr_t base = sys_brk(0);
    uintptr_t top = sys_brk(base + REGION);
    if (top != base + REGION) {
        say("FAIL brk: raising the break from %#lx by %d: got %#lx\n", (unsigned long)base, REGION,
            (unsigned long)top);
        return 1;
    }
    uint8_t *region = (uint8_t *)base;
    fill_pattern(region, REGION, 20);

    ready();
    wait_go();

    if (perturb("break"))
        sys_brk(top + 4096);
    if (perturb("region"))
        region[REGION - 1] ^= 1;
    if (perturb("small"))
        small[7][3] ^= 1;
    if (perturb("large"))
        large[3][(4 << 20) - 1] ^= 1;

    unsigned long heap_start_now = start_brk();
    if (heap_start_now != heap_start)
        fail("start_brk: expected %#lx, got %#lx", heap_start, heap_start_now);
    uintptr_t now = sys_brk(0);
    if (now != top)
        fail("break: expected %#lx, got %#lx", (unsigned long)top, (unsigned long)now);
    check_pattern("break region", region, REGION, 20);

    uintptr_t grown = sys_brk(top + GROW);
    if (grown != top + GROW) {
        fail("growing the break by %d from %#lx: got %#lx", GROW, (unsigned long)top, (unsigned long)grown);
    } else {
        fill_pattern((uint8_t *)top, GROW, 21);
        if (perturb("grow"))
            ((uint8_t *)top)[GROW / 2] ^= 1;
        check_pattern("grown break region", (uint8_t *)top, GROW, 21);
        check_pattern("break region after growing", region, REGION, 20);
    }
    if (sys_brk(base) != base)
        fail("shrinking the break back to %#lx failed", (unsigned long)base);

    for (size_t i = 0; i < SMALL_BLOCKS; i++)
        check_pattern("small block", small[i], 24 + i * 8, 200 + i);
    for (size_t i = 0; i < LARGE_BLOCKS; i++)
        check_pattern("large block", large[i], (i + 1) << 20, 300 + i);

    uint8_t *fresh_large = malloc(3 << 20);
    uint8_t *fresh_small[50];
    fill_pattern(fresh_large, 3 << 20, 22);
    for (size_t i = 0; i < 50; i++) {
        fresh_small[i] = malloc(16 + i);
        fill_pattern(fresh_small[i], 16 + i, 400 + i);
    }
    small[0] = realloc(small[0], 100000);
    check_pattern("small block after realloc", small[0], 24, 200);
    check_pattern("fresh large block", fresh_large, 3 << 20, 22);
    for (size_t i = 0; i < 50; i++)
        check_pattern("fresh small block", fresh_small[i], 16 + i, 400 + i);
    for (size_t i = 0; i < 50; i++)
        free(fresh_small[i]);
    free(fresh_large);
    for (size_t i = 0; i < SMALL_BLOCKS; i++)
        free(small[i]);
    for (size_t i = 0; i < LARGE_BLOCKS; i++)
        free(large[i]);
    return finish();
}
