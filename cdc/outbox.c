/*
 * outbox.c — mapping outbox rows and logical messages to Kafka events.
 * See outbox.h.
 */
#include "outbox.h"
#include "sha256.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define JSONOID  114
#define JSONBOID 3802

/* A growable byte buffer, reused from event to event: no allocation per
 * message once it has reached the largest size seen. */
typedef struct buf {
	char  *p;
	size_t len;
	size_t cap;
} buf;

static bool
buf_reserve(buf *b, size_t more)
{
	size_t ncap;
	char *np;

	if (b->len + more + 1 <= b->cap)
		return true;
	ncap = b->cap ? b->cap : 256;
	while (b->len + more + 1 > ncap)
		ncap *= 2;
	if ((np = realloc(b->p, ncap)) == NULL)
		return false;
	b->p = np;
	b->cap = ncap;
	return true;
}

/* Append n bytes and keep the buffer NUL-terminated. */
static bool
buf_put(buf *b, const void *s, size_t n)
{
	if (!buf_reserve(b, n))
		return false;
	if (n > 0)
		memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
	return true;
}

static bool
buf_puts(buf *b, const char *s)
{
	return buf_put(b, s, strlen(s));
}

/* Append s as a JSON string literal.  Bytes >= 0x80 pass through: the text
 * comes from PostgreSQL in the database's encoding (UTF-8). */
static bool
buf_json_str(buf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";

	if (!buf_put(b, "\"", 1))
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char) s[i];
		char esc[6];
		size_t elen = 0;

		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char) c;
			elen = 2;
		} else if (c < 0x20) {
			esc[0] = '\\';
			switch (c) {
			case '\n': esc[1] = 'n'; elen = 2; break;
			case '\r': esc[1] = 'r'; elen = 2; break;
			case '\t': esc[1] = 't'; elen = 2; break;
			case '\b': esc[1] = 'b'; elen = 2; break;
			case '\f': esc[1] = 'f'; elen = 2; break;
			default:
				esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
				esc[4] = hex[c >> 4]; esc[5] = hex[c & 15];
				elen = 6;
			}
		}
		if (elen > 0 ? !buf_put(b, esc, elen) : !buf_put(b, &s[i], 1))
			return false;
	}
	return buf_put(b, "\"", 1);
}

/* Append the compact serialization of j (any JSON value). */
static bool
buf_json_dump(buf *b, const json_t *j)
{
	const size_t flags = JSON_COMPACT | JSON_ENCODE_ANY;
	size_t n = json_dumpb(j, NULL, 0, flags);

	if (n == 0 || !buf_reserve(b, n))
		return false;
	if (json_dumpb(j, b->p + b->len, n, flags) != n)
		return false;
	b->len += n;
	b->p[b->len] = '\0';
	return true;
}

/* One piece of the topic template: literal text or a ${name} reference. */
typedef struct tmpl_part {
	char *text;
	bool  is_ref;
} tmpl_part;

/* An outbox_mapping, copied and parsed. */
typedef struct ob_map {
	tmpl_part         *parts;
	size_t             nparts;
	size_t             nrefs;
	char              *prefix;
	char              *col_id, *col_key, *col_type, *col_payload, *col_aggtype;
	outbox_format      format;
	bool               key_json;        /* key_format = json-string */
	char              *ce_source_cfg;   /* configured, or NULL */
	char              *ce_source;       /* in effect (configured, or the default) */
	outbox_header_map *headers;         /* owned strings */
	size_t             nheaders;
} ob_map;

typedef struct ob_table {
	char  *nspname;
	char  *relname;
	char  *qualified;        /* "schema.table", for logs and headers */
	ob_map map;
} ob_table;

/* A relation as resolved against the mapping of its table. */
typedef struct ob_rel {
	uint32_t            oid;
	const pgo_relation *rel;       /* the decoder's entry it was resolved from */
	int                 table;     /* index into tables; -1: not an outbox table */
	int                 id, key, type, payload, aggtype;   /* column index; -1: none */
	bool                payload_json;                      /* json or jsonb column */
	int                 refs[OUTBOX_MAX_TEMPLATE_REFS];
	int                 hdrs[OUTBOX_MAX_EXTRA_HEADERS];
} ob_rel;

struct outbox {
	ob_table *tables;
	size_t    ntables;
	char     *msg_prefix;       /* NULL: messages off */
	ob_map    msg_map;
	char     *database;

	ob_rel   *rels;
	size_t    nrels, relcap;
	uint32_t *part_oid;         /* partitions of the tables (sorted by OID) ... */
	int      *part_table;       /* ... and the table each belongs to */
	size_t    nparts;

	buf       topic;
	buf       valid_topic;      /* the last topic that passed outbox_topic_valid */
	buf       value;
	buf       key;              /* a key in JSON string form (key_format = json-string) */
	char      time_str[32];
	char      lsn_str[24];
	char      xid_str[16];
	json_t   *msg;              /* parsed content of the last message */
};

static const char *const format_names[] = {"raw", "envelope", "cloudevents"};

bool
outbox_format_parse(const char *s, outbox_format *out)
{
	for (size_t i = 0; i < sizeof(format_names) / sizeof(format_names[0]); i++)
		if (strcmp(s, format_names[i]) == 0) {
			*out = (outbox_format) i;
			return true;
		}
	return false;
}

const char *
outbox_format_name(outbox_format f)
{
	return (size_t) f < sizeof(format_names) / sizeof(format_names[0]) ? format_names[f] : "?";
}

