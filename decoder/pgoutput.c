/*
 * pgoutput.c — decoder for the CopyData envelope and pgoutput's logical
 * replication messages (see pgoutput.h for the contract).
 *
 * Wire format: PostgreSQL's src/backend/replication/logical/proto.c and the
 * "Logical Replication Message Formats" page of the protocol documentation.
 *
 * Every message is decoded in two steps: parse (which may fail and changes
 * nothing in the decoder) and commit (which cannot fail: a new relation cache
 * entry is swapped in, streaming state is flipped).  Trailing bytes are
 * detected between the two, so a message that is rejected for any reason
 * leaves the decoder exactly as it was.
 *
 * Policy decisions, where the protocol leaves room:
 *   - A message type newer than the decoder's proto_version is decoded all
 *     the same: the server only sends what the client negotiated, and
 *     refusing would only turn a server's surprise into our outage.  The one
 *     layout that differs is Stream Abort: from v4 on it carries abort LSN
 *     and time exactly when the client asked for streaming = parallel, which
 *     the caller tells the decoder (pgo_decoder_set_parallel_streaming);
 *     the other form is then TRAILING or TRUNCATED, never a guess.
 *   - Flags that PostgreSQL documents as "currently unused" must be 0, as
 *     PostgreSQL's own reader requires; documented flag sets (column flags,
 *     message flags, truncate options, first segment, keepalive reply) admit
 *     only their documented values.  LSNs that PostgreSQL's reader requires
 *     to be valid (Begin's final LSN, the two-phase LSNs) must not be 0.
 *   - Stream blocks: like the apply worker, Stream Start inside a block and
 *     Stream Stop outside one are BAD_VALUE; stricter than it, so is
 *     anything inside a block but a change (Relation, Type, Insert, Update,
 *     Delete, Truncate, Message), an Origin (pgoutput sends one after Stream
 *     Start for replicated transactions) and Stream Stop.  pgoutput never
 *     interleaves blocks with anything else.
 *   - A tuple's column count must equal its relation's (pgoutput writes both
 *     from the same column filter).
 *   - Error offsets name the field that is bad or short: a length that is
 *     negative as Int32 is BAD_VALUE at the length, a length larger than
 *     what remains is TRUNCATED at the value it announces.  NOMEM reports 0.
 */
#include "pgoutput.h"

#include <stdlib.h>
#include <string.h>

#include "cursor.h"

/*
 * Initial datum scratch: wide enough for an update of a 16-column table.
 * The fuzz target makes it tiny, so that growth is exercised.
 */
#ifndef PGO_SCRATCH_INITIAL
#define PGO_SCRATCH_INITIAL 32
#endif

struct pgo_decoder {
	int            proto_version;

	/* Relation cache: entries sorted by OID; each is one allocation. */
	pgo_relation **rels;
	size_t         nrels;
	size_t         relcap;

	/* Datum scratch for tuples: old tuple at [0, n), new at [n, 2n). */
	pgo_datum     *datums;
	size_t         ndatums;

	/* Between Stream Start and Stream Stop. */
	bool           in_stream;

	/* streaming = parallel: Stream Abort carries abort LSN and time (v4+). */
	bool           parallel_streaming;
};

static const char pg_catalog[] = "pg_catalog";

const char *
pgo_rc_name(pgo_rc rc)
{
	switch (rc) {
	case PGO_OK:
		return "ok";
	case PGO_ERR_TRUNCATED:
		return "truncated input";
	case PGO_ERR_TRAILING:
		return "trailing bytes";
	case PGO_ERR_UNKNOWN_TYPE:
		return "unknown message type";
	case PGO_ERR_BAD_VALUE:
		return "bad value";
	case PGO_ERR_UNKNOWN_RELATION:
		return "unknown relation";
	case PGO_ERR_NOMEM:
		return "out of memory";
	}
	return "unknown error code";
}

/* Record an error (err may be NULL) and return its code. */
static pgo_rc
fail(pgo_error *err, pgo_rc code, size_t offset, const char *reason)
{
	if (err != NULL) {
		err->code = code;
		err->offset = offset;
		err->reason = reason;
	}
	return code;
}

/* The field at the cursor did not fit in what is left of the input. */
static pgo_rc
short_field(pgo_error *err, const pgo_cursor *c, const char *reason)
{
	return fail(err, PGO_ERR_TRUNCATED, c->pos, reason);
}

/* ---------------------------------------------------------------------------
 * Layer 1: CopyData envelope
 * ------------------------------------------------------------------------- */

