/*
 * test_outbox.c — the outbox mapping without servers: rows and logical
 * messages in, Kafka events out (topic, key, value, headers, timestamp),
 * for each value format, for unmappable input and for dead-letter copies.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbox.h"

static int passed, failed;

#define CHECK(cond) do { \
	if (cond) passed++; \
	else { failed++; fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); } \
} while (0)

/* Byte-exact comparison of a (ptr, len) view with a C string. */
static bool
eq(const void *p, size_t len, const char *s)
{
	return p != NULL && len == strlen(s) && memcmp(p, s, len) == 0;
}

#define CHECK_EQ(p, len, s) do { \
	if (eq((p), (len), (s))) passed++; \
	else { failed++; fprintf(stderr, "%s:%d: got \"%.*s\", expected \"%s\"\n", __FILE__, __LINE__, \
	                         (p) ? (int) (len) : 6, (p) ? (const char *) (p) : "(null)", (s)); } \
} while (0)

static const sink_header *
header(const sink_event *ev, const char *name)
{
	for (size_t i = 0; i < ev->nheaders; i++)
		if (strcmp(ev->headers[i].name, name) == 0)
			return &ev->headers[i];
	return NULL;
}

#define CHECK_HEADER(ev, name, s) do { \
	const sink_header *h_ = header((ev), (name)); \
	CHECK(h_ != NULL); \
	if (h_) CHECK_EQ(h_->value, h_->len, (s)); \
} while (0)

/* A relation and one row of it, built by hand as the decoder would. */
#define MAXCOLS 8
typedef struct fixture {
	pgo_relation rel;
	pgo_column   cols[MAXCOLS];
	pgo_datum    vals[MAXCOLS];
	pgo_tuple    tup;
} fixture;

/* names: column names; types: type OIDs (0: text); values: NULL → SQL NULL. */
static void
fixture_init(fixture *f, uint32_t oid, const char *nsp, const char *rel, int n,
             const char *const *names, const uint32_t *types, const char *const *values)
{
	memset(f, 0, sizeof(*f));
	f->rel.oid = oid;
	f->rel.nspname = (char *) nsp;
	f->rel.relname = (char *) rel;
	f->rel.natts = (uint16_t) n;
	f->rel.atts = f->cols;
	for (int i = 0; i < n; i++) {
		f->cols[i].name = (char *) names[i];
		f->cols[i].type_oid = types && types[i] ? types[i] : 25;
		if (values[i] == NULL) {
			f->vals[i].kind = PGO_DATUM_NULL;
		} else {
			f->vals[i].kind = PGO_DATUM_TEXT;
			f->vals[i].value.ptr = (const uint8_t *) values[i];
			f->vals[i].value.len = (uint32_t) strlen(values[i]);
		}
	}
	f->tup.natts = (uint16_t) n;
	f->tup.atts = f->vals;
}

static const char *const default_cols[] = {"id", "aggregatetype", "aggregateid", "type", "payload"};
static const uint32_t default_types[] = {2950, 25, 25, 25, 3802};

/* 2024-05-01T12:34:56.789012Z as a PostgreSQL timestamp. */
#define COMMIT_TIME (INT64_C(1714566896789012) - PGO_EPOCH_OFFSET_USEC)
static const outbox_txn txn = {.commit_lsn = UINT64_C(0x1000016B3748), .commit_time = COMMIT_TIME, .xid = 742};

static outbox *
new_outbox(const outbox_table *tables, size_t n, const char *prefix, outbox_mapping msgmap)
{
	char err[256];
	outbox_config cfg = {.tables = tables, .ntables = n, .messages_prefix = prefix, .messages = msgmap};
	outbox *ob = outbox_new(&cfg, err, sizeof(err));

	if (ob == NULL)
		fprintf(stderr, "outbox_new: %s\n", err);
	return ob;
}

