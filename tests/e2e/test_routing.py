"""End-to-end tests of outbox routing (issue 5): column mapping, several outbox
tables, extra-column headers, fixed topics and prefixes, the logical-message
outbox, on_error = stop | dlq, value formats, and the defaults a consumer of
Debezium's outbox event router relies on.

As in test_daemon.py, each test writes into its own database, runs the real
binary to --endpos (or to its failure), and reads Kafka back with an
independent client; every topic a test uses contains its tag.
"""

import json
import subprocess

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

import util
from conftest import ENDPOS_TIMEOUT, REPO, SETUP_SLOT_SH
from test_daemon import run_to_endpos, write_config

EMIT_SQL = REPO / "scripts" / "outbox_emit.sql"


def base_config(db, *lines, endpos=None):
    """Config file lines for a run against db (connection, slot, endpos)."""
    out = ["conninfo = %s" % db.dsn, "brokers = %s" % db.brokers, "slot = %s" % db.slot,
           "publication = pgoutbox", "shutdown_timeout = 10"]
    if endpos:
        out.append("endpos = %s" % endpos)
    return out + list(lines)


def run_config(pgoutbox, db, tmp_path, lines, endpos, expect=util.EXIT_OK, name=None):
    conf = write_config(tmp_path, base_config(db, *lines, endpos=endpos))
    p = pgoutbox.start("-c", conf, name=name)
    p.expect_exit(expect, ENDPOS_TIMEOUT)
    if expect == util.EXIT_OK:
        assert db.confirmed_at_least(endpos), (
            "exit 0 for endpos %s but slot at %r\n%s"
            % (endpos, util.slot_state(db.conn, db.slot), p.describe()))
    return p


def execute(conn, *statements):
    with conn.cursor() as cur:
        for s in statements:
            cur.execute(s)
    conn.commit()


def commit_time_ms(conn, table, where, params=()):
    return util.query_one(conn, "SELECT floor(extract(epoch from pg_xact_commit_timestamp(xmin))"
                                " * 1000)::bigint FROM %s WHERE %s" % (table, where), params)[0]