pgo_rc
pgo_decode_copydata(const uint8_t *buf, size_t len, pgo_copydata *out,
                    pgo_error *err)
{
	pgo_cursor c;
	uint8_t    kind;
	uint8_t    reply;
	size_t     off;

	memset(out, 0, sizeof *out);
	if (buf == NULL || len == 0)
		return fail(err, PGO_ERR_TRUNCATED, 0, "empty copydata message");
	c = cur_init(buf, len);
	if (!cur_u8(&c, &kind))
		return short_field(err, &c, "copydata kind");

	switch (kind) {
	case PGO_COPY_XLOGDATA:
		out->kind = PGO_COPY_XLOGDATA;
		if (!cur_u64(&c, &out->wal_start))
			return short_field(err, &c, "xlogdata start lsn");
		if (!cur_u64(&c, &out->wal_end))
			return short_field(err, &c, "xlogdata end lsn");
		if (!cur_i64(&c, &out->send_time))
			return short_field(err, &c, "xlogdata send time");
		if (cur_remaining(&c) > UINT32_MAX)
			return fail(err, PGO_ERR_BAD_VALUE, c.pos, "xlogdata too large");
		out->data.len = (uint32_t) cur_remaining(&c);
		out->data.ptr = c.buf + c.pos;
		return PGO_OK;

	case PGO_COPY_KEEPALIVE:
		out->kind = PGO_COPY_KEEPALIVE;
		if (!cur_u64(&c, &out->wal_end))
			return short_field(err, &c, "keepalive end lsn");
		if (!cur_i64(&c, &out->send_time))
			return short_field(err, &c, "keepalive send time");
		off = c.pos;
		if (!cur_u8(&c, &reply))
			return short_field(err, &c, "keepalive reply flag");
		if (reply > 1)
			return fail(err, PGO_ERR_BAD_VALUE, off, "keepalive reply flag not 0 or 1");
		out->reply_requested = reply == 1;
		if (cur_remaining(&c) != 0)
			return fail(err, PGO_ERR_TRAILING, c.pos, "bytes after keepalive");
		return PGO_OK;

	default:
		return fail(err, PGO_ERR_UNKNOWN_TYPE, 0, "unknown copydata kind");
	}
}

/* ---------------------------------------------------------------------------
 * Decoder lifetime, relation cache, scratch
 * ------------------------------------------------------------------------- */

pgo_decoder *
pgo_decoder_new(int proto_version)
{
	pgo_decoder *d;

	if (proto_version < PGO_PROTO_V1 || proto_version > PGO_PROTO_V4)
		return NULL;
	d = calloc(1, sizeof *d);
	if (d == NULL)
		return NULL;
	d->proto_version = proto_version;
	/* Never NULL afterwards, so a zero-column tuple is still a valid view. */
	d->datums = calloc(PGO_SCRATCH_INITIAL, sizeof *d->datums);
	if (d->datums == NULL) {
		free(d);
		return NULL;
	}
	d->ndatums = PGO_SCRATCH_INITIAL;
	return d;
}

void
pgo_decoder_free(pgo_decoder *d)
{
	if (d == NULL)
		return;
	for (size_t i = 0; i < d->nrels; i++)
		free(d->rels[i]);
	free(d->rels);
	free(d->datums);
	free(d);
}

bool
pgo_decoder_set_parallel_streaming(pgo_decoder *d, bool parallel)
{
	if (parallel && d->proto_version < PGO_PROTO_V4)
		return false;
	d->parallel_streaming = parallel;
	return true;
}

void
pgo_decoder_reset_stream(pgo_decoder *d)
{
	d->in_stream = false;
}

