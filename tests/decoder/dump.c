/*
 * dump.c — text form of decoded pgoutput messages (see dump.h).
 */
#include "dump.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LONG_VALUE 200 /* longer values are abbreviated */
#define LONG_HEAD  48  /* bytes of an abbreviated value that are shown */

void
strbuf_free(strbuf *sb)
{
	free(sb->data);
	sb->data = NULL;
	sb->len = sb->cap = 0;
}

void
strbuf_reset(strbuf *sb)
{
	sb->len = 0;
	if (sb->data != NULL)
		sb->data[0] = '\0';
}

static void
strbuf_reserve(strbuf *sb, size_t extra)
{
	size_t need = sb->len + extra + 1;

	if (need <= sb->cap)
		return;
	while (sb->cap < need)
		sb->cap = sb->cap ? sb->cap * 2 : 256;
	sb->data = realloc(sb->data, sb->cap);
	if (sb->data == NULL) {
		fprintf(stderr, "out of memory\n");
		abort();
	}
}

void
strbuf_printf(strbuf *sb, const char *fmt, ...)
{
	va_list ap;
	int     n;
	size_t  room = 64;

	for (;;) {
		strbuf_reserve(sb, room);
		va_start(ap, fmt);
		n = vsnprintf(sb->data + sb->len, sb->cap - sb->len, fmt, ap);
		va_end(ap);
		if (n < 0)
			abort();
		if ((size_t) n < sb->cap - sb->len)
			break;
		room = (size_t) n + 1;
	}
	sb->len += (size_t) n;
}

static void
put_escaped(strbuf *sb, const uint8_t *p, size_t n)
{
	strbuf_reserve(sb, n * 4);
	for (size_t i = 0; i < n; i++) {
		uint8_t ch = p[i];

		if (ch >= 0x20 && ch <= 0x7e && ch != '\\' && ch != '\'')
			sb->data[sb->len++] = (char) ch;
		else
			sb->len += (size_t) sprintf(sb->data + sb->len, "\\x%02x", ch);
	}
	sb->data[sb->len] = '\0';
}

static void
put_quoted(strbuf *sb, pgo_bytes b)
{
	strbuf_printf(sb, "'");
	put_escaped(sb, b.ptr, b.len);
	strbuf_printf(sb, "'");
}

static void
put_name(strbuf *sb, const char *s)
{
	put_escaped(sb, (const uint8_t *) s, strlen(s));
}

/* A value: quoted, or abbreviated when long. */
static void
put_value(strbuf *sb, pgo_bytes b)
{
	uint64_t h = UINT64_C(0xcbf29ce484222325);

	if (b.len <= LONG_VALUE) {
		put_quoted(sb, b);
		return;
	}
	for (uint32_t i = 0; i < b.len; i++) {
		h ^= b.ptr[i];
		h *= UINT64_C(0x100000001b3);
	}
	strbuf_printf(sb, "len=%" PRIu32 " fnv1a=%016" PRIx64 " '", b.len, h);
	put_escaped(sb, b.ptr, LONG_HEAD);
	strbuf_printf(sb, "'...");
}

static void
put_lsn(strbuf *sb, const char *name, pgo_lsn lsn)
{
	strbuf_printf(sb, " %s=%X/%X", name, (unsigned) (lsn >> 32), (unsigned) lsn);
}

/* PostgreSQL timestamp as UTC ISO 8601 with microseconds. */
static void
put_time(strbuf *sb, const char *name, int64_t t)
{
	int64_t   unix_us;
	int64_t   secs, usec;
	time_t    tt;
	struct tm tm;

	/* Far outside any real clock (corrupted input): print the raw number. */
	if (t > INT64_C(1) << 60 || t < -(INT64_C(1) << 60)) {
		strbuf_printf(sb, " %s=%" PRId64, name, t);
		return;
	}
	unix_us = t + PGO_EPOCH_OFFSET_USEC;
	secs = unix_us / 1000000;
	usec = unix_us % 1000000;
	if (usec < 0) {
		usec += 1000000;
		secs -= 1;
	}
	tt = (time_t) secs;
	if (gmtime_r(&tt, &tm) == NULL) {
		strbuf_printf(sb, " %s=%" PRId64, name, t);
		return;
	}
	strbuf_printf(sb, " %s=%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", name,
	              tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
	              tm.tm_min, tm.tm_sec, (int) usec);
}