def install_emit(db):
    """outbox_emit() through setup-slot.sh --create-emit-function (run twice:
    idempotent)."""
    for _ in range(2):
        r = subprocess.run([str(SETUP_SLOT_SH), "-d", db.dsn, "--slot", db.slot,
                            "--create-emit-function"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, "setup-slot.sh --create-emit-function failed:\n%s\n%s" % (
            r.stdout, r.stderr)


def emit(cur, aggtype, aggid, type_, payload, headers=None, prefix="outbox"):
    cur.execute("SELECT outbox_emit(%s, %s, %s, %s::jsonb, %s::jsonb, %s)::text",
                (aggtype, aggid, type_, None if payload is None else json.dumps(payload),
                 None if headers is None else json.dumps(headers), prefix))
    return cur.fetchone()[0]


def by_id(messages):
    out = {}
    for m in messages:
        out.setdefault(m.id, m)
    return out


# ---------------------------------------------------------------------------
# 1. Custom column names, extra-column headers, topic prefix (config file)
# ---------------------------------------------------------------------------

def test_custom_columns_headers_and_prefix(outbox_db, pgoutbox, tmp_path):
    db = outbox_db
    kind = db.aggtype("custom")
    execute(db.conn,
            "CREATE SCHEMA app",
            "CREATE TABLE app.events (seq bigserial, event_id uuid PRIMARY KEY, kind text,"
            " order_ref text, event_type text, body jsonb, tenant text, trace text)",
            "ALTER PUBLICATION pgoutbox ADD TABLE app.events")
    rows = []
    with db.conn.cursor() as cur:
        for i in range(6):
            eid = util.new_id()
            rows.append((eid, "R-%d" % (i % 2), "Type%d" % i, json.dumps({"i": i, "ü": "✓"}),
                         "acme" if i % 3 else "globex", None if i == 4 else "tr-%d" % i))
            cur.execute("INSERT INTO app.events (event_id, kind, order_ref, event_type, body,"
                        " tenant, trace) VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s)",
                        (eid, kind, rows[-1][1], rows[-1][2], rows[-1][3], rows[-1][4],
                         rows[-1][5]))
    db.conn.commit()
    endpos = db.wal_lsn()
    run_config(pgoutbox, db, tmp_path, [
        "table = app.events",
        "id_column = event_id",
        "key_column = order_ref",
        "type_column = event_type",
        "payload_column = body",
        "topic_template = ${kind}.evt",
        "topic_prefix = pfx.",
        "header.tenant = tenant",
        "header.x-trace = trace",
    ], endpos)
    msgs = db.kafka_messages()
    assert {m.topic for m in msgs} == {"pfx.%s.evt" % kind}
    got = by_id(msgs)
    assert set(got) == {r[0] for r in rows}
    with db.conn.cursor() as cur:
        cur.execute("SELECT event_id::text, body::text FROM app.events")
        body_text = dict(cur.fetchall())
    db.conn.commit()
    for eid, ref, etype, _, tenant, trace in rows:
        m = got[eid]
        assert m.key == ref.encode()
        assert m.value == body_text[eid].encode(), "payload column text, byte for byte"
        assert m.header("type") == etype.encode()
        assert m.header("tenant") == tenant.encode()
        assert m.header("x-trace") == (None if trace is None else trace.encode()), (
            "NULL column → header with a null value")
        assert m.timestamp == commit_time_ms(db.conn, "app.events", "event_id = %s", (eid,))


# ---------------------------------------------------------------------------
# 2. Two outbox tables in different schemas, different mappings, quoted names
# ---------------------------------------------------------------------------

def test_two_tables_different_schemas_and_mappings(outbox_db, pgoutbox, tmp_path):
    db = outbox_db
    t = db.aggtype("two")
    execute(db.conn,
            'CREATE SCHEMA "Billing"',
            'CREATE TABLE "Billing"."Out Box" ("Event Id" uuid PRIMARY KEY, "Customer" text,'
            ' kind text, "Type" text, data jsonb, region text)',
            'ALTER PUBLICATION pgoutbox ADD TABLE "Billing"."Out Box"')
    with db.conn.cursor() as cur:   # one transaction, both tables, interleaved
        default_rows = []
        billing = []
        for i in range(4):
            r = util.event(t, "o-%d" % i, "OrderEvt", {"order": i})
            util.insert_events(cur, [r])
            default_rows.append(r)
            bid = util.new_id()
            cur.execute('INSERT INTO "Billing"."Out Box" VALUES (%s, %s, %s, %s, %s::jsonb, %s)',
                        (bid, "c-%d" % (i % 2), "invoice", "Billed", json.dumps({"n": i}),
                         "eu" if i % 2 else "us"))
            billing.append((bid, "c-%d" % (i % 2), "eu" if i % 2 else "us", i))
    db.conn.commit()
    endpos = db.wal_lsn()
    q = '"Billing"."Out Box"'
    run_config(pgoutbox, db, tmp_path, [
        'table = public.outbox, %s' % q,
        # the default table keeps every default; the billing table gets its own mapping
        "table.%s.id_column = Event Id" % q,
        "table.%s.key_column = Customer" % q,
        "table.%s.type_column = Type" % q,
        "table.%s.payload_column = data" % q,
        "table.%s.topic_template = billing_%s.${kind}" % (q, db.tag),
        "table.%s.header.region = region" % q,
    ], endpos)
    msgs = db.kafka_messages()
    rows = db.rows()
    util.check_delivery([m for m in msgs if m.topic == util.default_topic(t)], rows)
    bill = [m for m in msgs if m.topic == "billing_%s.invoice" % db.tag]
    assert len(bill) + len(rows) == len(msgs), sorted({m.topic for m in msgs})
    got = by_id(bill)
    assert set(got) == {b[0] for b in billing}
    for bid, customer, region, n in billing:
        m = got[bid]
        assert m.key == customer.encode()
        assert json.loads(m.value) == {"n": n}
        assert m.header("type") == b"Billed"
        assert m.header("region") == region.encode()
    for m in msgs:
        if m.topic == util.default_topic(t):
            assert not [h for h, _ in m.headers if h == "region"], "header leaked to other table"
    # per-key order across both tables of the transaction
    order = util.first_deliveries_by_key(bill)
    assert order[("billing_%s.invoice" % db.tag, b"c-0")] == [billing[0][0], billing[2][0]]


# ---------------------------------------------------------------------------
# 3. A fixed topic and a topic prefix, from the command line
# ---------------------------------------------------------------------------

def test_fixed_topic_and_prefix(outbox_db, pgoutbox):
    db = outbox_db
    util.commit_events(db.conn, [util.event(db.aggtype("fx%d" % i), "k%d" % i, "T", {"i": i})
                                 for i in range(4)])
    endpos = db.wal_lsn()
    fixed = "all_events_%s" % db.tag
    run_to_endpos(pgoutbox, db, endpos, "--topic-template", fixed, "--topic-prefix", "env-a.")
    assert util.topics_with(db.brokers, db.tag) == ["env-a." + fixed]
    util.check_delivery(db.kafka_messages(), db.rows(), topic_for=lambda a: "env-a." + fixed)


def test_bad_routing_settings_exit_1(outbox_db, pgoutbox, tmp_path):
    """Mistakes in the mapping are configuration errors (exit 1), named."""
    db = outbox_db
    cases = [
        (["--topic-template", "bad topic ${aggregatetype}"], "bad topic"),
        (["--value-format", "xml"], "value_format"),
        (["--on-error", "skip"], "on_error"),
        (["--header", "id=aggregateid"], "reserved"),
        (["--table-option", "public.other.key_column=k"], "public.other"),
        (["--table-option", "public.outbox.slot=x"], "cannot be set per table"),
    ]
    for args, needle in cases:
        p = pgoutbox.run(*db.args(*args), timeout=30)
        assert p.returncode == util.EXIT_USAGE, p.describe()
        assert needle in p.stderr, "%r not named for %r:\n%s" % (needle, args, p.stderr)


# ---------------------------------------------------------------------------
# 4. Logical-message outbox mixed with table inserts
# ---------------------------------------------------------------------------

@pytest.mark.server
@pytest.mark.pg_min(14)     # 13 does not send logical decoding messages to pgoutput
def test_logical_messages_mixed_with_inserts(outbox_db, pgoutbox, tmp_path):
    db = outbox_db
    install_emit(db)
    t = db.aggtype("msg")
    expected = []             # ids in commit order, all with key k1
    payloads = {}
    with db.conn.cursor() as cur:
        for i in range(3):
            r = util.event(t, "k1", "RowEvt", {"n": "row%d" % i})
            util.insert_events(cur, [r])
            expected.append(r[0])
            p = {"n": "msg%d" % i, "nested": {"b": [1, 2.5, None], "a": "ü \"q\""}}
            mid = emit(cur, t, "k1", "MsgEvt", p, headers={"tenant": "acme", "n": str(i)})
            expected.append(mid)
            payloads[mid] = p
        tomb = emit(cur, t, "k2", "Deleted", None)
        # ignored: another prefix, and a non-transactional message
        emit(cur, t, "k1", "Other", {"x": 1}, prefix="not-outbox")
        cur.execute("SELECT pg_logical_emit_message(false, 'outbox', %s)",
                    (json.dumps({"id": "nontx", "aggregatetype": t, "aggregateid": "k1",
                                 "type": "X", "payload": 1}),))
    db.conn.commit()
    with db.conn.cursor() as cur:        # rolled back: never published
        rolled = emit(cur, t, "k1", "Never", {"x": 1})
    db.conn.rollback()
    endpos = db.wal_lsn()
    rows = db.rows()
    commit_ms = next(iter(rows.values())).commit_ms
    run_config(pgoutbox, db, tmp_path, ["messages_prefix = outbox"], endpos)

    msgs = db.kafka_messages()
    got = by_id(msgs)
    assert set(got) == set(expected) | {tomb}, (
        "expected the rows and the transactional 'outbox' messages only; unexpected %r, "
        "missing %r" % (set(got) - set(expected) - {tomb}, set(expected) | {tomb} - set(got)))
    assert rolled not in got and "nontx" not in got
    first = util.first_deliveries_by_key(msgs)
    assert first[(util.default_topic(t), b"k1")] == expected, "commit order of rows and messages"
    for mid, p in payloads.items():
        m = got[mid]
        assert m.topic == util.default_topic(t) and m.key == b"k1"
        assert json.loads(m.value) == p
        assert m.value == json.dumps(json.loads(m.value), separators=(",", ":"),
                                     ensure_ascii=False).encode(), "compact serialization"
        assert m.header("type") == b"MsgEvt" and m.header("tenant") == b"acme"
        assert m.timestamp == commit_ms, "the transaction's commit time"
    for rid in rows:
        util.check_message_matches_row(got[rid], rows[rid])
    assert got[tomb].value is None and got[tomb].key == b"k2", "JSON null payload → tombstone"


@pytest.mark.core
@pytest.mark.pg_max(13)
def test_messages_prefix_refused_before_14(outbox_db, pgoutbox, tmp_path):
    """PostgreSQL 13 does not send logical decoding messages to pgoutput: a
    configured messages_prefix would silently never produce an event, so
    pgoutbox says so and stops before streaming."""
    db = outbox_db
    p = run_config(pgoutbox, db, tmp_path, ["messages_prefix = outbox"], db.wal_lsn(),
                   expect=util.EXIT_RUNTIME)
    assert 'ERROR:  messages_prefix = "outbox" needs PostgreSQL 14 or later: PostgreSQL 13 does ' \
           "not send logical decoding messages to pgoutput, so none would ever become an " \
           "event\n" in p.stderr, p.stderr
    assert "streaming from slot" not in p.stderr, p.stderr


# ---------------------------------------------------------------------------
# 5. Malformed message content and an unmappable row, under stop and dlq
# ---------------------------------------------------------------------------

def _write_bad(db, kind, good_type):
    """good txn, bad txn, good txn; returns (good ids, bad id or None, lsn before
    and after the bad transaction)."""
    good1 = util.commit_events(db.conn, [util.event(good_type, "g", "T", {"n": 1})])
    before = db.wal_lsn()
    bad_id = None
    with db.conn.cursor() as cur:
        if kind == "message":
            cur.execute("SELECT pg_logical_emit_message(true, 'outbox', '{\"id\": \"m-1\", not json')")
        else:
            bad_id = util.new_id()
            cur.execute("INSERT INTO public.outbox VALUES (%s, %s, NULL, 'T', '{\"bad\": 1}')",
                        (bad_id, good_type))
    db.conn.commit()
    after = db.wal_lsn()
    good2 = util.commit_events(db.conn, [util.event(good_type, "g", "T", {"n": 3})])
    return good1 + good2, bad_id, before, after


# The message variant is about what the server sends (also on the newest major).
KINDS = [pytest.param("message", marks=[pytest.mark.pg_min(14), pytest.mark.server]), "row"]


def messages_for(kind):
    return ["messages_prefix = outbox"] if kind == "message" else []


@pytest.mark.parametrize("kind", KINDS)
def test_unmappable_stop(outbox_db, pgoutbox, tmp_path, kind):
    db = outbox_db
    execute(db.conn, "ALTER TABLE public.outbox ALTER COLUMN aggregateid DROP NOT NULL")
    good, bad_id, before, after = _write_bad(db, kind, db.aggtype("stop"))
    p = run_config(pgoutbox, db, tmp_path, messages_for(kind) + ["on_error = stop"],
                   db.wal_lsn(), expect=util.EXIT_RUNTIME)
    if kind == "message":
        assert "not valid JSON" in p.stderr and "logical message prefix outbox" in p.stderr, p.stderr
    else:
        assert bad_id in p.stderr and "aggregateid" in p.stderr, p.stderr
    assert not db.confirmed_at_least(after), (
        "slot confirmed past the unmappable event: %r" % (util.slot_state(db.conn, db.slot),))
    ids = {m.id for m in db.kafka_messages()}
    assert good[0] in ids and good[1] not in ids


@pytest.mark.parametrize("kind", KINDS)
def test_unmappable_dlq(outbox_db, pgoutbox, tmp_path, kind):
    db = outbox_db
    execute(db.conn, "ALTER TABLE public.outbox ALTER COLUMN aggregateid DROP NOT NULL")
    good_type = db.aggtype("dlq")
    good, bad_id, before, after = _write_bad(db, kind, good_type)
    dlq = "dlq_%s" % db.tag
    endpos = db.wal_lsn()
    p = run_config(pgoutbox, db, tmp_path, messages_for(kind) + ["on_error = dlq",
                                                                 "dlq_topic = %s" % dlq], endpos)
    assert "dead-letter" in p.stderr, "the dead-lettering is logged:\n" + p.stderr
    msgs = db.kafka_messages()
    assert {m.id for m in msgs if m.topic == util.default_topic(good_type)} == set(good), (
        "the stream continues past the bad event")
    dead = [m for m in msgs if m.topic == dlq]
    assert len(dead) == 1, dead
    d = dead[0]
    lsn = d.header("pgoutbox.lsn").decode()
    assert util.lsn_ge(db.conn, lsn, before) and not util.lsn_ge(db.conn, lsn, after), (
        "pgoutbox.lsn %s is not the bad transaction's commit LSN (between %s and %s)"
        % (lsn, before, after))
    if kind == "message":
        assert d.value == b'{"id": "m-1", not json', "the raw content"
        assert d.header("pgoutbox.message.prefix") == b"outbox"
        assert b"not valid JSON" in d.header("pgoutbox.error")
        assert d.header("pgoutbox.source.topic") == b""
    else:
        assert d.id == bad_id
        assert d.value == b'{"bad": 1}' and d.key is None
        assert d.header("pgoutbox.table") == b"public.outbox"
        assert b"aggregateid" in d.header("pgoutbox.error")


# ---------------------------------------------------------------------------
# 6. A message Kafka refuses for good (bigger than the topic's limit)
# ---------------------------------------------------------------------------

def _create_small_topic(brokers, topic):
    admin = AdminClient({"bootstrap.servers": brokers})
    fut = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1,
                                        config={"max.message.bytes": "1000"})])
    fut[topic].result(30)
    util.wait_for(lambda: topic in util.list_topics(brokers), 30, "topic %s" % topic)


