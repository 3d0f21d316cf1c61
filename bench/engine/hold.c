/*
 * hold: fills SIZE MiB of anonymous memory and waits to be dumped.
 *
 *   hold MIB random|heap READY_FILE [DATA_FILE]
 *
 * random: xorshift noise, which no codec can shrink. heap: what a heap
 * looks like, 64-byte records (a counter, a pointer-like word, small flags
 * and a short name) with zero padding and every eighth page left zero.
 * The bytes also go to DATA_FILE (the dd baseline writes the same bytes).
 * READY_FILE is created once the memory is filled. Each SIGUSR1 appends a
 * byte to `answer` in the working directory: a restored hold answering
 * it is responsive.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096

static void fill_random(unsigned char *p, size_t n)
{
    unsigned long s = 0x9E3779B97F4A7C15UL;
    for (size_t i = 0; i < n; i += 8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        memcpy(p + i, &s, 8);
    }
}

struct rec {
    unsigned long id;
    unsigned long next;
    unsigned int flags;
    unsigned int len;
    char name[16];
    unsigned char pad[24];
};

static void fill_heap(unsigned char *p, size_t n)
{
    unsigned long base = 0x55d0c0000000UL;
    unsigned long id = 1;
    for (size_t pg = 0; pg < n / PG; pg++) {
        if (pg % 8 == 7)
            continue; /* a freed page: zero */
        struct rec *r = (struct rec *)(p + pg * PG);
        for (size_t k = 0; k < PG / sizeof *r; k++, id++) {
            r[k].id = id;
            r[k].next = base + id * sizeof *r;
            r[k].flags = (unsigned int)(id % 3);
            r[k].len = (unsigned int)(id % 17);
            snprintf(r[k].name, sizeof r[k].name, "obj%lu", id % 1000);
        }
    }
}

static int answer_fd = -1;

static void on_usr1(int sig)
{
    (void)sig;
    char c = '!';
    if (write(answer_fd, &c, 1) < 0)
        _exit(3);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: hold MIB random|heap READY_FILE [DATA_FILE]\n");
        return 2;
    }
    size_t n = strtoul(argv[1], NULL, 10) << 20;
    unsigned char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    if (strcmp(argv[2], "random") == 0)
        fill_random(p, n);
    else if (strcmp(argv[2], "heap") == 0)
        fill_heap(p, n);
    else {
        fprintf(stderr, "hold: unknown kind %s\n", argv[2]);
        return 2;
    }
    if (argc > 4) {
        int fd = open(argv[4], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || write(fd, p, n) != (ssize_t)n || close(fd) < 0) {
            perror(argv[4]);
            return 1;
        }
    }
    answer_fd = open("answer", O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (answer_fd < 0) {
        perror("answer");
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    int fd = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || close(fd) < 0) {
        perror(argv[3]);
        return 1;
    }
    for (;;)
        pause();
}