static void
test_default_mapping(void)
{
	outbox_table t = {.table = "public.outbox"};
	outbox *ob = new_outbox(&t, 1, NULL, (outbox_mapping) {0});
	const char *v[] = {"6f1c", "order", "42", "OrderPaid", "{\"order\": 42}"};
	fixture f, other;
	sink_event ev;
	unsigned src = 99;
	char err[256];

	CHECK(ob != NULL);
	if (!ob)
		return;
	fixture_init(&f, 100, "public", "outbox", 5, default_cols, default_types, v);
	CHECK(outbox_relation(ob, &f.rel, NULL));
	CHECK(outbox_map_insert(ob, &f.rel, &f.tup, &txn, &ev, &src, err, sizeof(err)) == OUTBOX_EVENT);
	CHECK(src == 0);
	CHECK(strcmp(ev.topic, "outbox.event.order") == 0);
	CHECK_EQ(ev.key, ev.key_len, "42");
	CHECK_EQ(ev.value, ev.value_len, "{\"order\": 42}");
	CHECK(ev.value == (const void *) v[4]);           /* raw: a view, not a copy */
	CHECK(ev.nheaders == 2);
	CHECK(strcmp(ev.headers[0].name, "id") == 0);
	CHECK_HEADER(&ev, "id", "6f1c");
	CHECK_HEADER(&ev, "type", "OrderPaid");
	CHECK(ev.timestamp_ms == INT64_C(1714566896789));

	/* NULL payload: tombstone. */
	f.vals[4].kind = PGO_DATUM_NULL;
	CHECK(outbox_map_insert(ob, &f.rel, &f.tup, &txn, &ev, &src, err, sizeof(err)) == OUTBOX_EVENT);
	CHECK(ev.value == NULL);

	/* Another table of the same name in another schema is not the outbox. */
	fixture_init(&other, 101, "app", "outbox", 5, default_cols, default_types, v);
	CHECK(outbox_map_insert(ob, &other.rel, &other.tup, &txn, &ev, &src, err, sizeof(err)) == OUTBOX_IGNORE);
	CHECK(!outbox_is_table(ob, &other.rel));
	CHECK(outbox_is_table(ob, &f.rel));
	outbox_free(ob);
}

static void
test_custom_columns_prefix_headers(void)
{
	static const outbox_header_map hm[] = {{"tenant", "tenant_id"}, {"trace", "trace"}};
	outbox_table t = {.table = "Billing.\"Out\"\"Box\"", .map = {
		.topic_template = "${kind}.events", .topic_prefix = "prod.",
		.col_id = "event_id", .col_key = "order_ref", .col_type = "event_type",
		.col_payload = "body", .headers = hm, .nheaders = 2}};
	outbox *ob = new_outbox(&t, 1, NULL, (outbox_mapping) {0});
	const char *names[] = {"trace", "body", "event_type", "kind", "order_ref", "event_id", "tenant_id"};
	const char *v[] = {NULL, "{}", "Billed", "invoice", "R-1", "e-1", "acme"};
	const char *v2[] = {"t-9", "R-2", "Billed", "[1]", "invoice2", "acme", "t"};
	const char *names2[] = {"event_id", "order_ref", "event_type", "body", "kind", "tenant_id", "trace"};
	fixture f;
	sink_event ev;
	unsigned src;
	char err[256];

	CHECK(ob != NULL);
	if (!ob)
		return;
	fixture_init(&f, 7, "billing", "Out\"Box", 7, names, NULL, v);
	CHECK(outbox_relation(ob, &f.rel, NULL));
	CHECK(outbox_map_insert(ob, &f.rel, &f.tup, &txn, &ev, &src, err, sizeof(err)) == OUTBOX_EVENT);
	CHECK(strcmp(ev.topic, "prod.invoice.events") == 0);
	CHECK_EQ(ev.key, ev.key_len, "R-1");
	CHECK_EQ(ev.value, ev.value_len, "{}");
	CHECK_HEADER(&ev, "id", "e-1");
	CHECK_HEADER(&ev, "type", "Billed");
	CHECK_HEADER(&ev, "tenant", "acme");
	CHECK(header(&ev, "trace") != NULL && header(&ev, "trace")->value == NULL);   /* NULL column */
	CHECK(ev.nheaders == 4);

	/* ALTER TABLE: a new Relation message with the columns elsewhere. */
	fixture_init(&f, 7, "billing", "Out\"Box", 7, names2, NULL, v2);
	CHECK(outbox_relation(ob, &f.rel, NULL));
	CHECK(outbox_map_insert(ob, &f.rel, &f.tup, &txn, &ev, &src, err, sizeof(err)) == OUTBOX_EVENT);
	CHECK_HEADER(&ev, "id", "t-9");           /* event_id is now the first column */
	CHECK_EQ(ev.key, ev.key_len, "R-2");
	CHECK(strcmp(ev.topic, "prod.invoice2.events") == 0);
	CHECK_EQ(ev.value, ev.value_len, "[1]");
	CHECK_HEADER(&ev, "trace", "t");
	outbox_free(ob);
}