@pytest.mark.parametrize("policy", ["dlq", "stop"])
def test_kafka_refuses_message(outbox_db, pgoutbox, tmp_path, policy):
    db = outbox_db
    small, normal = db.aggtype("small"), db.aggtype("normal")
    _create_small_topic(db.brokers, util.default_topic(small))
    big_payload = json.dumps({"blob": "x" * 5000})
    before = db.wal_lsn()
    with db.conn.cursor() as cur:
        first = util.event(normal, "k", "T", {"n": 1})
        big = util.event(small, "big-key", "Huge", big_payload)
        util.insert_events(cur, [first, big])
    db.conn.commit()
    after = db.wal_lsn()
    later = util.commit_events(db.conn, [util.event(normal, "k", "T", {"n": 2})])
    endpos = db.wal_lsn()
    dlq = "dlq_%s" % db.tag
    lines = ["on_error = %s" % policy, "dlq_topic = %s" % dlq]
    if policy == "stop":
        p = run_config(pgoutbox, db, tmp_path, lines, endpos, expect=util.EXIT_RUNTIME)
        assert big[0] in p.stderr, p.stderr
        assert not db.confirmed_at_least(after)
        # The refused event had its report: the drain does not wait out the
        # shutdown timeout for it, nor call it "not acknowledged in time".
        assert "shutdown timeout" not in p.stderr, p.stderr
        return
    run_config(pgoutbox, db, tmp_path, lines, endpos)
    msgs = db.kafka_messages()
    assert not [m for m in msgs if m.topic == util.default_topic(small)]
    assert {m.id for m in msgs if m.topic == util.default_topic(normal)} == {first[0], later[0]}
    dead = [m for m in msgs if m.topic == dlq]
    assert len(dead) == 1
    d = dead[0]
    assert d.id == big[0] and d.key == b"big-key" and d.header("type") == b"Huge"
    assert d.value == util.query_one(db.conn, "SELECT payload::text FROM public.outbox WHERE id = %s",
                                     (big[0],))[0].encode(), "the original value"
    assert d.header("pgoutbox.source.topic") == util.default_topic(small).encode()
    assert d.header("pgoutbox.table") == b"public.outbox"
    assert b"too large" in d.header("pgoutbox.error").lower(), d.header("pgoutbox.error")
    lsn = d.header("pgoutbox.lsn").decode()
    assert util.lsn_ge(db.conn, lsn, before) and not util.lsn_ge(db.conn, lsn, after)


