/*
 * _dl_find_object for static AArch64 musl binaries.
 *
 * Debian's aarch64 libgcc_eh, which stands in for libunwind, was built
 * against glibc >= 2.35 and asks glibc's _dl_find_object for the unwind
 * tables covering an address. musl has no such function, so the link fails.
 * This one answers from the program headers dl_iterate_phdr reports: the
 * object whose PT_LOAD segments hold the address, and its PT_GNU_EH_FRAME
 * (the .eh_frame_hdr the unwinder searches). Returns 0 when found, -1 when
 * no object holds the address.
 */
#define _GNU_SOURCE
#include <link.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* glibc's struct dl_find_object: the unwinder reads dlfo_eh_frame (and, on
 * targets that have it, an eh_dbase word after it, left zero here). */
struct dl_find_object {
	unsigned long long dlfo_flags;
	void *dlfo_map_start;
	void *dlfo_map_end;
	void *dlfo_link_map;
	void *dlfo_eh_frame;
	unsigned long long dlfo_reserved[7];
};

struct query {
	uintptr_t pc;
	struct dl_find_object *out;
	int found;
};

static int visit(struct dl_phdr_info *info, size_t size, void *data)
{
	struct query *q = data;
	uintptr_t lo = UINTPTR_MAX, hi = 0, eh = 0;
	int holds = 0;

	(void)size;
	for (size_t i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t start = info->dlpi_addr + ph->p_vaddr;
		uintptr_t end = start + ph->p_memsz;

		if (ph->p_type == PT_LOAD) {
			if (start < lo)
				lo = start;
			if (end > hi)
				hi = end;
			if (q->pc >= start && q->pc < end)
				holds = 1;
		} else if (ph->p_type == PT_GNU_EH_FRAME) {
			eh = start;
		}
	}
	if (!holds)
		return 0;
	memset(q->out, 0, sizeof(*q->out));
	q->out->dlfo_map_start = (void *)lo;
	q->out->dlfo_map_end = (void *)hi;
	q->out->dlfo_eh_frame = (void *)eh;
	q->found = 1;
	return 1;
}

int _dl_find_object(void *pc, struct dl_find_object *out)
{
	struct query q = { (uintptr_t)pc, out, 0 };

	dl_iterate_phdr(visit, &q);
	return q.found ? 0 : -1;
}