static void
test_two_tables_and_fixed_topic(void)
{
	outbox_table t[2] = {
		{.table = "public.outbox"},
		{.table = "shop.events", .map = {.topic_template = "shop-all", .col_key = "customer"}},
	};
	outbox *ob = new_outbox(t, 2, NULL, (outbox_mapping) {0});
	const char *names[] = {"id", "customer", "type", "payload"};
	const char *v[] = {"s-1", "c-7", "Bought", "{\"x\":1}"};
	fixture f;
	sink_event ev;
	unsigned src;
	bool is_msg;
	char err[256];

	CHECK(ob != NULL);
	if (!ob)
		return;
	fixture_init(&f, 9, "shop", "events", 4, names, NULL, v);
	/* No Relation message seen (resolved on first use). */
	CHECK(outbox_map_insert(ob, &f.rel, &f.tup, &txn, &ev, &src, err, sizeof(err)) == OUTBOX_EVENT);
	CHECK(src == 1);
	CHECK(strcmp(outbox_source_name(ob, src, &is_msg), "shop.events") == 0 && !is_msg);
	CHECK(strcmp(ev.topic, "shop-all") == 0);
	CHECK_EQ(ev.key, ev.key_len, "c-7");
	outbox_free(ob);
}

static void
test_bad_configs(void)
{
	char err[256];
	static const outbox_header_map reserved[] = {{"id", "x"}};
	const outbox_table bad[] = {
		{.table = "public.outbox", .map = {.topic_template = "a b.${x}"}},
		{.table = "public.outbox", .map = {.topic_template = "${}"}},
		{.table = "public.outbox", .map = {.topic_template = "x", .topic_prefix = "p/"}},
		{.table = "public.outbox", .map = {.headers = reserved, .nheaders = 1}},
		{.table = "\"unterminated"},
		{.table = "a.b.c"},
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		outbox_config cfg = {.tables = &bad[i], .ntables = 1};
		outbox *ob = outbox_new(&cfg, err, sizeof(err));
		CHECK(ob == NULL);
		outbox_free(ob);
	}
	{
		const outbox_table twice[] = {{.table = "outbox"}, {.table = "Public.\"outbox\""}};
		outbox_config cfg = {.tables = twice, .ntables = 2};
		CHECK(outbox_new(&cfg, err, sizeof(err)) == NULL);
	}
}

static void
test_parse_table(void)
{
	char err[256], *nsp, *rel;
	const char *p;

	p = "Billing.\"My \"\"Box\".x";
	CHECK(outbox_parse_table(&p, true, &nsp, &rel, err, sizeof(err)));
	CHECK(strcmp(nsp, "billing") == 0 && strcmp(rel, "My \"Box") == 0 && strcmp(p, ".x") == 0);
	free(nsp);
	free(rel);
	p = "outbox, b.c";
	CHECK(outbox_parse_table(&p, false, &nsp, &rel, err, sizeof(err)));
	CHECK(strcmp(nsp, "public") == 0 && strcmp(rel, "outbox") == 0 && *p == ',');
	free(nsp);
	free(rel);
	p = "outbox";
	CHECK(!outbox_parse_table(&p, true, &nsp, &rel, err, sizeof(err)));
}