# ---------------------------------------------------------------------------
# 7. Value formats, decoded by the consumer
# ---------------------------------------------------------------------------

PG_TIME_US = ("to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC',"
              " 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")


@pytest.mark.pg_min(14)     # with a logical message
# envelope carries what the server says of the transaction (commit time, xid, LSN)
@pytest.mark.parametrize("fmt", ["raw", pytest.param("envelope", marks=pytest.mark.server),
                                 "cloudevents"])
def test_value_formats(outbox_db, pgoutbox, tmp_path, fmt):
    db = outbox_db
    install_emit(db)
    t = db.aggtype("fmt")
    rows_in = [util.event(t, "k%d" % i, "Evt%d" % i, p) for i, p in
               enumerate([{"b": 2, "a": [1, 2.50, "ü"]}, None, '"scalar"'])]
    before = db.wal_lsn()
    with db.conn.cursor() as cur:
        util.insert_events(cur, rows_in)
        mid = emit(cur, t, "km", "MsgEvt", {"m": [True, None]})
    db.conn.commit()
    after = db.wal_lsn()
    endpos = db.wal_lsn()
    rows = db.rows()
    with db.conn.cursor() as cur:
        cur.execute("SELECT id::text, xmin::text, %s FROM public.outbox" % PG_TIME_US)
        meta = {r[0]: (int(r[1]), r[2]) for r in cur.fetchall()}
    db.conn.commit()
    run_config(pgoutbox, db, tmp_path, ["value_format = %s" % fmt, "messages_prefix = outbox"],
               endpos)
    msgs = db.kafka_messages()
    got = by_id(msgs)
    assert set(got) == set(rows) | {mid}
    xid, ce_time = next(iter(meta.values()))

    if fmt == "raw":
        util.check_delivery([m for m in msgs if m.id != mid], rows)
        assert json.loads(got[mid].value) == {"m": [True, None]}
    elif fmt == "envelope":
        for i, r in rows.items():
            m = got[i]
            env = json.loads(m.value)
            assert set(env) == {"id", "type", "aggregatetype", "aggregateid", "payload",
                                "commit_time", "lsn", "xid"}
            assert (env["id"], env["type"], env["aggregatetype"], env["aggregateid"]) == (
                r.id, r.type, r.aggregatetype, r.aggregateid)
            if r.payload is None:
                assert env["payload"] is None
            else:
                assert json.loads(r.payload) == env["payload"]
                assert (b'"payload":' + r.payload.encode() + b',') in m.value, (
                    "jsonb text embedded verbatim")
            assert env["commit_time"] == meta[i][1]
            assert env["xid"] == meta[i][0]
            assert util.lsn_ge(db.conn, env["lsn"], before) and not util.lsn_ge(
                db.conn, env["lsn"], after)
            assert m.header("id") == r.id.encode() and m.header("type") == r.type.encode()
            assert m.key == r.aggregateid.encode()
        env = json.loads(got[mid].value)
        assert env["payload"] == {"m": [True, None]} and env["id"] == mid
        assert env["aggregatetype"] == t and env["aggregateid"] == "km" and env["xid"] == xid
    else:
        for i, r in rows.items():
            m = got[i]
            assert m.header("ce_specversion") == b"1.0"
            assert m.header("ce_id") == r.id.encode() == m.header("id")
            assert m.header("ce_type") == r.type.encode() == m.header("type")
            assert m.header("ce_source") == ("/pgoutbox/%s/public.outbox" % db.name).encode()
            assert m.header("ce_time") == meta[i][1].encode()
            assert m.header("content-type") == b"application/json"
            assert m.value == (None if r.payload is None else r.payload.encode())
        m = got[mid]
        assert m.header("ce_source") == ("/pgoutbox/%s/message/outbox" % db.name).encode()
        assert m.header("ce_id") == mid.encode() and m.header("ce_time") == ce_time.encode()
        assert json.loads(m.value) == {"m": [True, None]}


