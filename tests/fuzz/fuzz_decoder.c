/*
 * fuzz_decoder.c — libFuzzer target for decoder/.
 *
 * Input format (make-corpus.sh writes seeds in it):
 *   byte 0       bits 0-1: proto_version - 1 (1..4)
 *                bit 2:    records are CopyData payloads ('w'/'k' envelope)
 *                          rather than bare pgoutput messages
 *   then records Uint16 big-endian length + bytes; a last record shorter
 *                than its length is taken as it is
 *
 * All records go to one decoder, so that relation cache and stream block
 * sequences get exercised.  Besides the sanitizers, each result is checked:
 * errors are reported consistently, successful messages only point inside
 * their input (dump.c's msg_violation), and proper prefixes of a message
 * that decoded are rejected.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dump.h"
#include "pgoutput.h"

static void
die(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_decoder: %s: %s\n", what, detail ? detail : "");
	abort();
}

static void
check_error(pgo_rc rc, const pgo_error *err, size_t len)
{
	if (rc < PGO_ERR_TRUNCATED || rc > PGO_ERR_NOMEM)
		die("unknown return code", NULL);
	if (err->code != rc || err->reason == NULL || err->offset > len)
		die("inconsistent error report", pgo_rc_name(rc));
}

/* Decode one pgoutput message and check what the decoder promises. */
static void
one_message(pgo_decoder *d, int proto, const uint8_t *buf, size_t len)
{
	pgo_msg     m;
	pgo_error   err;
	pgo_rc      rc;
	const char *v;
	size_t      cuts[2];

	rc = pgo_decode_message(d, buf, len, &m, &err);
	if (rc != PGO_OK) {
		check_error(rc, &err, len);
		return;
	}
	v = msg_violation(&m, buf, len);
	if (v != NULL)
		die("bad message", v);

	/* Stream Abort from v4 on is the one message with a valid prefix. */
	if (m.type == PGO_MSG_STREAM_ABORT && proto >= PGO_PROTO_V4)
		return;
	cuts[0] = len - 1;
	cuts[1] = len / 2;
	for (size_t i = 0; i < 2; i++) {
		rc = pgo_decode_message(d, buf, cuts[i], &m, &err);
		if (rc == PGO_OK)
			die("prefix of a message decoded", NULL);
		check_error(rc, &err, cuts[i]);
	}
}

static void
one_copydata(pgo_decoder *d, int proto, const uint8_t *buf, size_t len)
{
	pgo_copydata cd;
	pgo_error    err;
	pgo_rc       rc = pgo_decode_copydata(buf, len, &cd, &err);

	if (rc != PGO_OK) {
		check_error(rc, &err, len);
		return;
	}
	if (cd.kind == PGO_COPY_KEEPALIVE) {
		if (len != 18 || cd.data.len != 0)
			die("bad keepalive", NULL);
		return;
	}
	if (cd.kind != PGO_COPY_XLOGDATA || len < 25 || cd.data.ptr != buf + 25 ||
	    cd.data.len != len - 25)
		die("bad xlogdata", NULL);
	one_message(d, proto, cd.data.ptr, cd.data.len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	pgo_decoder *d;
	int          proto;
	int          envelope;
	size_t       pos = 1;

	if (size < 1)
		return 0;
	proto = 1 + (data[0] & 3);
	envelope = (data[0] >> 2) & 1;
	d = pgo_decoder_new(proto);
	if (d == NULL)
		die("pgo_decoder_new failed", NULL);

	while (pos < size) {
		size_t   n = 0;
		uint8_t *rec;

		if (size - pos >= 2) {
			n = (size_t) data[pos] << 8 | data[pos + 1];
			pos += 2;
		} else
			pos = size;
		if (n > size - pos)
			n = size - pos;
		/* An exact-size copy, so that any overrun is caught. */
		rec = malloc(n ? n : 1);
		if (rec == NULL)
			die("out of memory", NULL);
		memcpy(rec, data + pos, n);
		if (envelope)
			one_copydata(d, proto, rec, n);
		else
			one_message(d, proto, rec, n);
		free(rec);
		pos += n;
	}
	pgo_decoder_free(d);
	return 0;
}
