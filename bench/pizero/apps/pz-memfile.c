/*
 * pz-memfile: heap and stack contents, a file at a known offset, the pid.
 * After "go" every byte of a 256 KiB heap pattern, a stack canary, the file
 * offset and the bytes around it must be exactly as they were.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define NAME "pz-memfile"
#define HEAP_BYTES (256 * 1024)
#define FILE_OFFSET 12345

static uint8_t pattern_byte(size_t i)
{
	return (uint8_t)((i * 2654435761u) >> 13);
}

int main(void)
{
	volatile uint32_t canary = 0x70a9e5c1u;
	static const char text[] = "torpor keeps this offset";
	uint8_t *heap = malloc(HEAP_BYTES);
	pid_t pid = getpid();
	char back[sizeof(text)];
	off_t off;
	size_t i;
	int fd;

	if (heap == NULL)
		APP_FAIL(NAME, "malloc of %d bytes failed", HEAP_BYTES);
	for (i = 0; i < HEAP_BYTES; i++)
		heap[i] = pattern_byte(i);

	fd = open("data", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		APP_FAIL(NAME, "cannot create data: %s", strerror(errno));
	if (pwrite(fd, text, sizeof(text), 0) != (ssize_t)sizeof(text) ||
	    lseek(fd, FILE_OFFSET, SEEK_SET) != FILE_OFFSET)
		APP_FAIL(NAME, "cannot prepare data: %s", strerror(errno));

	app_ready(NAME);
	app_wait_for_go();

	if (getpid() != pid)
		APP_FAIL(NAME, "pid %d, expected %d", (int)getpid(), (int)pid);
	if (canary != 0x70a9e5c1u)
		APP_FAIL(NAME, "stack canary 0x%08x, expected 0x70a9e5c1", (unsigned)canary);
	for (i = 0; i < HEAP_BYTES; i++)
		if (heap[i] != pattern_byte(i))
			APP_FAIL(NAME, "heap byte %zu is 0x%02x, expected 0x%02x",
				 i, heap[i], pattern_byte(i));
	off = lseek(fd, 0, SEEK_CUR);
	if (off != FILE_OFFSET)
		APP_FAIL(NAME, "data offset %lld, expected %d", (long long)off, FILE_OFFSET);
	if (pread(fd, back, sizeof(back), 0) != (ssize_t)sizeof(back) ||
	    memcmp(back, text, sizeof(text)) != 0)
		APP_FAIL(NAME, "data contents changed");
	printf("PASS %s\n", NAME);
	return 0;
}