static void
test_unmappable(void)
{
	outbox_table t = {.table = "public.outbox"};
	outbox *ob = new_outbox(&t, 1, NULL, (outbox_mapping) {0});
	const char *v[] = {"u-1", "order", NULL, "T", "{\"a\":1}"};
	const char *v2[] = {"u-2", "not a/topic", "k", "T", "{}"};
	const char *names[] = {"id", "aggregatetype", "aggregateid", "type"};
	fixture f;
	sink_event ev;
	unsigned src;
	char err[256];

	if (!ob) {
		CHECK(ob != NULL);
		return;
	}
	fixture_init(&f, 1, "public", "outbox", 5, default_cols, default_types, v);
	CHECK(outbox_map_insert(ob, &f.rel, &f.tup, &txn, &ev, &src, err, sizeof(err)) == OUTBOX_UNMAPPABLE);
	CHECK(strstr(err, "aggregateid") != NULL && strstr(err, "NULL") != NULL);
	CHECK(ev.nheaders >= 1 && strcmp(ev.headers[0].name, "id") == 0);
	CHECK_EQ(ev.value, ev.value_len, "{\"a\":1}");    /* the raw value, for a dead-letter copy */
	CHECK(ev.key == NULL);
	CHECK(ev.topic == NULL);

	fixture_init(&f, 1, "public", "outbox", 5, default_cols, default_types, v2);
	CHECK(outbox_relation(ob, &f.rel, NULL));
	CHECK(outbox_map_insert(ob, &f.rel, &f.tup, &txn, &ev, &src, err, sizeof(err)) == OUTBOX_UNMAPPABLE);
	CHECK(strstr(err, "not a valid Kafka topic") != NULL);
	CHECK(ev.topic != NULL && strcmp(ev.topic, "outbox.event.not a/topic") == 0);
	CHECK_EQ(ev.key, ev.key_len, "k");

	/* A table without the payload column. */
	fixture_init(&f, 1, "public", "outbox", 4, names, NULL, v2);
	CHECK(outbox_relation(ob, &f.rel, NULL));
	CHECK(outbox_map_insert(ob, &f.rel, &f.tup, &txn, &ev, &src, err, sizeof(err)) == OUTBOX_UNMAPPABLE);
	CHECK(strstr(err, "payload") != NULL);

	/* Dead-letter copy of it. */
	{
		outbox_dlq_buf buf;
		outbox_dead_letter(&ev, "dead.letters", err, ev.topic, txn.commit_lsn, false,
		                   "public.outbox", false, &buf);
		CHECK(strcmp(ev.topic, "dead.letters") == 0);
		CHECK_HEADER(&ev, "id", "u-2");
		CHECK_HEADER(&ev, "pgoutbox.error", err);
		CHECK_HEADER(&ev, "pgoutbox.source.topic", "");   /* no topic resolved yet */
		CHECK_HEADER(&ev, "pgoutbox.lsn", "1000/16B3748");
		CHECK_HEADER(&ev, "pgoutbox.table", "public.outbox");
		CHECK(header(&ev, "pgoutbox.message.prefix") == NULL);
	}
	outbox_free(ob);
}

static void
test_envelope(void)
{
	outbox_table t[2] = {
		{.table = "public.outbox", .map = {.format = OUTBOX_FORMAT_ENVELOPE}},
		{.table = "public.texty", .map = {.format = OUTBOX_FORMAT_ENVELOPE}},
	};
	outbox *ob = new_outbox(t, 2, NULL, (outbox_mapping) {0});
	const char *v[] = {"e-1", "order", "4\"2", "Paid", "{\"b\": 2, \"a\": [1, 2.50]}"};
	const char *v2[] = {"e-2", NULL, "k", "T\n", "line1\nq\"\\ \x01 ü"};
	fixture f;
	sink_event ev;
	unsigned src;
	char err[256];

	if (!ob) {
		CHECK(ob != NULL);
		return;
	}
	fixture_init(&f, 1, "public", "outbox", 5, default_cols, default_types, v);
	CHECK(outbox_map_insert(ob, &f.rel, &f.tup, &txn, &ev, &src, err, sizeof(err)) == OUTBOX_EVENT);
	CHECK_EQ(ev.value, ev.value_len,
	         "{\"id\":\"e-1\",\"type\":\"Paid\",\"aggregatetype\":\"order\",\"aggregateid\":\"4\\\"2\","
	         "\"payload\":{\"b\": 2, \"a\": [1, 2.50]},\"commit_time\":\"2024-05-01T12:34:56.789012Z\","
	         "\"lsn\":\"1000/16B3748\",\"xid\":742}");
	CHECK_HEADER(&ev, "id", "e-1");
	CHECK_HEADER(&ev, "type", "Paid");

	f.vals[4].kind = PGO_DATUM_NULL;
	CHECK(outbox_map_insert(ob, &f.rel, &f.tup, &txn, &ev, &src, err, sizeof(err)) == OUTBOX_EVENT);
	CHECK(ev.value != NULL && strstr((const char *) ev.value, "\"payload\":null,") != NULL);

	/* A text payload column is embedded as a JSON string; NULL aggregatetype → null. */
	{
		static const uint32_t types[] = {25, 25, 25, 25, 25};
		fixture_init(&f, 2, "public", "texty", 5, default_cols, types, v2);
		f.vals[1].kind = PGO_DATUM_NULL;
	}
	t[1].map.topic_template = NULL;
	CHECK(outbox_map_insert(ob, &f.rel, &f.tup, &txn, &ev, &src, err, sizeof(err)) == OUTBOX_UNMAPPABLE);
	outbox_free(ob);

	/* Same with a fixed topic, so that the NULL aggregatetype does not matter for routing. */
	t[1].map.topic_template = "texty";
	ob = new_outbox(t, 2, NULL, (outbox_mapping) {0});
	if (!ob) {
		CHECK(ob != NULL);
		return;
	}
	CHECK(outbox_map_insert(ob, &f.rel, &f.tup, &txn, &ev, &src, err, sizeof(err)) == OUTBOX_EVENT);
	CHECK_EQ(ev.value, ev.value_len,
	         "{\"id\":\"e-2\",\"type\":\"T\\n\",\"aggregatetype\":null,\"aggregateid\":\"k\","
	         "\"payload\":\"line1\\nq\\\"\\\\ \\u0001 ü\",\"commit_time\":\"2024-05-01T12:34:56.789012Z\","
	         "\"lsn\":\"1000/16B3748\",\"xid\":742}");
	outbox_free(ob);
}

