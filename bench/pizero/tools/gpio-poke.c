/*
 * gpio-poke: drive one GPIO line of a gpiochip as an output, the way the
 * torpor agent drives its power line, so the bench can check that the host
 * sees the write and cuts power.
 *
 *   gpio-poke CHIP LINE VALUE [HOLD_MS]
 *
 * Requests LINE of CHIP (e.g. /dev/gpiochip0) as an output with VALUE (0 or
 * 1) through the GPIO v2 character device interface, holds it for HOLD_MS
 * milliseconds (default 1000), releases it and exits 0. On an emulated board
 * whose power line is watched, the process never reaches the release.
 *
 * The uAPI structures are declared here because the musl cross toolchain
 * ships no kernel headers; their layout is fixed by the kernel ABI and is the
 * same on every architecture (checked below).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define LINES_MAX 64
#define NAME_SIZE 32
#define NUM_ATTRS_MAX 10
#define LINE_FLAG_OUTPUT (1ULL << 3)
#define ATTR_ID_OUTPUT_VALUES 2

struct line_attribute {
	uint32_t id;
	uint32_t padding;
	uint64_t values; /* a union of flags / values / debounce in the kernel */
};

struct line_config_attribute {
	struct line_attribute attr;
	uint64_t mask;
};

struct line_config {
	uint64_t flags;
	uint32_t num_attrs;
	uint32_t padding[5];
	struct line_config_attribute attrs[NUM_ATTRS_MAX];
};

struct line_request {
	uint32_t offsets[LINES_MAX];
	char consumer[NAME_SIZE];
	struct line_config config;
	uint32_t num_lines;
	uint32_t event_buffer_size;
	uint32_t padding[5];
	int32_t fd;
};

_Static_assert(sizeof(struct line_config_attribute) == 24, "attribute layout");
_Static_assert(sizeof(struct line_config) == 272, "line_config layout");
_Static_assert(sizeof(struct line_request) == 592, "line_request layout");

#define GET_LINE_IOCTL _IOWR(0xB4, 0x07, struct line_request)

static int parse_uint(const char *text, unsigned long max, unsigned long *out)
{
	char *end;

	errno = 0;
	*out = strtoul(text, &end, 10);
	return (errno != 0 || end == text || *end != '\0' || *out > max) ? -1 : 0;
}

int main(int argc, char **argv)
{
	unsigned long line, value, hold_ms = 1000;
	struct line_request req;
	struct timespec hold;
	int chip;

	if (argc < 4 || argc > 5) {
		fprintf(stderr, "usage: gpio-poke CHIP LINE VALUE [HOLD_MS]\n");
		return 2;
	}
	if (parse_uint(argv[2], 1023, &line) || parse_uint(argv[3], 1, &value) ||
	    (argc == 5 && parse_uint(argv[4], 3600000, &hold_ms))) {
		fprintf(stderr, "gpio-poke: bad LINE '%s', VALUE '%s' (0 or 1) or HOLD_MS\n",
			argv[2], argv[3]);
		return 2;
	}

	chip = open(argv[1], O_RDWR | O_CLOEXEC);
	if (chip < 0) {
		fprintf(stderr, "gpio-poke: cannot open %s: %s\n", argv[1], strerror(errno));
		return 1;
	}

	memset(&req, 0, sizeof(req));
	req.offsets[0] = (uint32_t)line;
	req.num_lines = 1;
	strncpy(req.consumer, "gpio-poke", sizeof(req.consumer) - 1);
	req.config.flags = LINE_FLAG_OUTPUT;
	req.config.num_attrs = 1;
	req.config.attrs[0].attr.id = ATTR_ID_OUTPUT_VALUES;
	req.config.attrs[0].attr.values = value;
	req.config.attrs[0].mask = 1; /* bit 0 = the first (only) requested line */

	if (ioctl(chip, GET_LINE_IOCTL, &req) < 0) {
		fprintf(stderr, "gpio-poke: cannot request line %lu of %s as output: %s\n",
			line, argv[1], strerror(errno));
		return 1;
	}
	printf("gpio-poke: %s line %lu driven to %lu\n", argv[1], line, value);
	fflush(stdout);

	hold.tv_sec = (time_t)(hold_ms / 1000);
	hold.tv_nsec = (long)(hold_ms % 1000) * 1000000L;
	while (nanosleep(&hold, &hold) < 0 && errno == EINTR)
		;
	close(req.fd);
	close(chip);
	return 0;
}