static void
put_tuple(strbuf *sb, const char *name, const pgo_tuple *t)
{
	strbuf_printf(sb, " %s=(", name);
	for (uint16_t i = 0; i < t->natts; i++) {
		const pgo_datum *a = &t->atts[i];

		if (i > 0)
			strbuf_printf(sb, ", ");
		switch (a->kind) {
		case PGO_DATUM_NULL:
			strbuf_printf(sb, "n");
			break;
		case PGO_DATUM_UNCHANGED:
			strbuf_printf(sb, "u");
			break;
		case PGO_DATUM_TEXT:
			strbuf_printf(sb, "t:");
			put_value(sb, a->value);
			break;
		case PGO_DATUM_BINARY:
			strbuf_printf(sb, "b:");
			put_value(sb, a->value);
			break;
		default:
			strbuf_printf(sb, "?%d", (int) a->kind);
		}
	}
	strbuf_printf(sb, ")");
}

static const char *
old_name(char kind)
{
	return kind == 'K' ? "key" : "old";
}

static void
put_relation(strbuf *sb, const pgo_relation *r)
{
	strbuf_printf(sb, " %" PRIu32 " ", r->oid);
	put_name(sb, r->nspname);
	strbuf_printf(sb, ".");
	put_name(sb, r->relname);
	strbuf_printf(sb, " replident=%c cols=[", r->replident);
	for (uint16_t i = 0; i < r->natts; i++) {
		const pgo_column *c = &r->atts[i];

		if (i > 0)
			strbuf_printf(sb, ", ");
		put_name(sb, c->name);
		strbuf_printf(sb, ":%" PRIu32 ":%" PRId32 "%s", c->type_oid, c->typmod,
		              (c->flags & PGO_COLUMN_KEY) ? ":key" : "");
	}
	strbuf_printf(sb, "]");
}

static void
put_gid(strbuf *sb, pgo_bytes gid)
{
	strbuf_printf(sb, " gid=");
	put_quoted(sb, gid);
}