# ---------------------------------------------------------------------------
# 8. Debezium outbox event router compatibility of the defaults
# ---------------------------------------------------------------------------

def test_debezium_event_router_defaults(outbox_db, pgoutbox):
    """For a row of the default table (id, aggregatetype, aggregateid, type,
    payload jsonb), Debezium's outbox event router with its defaults
    (https://debezium.io/documentation/reference/stable/transformations/outbox-event-router.html:
    route.by.field=aggregatetype, route.topic.replacement=outbox.event.${routedByValue},
    table.field.event.key=aggregateid, table.field.event.id=id placed in header "id",
    table.field.event.payload=payload as the value, the record timestamp the change's
    source timestamp) yields, in its documented example:

        Kafka Topic: outbox.event.order    Message key: "1"
        Headers: id=4d47e190-0402-4048-bc2c-89dd54343cdc
        Value: the payload column's JSON text

    pgoutbox's defaults must yield the same topic, key, id header and value
    (with Kafka Connect's StringConverter; JsonConverter would quote the text),
    plus a "type" header the router adds only with
    table.fields.additional.placement=type:header:type."""
    db = outbox_db
    order = db.aggtype("order")
    rows_in = [util.event(order, "1", "OrderCreated",
                          {"id": 1, "lineItems": [{"id": 1, "item": "Debezium in Action",
                                                   "quantity": 2, "totalPrice": 39.98}],
                           "customerId": 123}),
               util.event(order, "2", "OrderCancelled", None)]
    util.commit_events(db.conn, rows_in)
    endpos = db.wal_lsn()
    run_to_endpos(pgoutbox, db, endpos)
    rows = db.rows()
    msgs = db.kafka_messages()
    assert {m.topic for m in msgs} == {"outbox.event." + order}
    for m in msgs:
        r = rows[m.id]
        assert m.key == r.aggregateid.encode()                       # table.field.event.key
        assert m.header("id") == r.id.encode()                       # id header
        assert m.value == (r.payload.encode() if r.payload else None)  # payload text / tombstone
        assert [h for h, _ in m.headers] == ["id", "type"]
    util.check_delivery(msgs, rows)
