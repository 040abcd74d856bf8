/*
 * outbox.c — mapping outbox rows to Kafka events.  See outbox.h.
 */
#include "outbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One piece of the topic template: literal text or a column reference. */
typedef struct tmpl_part {
	char *text;       /* literal text, or the column name */
	bool  is_column;
} tmpl_part;

struct outbox {
	char      *nspname;
	char      *relname;
	char      *col_id, *col_key, *col_type, *col_payload;
	tmpl_part *parts;
	size_t     nparts;
	char      *topic;        /* reused buffer for the topic of the last event */
	size_t     topic_cap;
};

/* Parse one identifier at *p: "quoted" (with "" escapes) or bare (lower-cased). */
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
		while (*s && *s != '.') {
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

static bool
parse_table(outbox *ob, const char *table, char *errbuf, size_t errlen)
{
	const char *p = table;
	char *first, *second = NULL;

	if ((first = parse_ident(&p, errbuf, errlen)) == NULL)
		return false;
	if (*p == '.') {
		p++;
		if ((second = parse_ident(&p, errbuf, errlen)) == NULL) {
			free(first);
			return false;
		}
	}
	if (*p != '\0') {
		snprintf(errbuf, errlen, "invalid table name \"%s\"", table);
		free(first);
		free(second);
		return false;
	}
	if (second != NULL) {
		ob->nspname = first;
		ob->relname = second;
	} else {
		ob->nspname = strdup("public");
		ob->relname = first;
		if (ob->nspname == NULL) {
			snprintf(errbuf, errlen, "out of memory");
			return false;
		}
	}
	return true;
}

static bool
add_part(outbox *ob, const char *s, size_t n, bool is_column)
{
	tmpl_part *np = realloc(ob->parts, (ob->nparts + 1) * sizeof(*np));

	if (np == NULL)
		return false;
	ob->parts = np;
	np[ob->nparts].text = strndup(s, n);
	if (np[ob->nparts].text == NULL)
		return false;
	np[ob->nparts].is_column = is_column;
	ob->nparts++;
	return true;
}

static bool
parse_template(outbox *ob, const char *t, char *errbuf, size_t errlen)
{
	const char *p = t;

	while (*p) {
		const char *open = strstr(p, "${");
		const char *close;

		if (open == NULL) {
			if (!add_part(ob, p, strlen(p), false))
				goto nomem;
			break;
		}
		if (open > p && !add_part(ob, p, (size_t) (open - p), false))
			goto nomem;
		close = strchr(open + 2, '}');
		if (close == NULL || close == open + 2) {
			snprintf(errbuf, errlen, "invalid topic template \"%s\": expected ${column}", t);
			return false;
		}
		if (!add_part(ob, open + 2, (size_t) (close - open - 2), true))
			goto nomem;
		p = close + 1;
	}
	if (ob->nparts == 0) {
		snprintf(errbuf, errlen, "topic template is empty");
		return false;
	}
	return true;
nomem:
	snprintf(errbuf, errlen, "out of memory");
	return false;
}

outbox *
outbox_new(const outbox_config *cfg, char *errbuf, size_t errlen)
{
	outbox *ob = calloc(1, sizeof(*ob));

	if (ob == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	if (!parse_table(ob, cfg->table, errbuf, errlen) ||
	    !parse_template(ob, cfg->topic_template, errbuf, errlen))
		goto error;
	ob->col_id = strdup(cfg->col_id);
	ob->col_key = strdup(cfg->col_key);
	ob->col_type = strdup(cfg->col_type);
	ob->col_payload = strdup(cfg->col_payload);
	ob->topic_cap = 256;
	ob->topic = malloc(ob->topic_cap);
	if (!ob->col_id || !ob->col_key || !ob->col_type || !ob->col_payload || !ob->topic) {
		snprintf(errbuf, errlen, "out of memory");
		goto error;
	}
	return ob;
error:
	outbox_free(ob);
	return NULL;
}

void
outbox_free(outbox *ob)
{
	if (ob == NULL)
		return;
	free(ob->nspname);
	free(ob->relname);
	free(ob->col_id);
	free(ob->col_key);
	free(ob->col_type);
	free(ob->col_payload);
	for (size_t i = 0; i < ob->nparts; i++)
		free(ob->parts[i].text);
	free(ob->parts);
	free(ob->topic);
	free(ob);
}

bool
outbox_is_table(const outbox *ob, const pgo_relation *rel)
{
	return rel != NULL && strcmp(rel->relname, ob->relname) == 0 &&
	       strcmp(rel->nspname, ob->nspname) == 0;
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

/* The datum of column `name`, or NULL when the relation has no such column. */
static const pgo_datum *
column(const pgo_relation *rel, const pgo_tuple *tup, const char *name)
{
	for (uint16_t i = 0; i < rel->natts && i < tup->natts; i++)
		if (strcmp(rel->atts[i].name, name) == 0)
			return &tup->atts[i];
	return NULL;
}

static bool
has_value(const pgo_datum *d)
{
	return d != NULL && (d->kind == PGO_DATUM_TEXT || d->kind == PGO_DATUM_BINARY);
}

/* Append n bytes to the topic buffer at *len, growing it as needed. */
static bool
topic_append(outbox *ob, size_t *len, const void *s, size_t n)
{
	if (*len + n + 1 > ob->topic_cap) {
		size_t ncap = ob->topic_cap;
		char *nt;
		while (*len + n + 1 > ncap)
			ncap *= 2;
		nt = realloc(ob->topic, ncap);
		if (nt == NULL)
			return false;
		ob->topic = nt;
		ob->topic_cap = ncap;
	}
	memcpy(ob->topic + *len, s, n);
	*len += n;
	ob->topic[*len] = '\0';
	return true;
}

outbox_rc
outbox_map_insert(outbox *ob, const pgo_relation *rel, const pgo_tuple *tup,
                  int64_t commit_time, sink_event *ev, char *errbuf, size_t errlen)
{
	const pgo_datum *id, *key, *type, *payload;
	size_t tlen = 0;

	if (!outbox_is_table(ob, rel))
		return OUTBOX_IGNORE;
	memset(ev, 0, sizeof(*ev));

	id = column(rel, tup, ob->col_id);
	key = column(rel, tup, ob->col_key);
	type = column(rel, tup, ob->col_type);
	payload = column(rel, tup, ob->col_payload);
	/* The id goes first so that every later error can name the event. */
	if (has_value(id)) {
		ev->headers[0].name = "id";
		ev->headers[0].value = id->value.ptr;
		ev->headers[0].len = id->value.len;
		ev->nheaders = 1;
	}

#define UNMAPPABLE(...) do { snprintf(errbuf, errlen, __VA_ARGS__); return OUTBOX_UNMAPPABLE; } while (0)
	if (id == NULL)
		UNMAPPABLE("outbox table has no column \"%s\" (event id)", ob->col_id);
	if (!has_value(id))
		UNMAPPABLE("event id column \"%s\" is NULL", ob->col_id);
	if (key == NULL)
		UNMAPPABLE("outbox table has no column \"%s\" (message key)", ob->col_key);
	if (!has_value(key))
		UNMAPPABLE("key column \"%s\" is NULL", ob->col_key);
	if (type == NULL)
		UNMAPPABLE("outbox table has no column \"%s\" (event type)", ob->col_type);
	if (!has_value(type))
		UNMAPPABLE("type column \"%s\" is NULL", ob->col_type);
	if (payload == NULL)
		UNMAPPABLE("outbox table has no column \"%s\" (payload)", ob->col_payload);

	for (size_t i = 0; i < ob->nparts; i++) {
		const tmpl_part *part = &ob->parts[i];
		bool ok;

		if (!part->is_column) {
			ok = topic_append(ob, &tlen, part->text, strlen(part->text));
		} else {
			const pgo_datum *d = column(rel, tup, part->text);
			if (d == NULL)
				UNMAPPABLE("topic template names column \"%s\", which the outbox table lacks", part->text);
			if (!has_value(d))
				UNMAPPABLE("topic routing column \"%s\" is NULL", part->text);
			ok = topic_append(ob, &tlen, d->value.ptr, d->value.len);
		}
		if (!ok)
			UNMAPPABLE("out of memory");
	}
	if (!outbox_topic_valid(ob->topic, tlen))
		UNMAPPABLE("\"%.*s\" is not a valid Kafka topic name", (int) (tlen > 300 ? 300 : tlen), ob->topic);
#undef UNMAPPABLE

	ev->topic = ob->topic;
	ev->key = key->value.ptr;
	ev->key_len = key->value.len;
	if (has_value(payload)) {
		/* An empty payload must stay a non-null empty value, not a tombstone. */
		ev->value = payload->value.len ? (const void *) payload->value.ptr : (const void *) "";
		ev->value_len = payload->value.len;
	}
	ev->headers[1].name = "type";
	ev->headers[1].value = type->value.ptr;
	ev->headers[1].len = type->value.len;
	ev->nheaders = 2;
	/* Microseconds since 2000-01-01 → milliseconds since 1970-01-01. */
	ev->timestamp_ms = (commit_time + PGO_EPOCH_OFFSET_USEC) / 1000;
	return OUTBOX_EVENT;
}