/* Index of the first entry whose OID is >= oid. */
static size_t
cache_lower_bound(const pgo_decoder *d, uint32_t oid)
{
	size_t lo = 0, hi = d->nrels;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (d->rels[mid]->oid < oid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

const pgo_relation *
pgo_decoder_relation(const pgo_decoder *d, uint32_t oid)
{
	size_t i = cache_lower_bound(d, oid);

	if (i < d->nrels && d->rels[i]->oid == oid)
		return d->rels[i];
	return NULL;
}

/*
 * Make sure one more entry fits, so that cache_put() cannot fail.  Growing
 * the array does not change the cache's contents.
 */
static bool
cache_reserve(pgo_decoder *d)
{
	pgo_relation **grown;
	size_t         cap;

	if (d->nrels < d->relcap)
		return true;
	cap = d->relcap == 0 ? 8 : d->relcap * 2;
	grown = realloc(d->rels, cap * sizeof *grown);
	if (grown == NULL)
		return false;
	d->rels = grown;
	d->relcap = cap;
	return true;
}

/* Insert or replace; takes ownership of rel.  Needs cache_reserve() first. */
static void
cache_put(pgo_decoder *d, pgo_relation *rel)
{
	size_t i = cache_lower_bound(d, rel->oid);

	if (i < d->nrels && d->rels[i]->oid == rel->oid) {
		free(d->rels[i]);
		d->rels[i] = rel;
		return;
	}
	memmove(&d->rels[i + 1], &d->rels[i], (d->nrels - i) * sizeof *d->rels);
	d->rels[i] = rel;
	d->nrels++;
}

/*
 * Scratch for a tuple pair of natts columns.  Grows only when a wider
 * relation shows up; the insert path of a known width never allocates.
 */
static bool
scratch_reserve(pgo_decoder *d, uint16_t natts)
{
	size_t     need = 2 * (size_t) natts;
	pgo_datum *grown;

	if (need <= d->ndatums)
		return true;
	grown = realloc(d->datums, need * sizeof *grown);
	if (grown == NULL)
		return false;
	d->datums = grown;
	d->ndatums = need;
	return true;
}

/* ---------------------------------------------------------------------------
 * Layer 2: message bodies.  Each reader starts after the type byte (and the
 * streamed xid, if any), fills *m and changes nothing in the decoder.
 * ------------------------------------------------------------------------- */

/* An LSN that PostgreSQL requires to be set. */
static pgo_rc
read_valid_lsn(pgo_cursor *c, pgo_lsn *out, const char *name, const char *zero,
               pgo_error *err)
{
	size_t off = c->pos;

	if (!cur_u64(c, out))
		return short_field(err, c, name);
	if (*out == 0)
		return fail(err, PGO_ERR_BAD_VALUE, off, zero);
	return PGO_OK;
}

/* Flags byte documented as "currently unused": must be 0. */
static pgo_rc
read_zero_flags(pgo_cursor *c, uint8_t *out, pgo_error *err)
{
	size_t off = c->pos;

	if (!cur_u8(c, out))
		return short_field(err, c, "flags");
	if (*out != 0)
		return fail(err, PGO_ERR_BAD_VALUE, off, "unknown flags");
	return PGO_OK;
}

static pgo_rc
read_cstr(pgo_cursor *c, pgo_bytes *out, const char *reason, pgo_error *err)
{
	if (!cur_cstr(c, &out->ptr, &out->len))
		return short_field(err, c, reason);
	return PGO_OK;
}

/* A namespace name: "" on the wire stands for pg_catalog. */
static pgo_rc
read_nspname(pgo_cursor *c, pgo_bytes *out, pgo_error *err)
{
	pgo_rc rc = read_cstr(c, out, "namespace not terminated", err);

	if (rc == PGO_OK && out->len == 0) {
		out->ptr = (const uint8_t *) pg_catalog;
		out->len = sizeof pg_catalog - 1;
	}
	return rc;
}

static pgo_rc
read_begin(pgo_cursor *c, pgo_msg *m, pgo_error *err)
{
	pgo_rc rc;

	rc = read_valid_lsn(c, &m->u.begin.final_lsn, "begin final lsn",
	                    "begin final lsn is 0", err);
	if (rc != PGO_OK)
		return rc;
	if (!cur_i64(c, &m->u.begin.commit_time))
		return short_field(err, c, "begin commit time");
	if (!cur_u32(c, &m->u.begin.xid))
		return short_field(err, c, "begin xid");
	return PGO_OK;
}

static pgo_rc
read_commit(pgo_cursor *c, pgo_msg *m, pgo_error *err)
{
	pgo_rc rc = read_zero_flags(c, &m->u.commit.flags, err);

	if (rc != PGO_OK)
		return rc;
	if (!cur_u64(c, &m->u.commit.commit_lsn))
		return short_field(err, c, "commit lsn");
	if (!cur_u64(c, &m->u.commit.end_lsn))
		return short_field(err, c, "commit end lsn");
	if (!cur_i64(c, &m->u.commit.commit_time))
		return short_field(err, c, "commit time");
	return PGO_OK;
}

static pgo_rc
read_origin(pgo_cursor *c, pgo_msg *m, pgo_error *err)
{
	if (!cur_u64(c, &m->u.origin.commit_lsn))
		return short_field(err, c, "origin lsn");
	return read_cstr(c, &m->u.origin.name, "origin name not terminated", err);
}

static pgo_rc
read_type(pgo_cursor *c, pgo_msg *m, pgo_error *err)
{
	pgo_rc rc;

	if (!cur_u32(c, &m->u.type.oid))
		return short_field(err, c, "type oid");
	rc = read_nspname(c, &m->u.type.nspname, err);
	if (rc != PGO_OK)
		return rc;
	return read_cstr(c, &m->u.type.name, "type name not terminated", err);
}

/* One column of a Relation message, as on the wire. */
typedef struct wire_column {
	uint8_t        flags;
	const uint8_t *name;
	uint32_t       namelen;
	uint32_t       type_oid;
	int32_t        typmod;
} wire_column;

static pgo_rc
read_column(pgo_cursor *c, wire_column *col, pgo_error *err)
{
	size_t   off = c->pos;
	uint32_t typmod;

	if (!cur_u8(c, &col->flags))
		return short_field(err, c, "column flags");
	if ((col->flags & ~PGO_COLUMN_KEY) != 0)
		return fail(err, PGO_ERR_BAD_VALUE, off, "unknown column flags");
	if (!cur_cstr(c, &col->name, &col->namelen))
		return short_field(err, c, "column name not terminated");
	if (!cur_u32(c, &col->type_oid))
		return short_field(err, c, "column type oid");
	if (!cur_u32(c, &typmod))
		return short_field(err, c, "column type modifier");
	memcpy(&col->typmod, &typmod, sizeof typmod);
	return PGO_OK;
}

static char *
copy_name(char **dst, const uint8_t *src, size_t len)
{
	char *s = *dst;

	memcpy(s, src, len);
	s[len] = '\0';
	*dst += len + 1;
	return s;
}

/*
 * Relation: parsed in two passes over the columns, the first to validate
 * and size, the second to fill one allocation that holds the entry, its
 * columns and all names.  The entry is returned in *newrel, not yet cached.
 */
static pgo_rc
read_relation(pgo_decoder *d, pgo_cursor *c, pgo_relation **newrel,
              pgo_error *err)
{
	uint32_t       oid;
	pgo_bytes      nsp, rel;
	uint8_t        replident;
	uint16_t       natts;
	size_t         off, cols_at, size;
	wire_column    col;
	pgo_relation  *r;
	char          *strings;
	pgo_rc         rc;

	if (!cur_u32(c, &oid))
		return short_field(err, c, "relation oid");
	rc = read_nspname(c, &nsp, err);
	if (rc != PGO_OK)
		return rc;
	rc = read_cstr(c, &rel, "relation name not terminated", err);
	if (rc != PGO_OK)
		return rc;
	off = c->pos;
	if (!cur_u8(c, &replident))
		return short_field(err, c, "replica identity");
	if (replident != 'd' && replident != 'n' && replident != 'f' && replident != 'i')
		return fail(err, PGO_ERR_BAD_VALUE, off, "unknown replica identity");
	off = c->pos;
	if (!cur_u16(c, &natts))
		return short_field(err, c, "relation column count");
	if (natts > INT16_MAX)
		return fail(err, PGO_ERR_BAD_VALUE, off, "negative relation column count");

	/* Pass 1: validate, and size the names. */
	cols_at = c->pos;
	size = sizeof *r + (size_t) natts * sizeof(pgo_column) +
	       (size_t) nsp.len + 1 + (size_t) rel.len + 1;
	for (uint16_t i = 0; i < natts; i++) {
		rc = read_column(c, &col, err);
		if (rc != PGO_OK)
			return rc;
		/* Names are bounded by the input, which is in memory: no overflow. */
		size += (size_t) col.namelen + 1;
	}

	if (!cache_reserve(d))
		return fail(err, PGO_ERR_NOMEM, 0, "could not grow relation cache");
	r = malloc(size);
	if (r == NULL)
		return fail(err, PGO_ERR_NOMEM, 0, "could not allocate relation");

	/* Pass 2: fill.  The bytes were validated, so read_column() succeeds. */
	r->oid = oid;
	r->replident = (char) replident;
	r->natts = natts;
	r->atts = (pgo_column *) (r + 1);
	strings = (char *) (r->atts + natts);
	r->nspname = copy_name(&strings, nsp.ptr, nsp.len);
	r->relname = copy_name(&strings, rel.ptr, rel.len);
	c->pos = cols_at;
	for (uint16_t i = 0; i < natts; i++) {
		rc = read_column(c, &col, err);
		if (rc != PGO_OK) {
			free(r);
			return rc;
		}
		r->atts[i].name = copy_name(&strings, col.name, col.namelen);
		r->atts[i].type_oid = col.type_oid;
		r->atts[i].typmod = col.typmod;
		r->atts[i].flags = col.flags;
	}
	*newrel = r;
	return PGO_OK;
}

/*
 * TupleData into slots[0, rel->natts).  Values are views into the input.
 */
static pgo_rc
read_tuple(pgo_cursor *c, const pgo_relation *rel, pgo_datum *slots,
           pgo_tuple *out, pgo_error *err)
{
	size_t   off = c->pos;
	uint16_t natts;

	if (!cur_u16(c, &natts))
		return short_field(err, c, "tuple column count");
	if (natts != rel->natts)
		return fail(err, PGO_ERR_BAD_VALUE, off,
		            "tuple column count differs from relation");
	for (uint16_t i = 0; i < natts; i++) {
		uint8_t  kind;
		uint32_t len;

		off = c->pos;
		if (!cur_u8(c, &kind))
			return short_field(err, c, "column kind");
		slots[i].value.ptr = NULL;
		slots[i].value.len = 0;
		switch (kind) {
		case PGO_DATUM_NULL:
		case PGO_DATUM_UNCHANGED:
			break;
		case PGO_DATUM_TEXT:
		case PGO_DATUM_BINARY:
			off = c->pos;
			if (!cur_u32(c, &len))
				return short_field(err, c, "column value length");
			if (len > INT32_MAX)
				return fail(err, PGO_ERR_BAD_VALUE, off, "negative column value length");
			if (!cur_bytes(c, len, &slots[i].value.ptr))
				return short_field(err, c, "column value");
			slots[i].value.len = len;
			break;
		default:
			return fail(err, PGO_ERR_BAD_VALUE, off, "unknown column kind");
		}
		slots[i].kind = (pgo_datum_kind) kind;
	}
	out->natts = natts;
	out->atts = slots;
	return PGO_OK;
}

/* Relation id of a row change: must be in the cache. */
static pgo_rc
read_relid(pgo_decoder *d, pgo_cursor *c, uint32_t *relid,
           const pgo_relation **rel, pgo_error *err)
{
	size_t off = c->pos;

	if (!cur_u32(c, relid))
		return short_field(err, c, "relation oid");
	*rel = pgo_decoder_relation(d, *relid);
	if (*rel == NULL)
		return fail(err, PGO_ERR_UNKNOWN_RELATION, off, "relation not described");
	if (!scratch_reserve(d, (*rel)->natts))
		return fail(err, PGO_ERR_NOMEM, 0, "could not grow tuple scratch");
	return PGO_OK;
}

/* The byte that announces a tuple: 'N', 'K' or 'O'. */
static pgo_rc
read_tuple_tag(pgo_cursor *c, uint8_t *tag, size_t *off, pgo_error *err)
{
	*off = c->pos;
	if (!cur_u8(c, tag))
		return short_field(err, c, "tuple tag");
	return PGO_OK;
}

static pgo_rc
read_insert(pgo_decoder *d, pgo_cursor *c, pgo_msg *m, pgo_error *err)
{
	uint8_t tag = 0;
	size_t  off = 0;
	pgo_rc  rc;

	rc = read_relid(d, c, &m->u.insert.relid, &m->u.insert.rel, err);
	if (rc == PGO_OK)
		rc = read_tuple_tag(c, &tag, &off, err);
	if (rc != PGO_OK)
		return rc;
	if (tag != 'N')
		return fail(err, PGO_ERR_BAD_VALUE, off, "expected new tuple");
	return read_tuple(c, m->u.insert.rel, d->datums, &m->u.insert.newtup, err);
}

static pgo_rc
read_update(pgo_decoder *d, pgo_cursor *c, pgo_msg *m, pgo_error *err)
{
	const pgo_relation *rel;
	uint8_t             tag = 0;
	size_t              off = 0;
	pgo_rc              rc;

	rc = read_relid(d, c, &m->u.update.relid, &m->u.update.rel, err);
	if (rc == PGO_OK)
		rc = read_tuple_tag(c, &tag, &off, err);
	if (rc != PGO_OK)
		return rc;
	rel = m->u.update.rel;
	if (tag == 'K' || tag == 'O') {
		m->u.update.oldkind = (char) tag;
		rc = read_tuple(c, rel, d->datums, &m->u.update.oldtup, err);
		if (rc == PGO_OK)
			rc = read_tuple_tag(c, &tag, &off, err);
		if (rc != PGO_OK)
			return rc;
	}
	if (tag != 'N')
		return fail(err, PGO_ERR_BAD_VALUE, off,
		            m->u.update.oldkind ? "expected new tuple"
		                                : "expected old key, old row or new tuple");
	return read_tuple(c, rel, d->datums + rel->natts, &m->u.update.newtup, err);
}

static pgo_rc
read_delete(pgo_decoder *d, pgo_cursor *c, pgo_msg *m, pgo_error *err)
{
	uint8_t tag = 0;
	size_t  off = 0;
	pgo_rc  rc;

	rc = read_relid(d, c, &m->u.del.relid, &m->u.del.rel, err);
	if (rc == PGO_OK)
		rc = read_tuple_tag(c, &tag, &off, err);
	if (rc != PGO_OK)
		return rc;
	if (tag != 'K' && tag != 'O')
		return fail(err, PGO_ERR_BAD_VALUE, off, "expected old key or old row");
	m->u.del.oldkind = (char) tag;
	return read_tuple(c, m->u.del.rel, d->datums, &m->u.del.oldtup, err);
}

#define TRUNCATE_KNOWN_OPTIONS 0x03 /* CASCADE, RESTART IDENTITY */

static pgo_rc
read_truncate(pgo_cursor *c, pgo_msg *m, pgo_error *err)
{
	size_t   off = c->pos;
	uint32_t n;

	if (!cur_u32(c, &n))
		return short_field(err, c, "truncate relation count");
	/* Also keeps n * 4 within pgo_bytes.len. */
	if (n > UINT32_MAX / 4)
		return fail(err, PGO_ERR_BAD_VALUE, off, "truncate relation count out of range");
	off = c->pos;
	if (!cur_u8(c, &m->u.truncate.options))
		return short_field(err, c, "truncate options");
	if ((m->u.truncate.options & ~TRUNCATE_KNOWN_OPTIONS) != 0)
		return fail(err, PGO_ERR_BAD_VALUE, off, "unknown truncate options");
	if (!cur_bytes(c, (size_t) n * 4, &m->u.truncate.relids.ptr))
		return short_field(err, c, "truncate relation oids");
	m->u.truncate.nrelids = n;
	m->u.truncate.relids.len = n * 4;
	return PGO_OK;
}

static pgo_rc
read_message(pgo_cursor *c, pgo_msg *m, pgo_error *err)
{
	size_t   off = c->pos;
	uint32_t len;
	pgo_rc   rc;

	if (!cur_u8(c, &m->u.message.flags))
		return short_field(err, c, "message flags");
	if ((m->u.message.flags & ~PGO_MESSAGE_TRANSACTIONAL) != 0)
		return fail(err, PGO_ERR_BAD_VALUE, off, "unknown message flags");
	if (!cur_u64(c, &m->u.message.lsn))
		return short_field(err, c, "message lsn");
	rc = read_cstr(c, &m->u.message.prefix, "message prefix not terminated", err);
	if (rc != PGO_OK)
		return rc;
	off = c->pos;
	if (!cur_u32(c, &len))
		return short_field(err, c, "message content length");
	if (len > INT32_MAX)
		return fail(err, PGO_ERR_BAD_VALUE, off, "negative message content length");
	if (!cur_bytes(c, len, &m->u.message.content.ptr))
		return short_field(err, c, "message content");
	m->u.message.content.len = len;
	return PGO_OK;
}

static pgo_rc
read_stream_start(pgo_cursor *c, pgo_msg *m, pgo_error *err)
{
	size_t off;

	if (!cur_u32(c, &m->u.stream_start.xid))
		return short_field(err, c, "stream xid");
	off = c->pos;
	if (!cur_u8(c, &m->u.stream_start.first_segment))
		return short_field(err, c, "stream first segment");
	if (m->u.stream_start.first_segment > 1)
		return fail(err, PGO_ERR_BAD_VALUE, off, "first segment flag not 0 or 1");
	return PGO_OK;
}

static pgo_rc
read_stream_commit(pgo_cursor *c, pgo_msg *m, pgo_error *err)
{
	pgo_rc rc;

	if (!cur_u32(c, &m->u.stream_commit.xid))
		return short_field(err, c, "stream xid");
	rc = read_zero_flags(c, &m->u.stream_commit.flags, err);
	if (rc != PGO_OK)
		return rc;
	if (!cur_u64(c, &m->u.stream_commit.commit_lsn))
		return short_field(err, c, "commit lsn");
	if (!cur_u64(c, &m->u.stream_commit.end_lsn))
		return short_field(err, c, "commit end lsn");
	if (!cur_i64(c, &m->u.stream_commit.commit_time))
		return short_field(err, c, "commit time");
	return PGO_OK;
}

/*
 * Stream Abort: xid, subxid; then, with streaming = parallel (v4+), abort
 * LSN and time.  Without it, bytes after subxid are TRAILING (the caller's
 * check); with it, their absence is TRUNCATED.
 */
static pgo_rc
read_stream_abort(const pgo_decoder *d, pgo_cursor *c, pgo_msg *m,
                  pgo_error *err)
{
	if (!cur_u32(c, &m->u.stream_abort.xid))
		return short_field(err, c, "stream xid");
	if (!cur_u32(c, &m->u.stream_abort.subxid))
		return short_field(err, c, "stream subtransaction xid");
	if (!d->parallel_streaming)
		return PGO_OK;
	if (!cur_u64(c, &m->u.stream_abort.abort_lsn))
		return short_field(err, c, "abort lsn");
	if (!cur_i64(c, &m->u.stream_abort.abort_time))
		return short_field(err, c, "abort time");
	m->u.stream_abort.has_lsn = true;
	return PGO_OK;
}

static pgo_rc
read_begin_prepare(pgo_cursor *c, pgo_msg *m, pgo_error *err)
{
	pgo_rc rc;

	rc = read_valid_lsn(c, &m->u.begin_prepare.prepare_lsn, "prepare lsn",
	                    "prepare lsn is 0", err);
	if (rc == PGO_OK)
		rc = read_valid_lsn(c, &m->u.begin_prepare.end_lsn, "prepare end lsn",
		                    "prepare end lsn is 0", err);
	if (rc != PGO_OK)
		return rc;
	if (!cur_i64(c, &m->u.begin_prepare.prepare_time))
		return short_field(err, c, "prepare time");
	if (!cur_u32(c, &m->u.begin_prepare.xid))
		return short_field(err, c, "prepare xid");
	return read_cstr(c, &m->u.begin_prepare.gid, "gid not terminated", err);
}

/* Prepare and Stream Prepare share one layout. */
static pgo_rc
read_prepare(pgo_cursor *c, pgo_msg *m, pgo_error *err)
{
	pgo_rc rc;

	rc = read_zero_flags(c, &m->u.prepare.flags, err);
	if (rc == PGO_OK)
		rc = read_valid_lsn(c, &m->u.prepare.prepare_lsn, "prepare lsn",
		                    "prepare lsn is 0", err);
	if (rc == PGO_OK)
		rc = read_valid_lsn(c, &m->u.prepare.end_lsn, "prepare end lsn",
		                    "prepare end lsn is 0", err);
	if (rc != PGO_OK)
		return rc;
	if (!cur_i64(c, &m->u.prepare.prepare_time))
		return short_field(err, c, "prepare time");
	if (!cur_u32(c, &m->u.prepare.xid))
		return short_field(err, c, "prepare xid");
	return read_cstr(c, &m->u.prepare.gid, "gid not terminated", err);
}

static pgo_rc
read_commit_prepared(pgo_cursor *c, pgo_msg *m, pgo_error *err)
{
	pgo_rc rc;

	rc = read_zero_flags(c, &m->u.commit_prepared.flags, err);
	if (rc == PGO_OK)
		rc = read_valid_lsn(c, &m->u.commit_prepared.commit_lsn, "commit lsn",
		                    "commit lsn is 0", err);
	if (rc == PGO_OK)
		rc = read_valid_lsn(c, &m->u.commit_prepared.end_lsn, "commit end lsn",
		                    "commit end lsn is 0", err);
	if (rc != PGO_OK)
		return rc;
	if (!cur_i64(c, &m->u.commit_prepared.commit_time))
		return short_field(err, c, "commit time");
	if (!cur_u32(c, &m->u.commit_prepared.xid))
		return short_field(err, c, "commit xid");
	return read_cstr(c, &m->u.commit_prepared.gid, "gid not terminated", err);
}

static pgo_rc
read_rollback_prepared(pgo_cursor *c, pgo_msg *m, pgo_error *err)
{
	pgo_rc rc;

	rc = read_zero_flags(c, &m->u.rollback_prepared.flags, err);
	if (rc == PGO_OK)
		rc = read_valid_lsn(c, &m->u.rollback_prepared.prepare_end_lsn,
		                    "prepare end lsn", "prepare end lsn is 0", err);
	if (rc == PGO_OK)
		rc = read_valid_lsn(c, &m->u.rollback_prepared.rollback_end_lsn,
		                    "rollback end lsn", "rollback end lsn is 0", err);
	if (rc != PGO_OK)
		return rc;
	if (!cur_i64(c, &m->u.rollback_prepared.prepare_time))
		return short_field(err, c, "prepare time");
	if (!cur_i64(c, &m->u.rollback_prepared.rollback_time))
		return short_field(err, c, "rollback time");
	if (!cur_u32(c, &m->u.rollback_prepared.xid))
		return short_field(err, c, "rollback xid");
	return read_cstr(c, &m->u.rollback_prepared.gid, "gid not terminated", err);
}

/* ---------------------------------------------------------------------------
 * Dispatch
 * ------------------------------------------------------------------------- */

static bool
known_type(uint8_t t)
{
	switch (t) {
	case PGO_MSG_BEGIN:
	case PGO_MSG_COMMIT:
	case PGO_MSG_ORIGIN:
	case PGO_MSG_RELATION:
	case PGO_MSG_TYPE:
	case PGO_MSG_INSERT:
	case PGO_MSG_UPDATE:
	case PGO_MSG_DELETE:
	case PGO_MSG_TRUNCATE:
	case PGO_MSG_MESSAGE:
	case PGO_MSG_STREAM_START:
	case PGO_MSG_STREAM_STOP:
	case PGO_MSG_STREAM_COMMIT:
	case PGO_MSG_STREAM_ABORT:
	case PGO_MSG_BEGIN_PREPARE:
	case PGO_MSG_PREPARE:
	case PGO_MSG_COMMIT_PREPARED:
	case PGO_MSG_ROLLBACK_PREPARED:
	case PGO_MSG_STREAM_PREPARE:
		return true;
	}
	return false;
}

/* Changes: inside a stream block they carry the (sub)transaction's xid. */
static bool
is_change(uint8_t t)
{
	switch (t) {
	case PGO_MSG_RELATION:
	case PGO_MSG_TYPE:
	case PGO_MSG_INSERT:
	case PGO_MSG_UPDATE:
	case PGO_MSG_DELETE:
	case PGO_MSG_TRUNCATE:
	case PGO_MSG_MESSAGE:
		return true;
	}
	return false;
}

/* Which message types a stream block, or the space between blocks, admits. */
static const char *
stream_violation(const pgo_decoder *d, uint8_t t)
{
	if (d->in_stream) {
		if (t == PGO_MSG_STREAM_START)
			return "stream start inside a stream block";
		if (!is_change(t) && t != PGO_MSG_ORIGIN && t != PGO_MSG_STREAM_STOP)
			return "message not allowed inside a stream block";
	} else if (t == PGO_MSG_STREAM_STOP)
		return "stream stop outside a stream block";
	return NULL;
}

static pgo_rc
read_body(pgo_decoder *d, pgo_cursor *c, uint8_t type, pgo_msg *m,
          pgo_relation **newrel, pgo_error *err)
{
	switch (type) {
	case PGO_MSG_BEGIN:
		return read_begin(c, m, err);
	case PGO_MSG_COMMIT:
		return read_commit(c, m, err);
	case PGO_MSG_ORIGIN:
		return read_origin(c, m, err);
	case PGO_MSG_RELATION:
		return read_relation(d, c, newrel, err);
	case PGO_MSG_TYPE:
		return read_type(c, m, err);
	case PGO_MSG_INSERT:
		return read_insert(d, c, m, err);
	case PGO_MSG_UPDATE:
		return read_update(d, c, m, err);
	case PGO_MSG_DELETE:
		return read_delete(d, c, m, err);
	case PGO_MSG_TRUNCATE:
		return read_truncate(c, m, err);
	case PGO_MSG_MESSAGE:
		return read_message(c, m, err);
	case PGO_MSG_STREAM_START:
		return read_stream_start(c, m, err);
	case PGO_MSG_STREAM_STOP:
		return PGO_OK;
	case PGO_MSG_STREAM_COMMIT:
		return read_stream_commit(c, m, err);
	case PGO_MSG_STREAM_ABORT:
		return read_stream_abort(d, c, m, err);
	case PGO_MSG_BEGIN_PREPARE:
		return read_begin_prepare(c, m, err);
	case PGO_MSG_PREPARE:
	case PGO_MSG_STREAM_PREPARE:
		return read_prepare(c, m, err);
	case PGO_MSG_COMMIT_PREPARED:
		return read_commit_prepared(c, m, err);
	case PGO_MSG_ROLLBACK_PREPARED:
		return read_rollback_prepared(c, m, err);
	}
	return fail(err, PGO_ERR_UNKNOWN_TYPE, 0, "unknown message type");
}

pgo_rc
pgo_decode_message(pgo_decoder *d, const uint8_t *buf, size_t len,
                   pgo_msg *out, pgo_error *err)
{
	pgo_cursor    c;
	uint8_t       type;
	const char   *violation;
	pgo_relation *newrel = NULL;
	pgo_rc        rc;

	memset(out, 0, sizeof *out);
	if (buf == NULL || len == 0)
		return fail(err, PGO_ERR_TRUNCATED, 0, "empty message");
	c = cur_init(buf, len);
	if (!cur_u8(&c, &type))
		return short_field(err, &c, "message type");
	if (!known_type(type))
		return fail(err, PGO_ERR_UNKNOWN_TYPE, 0, "unknown message type");
	violation = stream_violation(d, type);
	if (violation != NULL)
		return fail(err, PGO_ERR_BAD_VALUE, 0, violation);
	out->type = (pgo_msg_type) type;

	if (d->in_stream && is_change(type)) {
		if (!cur_u32(&c, &out->xid))
			return short_field(err, &c, "streamed xid");
		out->has_xid = true;
	}

	rc = read_body(d, &c, type, out, &newrel, err);
	if (rc != PGO_OK)
		goto error;
	if (cur_remaining(&c) != 0) {
		rc = fail(err, PGO_ERR_TRAILING, c.pos, "bytes after message");
		goto error;
	}

	/* Commit: nothing below can fail. */
	if (newrel != NULL) {
		cache_put(d, newrel);
		out->u.relation.rel = newrel;
	}
	if (type == PGO_MSG_STREAM_START)
		d->in_stream = true;
	else if (type == PGO_MSG_STREAM_STOP)
		d->in_stream = false;
	return PGO_OK;

error:
	free(newrel);
	return rc;
}
