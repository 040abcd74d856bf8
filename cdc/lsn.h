/*
 * lsn.h — WAL positions as PostgreSQL prints them ("16/B374D848").
 */
#ifndef PGOUTBOX_LSN_H
#define PGOUTBOX_LSN_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

/* Parse "X/Y" (two hexadecimal numbers of at most 32 bits); false on anything else. */
static inline bool
lsn_parse(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long hi, lo;

	if (s == NULL)
		return false;
	errno = 0;
	hi = strtoull(s, &end, 16);
	if (end == s || *end != '/' || errno || hi > UINT32_MAX || *s == '-' || *s == '+')
		return false;
	s = end + 1;
	lo = strtoull(s, &end, 16);
	if (end == s || *end != '\0' || errno || lo > UINT32_MAX || *s == '-' || *s == '+')
		return false;
	*out = ((uint64_t) hi << 32) | (uint64_t) lo;
	return true;
}

#endif /* PGOUTBOX_LSN_H */
