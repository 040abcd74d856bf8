/*
 * sha256.h — SHA-256 (FIPS 180-4), for the checksum a dead-letter copy
 * carries of an event too large to forward whole.  PostgreSQL computes the
 * same digest with sha256(), so an operator can match the copy to its row.
 * Pure; no allocation.
 */
#ifndef PGOUTBOX_SHA256_H
#define PGOUTBOX_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_DIGEST_LEN 32

/* The digest of data[0..len) as 64 lower-case hex digits and a NUL. */
void sha256_hex(const void *data, size_t len, char hex[2 * SHA256_DIGEST_LEN + 1]);

/* The raw digest. */
void sha256(const void *data, size_t len, uint8_t out[SHA256_DIGEST_LEN]);

#endif /* PGOUTBOX_SHA256_H */