static void
test_cloudevents(void)
{
	outbox_table t[2] = {
		{.table = "public.outbox", .map = {.format = OUTBOX_FORMAT_CLOUDEVENTS}},
		{.table = "public.other", .map = {.format = OUTBOX_FORMAT_CLOUDEVENTS, .ce_source = "urn:shop"}},
	};
	outbox *ob = new_outbox(t, 2, NULL, (outbox_mapping) {0});
	const char *v[] = {"c-1", "order", "42", "Paid", "{\"x\":1}"};
	fixture f;
	sink_event ev;
	unsigned src;
	char err[256];

	if (!ob) {
		CHECK(ob != NULL);
		return;
	}
	CHECK(outbox_set_database(ob, "shopdb"));
	fixture_init(&f, 1, "public", "outbox", 5, default_cols, default_types, v);
	CHECK(outbox_map_insert(ob, &f.rel, &f.tup, &txn, &ev, &src, err, sizeof(err)) == OUTBOX_EVENT);
	CHECK_EQ(ev.value, ev.value_len, "{\"x\":1}");
	CHECK_HEADER(&ev, "id", "c-1");
	CHECK_HEADER(&ev, "type", "Paid");
	CHECK_HEADER(&ev, "ce_specversion", "1.0");
	CHECK_HEADER(&ev, "ce_id", "c-1");
	CHECK_HEADER(&ev, "ce_type", "Paid");
	CHECK_HEADER(&ev, "ce_source", "/pgoutbox/shopdb/public.outbox");
	CHECK_HEADER(&ev, "ce_time", "2024-05-01T12:34:56.789012Z");
	CHECK_HEADER(&ev, "content-type", "application/json");
	fixture_init(&f, 2, "public", "other", 5, default_cols, default_types, v);
	CHECK(outbox_map_insert(ob, &f.rel, &f.tup, &txn, &ev, &src, err, sizeof(err)) == OUTBOX_EVENT);
	CHECK_HEADER(&ev, "ce_source", "urn:shop");
	outbox_free(ob);
}

static outbox_rc
map_msg(outbox *ob, uint8_t flags, const char *prefix, const char *content, sink_event *ev,
        char *err, size_t errlen)
{
	pgo_bytes p = {(const uint8_t *) prefix, (uint32_t) strlen(prefix)};
	pgo_bytes c = {(const uint8_t *) content, (uint32_t) strlen(content)};
	unsigned src;

	return outbox_map_message(ob, flags, p, c, &txn, ev, &src, err, errlen);
}

