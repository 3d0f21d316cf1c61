/*
 * fillmem: restore's bound. Reads FILE in 64 KiB reads (the image's page
 * batch) and copies each into freshly mmap'ed anonymous memory, which
 * takes the same page faults a restored process's memory does.
 *
 *   fillmem FILE [BYTES]
 *
 * BYTES (default: the file's size) is the memory to fill: a compressed
 * image restores more memory than it holds, so its bytes are copied again
 * from the file's start until BYTES are filled.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK (64 * 1024)

int main(int argc, char **argv)
{
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: fillmem FILE [BYTES]\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        perror(argv[1]);
        return 1;
    }
    size_t n = argc == 3 ? strtoul(argv[2], NULL, 10) : (size_t)st.st_size;
    unsigned char *mem = mmap(NULL, n ? n : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    static unsigned char buf[CHUNK];
    size_t at = 0;
    while (at < n) {
        size_t want = n - at < sizeof buf ? n - at : sizeof buf;
        ssize_t k = read(fd, buf, want);
        if (k < 0) {
            perror(argv[1]);
            return 1;
        }
        if (k == 0) {
            if (at == 0 || lseek(fd, 0, SEEK_SET) < 0) {
                fprintf(stderr, "fillmem: %s is empty\n", argv[1]);
                return 1;
            }
            continue;
        }
        memcpy(mem + at, buf, (size_t)k);
        at += (size_t)k;
    }
    /* Keep the copy from being optimised away. */
    unsigned long sum = 0;
    for (size_t i = 0; i < at; i += 4096)
        sum += mem[i];
    return sum == 1 ? 3 : 0;
}