void
dump_msg(strbuf *sb, const pgo_msg *m)
{
	static const struct {
		pgo_msg_type type;
		const char  *name;
	} names[] = {
		{PGO_MSG_BEGIN, "BEGIN"},
		{PGO_MSG_COMMIT, "COMMIT"},
		{PGO_MSG_ORIGIN, "ORIGIN"},
		{PGO_MSG_RELATION, "RELATION"},
		{PGO_MSG_TYPE, "TYPE"},
		{PGO_MSG_INSERT, "INSERT"},
		{PGO_MSG_UPDATE, "UPDATE"},
		{PGO_MSG_DELETE, "DELETE"},
		{PGO_MSG_TRUNCATE, "TRUNCATE"},
		{PGO_MSG_MESSAGE, "MESSAGE"},
		{PGO_MSG_STREAM_START, "STREAM_START"},
		{PGO_MSG_STREAM_STOP, "STREAM_STOP"},
		{PGO_MSG_STREAM_COMMIT, "STREAM_COMMIT"},
		{PGO_MSG_STREAM_ABORT, "STREAM_ABORT"},
		{PGO_MSG_BEGIN_PREPARE, "BEGIN_PREPARE"},
		{PGO_MSG_PREPARE, "PREPARE"},
		{PGO_MSG_COMMIT_PREPARED, "COMMIT_PREPARED"},
		{PGO_MSG_ROLLBACK_PREPARED, "ROLLBACK_PREPARED"},
		{PGO_MSG_STREAM_PREPARE, "STREAM_PREPARE"},
	};
	const char *name = "?";

	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (names[i].type == m->type)
			name = names[i].name;
	strbuf_printf(sb, "%s", name);
	if (m->has_xid)
		strbuf_printf(sb, " xid=%" PRIu32, m->xid);

	switch (m->type) {
	case PGO_MSG_BEGIN:
		put_lsn(sb, "final_lsn", m->u.begin.final_lsn);
		put_time(sb, "commit_time", m->u.begin.commit_time);
		strbuf_printf(sb, " xid=%" PRIu32, m->u.begin.xid);
		break;
	case PGO_MSG_COMMIT:
		strbuf_printf(sb, " flags=%u", m->u.commit.flags);
		put_lsn(sb, "commit_lsn", m->u.commit.commit_lsn);
		put_lsn(sb, "end_lsn", m->u.commit.end_lsn);
		put_time(sb, "commit_time", m->u.commit.commit_time);
		break;
	case PGO_MSG_ORIGIN:
		put_lsn(sb, "commit_lsn", m->u.origin.commit_lsn);
		strbuf_printf(sb, " name=");
		put_quoted(sb, m->u.origin.name);
		break;
	case PGO_MSG_RELATION:
		put_relation(sb, m->u.relation.rel);
		break;
	case PGO_MSG_TYPE:
		strbuf_printf(sb, " %" PRIu32 " ", m->u.type.oid);
		put_escaped(sb, m->u.type.nspname.ptr, m->u.type.nspname.len);
		strbuf_printf(sb, ".");
		put_escaped(sb, m->u.type.name.ptr, m->u.type.name.len);
		break;
	case PGO_MSG_INSERT:
		strbuf_printf(sb, " %" PRIu32, m->u.insert.relid);
		put_tuple(sb, "new", &m->u.insert.newtup);
		break;
	case PGO_MSG_UPDATE:
		strbuf_printf(sb, " %" PRIu32, m->u.update.relid);
		if (m->u.update.oldkind)
			put_tuple(sb, old_name(m->u.update.oldkind), &m->u.update.oldtup);
		put_tuple(sb, "new", &m->u.update.newtup);
		break;
	case PGO_MSG_DELETE:
		strbuf_printf(sb, " %" PRIu32, m->u.del.relid);
		put_tuple(sb, old_name(m->u.del.oldkind), &m->u.del.oldtup);
		break;
	case PGO_MSG_TRUNCATE:
		strbuf_printf(sb, " options=%u relids=[", m->u.truncate.options);
		for (uint32_t i = 0; i < m->u.truncate.nrelids; i++) {
			const uint8_t *p = m->u.truncate.relids.ptr + 4 * (size_t) i;

			strbuf_printf(sb, "%s%" PRIu32, i ? ", " : "",
			              (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 |
			                  (uint32_t) p[2] << 8 | p[3]);
		}
		strbuf_printf(sb, "]");
		break;
	case PGO_MSG_MESSAGE:
		strbuf_printf(sb, " flags=%u", m->u.message.flags);
		put_lsn(sb, "lsn", m->u.message.lsn);
		strbuf_printf(sb, " prefix=");
		put_quoted(sb, m->u.message.prefix);
		strbuf_printf(sb, " content=");
		put_value(sb, m->u.message.content);
		break;
	case PGO_MSG_STREAM_START:
		strbuf_printf(sb, " xid=%" PRIu32 " first_segment=%u",
		              m->u.stream_start.xid, m->u.stream_start.first_segment);
		break;
	case PGO_MSG_STREAM_STOP:
		break;
	case PGO_MSG_STREAM_COMMIT:
		strbuf_printf(sb, " xid=%" PRIu32 " flags=%u", m->u.stream_commit.xid,
		              m->u.stream_commit.flags);
		put_lsn(sb, "commit_lsn", m->u.stream_commit.commit_lsn);
		put_lsn(sb, "end_lsn", m->u.stream_commit.end_lsn);
		put_time(sb, "commit_time", m->u.stream_commit.commit_time);
		break;
	case PGO_MSG_STREAM_ABORT:
		strbuf_printf(sb, " xid=%" PRIu32 " subxid=%" PRIu32,
		              m->u.stream_abort.xid, m->u.stream_abort.subxid);
		if (m->u.stream_abort.has_lsn) {
			put_lsn(sb, "abort_lsn", m->u.stream_abort.abort_lsn);
			put_time(sb, "abort_time", m->u.stream_abort.abort_time);
		}
		break;
	case PGO_MSG_BEGIN_PREPARE:
		put_lsn(sb, "prepare_lsn", m->u.begin_prepare.prepare_lsn);
		put_lsn(sb, "end_lsn", m->u.begin_prepare.end_lsn);
		put_time(sb, "prepare_time", m->u.begin_prepare.prepare_time);
		strbuf_printf(sb, " xid=%" PRIu32, m->u.begin_prepare.xid);
		put_gid(sb, m->u.begin_prepare.gid);
		break;
	case PGO_MSG_PREPARE:
	case PGO_MSG_STREAM_PREPARE:
		strbuf_printf(sb, " flags=%u", m->u.prepare.flags);
		put_lsn(sb, "prepare_lsn", m->u.prepare.prepare_lsn);
		put_lsn(sb, "end_lsn", m->u.prepare.end_lsn);
		put_time(sb, "prepare_time", m->u.prepare.prepare_time);
		strbuf_printf(sb, " xid=%" PRIu32, m->u.prepare.xid);
		put_gid(sb, m->u.prepare.gid);
		break;
	case PGO_MSG_COMMIT_PREPARED:
		strbuf_printf(sb, " flags=%u", m->u.commit_prepared.flags);
		put_lsn(sb, "commit_lsn", m->u.commit_prepared.commit_lsn);
		put_lsn(sb, "end_lsn", m->u.commit_prepared.end_lsn);
		put_time(sb, "commit_time", m->u.commit_prepared.commit_time);
		strbuf_printf(sb, " xid=%" PRIu32, m->u.commit_prepared.xid);
		put_gid(sb, m->u.commit_prepared.gid);
		break;
	case PGO_MSG_ROLLBACK_PREPARED:
		strbuf_printf(sb, " flags=%u", m->u.rollback_prepared.flags);
		put_lsn(sb, "prepare_end_lsn", m->u.rollback_prepared.prepare_end_lsn);
		put_lsn(sb, "rollback_end_lsn", m->u.rollback_prepared.rollback_end_lsn);
		put_time(sb, "prepare_time", m->u.rollback_prepared.prepare_time);
		put_time(sb, "rollback_time", m->u.rollback_prepared.rollback_time);
		strbuf_printf(sb, " xid=%" PRIu32, m->u.rollback_prepared.xid);
		put_gid(sb, m->u.rollback_prepared.gid);
		break;
	}
	strbuf_printf(sb, "\n");
}

/* ---------------------------------------------------------------------------
 * Structural check
 * ------------------------------------------------------------------------- */

static bool
inside(pgo_bytes b, const unsigned char *buf, size_t len)
{
	uintptr_t lo = (uintptr_t) buf, hi = lo + len, p = (uintptr_t) b.ptr;

	if (b.len == 0 && b.ptr == NULL)
		return true;
	return p >= lo && p <= hi && b.len <= hi - p;
}

static const char *
tuple_violation(const pgo_tuple *t, const pgo_relation *rel,
                const unsigned char *buf, size_t len)
{
	if (rel == NULL)
		return "row change without relation";
	if (t->natts != rel->natts)
		return "tuple width differs from relation";
	if (t->atts == NULL)
		return "tuple without datums";
	for (uint16_t i = 0; i < t->natts; i++) {
		const pgo_datum *a = &t->atts[i];

		switch (a->kind) {
		case PGO_DATUM_NULL:
		case PGO_DATUM_UNCHANGED:
			if (a->value.len != 0)
				return "null or unchanged datum with a value";
			break;
		case PGO_DATUM_TEXT:
		case PGO_DATUM_BINARY:
			if (!inside(a->value, buf, len))
				return "datum value outside the input";
			break;
		default:
			return "unknown datum kind";
		}
	}
	return NULL;
}

static bool
is_pg_catalog(pgo_bytes b)
{
	return b.len == 10 && memcmp(b.ptr, "pg_catalog", 10) == 0;
}

const char *
msg_violation(const pgo_msg *m, const unsigned char *buf, size_t len)
{
	switch (m->type) {
	case PGO_MSG_ORIGIN:
		return inside(m->u.origin.name, buf, len) ? NULL : "origin name outside";
	case PGO_MSG_RELATION: {
		const pgo_relation *r = m->u.relation.rel;

		if (r == NULL || r->nspname == NULL || r->relname == NULL)
			return "relation missing";
		if (r->natts > 0 && r->atts == NULL)
			return "relation without columns";
		for (uint16_t i = 0; i < r->natts; i++)
			if (r->atts[i].name == NULL || (r->atts[i].flags & ~PGO_COLUMN_KEY))
				return "bad column";
		return NULL;
	}
	case PGO_MSG_TYPE:
		if (!inside(m->u.type.nspname, buf, len) && !is_pg_catalog(m->u.type.nspname))
			return "type namespace outside";
		return inside(m->u.type.name, buf, len) ? NULL : "type name outside";
	case PGO_MSG_INSERT:
		if (m->u.insert.rel == NULL || m->u.insert.rel->oid != m->u.insert.relid)
			return "insert relation mismatch";
		return tuple_violation(&m->u.insert.newtup, m->u.insert.rel, buf, len);
	case PGO_MSG_UPDATE: {
		const char *v = NULL;

		if (m->u.update.rel == NULL || m->u.update.rel->oid != m->u.update.relid)
			return "update relation mismatch";
		if (m->u.update.oldkind != 0 && m->u.update.oldkind != 'K' &&
		    m->u.update.oldkind != 'O')
			return "bad old tuple kind";
		if (m->u.update.oldkind)
			v = tuple_violation(&m->u.update.oldtup, m->u.update.rel, buf, len);
		if (v == NULL)
			v = tuple_violation(&m->u.update.newtup, m->u.update.rel, buf, len);
		return v;
	}
	case PGO_MSG_DELETE:
		if (m->u.del.rel == NULL || m->u.del.rel->oid != m->u.del.relid)
			return "delete relation mismatch";
		if (m->u.del.oldkind != 'K' && m->u.del.oldkind != 'O')
			return "bad old tuple kind";
		return tuple_violation(&m->u.del.oldtup, m->u.del.rel, buf, len);
	case PGO_MSG_TRUNCATE:
		if (m->u.truncate.relids.len != 4 * (uint64_t) m->u.truncate.nrelids)
			return "truncate relids length";
		return inside(m->u.truncate.relids, buf, len) ? NULL : "truncate relids outside";
	case PGO_MSG_MESSAGE:
		if (!inside(m->u.message.prefix, buf, len))
			return "message prefix outside";
		return inside(m->u.message.content, buf, len) ? NULL : "message content outside";
	case PGO_MSG_BEGIN_PREPARE:
		return inside(m->u.begin_prepare.gid, buf, len) ? NULL : "gid outside";
	case PGO_MSG_PREPARE:
	case PGO_MSG_STREAM_PREPARE:
		return inside(m->u.prepare.gid, buf, len) ? NULL : "gid outside";
	case PGO_MSG_COMMIT_PREPARED:
		return inside(m->u.commit_prepared.gid, buf, len) ? NULL : "gid outside";
	case PGO_MSG_ROLLBACK_PREPARED:
		return inside(m->u.rollback_prepared.gid, buf, len) ? NULL : "gid outside";
	default:
		return NULL;
	}
}