static void
test_messages(void)
{
	outbox_table t = {.table = "public.outbox"};
	outbox *ob = new_outbox(&t, 1, "outbox", (outbox_mapping) {.topic_prefix = "m."});
	sink_event ev;
	char err[256];
	bool is_msg;
	const char *good =
		"{\"id\":\"m-1\",\"aggregatetype\":\"order\",\"aggregateid\":\"42\",\"type\":\"Paid\","
		"\"payload\":{\"z\": 1, \"a\": [true, null, \"ü\"]},\"headers\":{\"tenant\":\"acme\"}}";

	if (!ob) {
		CHECK(ob != NULL);
		return;
	}
	CHECK(strcmp(outbox_source_name(ob, 1, &is_msg), "outbox") == 0 && is_msg);
	CHECK(map_msg(ob, 1, "outbox", good, &ev, err, sizeof(err)) == OUTBOX_EVENT);
	CHECK(strcmp(ev.topic, "m.outbox.event.order") == 0);
	CHECK_EQ(ev.key, ev.key_len, "42");
	CHECK_EQ(ev.value, ev.value_len, "{\"z\":1,\"a\":[true,null,\"ü\"]}");   /* compact, order kept */
	CHECK_HEADER(&ev, "id", "m-1");
	CHECK_HEADER(&ev, "type", "Paid");
	CHECK_HEADER(&ev, "tenant", "acme");
	CHECK(ev.timestamp_ms == INT64_C(1714566896789));

	CHECK(map_msg(ob, 0, "outbox", good, &ev, err, sizeof(err)) == OUTBOX_IGNORE);   /* non-transactional */
	CHECK(map_msg(ob, 1, "outbox2", good, &ev, err, sizeof(err)) == OUTBOX_IGNORE);
	CHECK(map_msg(ob, 1, "outbo", good, &ev, err, sizeof(err)) == OUTBOX_IGNORE);

	CHECK(map_msg(ob, 1, "outbox", "{\"id\":\"t\",\"aggregatetype\":\"o\",\"aggregateid\":\"1\","
	                              "\"type\":\"D\",\"payload\":null}", &ev, err, sizeof(err)) == OUTBOX_EVENT);
	CHECK(ev.value == NULL);                                             /* tombstone */
	CHECK(map_msg(ob, 1, "outbox", "{\"id\":\"s\",\"aggregatetype\":\"o\",\"aggregateid\":\"1\","
	                              "\"type\":\"D\",\"payload\":\"str\"}", &ev, err, sizeof(err)) == OUTBOX_EVENT);
	CHECK_EQ(ev.value, ev.value_len, "\"str\"");

	/* Malformed: each is unmappable, with the raw content as value. */
	{
		static const char *const bad[] = {
			"not json",
			"[1,2]",
			"",
			"{\"aggregatetype\":\"o\",\"aggregateid\":\"1\",\"type\":\"D\",\"payload\":1}",
			"{\"id\":7,\"aggregatetype\":\"o\",\"aggregateid\":\"1\",\"type\":\"D\",\"payload\":1}",
			"{\"id\":\"x\",\"aggregatetype\":\"o\",\"aggregateid\":\"1\",\"type\":\"D\"}",
			"{\"id\":\"x\",\"aggregatetype\":\"o\",\"aggregateid\":null,\"type\":\"D\",\"payload\":1}",
			"{\"id\":\"x\",\"aggregatetype\":\"o/\",\"aggregateid\":\"1\",\"type\":\"D\",\"payload\":1}",
			"{\"id\":\"x\",\"aggregatetype\":\"o\",\"aggregateid\":\"1\",\"type\":\"D\",\"payload\":1,\"headers\":{\"h\":1}}",
			"{\"id\":\"x\",\"aggregatetype\":\"o\",\"aggregateid\":\"1\",\"type\":\"D\",\"payload\":1,\"headers\":{\"id\":\"y\"}}",
			"{\"id\":\"x\",\"id\":\"y\",\"aggregatetype\":\"o\",\"aggregateid\":\"1\",\"type\":\"D\",\"payload\":1}",
		};
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			outbox_rc rc = map_msg(ob, 1, "outbox", bad[i], &ev, err, sizeof(err));
			CHECK(rc == OUTBOX_UNMAPPABLE);
			if (rc != OUTBOX_UNMAPPABLE)
				fprintf(stderr, "  case %zu: %s\n", i, bad[i]);
			CHECK_EQ(ev.value, ev.value_len, bad[i]);
		}
	}
	CHECK(map_msg(ob, 1, "outbox", "{\"id\":\"x\",\"aggregatetype\":\"o\",\"aggregateid\":\"1\","
	                              "\"type\":\"D\"}", &ev, err, sizeof(err)) == OUTBOX_UNMAPPABLE);
	CHECK_HEADER(&ev, "id", "x");
	CHECK_EQ(ev.key, ev.key_len, "1");
	{
		outbox_dlq_buf buf;
		outbox_dead_letter(&ev, "dlq", err, NULL, 0x10, true, "outbox", false, &buf);
		CHECK_HEADER(&ev, "pgoutbox.message.prefix", "outbox");
		CHECK_HEADER(&ev, "pgoutbox.lsn", "0/10");
		CHECK_HEADER(&ev, "pgoutbox.source.topic", "");
		CHECK(header(&ev, "pgoutbox.table") == NULL);
	}
	outbox_free(ob);

	/* Messages off: everything ignored. */
	ob = new_outbox(&t, 1, "", (outbox_mapping) {0});
	if (ob) {
		CHECK(map_msg(ob, 1, "", good, &ev, err, sizeof(err)) == OUTBOX_IGNORE);
		outbox_free(ob);
	}
}