bool
outbox_topic_valid(const char *name, size_t len)
{
	if (len == 0 || len > 249)
		return false;
	if ((len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.'))
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

bool
outbox_header_reserved(const char *name, size_t len)
{
	return (len == 2 && memcmp(name, "id", 2) == 0) ||
	       (len == 4 && memcmp(name, "type", 4) == 0) ||
	       (len == 12 && memcmp(name, "content-type", 12) == 0) ||
	       (len >= 3 && memcmp(name, "ce_", 3) == 0) ||
	       (len >= 9 && memcmp(name, "pgoutbox.", 9) == 0);
}

size_t
outbox_format_time(int64_t pg_usec, char *out, size_t outlen)
{
	int64_t unix_usec = pg_usec + PGO_EPOCH_OFFSET_USEC;
	int64_t secs = unix_usec / 1000000, usec = unix_usec % 1000000;
	time_t t;
	struct tm tm;
	size_t n;

	if (usec < 0) {
		usec += 1000000;
		secs--;
	}
	t = (time_t) secs;
	if (outlen < 32 || gmtime_r(&t, &tm) == NULL) {
		if (outlen > 0)
			out[0] = '\0';
		return 0;
	}
	n = strftime(out, outlen, "%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t) snprintf(out + n, outlen - n, ".%06dZ", (int) usec);
	return n;
}

/* ---------------------------------------------------------------------------
 * Table names and templates
 * ------------------------------------------------------------------------- */

/* One identifier at *p: "quoted" (with "" escapes) or bare (lower-cased). */
static char *
parse_ident(const char **p, char *errbuf, size_t errlen)
{
	const char *s = *p;
	size_t n = 0;
	char *out = malloc(strlen(s) + 1);

	if (out == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	if (*s == '"') {
		s++;
		for (;;) {
			if (*s == '\0') {
				snprintf(errbuf, errlen, "unterminated quoted identifier in table name");
				free(out);
				return NULL;
			}
			if (*s == '"') {
				if (s[1] != '"')
					break;
				s++;
			}
			out[n++] = *s++;
		}
		s++;
	} else {
		while (*s && !strchr(".,= \t", *s)) {
			char c = *s++;
			out[n++] = (c >= 'A' && c <= 'Z') ? (char) (c - 'A' + 'a') : c;
		}
	}
	out[n] = '\0';
	if (n == 0) {
		snprintf(errbuf, errlen, "empty identifier in table name");
		free(out);
		return NULL;
	}
	*p = s;
	return out;
}

bool
outbox_parse_table(const char **p, bool need_schema, char **nsp, char **rel,
                   char *errbuf, size_t errlen)
{
	char *first, *second = NULL;

	if ((first = parse_ident(p, errbuf, errlen)) == NULL)
		return false;
	if (**p == '.') {
		(*p)++;
		if ((second = parse_ident(p, errbuf, errlen)) == NULL) {
			free(first);
			return false;
		}
	}
	if (second != NULL) {
		*nsp = first;
		*rel = second;
		return true;
	}
	if (need_schema) {
		snprintf(errbuf, errlen, "table name \"%s\" needs a schema (schema.table)", first);
		free(first);
		return false;
	}
	if ((*nsp = strdup("public")) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		free(first);
		return false;
	}
	*rel = first;
	return true;
}

static bool
add_part(ob_map *m, const char *s, size_t n, bool is_ref)
{
	tmpl_part *np = realloc(m->parts, (m->nparts + 1) * sizeof(*np));

	if (np == NULL)
		return false;
	m->parts = np;
	if ((np[m->nparts].text = strndup(s, n)) == NULL)
		return false;
	np[m->nparts].is_ref = is_ref;
	m->nparts++;
	if (is_ref)
		m->nrefs++;
	return true;
}

/* Only characters a topic name may hold, outside ${...}. */
static bool
topic_chars_valid(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!outbox_topic_valid(&s[i], 1) && s[i] != '.')
			return false;
	return true;
}

static bool
parse_template(ob_map *m, const char *t, char *errbuf, size_t errlen)
{
	const char *p = t;

	while (*p) {
		const char *open = strstr(p, "${");
		const char *close;

		if (open == NULL) {
			if (!add_part(m, p, strlen(p), false))
				goto nomem;
			break;
		}
		if (open > p && !add_part(m, p, (size_t) (open - p), false))
			goto nomem;
		close = strchr(open + 2, '}');
		if (close == NULL || close == open + 2) {
			snprintf(errbuf, errlen, "invalid topic template \"%s\": expected ${column}", t);
			return false;
		}
		if (!add_part(m, open + 2, (size_t) (close - open - 2), true))
			goto nomem;
		p = close + 1;
	}
	if (m->nparts == 0) {
		snprintf(errbuf, errlen, "topic template is empty");
		return false;
	}
	if (m->nrefs > OUTBOX_MAX_TEMPLATE_REFS) {
		snprintf(errbuf, errlen, "topic template \"%s\" has more than %d ${...} references",
		         t, OUTBOX_MAX_TEMPLATE_REFS);
		return false;
	}
	for (size_t i = 0; i < m->nparts; i++)
		if (!m->parts[i].is_ref && !topic_chars_valid(m->parts[i].text, strlen(m->parts[i].text))) {
			snprintf(errbuf, errlen, "topic template \"%s\": \"%s\" is not allowed in a Kafka "
			         "topic name (use letters, digits, '.', '_' and '-')", t, m->parts[i].text);
			return false;
		}
	if (m->nrefs == 0 && !outbox_topic_valid(t, strlen(t))) {
		snprintf(errbuf, errlen, "topic \"%s\" is not a valid Kafka topic name", t);
		return false;
	}
	return true;
nomem:
	snprintf(errbuf, errlen, "out of memory");
	return false;
}

static void
map_free(ob_map *m)
{
	for (size_t i = 0; i < m->nparts; i++)
		free(m->parts[i].text);
	free(m->parts);
	free(m->prefix);
	free(m->col_id);
	free(m->col_key);
	free(m->col_type);
	free(m->col_payload);
	free(m->col_aggtype);
	free(m->ce_source_cfg);
	free(m->ce_source);
	for (size_t i = 0; i < m->nheaders; i++) {
		free((char *) m->headers[i].name);
		free((char *) m->headers[i].column);
	}
	free(m->headers);
	memset(m, 0, sizeof(*m));
}

static char *
dup_or(const char *s, const char *def)
{
	return strdup(s != NULL ? s : def);
}

/* Copy and check one mapping; `what` names it in errors. */
static bool
map_init(ob_map *m, const outbox_mapping *src, bool columns, const char *what,
         char *errbuf, size_t errlen)
{
	memset(m, 0, sizeof(*m));
	if (!parse_template(m, src->topic_template ? src->topic_template : "outbox.event.${aggregatetype}",
	                    errbuf, errlen))
		return false;
	m->format = src->format;
	m->key_json = src->key_json;
	m->prefix = dup_or(src->topic_prefix, "");
	m->col_id = dup_or(src->col_id, "id");
	m->col_key = dup_or(src->col_key, "aggregateid");
	m->col_type = dup_or(src->col_type, "type");
	m->col_payload = dup_or(src->col_payload, "payload");
	m->col_aggtype = dup_or(src->col_aggregatetype, "aggregatetype");
	if (!m->prefix || !m->col_id || !m->col_key || !m->col_type || !m->col_payload ||
	    !m->col_aggtype)
		goto nomem;
	if (src->ce_source != NULL && (m->ce_source_cfg = strdup(src->ce_source)) == NULL)
		goto nomem;
	if (!topic_chars_valid(m->prefix, strlen(m->prefix))) {
		snprintf(errbuf, errlen, "%s: topic prefix \"%s\" is not allowed in a Kafka topic name",
		         what, m->prefix);
		return false;
	}
	if (columns && (!*m->col_id || !*m->col_key || !*m->col_type || !*m->col_payload ||
	                !*m->col_aggtype)) {
		snprintf(errbuf, errlen, "%s: a column name is empty", what);
		return false;
	}
	if (src->nheaders > OUTBOX_MAX_EXTRA_HEADERS) {
		snprintf(errbuf, errlen, "%s: %zu headers mapped, at most %d", what, src->nheaders,
		         OUTBOX_MAX_EXTRA_HEADERS);
		return false;
	}
	if (src->nheaders > 0) {
		if ((m->headers = calloc(src->nheaders, sizeof(*m->headers))) == NULL)
			goto nomem;
		for (size_t i = 0; i < src->nheaders; i++) {
			const char *name = src->headers[i].name, *col = src->headers[i].column;

			if (*name == '\0' || outbox_header_reserved(name, strlen(name))) {
				snprintf(errbuf, errlen, "%s: header name \"%s\" is empty or reserved "
				         "(id, type, content-type, ce_*, pgoutbox.*)", what, name);
				return false;
			}
			if (*col == '\0') {
				snprintf(errbuf, errlen, "%s: header \"%s\" maps no column", what, name);
				return false;
			}
			for (size_t j = 0; j < i; j++)
				if (strcmp(m->headers[j].name, name) == 0) {
					snprintf(errbuf, errlen, "%s: header \"%s\" mapped twice", what, name);
					return false;
				}
			m->headers[i].name = strdup(name);
			m->headers[i].column = strdup(col);
			m->nheaders++;
			if (!m->headers[i].name || !m->headers[i].column)
				goto nomem;
		}
	}
	return true;
nomem:
	snprintf(errbuf, errlen, "out of memory");
	return false;
}

/* The CloudEvents source of each mapping, once the database is known. */
static bool
set_ce_source(ob_map *m, const char *database, const char *fmt, const char *name)
{
	char *s;
	int n;

	if (m->ce_source_cfg != NULL) {
		s = strdup(m->ce_source_cfg);
	} else {
		n = snprintf(NULL, 0, fmt, database, name);
		if (n < 0 || (s = malloc((size_t) n + 1)) == NULL)
			return false;
		snprintf(s, (size_t) n + 1, fmt, database, name);
	}
	if (s == NULL)
		return false;
	free(m->ce_source);
	m->ce_source = s;
	return true;
}

bool
outbox_set_database(outbox *ob, const char *dbname)
{
	char *db = strdup(dbname ? dbname : "");

	if (db == NULL)
		return false;
	free(ob->database);
	ob->database = db;
	for (size_t i = 0; i < ob->ntables; i++)
		if (!set_ce_source(&ob->tables[i].map, db, "/pgoutbox/%s/%s", ob->tables[i].qualified))
			return false;
	if (ob->msg_prefix != NULL &&
	    !set_ce_source(&ob->msg_map, db, "/pgoutbox/%s/message/%s", ob->msg_prefix))
		return false;
	return true;
}

outbox *
outbox_new(const outbox_config *cfg, char *errbuf, size_t errlen)
{
	outbox *ob = calloc(1, sizeof(*ob));

	if (ob == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	if (cfg->ntables == 0 || cfg->ntables > OUTBOX_MAX_TABLES) {
		snprintf(errbuf, errlen, "between 1 and %d outbox tables expected, got %zu",
		         OUTBOX_MAX_TABLES, cfg->ntables);
		goto error;
	}
	if ((ob->tables = calloc(cfg->ntables, sizeof(*ob->tables))) == NULL)
		goto nomem;
	for (size_t i = 0; i < cfg->ntables; i++) {
		ob_table *t = &ob->tables[i];
		const char *p = cfg->tables[i].table;
		char what[300];
		size_t n;

		if (!outbox_parse_table(&p, false, &t->nspname, &t->relname, errbuf, errlen))
			goto error;
		ob->ntables++;
		if (*p != '\0') {
			snprintf(errbuf, errlen, "invalid table name \"%s\"", cfg->tables[i].table);
			goto error;
		}
		for (size_t j = 0; j < i; j++)
			if (strcmp(ob->tables[j].nspname, t->nspname) == 0 &&
			    strcmp(ob->tables[j].relname, t->relname) == 0) {
				snprintf(errbuf, errlen, "table \"%s\" is listed twice", cfg->tables[i].table);
				goto error;
			}
		n = strlen(t->nspname) + strlen(t->relname) + 2;
		if ((t->qualified = malloc(n)) == NULL)
			goto nomem;
		snprintf(t->qualified, n, "%s.%s", t->nspname, t->relname);
		snprintf(what, sizeof(what), "table %s", t->qualified);
		if (!map_init(&t->map, &cfg->tables[i].map, true, what, errbuf, errlen))
			goto error;
	}
	if (cfg->messages_prefix != NULL && *cfg->messages_prefix != '\0') {
		if ((ob->msg_prefix = strdup(cfg->messages_prefix)) == NULL)
			goto nomem;
		if (!map_init(&ob->msg_map, &cfg->messages, false, "logical messages", errbuf, errlen))
			goto error;
	}
	if (!outbox_set_database(ob, ""))
		goto nomem;
	return ob;
nomem:
	snprintf(errbuf, errlen, "out of memory");
error:
	outbox_free(ob);
	return NULL;
}

void
outbox_free(outbox *ob)
{
	if (ob == NULL)
		return;
	for (size_t i = 0; i < ob->ntables; i++) {
		free(ob->tables[i].nspname);
		free(ob->tables[i].relname);
		free(ob->tables[i].qualified);
		map_free(&ob->tables[i].map);
	}
	free(ob->tables);
	free(ob->msg_prefix);
	map_free(&ob->msg_map);
	free(ob->database);
	free(ob->rels);
	free(ob->part_oid);
	free(ob->part_table);
	free(ob->topic.p);
	free(ob->valid_topic.p);
	free(ob->value.p);
	free(ob->key.p);
	json_decref(ob->msg);
	free(ob);
}

size_t
outbox_tables(const outbox *ob)
{
	return ob->ntables;
}

void
outbox_table_ident(const outbox *ob, size_t i, const char **nsp, const char **rel)
{
	*nsp = ob->tables[i].nspname;
	*rel = ob->tables[i].relname;
}

unsigned
outbox_sources(const outbox *ob)
{
	return (unsigned) ob->ntables + 1;
}

const char *
outbox_source_name(const outbox *ob, unsigned source, bool *is_message)
{
	*is_message = source >= ob->ntables;
	if (source < ob->ntables)
		return ob->tables[source].qualified;
	return ob->msg_prefix ? ob->msg_prefix : "";
}

/* ---------------------------------------------------------------------------
 * Relations
 * ------------------------------------------------------------------------- */

static int
column_index(const pgo_relation *rel, const char *name)
{
	for (uint16_t i = 0; i < rel->natts; i++)
		if (strcmp(rel->atts[i].name, name) == 0)
			return i;
	return -1;
}

/* The table whose partition oid is, or -1. */
static int
partition_table(const outbox *ob, uint32_t oid)
{
	size_t lo = 0, hi = ob->nparts;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (ob->part_oid[mid] == oid)
			return ob->part_table[mid];
		if (ob->part_oid[mid] < oid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

bool
outbox_set_partitions(outbox *ob, const uint32_t *oids, const int *tables, size_t n)
{
	uint32_t *po = NULL;
	int *pt = NULL;

	if (n > 0 && ((po = malloc(n * sizeof(*po))) == NULL || (pt = malloc(n * sizeof(*pt))) == NULL)) {
		free(po);
		return false;
	}
	/* Insertion sort by OID: the lists are short and arrive nearly sorted. */
	for (size_t i = 0; i < n; i++) {
		size_t j = i;

		while (j > 0 && po[j - 1] > oids[i]) {
			po[j] = po[j - 1];
			pt[j] = pt[j - 1];
			j--;
		}
		po[j] = oids[i];
		pt[j] = tables[i] >= 0 && (size_t) tables[i] < ob->ntables ? tables[i] : -1;
	}
	free(ob->part_oid);
	free(ob->part_table);
	ob->part_oid = po;
	ob->part_table = pt;
	ob->nparts = n;
	/* Relations resolved before are resolved again on their next use. */
	ob->nrels = 0;
	return true;
}

static void
resolve(const outbox *ob, ob_rel *r, const pgo_relation *rel)
{
	const ob_map *m;
	size_t k = 0;

	r->oid = rel->oid;
	r->rel = rel;
	r->table = -1;
	for (size_t i = 0; i < ob->ntables; i++)
		if (strcmp(rel->relname, ob->tables[i].relname) == 0 &&
		    strcmp(rel->nspname, ob->tables[i].nspname) == 0) {
			r->table = (int) i;
			break;
		}
	if (r->table < 0)
		r->table = partition_table(ob, rel->oid);
	if (r->table < 0)
		return;
	m = &ob->tables[r->table].map;
	r->id = column_index(rel, m->col_id);
	r->key = column_index(rel, m->col_key);
	r->type = column_index(rel, m->col_type);
	r->payload = column_index(rel, m->col_payload);
	r->aggtype = column_index(rel, m->col_aggtype);
	r->payload_json = r->payload >= 0 && (rel->atts[r->payload].type_oid == JSONOID ||
	                                      rel->atts[r->payload].type_oid == JSONBOID);
	for (size_t i = 0; i < m->nparts; i++)
		if (m->parts[i].is_ref)
			r->refs[k++] = column_index(rel, m->parts[i].text);
	for (size_t i = 0; i < m->nheaders; i++)
		r->hdrs[i] = column_index(rel, m->headers[i].column);
}

static ob_rel *
find_rel(const outbox *ob, uint32_t oid)
{
	for (size_t i = 0; i < ob->nrels; i++)
		if (ob->rels[i].oid == oid)
			return &ob->rels[i];
	return NULL;
}

bool
outbox_relation(outbox *ob, const pgo_relation *rel, int *table)
{
	ob_rel *r = find_rel(ob, rel->oid);

	if (r == NULL) {
		if (ob->nrels == ob->relcap) {
			size_t ncap = ob->relcap ? ob->relcap * 2 : 8;
			ob_rel *nr = realloc(ob->rels, ncap * sizeof(*nr));
			if (nr == NULL)
				return false;
			ob->rels = nr;
			ob->relcap = ncap;
		}
		r = &ob->rels[ob->nrels++];
	}
	resolve(ob, r, rel);
	if (table != NULL)
		*table = r->table;
	return true;
}

void
outbox_forget_relations(outbox *ob)
{
	ob->nrels = 0;
}

/* The resolved entry of rel; resolves it when the decoder's entry is not the
 * one it was resolved from (no Relation message seen for it).  NULL: OOM. */
static ob_rel *
lookup(outbox *ob, const pgo_relation *rel)
{
	ob_rel *r = find_rel(ob, rel->oid);

	if (r != NULL && r->rel == rel)
		return r;
	if (!outbox_relation(ob, rel, NULL))
		return NULL;
	return find_rel(ob, rel->oid);
}

bool
outbox_is_table(outbox *ob, const pgo_relation *rel)
{
	ob_rel *r = rel ? lookup(ob, rel) : NULL;

	return r != NULL && r->table >= 0;
}

/* ---------------------------------------------------------------------------
 * Events
 * ------------------------------------------------------------------------- */

static bool
add_header(sink_event *ev, const char *name, const void *value, size_t len)
{
	if (ev->nheaders >= SINK_MAX_HEADERS)
		return false;
	ev->headers[ev->nheaders++] = (sink_header) {name, value, len};
	return true;
}

/* topic = prefix + template with each reference i replaced by vals[i]. */
static bool
build_topic(outbox *ob, const ob_map *m, const char *const *vals, const size_t *lens)
{
	size_t k = 0;

	ob->topic.len = 0;
	if (!buf_puts(&ob->topic, m->prefix))
		return false;
	for (size_t i = 0; i < m->nparts; i++) {
		bool ok = m->parts[i].is_ref ? buf_put(&ob->topic, vals[k], lens[k])
		                             : buf_puts(&ob->topic, m->parts[i].text);
		if (m->parts[i].is_ref)
			k++;
		if (!ok)
			return false;
	}
	return true;
}

/*
 * The event's topic from the template and the routing values: OUTBOX_EVENT,
 * or OUTBOX_UNMAPPABLE / OUTBOX_NOMEM with errbuf filled.  Events of one
 * aggregate type come in runs, so the last valid name is kept and an equal
 * one is not checked again.
 */
static outbox_rc
route(outbox *ob, const ob_map *m, const char *const *vals, const size_t *lens,
      sink_event *ev, char *errbuf, size_t errlen)
{
	if (!build_topic(ob, m, vals, lens))
		goto nomem;
	ev->topic = ob->topic.p;
	if (ob->topic.len == ob->valid_topic.len && ob->valid_topic.p != NULL &&
	    memcmp(ob->topic.p, ob->valid_topic.p, ob->topic.len) == 0)
		return OUTBOX_EVENT;
	if (!outbox_topic_valid(ob->topic.p, ob->topic.len)) {
		snprintf(errbuf, errlen, "\"%.*s\" is not a valid Kafka topic name",
		         (int) (ob->topic.len > 300 ? 300 : ob->topic.len), ob->topic.p);
		return OUTBOX_UNMAPPABLE;
	}
	ob->valid_topic.len = 0;
	if (buf_put(&ob->valid_topic, ob->topic.p, ob->topic.len))
		return OUTBOX_EVENT;
nomem:
	snprintf(errbuf, errlen, "out of memory building the event");
	return OUTBOX_NOMEM;
}

/* What every format needs from the event besides the payload. */
typedef struct ev_fields {
	const char *id, *type, *aggtype, *aggid;
	size_t      id_len, type_len, aggtype_len, aggid_len;
} ev_fields;

static void
txn_strings(outbox *ob, const outbox_txn *txn)
{
	outbox_format_time(txn->commit_time, ob->time_str, sizeof(ob->time_str));
	snprintf(ob->lsn_str, sizeof(ob->lsn_str), "%X/%X",
	         (unsigned) (txn->commit_lsn >> 32), (unsigned) txn->commit_lsn);
	snprintf(ob->xid_str, sizeof(ob->xid_str), "%u", (unsigned) txn->xid);
}

/*
 * The envelope up to and including "payload": — the caller appends the
 * payload, then envelope_tail().
 */
static bool
envelope_head(outbox *ob, const ev_fields *f)
{
	buf *b = &ob->value;

	b->len = 0;
	return buf_puts(b, "{\"id\":") && buf_json_str(b, f->id, f->id_len) &&
	       buf_puts(b, ",\"type\":") && buf_json_str(b, f->type, f->type_len) &&
	       buf_puts(b, ",\"aggregatetype\":") &&
	       (f->aggtype ? buf_json_str(b, f->aggtype, f->aggtype_len) : buf_puts(b, "null")) &&
	       buf_puts(b, ",\"aggregateid\":") && buf_json_str(b, f->aggid, f->aggid_len) &&
	       buf_puts(b, ",\"payload\":");
}

static bool
envelope_tail(outbox *ob)
{
	buf *b = &ob->value;

	return buf_puts(b, ",\"commit_time\":\"") && buf_puts(b, ob->time_str) &&
	       buf_puts(b, "\",\"lsn\":\"") && buf_puts(b, ob->lsn_str) &&
	       buf_puts(b, "\",\"xid\":") && buf_puts(b, ob->xid_str) && buf_puts(b, "}");
}

static bool
cloudevents_headers(outbox *ob, const ob_map *m, sink_event *ev, const ev_fields *f)
{
	return add_header(ev, "ce_specversion", "1.0", 3) &&
	       add_header(ev, "ce_id", f->id, f->id_len) &&
	       add_header(ev, "ce_type", f->type, f->type_len) &&
	       add_header(ev, "ce_source", m->ce_source, strlen(m->ce_source)) &&
	       add_header(ev, "ce_time", ob->time_str, strlen(ob->time_str)) &&
	       add_header(ev, "content-type", "application/json", 16);
}

static bool
has_value(const pgo_datum *d)
{
	return d != NULL && (d->kind == PGO_DATUM_TEXT || d->kind == PGO_DATUM_BINARY);
}

/*
 * The key as a JSON string, byte for byte what Kafka Connect's JsonConverter
 * (schemas off) writes for a string key, so that events keep the partition
 * they had under Debezium with that converter: Jackson escapes " and \, \b
 * \t \n \f \r, other control characters as \u00XX, characters above U+FFFF
 * as a surrogate pair (\uD83D\uDE00); everything else, DEL and non-ASCII
 * included, stays as it is (UTF-8).  ev->key points into ob->key.
 */
static bool
key_to_json(outbox *ob, sink_event *ev)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *k = ev->key;
	size_t n = ev->key_len;

	ob->key.len = 0;
	if (!buf_reserve(&ob->key, 2 + 12 * n) || !buf_put(&ob->key, "\"", 1))
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = k[i];
		char e[16];
		size_t el = 0;

		switch (c) {
		case '"':  e[el++] = '\\'; e[el++] = '"'; break;
		case '\\': e[el++] = '\\'; e[el++] = '\\'; break;
		case '\b': e[el++] = '\\'; e[el++] = 'b'; break;
		case '\t': e[el++] = '\\'; e[el++] = 't'; break;
		case '\n': e[el++] = '\\'; e[el++] = 'n'; break;
		case '\f': e[el++] = '\\'; e[el++] = 'f'; break;
		case '\r': e[el++] = '\\'; e[el++] = 'r'; break;
		default:
			if (c < 0x20) {
				memcpy(e, "\\u00", 4);
				e[4] = hex[c >> 4];
				e[5] = hex[c & 15];
				el = 6;
			} else if (c >= 0xF0 && i + 3 < n && (k[i + 1] & 0xC0) == 0x80 &&
			           (k[i + 2] & 0xC0) == 0x80 && (k[i + 3] & 0xC0) == 0x80) {
				/* a four-byte sequence: a code point above U+FFFF */
				uint32_t cp = ((uint32_t) (c & 0x07) << 18) | ((uint32_t) (k[i + 1] & 0x3F) << 12) |
				              ((uint32_t) (k[i + 2] & 0x3F) << 6) | (uint32_t) (k[i + 3] & 0x3F);
				uint32_t hi, lo;

				cp -= 0x10000;
				hi = 0xD800 + (cp >> 10);
				lo = 0xDC00 + (cp & 0x3FF);
				for (int h = 0; h < 2; h++) {
					uint32_t u = h ? lo : hi;
					e[el++] = '\\';
					e[el++] = 'u';
					for (int d = 12; d >= 0; d -= 4)
						e[el++] = hex[(u >> d) & 15];
				}
				i += 3;
			} else {
				e[el++] = (char) c;
			}
		}
		if (!buf_put(&ob->key, e, el))
			return false;
	}
	if (!buf_put(&ob->key, "\"", 1))
		return false;
	ev->key = ob->key.p;
	ev->key_len = ob->key.len;
	return true;
}

outbox_rc
outbox_map_insert(outbox *ob, const pgo_relation *rel, const pgo_tuple *tup,
                  const outbox_txn *txn, sink_event *ev, unsigned *source,
                  char *errbuf, size_t errlen)
{
	const pgo_datum *id, *key, *type, *payload, *aggtype;
	const char *vals[OUTBOX_MAX_TEMPLATE_REFS];
	size_t lens[OUTBOX_MAX_TEMPLATE_REFS];
	const ob_map *m;
	ob_rel *r;
	ev_fields f;
	outbox_rc orc;

	memset(ev, 0, sizeof(*ev));
	if ((r = lookup(ob, rel)) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return OUTBOX_NOMEM;
	}
	if (r->table < 0)
		return OUTBOX_IGNORE;
	*source = (unsigned) r->table;
	m = &ob->tables[r->table].map;

#define COL(i) ((i) >= 0 && (i) < tup->natts ? &tup->atts[(i)] : NULL)
	id = COL(r->id);
	key = COL(r->key);
	type = COL(r->type);
	payload = COL(r->payload);
	aggtype = COL(r->aggtype);

	/* What can be read goes in first, so that every later error can name
	 * the event and a dead-letter copy carries it. */
	if (has_value(id))
		add_header(ev, "id", id->value.ptr, id->value.len);
	if (has_value(type))
		add_header(ev, "type", type->value.ptr, type->value.len);
	if (has_value(key)) {
		ev->key = key->value.len ? (const void *) key->value.ptr : (const void *) "";
		ev->key_len = key->value.len;
		if (m->key_json && !key_to_json(ob, ev)) {
			snprintf(errbuf, errlen, "out of memory");
			return OUTBOX_NOMEM;
		}
	}
	if (has_value(payload)) {
		/* An empty payload must stay a non-null empty value, not a tombstone. */
		ev->value = payload->value.len ? (const void *) payload->value.ptr : (const void *) "";
		ev->value_len = payload->value.len;
	}
	ev->timestamp_ms = (txn->commit_time + PGO_EPOCH_OFFSET_USEC) / 1000;

#define UNMAPPABLE(...) do { snprintf(errbuf, errlen, __VA_ARGS__); return OUTBOX_UNMAPPABLE; } while (0)
	if (id == NULL)
		UNMAPPABLE("outbox table has no column \"%s\" (event id)", m->col_id);
	if (!has_value(id))
		UNMAPPABLE("event id column \"%s\" is NULL", m->col_id);
	if (key == NULL)
		UNMAPPABLE("outbox table has no column \"%s\" (message key)", m->col_key);
	if (!has_value(key))
		UNMAPPABLE("key column \"%s\" is NULL", m->col_key);
	if (type == NULL)
		UNMAPPABLE("outbox table has no column \"%s\" (event type)", m->col_type);
	if (!has_value(type))
		UNMAPPABLE("type column \"%s\" is NULL", m->col_type);
	if (payload == NULL)
		UNMAPPABLE("outbox table has no column \"%s\" (payload)", m->col_payload);

	for (size_t i = 0, k = 0; i < m->nparts; i++) {
		const pgo_datum *d;

		if (!m->parts[i].is_ref)
			continue;
		if ((d = COL(r->refs[k])) == NULL)
			UNMAPPABLE("topic template names column \"%s\", which the outbox table lacks",
			           m->parts[i].text);
		if (!has_value(d))
			UNMAPPABLE("topic routing column \"%s\" is NULL", m->parts[i].text);
		vals[k] = (const char *) d->value.ptr;
		lens[k] = d->value.len;
		k++;
	}
	if ((orc = route(ob, m, vals, lens, ev, errbuf, errlen)) != OUTBOX_EVENT)
		return orc;

	for (size_t i = 0; i < m->nheaders; i++) {
		const pgo_datum *d = COL(r->hdrs[i]);

		if (d == NULL)
			UNMAPPABLE("header \"%s\" maps column \"%s\", which the outbox table lacks",
			           m->headers[i].name, m->headers[i].column);
		if (has_value(d))
			add_header(ev, m->headers[i].name, d->value.ptr, d->value.len);
		else
			add_header(ev, m->headers[i].name, NULL, 0);   /* NULL column: null header */
	}
#undef UNMAPPABLE

	f = (ev_fields) {
		.id = (const char *) id->value.ptr, .id_len = id->value.len,
		.type = (const char *) type->value.ptr, .type_len = type->value.len,
		.aggtype = has_value(aggtype) ? (const char *) aggtype->value.ptr : NULL,
		.aggtype_len = has_value(aggtype) ? aggtype->value.len : 0,
		.aggid = (const char *) key->value.ptr, .aggid_len = key->value.len,
	};
	switch (m->format) {
	case OUTBOX_FORMAT_RAW:
		break;
	case OUTBOX_FORMAT_ENVELOPE:
		txn_strings(ob, txn);
		if (!envelope_head(ob, &f))
			goto nomem;
		if (!has_value(payload)) {
			if (!buf_puts(&ob->value, "null"))
				goto nomem;
		} else if (r->payload_json) {
			/* jsonb's text output is JSON: embedded as is, not re-serialized. */
			if (!buf_put(&ob->value, payload->value.ptr, payload->value.len))
				goto nomem;
		} else if (!buf_json_str(&ob->value, (const char *) payload->value.ptr, payload->value.len)) {
			goto nomem;
		}
		if (!envelope_tail(ob))
			goto nomem;
		ev->value = ob->value.p;
		ev->value_len = ob->value.len;
		break;
	case OUTBOX_FORMAT_CLOUDEVENTS:
		txn_strings(ob, txn);
		if (!cloudevents_headers(ob, m, ev, &f))
			goto nomem;
		break;
	}
#undef COL
	return OUTBOX_EVENT;
nomem:
	snprintf(errbuf, errlen, "out of memory building the event");
	return OUTBOX_NOMEM;
}

/* A string member of the message object, or NULL (why says what is wrong). */
static const char *
json_str_field(const json_t *obj, const char *name, size_t *len, const char **why)
{
	const json_t *v = json_object_get(obj, name);

	if (v == NULL) {
		*why = "missing";
		return NULL;
	}
	if (!json_is_string(v)) {
		*why = "not a string";
		return NULL;
	}
	*len = json_string_length(v);
	return json_string_value(v);
}

outbox_rc
outbox_map_message(outbox *ob, uint8_t flags, pgo_bytes prefix, pgo_bytes content,
                   const outbox_txn *txn, sink_event *ev, unsigned *source,
                   char *errbuf, size_t errlen)
{
	const ob_map *m = &ob->msg_map;
	const char *vals[OUTBOX_MAX_TEMPLATE_REFS];
	size_t lens[OUTBOX_MAX_TEMPLATE_REFS];
	const char *why = "", *why_id = "", *why_type = "", *why_key = "";
	const json_t *payload, *headers;
	json_error_t jerr;
	ev_fields f;
	outbox_rc orc;

	memset(ev, 0, sizeof(*ev));
	if (ob->msg_prefix == NULL || !(flags & PGO_MESSAGE_TRANSACTIONAL) ||
	    prefix.len != strlen(ob->msg_prefix) ||
	    memcmp(prefix.ptr, ob->msg_prefix, prefix.len) != 0)
		return OUTBOX_IGNORE;
	*source = (unsigned) ob->ntables;
	ev->value = content.len ? (const void *) content.ptr : (const void *) "";
	ev->value_len = content.len;
	ev->timestamp_ms = (txn->commit_time + PGO_EPOCH_OFFSET_USEC) / 1000;

	json_decref(ob->msg);
	ob->msg = json_loadb((const char *) content.ptr, content.len, JSON_REJECT_DUPLICATES, &jerr);
#define UNMAPPABLE(...) do { snprintf(errbuf, errlen, __VA_ARGS__); return OUTBOX_UNMAPPABLE; } while (0)
	if (ob->msg == NULL) {
		if (json_error_code(&jerr) == json_error_out_of_memory) {
			snprintf(errbuf, errlen, "out of memory parsing a logical message");
			return OUTBOX_NOMEM;
		}
		UNMAPPABLE("logical message content is not valid JSON: %s (at byte %d)", jerr.text,
		           jerr.position);
	}
	if (!json_is_object(ob->msg))
		UNMAPPABLE("logical message content is not a JSON object");

	/* What can be read goes in first, as for rows. */
	memset(&f, 0, sizeof(f));
	if ((f.id = json_str_field(ob->msg, "id", &f.id_len, &why_id)) != NULL)
		add_header(ev, "id", f.id, f.id_len);
	if ((f.type = json_str_field(ob->msg, "type", &f.type_len, &why_type)) != NULL)
		add_header(ev, "type", f.type, f.type_len);
	if ((f.aggid = json_str_field(ob->msg, "aggregateid", &f.aggid_len, &why_key)) != NULL) {
		ev->key = f.aggid_len ? (const void *) f.aggid : (const void *) "";
		ev->key_len = f.aggid_len;
		if (ob->msg_map.key_json && !key_to_json(ob, ev)) {
			snprintf(errbuf, errlen, "out of memory");
			return OUTBOX_NOMEM;
		}
	}
	if (f.id == NULL)
		UNMAPPABLE("field \"id\" of the logical message is %s", why_id);
	if (f.aggid == NULL)
		UNMAPPABLE("field \"aggregateid\" of the logical message is %s", why_key);
	if (f.type == NULL)
		UNMAPPABLE("field \"type\" of the logical message is %s", why_type);
	if ((f.aggtype = json_str_field(ob->msg, "aggregatetype", &f.aggtype_len, &why)) == NULL)
		UNMAPPABLE("field \"aggregatetype\" of the logical message is %s", why);
	if ((payload = json_object_get(ob->msg, "payload")) == NULL)
		UNMAPPABLE("field \"payload\" of the logical message is missing");

	for (size_t i = 0, k = 0; i < m->nparts; i++) {
		if (!m->parts[i].is_ref)
			continue;
		if ((vals[k] = json_str_field(ob->msg, m->parts[i].text, &lens[k], &why)) == NULL)
			UNMAPPABLE("field \"%s\" of the logical message (named in the topic template) is %s",
			           m->parts[i].text, why);
		k++;
	}
	if ((orc = route(ob, m, vals, lens, ev, errbuf, errlen)) != OUTBOX_EVENT)
		return orc;

	if ((headers = json_object_get(ob->msg, "headers")) != NULL && !json_is_null(headers)) {
		const char *name;
		json_t *v;

		if (!json_is_object(headers))
			UNMAPPABLE("field \"headers\" of the logical message is not an object");
		if (json_object_size(headers) > OUTBOX_MAX_EXTRA_HEADERS)
			UNMAPPABLE("logical message has %zu headers, at most %d", json_object_size(headers),
			           OUTBOX_MAX_EXTRA_HEADERS);
		json_object_foreach((json_t *) headers, name, v) {
			if (!json_is_string(v))
				UNMAPPABLE("header \"%s\" of the logical message is not a string", name);
			if (*name == '\0' || outbox_header_reserved(name, strlen(name)))
				UNMAPPABLE("header name \"%s\" of the logical message is empty or reserved", name);
			add_header(ev, name, json_string_value(v), json_string_length(v));
		}
	}
#undef UNMAPPABLE

	switch (m->format) {
	case OUTBOX_FORMAT_RAW:
	case OUTBOX_FORMAT_CLOUDEVENTS:
		if (json_is_null(payload)) {
			ev->value = NULL;            /* tombstone */
			ev->value_len = 0;
		} else {
			ob->value.len = 0;
			if (!buf_json_dump(&ob->value, payload))
				goto nomem;
			ev->value = ob->value.p;
			ev->value_len = ob->value.len;
		}
		if (m->format == OUTBOX_FORMAT_CLOUDEVENTS) {
			txn_strings(ob, txn);
			if (!cloudevents_headers(ob, m, ev, &f))
				goto nomem;
		}
		break;
	case OUTBOX_FORMAT_ENVELOPE:
		txn_strings(ob, txn);
		if (!envelope_head(ob, &f) || !buf_json_dump(&ob->value, payload) || !envelope_tail(ob))
			goto nomem;
		ev->value = ob->value.p;
		ev->value_len = ob->value.len;
		break;
	}
	return OUTBOX_EVENT;
nomem:
	snprintf(errbuf, errlen, "out of memory building the event");
	return OUTBOX_NOMEM;
}

void
outbox_dead_letter(sink_event *ev, const char *dlq_topic, const char *error,
                   const char *source_topic, pgo_lsn commit_lsn, bool is_message,
                   const char *source_name, bool trim, outbox_dlq_buf *buf)
{
	const size_t keep = SINK_MAX_HEADERS - OUTBOX_DLQ_HEADERS;
	size_t n = 0;

	/* Keep the original headers that fit, the id header always. */
	for (size_t i = 0; i < ev->nheaders; i++) {
		bool is_id = strcmp(ev->headers[i].name, "id") == 0;

		if (n < keep - 1 || (is_id && n < keep))
			ev->headers[n++] = ev->headers[i];
	}
	ev->nheaders = n;
	snprintf(buf->lsn, sizeof(buf->lsn), "%X/%X", (unsigned) (commit_lsn >> 32),
	         (unsigned) commit_lsn);
	if (source_topic == NULL)
		source_topic = "";
	add_header(ev, "pgoutbox.error", error, strlen(error));
	add_header(ev, "pgoutbox.source.topic", source_topic, strlen(source_topic));
	add_header(ev, "pgoutbox.lsn", buf->lsn, strlen(buf->lsn));
	add_header(ev, is_message ? "pgoutbox.message.prefix" : "pgoutbox.table", source_name,
	           strlen(source_name));
	if (trim) {
		/* Refused for its size: a copy that always fits, and what it takes
		 * to recognise the original (its row is still in the table). */
		snprintf(buf->size, sizeof(buf->size), "%zu", ev->value ? ev->value_len : (size_t) 0);
		sha256_hex(ev->value ? ev->value : "", ev->value ? ev->value_len : 0, buf->sha256);
		add_header(ev, "pgoutbox.original.size", buf->size, strlen(buf->size));
		add_header(ev, "pgoutbox.original.sha256", buf->sha256, strlen(buf->sha256));
		if (ev->value != NULL && ev->value_len > OUTBOX_DLQ_TRIM_VALUE)
			ev->value_len = OUTBOX_DLQ_TRIM_VALUE;
		if (ev->key != NULL && ev->key_len > OUTBOX_DLQ_TRIM_OTHER)
			ev->key_len = OUTBOX_DLQ_TRIM_OTHER;
		for (size_t i = 0; i < ev->nheaders; i++)
			if (ev->headers[i].value != NULL && ev->headers[i].len > OUTBOX_DLQ_TRIM_OTHER)
				ev->headers[i].len = OUTBOX_DLQ_TRIM_OTHER;
	}
	ev->topic = dlq_topic;
}