static void
test_message_formats(void)
{
	outbox_table t = {.table = "public.outbox"};
	outbox *ob = new_outbox(&t, 1, "ev", (outbox_mapping) {.format = OUTBOX_FORMAT_ENVELOPE,
	                                                      .topic_template = "${type}"});
	sink_event ev;
	char err[256];
	const char *msg = "{\"id\":\"m\",\"aggregatetype\":\"a\",\"aggregateid\":\"k\",\"type\":\"T\",\"payload\":{\"x\": [1, 2]}}";

	if (!ob) {
		CHECK(ob != NULL);
		return;
	}
	CHECK(map_msg(ob, 1, "ev", msg, &ev, err, sizeof(err)) == OUTBOX_EVENT);
	CHECK(strcmp(ev.topic, "T") == 0);
	CHECK_EQ(ev.value, ev.value_len,
	         "{\"id\":\"m\",\"type\":\"T\",\"aggregatetype\":\"a\",\"aggregateid\":\"k\",\"payload\":{\"x\":[1,2]},"
	         "\"commit_time\":\"2024-05-01T12:34:56.789012Z\",\"lsn\":\"1000/16B3748\",\"xid\":742}");
	outbox_free(ob);

	ob = new_outbox(&t, 1, "ev", (outbox_mapping) {.format = OUTBOX_FORMAT_CLOUDEVENTS});
	if (!ob) {
		CHECK(ob != NULL);
		return;
	}
	CHECK(outbox_set_database(ob, "db1"));
	CHECK(map_msg(ob, 1, "ev", msg, &ev, err, sizeof(err)) == OUTBOX_EVENT);
	CHECK_EQ(ev.value, ev.value_len, "{\"x\":[1,2]}");
	CHECK_HEADER(&ev, "ce_source", "/pgoutbox/db1/message/ev");
	CHECK_HEADER(&ev, "ce_id", "m");
	outbox_free(ob);
}

static void
test_time_and_names(void)
{
	char buf[32];
	outbox_format f;

	CHECK(outbox_format_time(0, buf, sizeof(buf)) == 27);
	CHECK(strcmp(buf, "2000-01-01T00:00:00.000000Z") == 0);
	outbox_format_time(-1, buf, sizeof(buf));
	CHECK(strcmp(buf, "1999-12-31T23:59:59.999999Z") == 0);
	CHECK(outbox_format_parse("envelope", &f) && f == OUTBOX_FORMAT_ENVELOPE);
	CHECK(!outbox_format_parse("json", &f));
	CHECK(outbox_topic_valid("a.b-c_D9", 8));
	CHECK(!outbox_topic_valid("..", 2));
	CHECK(!outbox_topic_valid("a b", 3));
	CHECK(outbox_header_reserved("ce_id", 5));
	CHECK(outbox_header_reserved("pgoutbox.error", 14));
	CHECK(!outbox_header_reserved("tenant", 6));
}

/*
 * A partitioned outbox table whose publication does not publish via the
 * root: rows arrive under the partitions' names and are mapped by OID.
 */
static void
test_partitions(void)
{
	outbox_table t = {.table = "public.outbox"};
	outbox *ob = new_outbox(&t, 1, NULL, (outbox_mapping) {0});
	const char *v[] = {"p-1", "order", "42", "OrderPaid", "{}"};
	const uint32_t oids[] = {301, 300};
	const int tabs[] = {0, 0};
	fixture part, other;
	sink_event ev;
	unsigned src = 99;
	char err[256];
	int table = 7;

	CHECK(ob != NULL);
	if (!ob)
		return;
	fixture_init(&part, 300, "public", "outbox_2026_12", 5, default_cols, default_types, v);
	fixture_init(&other, 400, "public", "outbox_archive", 5, default_cols, default_types, v);
	/* Before the catalog says so, a partition is not recognised. */
	CHECK(outbox_relation(ob, &part.rel, &table) && table == -1);
	CHECK(outbox_map_insert(ob, &part.rel, &part.tup, &txn, &ev, &src, err, sizeof(err)) ==
	      OUTBOX_IGNORE);
	CHECK(outbox_set_partitions(ob, oids, tabs, 2));
	CHECK(outbox_relation(ob, &part.rel, &table) && table == 0);
	CHECK(outbox_map_insert(ob, &part.rel, &part.tup, &txn, &ev, &src, err, sizeof(err)) ==
	      OUTBOX_EVENT);
	CHECK(src == 0);
	CHECK(strcmp(ev.topic, "outbox.event.order") == 0);
	CHECK_HEADER(&ev, "id", "p-1");
	/* A table that is not a partition stays a neighbour. */
	CHECK(outbox_relation(ob, &other.rel, &table) && table == -1);
	CHECK(outbox_is_table(ob, &part.rel));
	CHECK(!outbox_is_table(ob, &other.rel));
	/* A new list replaces the old one. */
	CHECK(outbox_set_partitions(ob, oids, tabs, 1));
	CHECK(outbox_relation(ob, &part.rel, &table) && table == -1);
	outbox_free(ob);
}

/* key_format = json-string: the key as Kafka Connect's JsonConverter writes it. */
static void
test_key_json(void)
{
	static const struct { const char *in, *out; } cases[] = {
		{"42", "\"42\""},
		{"", "\"\""},
		{"a\"b\\c", "\"a\\\"b\\\\c\""},
		{"\t\n\r\b\f\x01\x1f", "\"\\t\\n\\r\\b\\f\\u0001\\u001F\""},
		{"m\xc3\xbcller \x7f \xe2\x80\xa8", "\"m\xc3\xbcller \x7f \xe2\x80\xa8\""},
		{"\xf0\x9f\x98\x80!", "\"\\uD83D\\uDE00!\""},
		{"/slash", "\"/slash\""},
	};
	outbox_table t = {.table = "public.outbox", .map = {.key_json = true}};
	outbox *ob = new_outbox(&t, 1, NULL, (outbox_mapping) {0});
	sink_event ev;
	unsigned src;
	char err[256];

	CHECK(ob != NULL);
	if (!ob)
		return;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *v[] = {"id-1", "order", cases[i].in, "T", "{}"};
		fixture f;

		fixture_init(&f, 100, "public", "outbox", 5, default_cols, default_types, v);
		CHECK(outbox_map_insert(ob, &f.rel, &f.tup, &txn, &ev, &src, err, sizeof(err)) ==
		      OUTBOX_EVENT);
		CHECK_EQ(ev.key, ev.key_len, cases[i].out);
	}
	outbox_free(ob);
}

/* The dead-letter copy of an event refused for its size always fits. */
static void
test_dead_letter_trim(void)
{
	size_t big = 300000;
	char *value = malloc(big), *key = malloc(5000), *hv = malloc(5000);
	sink_event ev;
	outbox_dlq_buf buf;
	const sink_header *h;

	memset(value, 'v', big);
	memset(key, 'k', 5000);
	memset(hv, 'h', 5000);
	memset(&ev, 0, sizeof(ev));
	ev.topic = "outbox.event.order";
	ev.key = key;
	ev.key_len = 5000;
	ev.value = value;
	ev.value_len = big;
	ev.nheaders = 2;
	ev.headers[0] = (sink_header) {"id", "e-1", 3};
	ev.headers[1] = (sink_header) {"trace", hv, 5000};
	outbox_dead_letter(&ev, "dlq", "Broker: Message size too large", "outbox.event.order", 0x10,
	                   false, "public.outbox", true, &buf);
	CHECK(strcmp(ev.topic, "dlq") == 0);
	CHECK(ev.value_len == OUTBOX_DLQ_TRIM_VALUE);
	CHECK(ev.key_len == OUTBOX_DLQ_TRIM_OTHER);
	CHECK_HEADER(&ev, "id", "e-1");
	CHECK_HEADER(&ev, "pgoutbox.original.size", "300000");
	/* printf 'v%.0s' $(seq 300000) | sha256sum */
	CHECK_HEADER(&ev, "pgoutbox.original.sha256",
	             "1baacc86f4cba31d93db69f344b089ce468c5ac2e44d8857f200f426bb62db17");
	h = header(&ev, "trace");
	CHECK(h != NULL && h->len == OUTBOX_DLQ_TRIM_OTHER);
	CHECK(ev.nheaders == 2 + OUTBOX_DLQ_HEADERS);

	/* Refused for another reason: kept whole, no size headers. */
	memset(&ev, 0, sizeof(ev));
	ev.topic = "bad topic";
	ev.value = value;
	ev.value_len = big;
	ev.nheaders = 1;
	ev.headers[0] = (sink_header) {"id", "e-2", 3};
	outbox_dead_letter(&ev, "dlq", "invalid topic", NULL, 0x10, false, "public.outbox", false, &buf);
	CHECK(ev.value_len == big);
	CHECK(header(&ev, "pgoutbox.original.size") == NULL);
	free(value);
	free(key);
	free(hv);
}

int
main(void)
{
	test_default_mapping();
	test_custom_columns_prefix_headers();
	test_two_tables_and_fixed_topic();
	test_bad_configs();
	test_parse_table();
	test_unmappable();
	test_envelope();
	test_cloudevents();
	test_messages();
	test_message_formats();
	test_time_and_names();
	test_partitions();
	test_key_json();
	test_dead_letter_trim();
	printf("%d checks passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
