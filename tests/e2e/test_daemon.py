"""End-to-end tests of the pgoutbox daemon against a real PostgreSQL and Kafka.

Every test writes events into its own database, runs the real binary, and reads
Kafka back with an independent client (util.read_topics): the set of event ids
must equal the committed ones, each message must match its row byte for byte,
and the slot must have been confirmed.
"""

import json
import os
import random
import re
import signal
import threading
import time

import psycopg2.extensions
import pytest

import util
from conftest import ENDPOS_TIMEOUT, SHUTDOWN_TIMEOUT


def run_to_endpos(pgoutbox, db, lsn, *extra, name=None):
    """Run pgoutbox until the slot is confirmed at `lsn`; it must exit 0."""
    p = pgoutbox.start(*db.args(*extra, endpos=lsn), name=name)
    p.expect_exit(util.EXIT_OK, ENDPOS_TIMEOUT)
    assert db.confirmed_at_least(lsn), (
        "pgoutbox exited 0 for --endpos %s but the slot is only at %r\n%s"
        % (lsn, util.slot_state(db.conn, db.slot), p.describe()))
    return p


def seeded_rng(request):
    seed = int(os.environ.get("E2E_SEED") or random.randrange(1 << 30))
    print("%s: random seed %d (set E2E_SEED to repeat)" % (request.node.name, seed))
    return random.Random(seed)


# ---------------------------------------------------------------------------
# 1. Bulk: exact set, faithful fields, per-key commit order
# ---------------------------------------------------------------------------

@pytest.mark.core
def test_bulk_exactly_committed_events_in_key_order(request, outbox_db, pgoutbox):
    db = outbox_db
    rng = seeded_rng(request)
    types = [db.aggtype("bulk%d" % i) for i in range(4)]
    keys = [(types[i % 4], "key-%02d" % i) for i in range(50)]
    seq = {k: 0 for k in keys}
    expected_order = {k: [] for k in keys}   # committed ids per key, in commit order
    rolled_back = set()
    conn = db.conn
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.not_outbox (id bigserial PRIMARY KEY, note text)")
    conn.commit()

    def make_rows(n):
        rows = []
        for _ in range(n):
            k = rng.choice(keys)
            seq[k] += 1
            rows.append((k, util.event(k[0], k[1], rng.choice(["Created", "Updated", "Shipped"]),
                                       {"key": k[1], "seq": seq[k], "note": "x" * rng.randint(0, 50)})))
        return rows

    committed_txns = other_only = mixed = 0
    while committed_txns < 1000:
        kind = rng.random()
        with conn.cursor() as cur:
            if kind < 0.09:                                   # rolled back
                rows = make_rows(rng.randint(1, 10))
                util.insert_events(cur, [r for _, r in rows])
                conn.rollback()
                rolled_back.update(r[0] for _, r in rows)
                continue
            if kind < 0.10:                                   # only a table outside the publication
                cur.execute("INSERT INTO public.not_outbox (note) SELECT 'n' || g"
                            " FROM generate_series(1, %s) g", (rng.randint(1, 20),))
                conn.commit()
                other_only += 1
                continue
            rows = make_rows(rng.randint(1, 10))
            if kind < 0.11:                                   # outbox and the other table
                cur.execute("INSERT INTO public.not_outbox (note) VALUES ('mixed')")
                mixed += 1
            util.insert_events(cur, [r for _, r in rows])
        conn.commit()
        committed_txns += 1
        for k, r in rows:
            expected_order[k].append(r[0])

    endpos = db.wal_lsn()
    rows = db.rows()
    n_committed = sum(len(v) for v in expected_order.values())
    print("committed %d events in %d transactions (%d mixed), %d rolled-back events, "
          "%d other-table-only transactions, endpos %s"
          % (n_committed, committed_txns, mixed, len(rolled_back), other_only, endpos))
    assert len(rows) == n_committed and not (set(rows) & rolled_back)
    assert len(rolled_back) > 0 and other_only > 0

    started = time.monotonic()
    run_to_endpos(pgoutbox, db, endpos)
    print("pgoutbox reached --endpos in %.1f s" % (time.monotonic() - started))

    messages = db.kafka_messages()
    dups = util.check_delivery(messages, rows, forbidden_ids=rolled_back)
    util.note("bulk: %d duplicates of %d messages" % (dups, len(messages)))

    first = util.first_deliveries_by_key(messages)
    for (aggtype, aggid), ids in expected_order.items():
        if not ids:
            continue
        got = first.get((util.default_topic(aggtype), aggid.encode()), [])
        if got != ids:
            i = next((j for j, (a, b) in enumerate(zip(got, ids)) if a != b), min(len(got), len(ids)))
            pytest.fail("key %s/%s: first deliveries not in commit order; diverge at #%d "
                        "(Kafka seq %r, committed seq %r)"
                        % (aggtype, aggid, i,
                           [json.loads(rows[x].payload)["seq"] for x in got[i:i + 5]],
                           [json.loads(rows[x].payload)["seq"] for x in ids[i:i + 5]]))


# ---------------------------------------------------------------------------
# 2. Payload fidelity: TOASTed, non-ASCII, NULL
# ---------------------------------------------------------------------------

@pytest.mark.core
def test_payload_fidelity_toast_unicode_null(request, outbox_db, pgoutbox):
    db = outbox_db
    rng = seeded_rng(request)
    t = db.aggtype("fidelity")
    big = json.dumps(["%064x" % rng.getrandbits(256) for _ in range(3200)])  # ~214 KB
    unicode_payload = {
        "name": "Müller Straße", "jp": "日本語のテキスト", "emoji": "🎉🚀👩‍💻",
        "escapes": "quote\" backslash\\ newline\n tab\t \u00e9\u0301 \u2028",
        "numbers": [1.50, 1e-7, 12345678901234567890123, -0.0], "nested": {"z": 1, "a": [None, True]},
    }
    rows_in = [
        util.event(t, "big-1", "Snapshot", big),
        util.event(t, "kunde-ü-日本語-🚀", "Bestellung.erstellt ✓ 注文", unicode_payload),
        util.event(t, "tomb-1", "Deleted", None),
        util.event(t, "json-null", "Literal", "null"),
        util.event(t, "json-scalar", "Literal", '"just a string ü"'),
        util.event(t, "json-empty", "Literal", "{}"),
        util.event(t, "ws", "Spaces", '{ "b" : 2 ,   "a":1 }'),
    ]
    # The big one alone, the rest together: both a single-row and a multi-row transaction.
    util.commit_events(db.conn, rows_in[:1])
    util.commit_events(db.conn, rows_in[1:])
    endpos = db.wal_lsn()
    rows = db.rows()
    size, stored = util.query_one(db.conn, "SELECT octet_length(payload::text),"
                                           " pg_column_size(payload) FROM public.outbox"
                                           " WHERE aggregateid = 'big-1'")
    print("big payload: %d bytes of text, %d bytes stored" % (size, stored))
    assert size > 200000 and stored > 8000, "big payload should be TOASTed, not compressed to tiny"
    assert rows[rows_in[2][0]].payload is None

    run_to_endpos(pgoutbox, db, endpos)
    messages = db.kafka_messages()
    dups = util.check_delivery(messages, rows)   # byte-exact value/key/headers
    assert dups == 0, "a single clean run should deliver each event once"
    by_id = {m.id: m for m in messages}
    assert by_id[rows_in[2][0]].value is None
    assert by_id[rows_in[3][0]].value == b"null"
    assert len(by_id[rows_in[0][0]].value) == size
    uni = by_id[rows_in[1][0]]
    assert uni.key == "kunde-ü-日本語-🚀".encode("utf-8")
    assert uni.header("type") == "Bestellung.erstellt ✓ 注文".encode("utf-8")
    assert "日本語のテキスト".encode("utf-8") in uni.value


# ---------------------------------------------------------------------------
# 3. Pipelined streaming, then SIGTERM or SIGINT
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_streaming_while_running_then_signal(request, outbox_db, pgoutbox, sig):
    db = outbox_db
    types = [db.aggtype("live%d" % i) for i in range(2)]
    p = pgoutbox.start(*db.args())
    # Streaming live, not catching up: the walsender is attached before we write.
    util.wait_attached(db.conn, db.slot, p, 30)
    n = 0
    for rnd in range(3):
        for txn in range(10):
            util.commit_events(db.conn, [util.event(types[(txn + i) % 2], "k%d" % (i % 3), "Ev",
                                                    {"round": rnd, "txn": txn, "i": i})
                                         for i in range(10)])
            n += 10
        lsn = db.wal_lsn()
        util.wait_confirmed(db.conn, db.slot, lsn, 30, proc=p)
    assert p.poll() is None, "pgoutbox exited on its own\n" + p.describe()
    p.signal(sig)
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)

    rows = db.rows()
    assert len(rows) == n
    messages = db.kafka_messages()
    dups = util.check_delivery(messages, rows)
    util.note("%s: %d duplicates of %d messages" % (request.node.name, dups, len(messages)))


# ---------------------------------------------------------------------------
# 4. SIGTERM or SIGKILL mid-stream, restart: nothing lost, confirmed means acked
# ---------------------------------------------------------------------------

class Writer(threading.Thread):
    """Commits small outbox transactions at an application-like pace.  It
    writes at least `minimum` events and, once told to stop, `tail` more, so
    it is still writing while the daemon shuts down and after it exited."""

    def __init__(self, db, types, minimum, tail=300, cap=40000):
        super().__init__(daemon=True)
        self.conn = db.connect()
        self.types, self.minimum, self.tail, self.cap = types, minimum, tail, cap
        self.stop = threading.Event()
        self.stop_at = None
        self.txns = []          # (ids, pg_current_wal_lsn() read right after the commit)
        self.events = 0
        self.error = None
        self.rng = random.Random(7)

    def run(self):
        try:
            i = 0
            while self.events < self.cap:
                if self.stop.is_set():
                    if self.stop_at is None:
                        self.stop_at = max(self.events + self.tail, self.minimum)
                    if self.events >= self.stop_at:
                        break
                rows = [util.event(self.types[(i + j) % len(self.types)], "w%d" % ((i + j) % 20),
                                   "Tick", {"i": i, "j": j})
                        for j in range(self.rng.randint(1, 5))]
                ids = util.commit_events(self.conn, rows)
                self.txns.append((ids, util.current_wal_lsn(self.conn)))
                self.events += len(ids)
                i += 1
                # Application-like pace (~1,000 events/s): the daemon's
                # progress is not measured against a firehose.
                time.sleep(0.003)
        except Exception as e:  # surfaced by the test
            self.error = e


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_stop_mid_stream_then_restart_loses_nothing(outbox_db, pgoutbox, how):
    """SIGTERM: clean stop (exit 0).  SIGKILL: a crash, no draining at all.
    Either way the slot was confirmed only for what Kafka has, and a restart
    delivers the rest."""
    db = outbox_db
    types = [db.aggtype("mid%d" % i) for i in range(3)]
    writer = Writer(db, types, minimum=3000)
    p1 = pgoutbox.start(*db.args(), name="before-sigterm")
    writer.start()
    try:
        util.wait_for(lambda: writer.txns or writer.error, 30, "the writer's first commit")
        assert writer.error is None, writer.error
        util.wait_confirmed(db.conn, db.slot, writer.txns[0][1], 30, proc=p1)
        # The first acknowledgements wait for Kafka to create the topics; act
        # in the steady state after that, with traffic in flight.
        util.wait_confirmed(db.conn, db.slot, writer.txns[-1][1], 30, proc=p1)
        written_at_signal = writer.events
        assert writer.is_alive(), ("writer finished before SIGTERM (%d events, error %r): "
                                   "test did not stop mid-stream" % (writer.events, writer.error))
        if how == "sigterm":
            p1.terminate()
            p1.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)
        else:
            p1.kill()
            assert p1.returncode == -signal.SIGKILL, p1.describe()
            # The walsender notices the dead client on its own; a restart
            # against a still-active slot is not what this test is about.
            util.wait_for(lambda: not util.slot_state(db.conn, db.slot)[1], 30,
                          "slot %s to become inactive" % db.slot)
        written_at_exit = writer.events
        confirmed_after_stop = util.slot_state(db.conn, db.slot)[0]
        # Confirmed means acknowledged: every transaction wholly before the
        # confirmed LSN is in Kafka already, before any restart.
        in_kafka = {m.id for m in db.kafka_messages()}
    finally:
        writer.stop.set()
    writer.join(60)
    assert not writer.is_alive(), "writer did not finish"
    assert writer.error is None, writer.error
    covered = [ids for ids, lsn in writer.txns if util.lsn_ge(db.conn, confirmed_after_stop, lsn)]
    lost = [i for ids in covered for i in ids if i not in in_kafka]
    print("%s after %d events written, exit after %d; slot confirmed at %s covering %d of "
          "%d transactions (%d events in Kafka); writer ended at %d events"
          % (how, written_at_signal, written_at_exit, confirmed_after_stop, len(covered),
             len(writer.txns), len(in_kafka), writer.events))
    assert covered, "slot confirmed none of the writer's transactions"
    assert not lost, ("%d events of transactions before the confirmed LSN %s are not in Kafka "
                      "(e.g. %r)" % (len(lost), confirmed_after_stop, lost[:5]))
    assert len(covered) < len(writer.txns), "nothing left for the restart: test is too weak"
    if how == "sigterm":
        # ... and a clean stop confirms what was acknowledged: if transaction
        # m has events in Kafka, transaction m-1 was received completely and
        # acknowledged while draining, so the slot is past the WAL position
        # read right after transaction m-2 (covered is a prefix).
        m = max((k for k, (ids, _) in enumerate(writer.txns) if any(i in in_kafka for i in ids)),
                default=-1)
        assert len(covered) >= m - 1, (
            "after SIGTERM the slot is confirmed through transaction #%d only, but Kafka has "
            "events of transaction #%d: acknowledged transactions were not confirmed"
            % (len(covered) - 1, m))

    endpos = db.wal_lsn()
    run_to_endpos(pgoutbox, db, endpos, name="after-restart")
    rows = db.rows()
    assert len(rows) == writer.events
    messages = db.kafka_messages()
    dups = util.check_delivery(messages, rows)
    util.note("%s: %d duplicates of %d messages after restart" % (how, dups, len(messages)))
    first = util.first_deliveries_by_key(messages)
    for k, ids in first.items():
        order = [(json.loads(rows[i].payload)["i"], json.loads(rows[i].payload)["j"]) for i in ids]
        assert order == sorted(order), "key %r: first deliveries out of commit order" % (k,)


# ---------------------------------------------------------------------------
# 5. Configuration file
# ---------------------------------------------------------------------------

def kafka_log_dir(db):
    """The broker's data directory when the stack is scripts/stack.sh's."""
    state = db.stack.env.get("PGOUTBOX_STATE")
    path = os.path.join(state, "kafka", "data") if state else None
    if not path or not os.path.isdir(path):
        pytest.skip("Kafka's data directory is not at $PGOUTBOX_STATE/kafka/data")
    return path


def test_producer_idempotent_by_default_and_X_passes_through(outbox_db, pgoutbox):
    db = outbox_db
    log_dir = kafka_log_dir(db)
    plain, override = db.aggtype("idem"), db.aggtype("noidem")
    util.commit_events(db.conn, [util.event(plain, "k%d" % i, "I", {"i": i}) for i in range(5)])
    run_to_endpos(pgoutbox, db, db.wal_lsn(), name="default")
    util.commit_events(db.conn, [util.event(override, "k%d" % i, "I", {"i": i})
                                 for i in range(5)])
    run_to_endpos(pgoutbox, db, db.wal_lsn(), "-X", "enable.idempotence=false", name="override")
    util.check_delivery(db.kafka_messages(), db.rows())
    default_batches = util.record_batches(log_dir, util.default_topic(plain))
    assert default_batches, "no record batches found for %s" % util.default_topic(plain)
    assert all(pid >= 0 for pid, _ in default_batches), (
        "by default the producer must be idempotent (batches carry a producer id): %r"
        % default_batches)
    assert all(attrs & 0x08 == 0 for _, attrs in default_batches), "timestamps not CreateTime"
    override_batches = util.record_batches(log_dir, util.default_topic(override))
    assert override_batches and all(pid == -1 for pid, _ in override_batches), (
        "-X enable.idempotence=false did not reach the producer: %r" % override_batches)


def write_config(tmp_path, lines, name="pgoutbox.conf"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_config_file(outbox_db, pgoutbox, tmp_path):
    db = outbox_db
    t = db.aggtype("cfg")
    util.commit_events(db.conn, [util.event(t, "a%d" % i, "Cfg", {"i": i}) for i in range(20)])
    endpos = db.wal_lsn()
    conf = write_config(tmp_path, [
        "# pgoutbox configuration for an end-to-end test",
        "",
        "conninfo = %s" % db.dsn,
        "brokers = %s" % db.brokers,
        "   # an indented comment",
        "slot = %s" % db.slot,
        "publication = pgoutbox",
        "table = public.outbox",
        "topic_template = cfg.${aggregatetype}.events",
        "shutdown_timeout = %d" % SHUTDOWN_TIMEOUT,
        "endpos = %s" % endpos,
        "kafka.client.id = e2e-test",
        "kafka.enable.idempotence = false",
    ])
    p = pgoutbox.start("-c", conf)
    p.expect_exit(util.EXIT_OK, ENDPOS_TIMEOUT)
    assert db.confirmed_at_least(endpos)
    messages = db.kafka_messages()
    util.check_delivery(messages, db.rows(), topic_for=lambda a: "cfg.%s.events" % a)
    # kafka.<property> reached librdkafka: the batches carry no producer id.
    batches = util.record_batches(kafka_log_dir(db), "cfg.%s.events" % t)
    assert batches and all(pid == -1 for pid, _ in batches), (
        "kafka.enable.idempotence = false in the file did not reach the producer: %r" % batches)


def test_config_file_command_line_wins(outbox_db, pgoutbox, tmp_path):
    db = outbox_db
    t = db.aggtype("cfgwin")
    util.commit_events(db.conn, [util.event(t, "a", "Cfg", {"i": 1})])
    endpos = db.wal_lsn()
    conf = write_config(tmp_path, [
        "conninfo = %s" % db.dsn,
        "brokers = %s" % db.brokers,
        "slot = no_such_slot_in_file",
    ])
    p = pgoutbox.start("-c", conf, "--slot", db.slot, "--endpos", endpos,
                       "--shutdown-timeout", SHUTDOWN_TIMEOUT)
    p.expect_exit(util.EXIT_OK, ENDPOS_TIMEOUT)
    util.check_delivery(db.kafka_messages(), db.rows())


def test_config_file_unknown_key(outbox_db, pgoutbox, tmp_path):
    db = outbox_db
    conf = write_config(tmp_path, [
        "conninfo = %s" % db.dsn,
        "brokers = %s" % db.brokers,
        "slot = %s" % db.slot,
        "frobnicate_level = 3",
    ])
    p = pgoutbox.start("-c", conf)
    p.expect_exit(util.EXIT_USAGE, 30)
    assert "frobnicate_level" in p.stderr, "error does not name the unknown key:\n" + p.stderr


# ---------------------------------------------------------------------------
# 6. Topic template
# ---------------------------------------------------------------------------

def test_topic_template(outbox_db, pgoutbox):
    db = outbox_db
    types = [db.aggtype("tpl%d" % i) for i in range(2)]
    util.commit_events(db.conn, [util.event(types[i % 2], "k%d" % i, "T", {"i": i})
                                 for i in range(10)])
    endpos = db.wal_lsn()
    run_to_endpos(pgoutbox, db, endpos, "--topic-template", "fixed.${aggregatetype}.x")
    topics = util.topics_with(db.brokers, db.tag)
    assert topics == sorted("fixed.%s.x" % t for t in types), topics
    util.check_delivery(db.kafka_messages(), db.rows(), topic_for=lambda a: "fixed.%s.x" % a)


# ---------------------------------------------------------------------------
# 7. An idle outbox next to busy tables does not hold the slot back
# ---------------------------------------------------------------------------

@pytest.mark.core
def test_idle_outbox_slot_follows_unrelated_wal(outbox_db, pgoutbox, stack):
    db = outbox_db
    t = db.aggtype("idle")
    util.commit_events(db.conn, [util.event(t, "k", "Once", {"n": 1})])
    with db.conn.cursor() as cur:
        cur.execute("CREATE TABLE public.busy (id bigserial PRIMARY KEY, v text)")
    db.conn.commit()
    neighbour = util.connect(stack.dsn("postgres"), autocommit=True)
    busy = "e2e_neighbour_%s" % db.tag
    try:
        with neighbour.cursor() as cur:
            cur.execute("CREATE TABLE %s (id bigserial PRIMARY KEY, v text)" % busy)
        for _ in range(20):
            with db.conn.cursor() as cur:
                cur.execute("INSERT INTO public.busy (v) SELECT repeat('x', 100)"
                            " FROM generate_series(1, 200)")
            db.conn.commit()
            with neighbour.cursor() as cur:
                cur.execute("INSERT INTO %s (v) SELECT repeat('y', 100)"
                            " FROM generate_series(1, 200)" % busy)
        endpos = db.wal_lsn()
        run_to_endpos(pgoutbox, db, endpos)
    finally:
        with neighbour.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS %s" % busy)
        neighbour.close()
    util.check_delivery(db.kafka_messages(), db.rows())


# ---------------------------------------------------------------------------
# 8. Updates, deletes and truncates of the outbox table are ignored
# ---------------------------------------------------------------------------

def test_updates_deletes_truncate_ignored(outbox_db, pgoutbox):
    db = outbox_db
    t = db.aggtype("udt")
    with db.conn.cursor() as cur:
        cur.execute("ALTER PUBLICATION pgoutbox SET (publish = 'insert, update, delete, truncate')")
    db.conn.commit()
    ids = util.commit_events(db.conn, [util.event(t, "k%d" % (i % 3), "Ins", {"i": i})
                                       for i in range(30)])
    rows = db.rows()
    with db.conn.cursor() as cur:
        cur.execute("UPDATE public.outbox SET payload = '{\"updated\": true}', type = 'Upd'"
                    " WHERE id = ANY(%s::uuid[])", (ids[:10],))
        cur.execute("DELETE FROM public.outbox WHERE id = ANY(%s::uuid[])", (ids[10:20],))
    db.conn.commit()
    with db.conn.cursor() as cur:
        cur.execute("TRUNCATE public.outbox")
    db.conn.commit()
    util.commit_events(db.conn, [util.event(t, "after", "Ins", {"after": i}) for i in range(5)])
    rows.update(db.rows())
    endpos = db.wal_lsn()
    run_to_endpos(pgoutbox, db, endpos)
    messages = db.kafka_messages()
    dups = util.check_delivery(messages, rows)
    assert dups == 0, "%d extra messages: updates or deletes were published" % dups


# ---------------------------------------------------------------------------
# 9. One large transaction
# ---------------------------------------------------------------------------

def test_large_transaction(request, outbox_db, pgoutbox):
    db = outbox_db
    types = [db.aggtype("large%d" % i) for i in range(2)]
    n = 20000
    with db.conn.cursor() as cur:
        cur.execute("INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload)"
                    " SELECT gen_random_uuid(), CASE WHEN g %% 2 = 0 THEN %s ELSE %s END,"
                    " 'k' || (g %% 8), 'Bulk', jsonb_build_object('g', g)"
                    " FROM generate_series(1, %s) g", (types[0], types[1], n))
    db.conn.commit()
    endpos = db.wal_lsn()
    rows = db.rows()
    assert len(rows) == n
    run_to_endpos(pgoutbox, db, endpos)
    messages = db.kafka_messages()
    dups = util.check_delivery(messages, rows)
    util.note("%s: %d duplicates of %d messages" % (request.node.name, dups, len(messages)))
    for k, ids in util.first_deliveries_by_key(messages).items():
        gs = [json.loads(rows[i].payload)["g"] for i in ids]
        assert gs == sorted(gs), "key %r: rows of one transaction out of order" % (k,)


# ---------------------------------------------------------------------------
# 10. Per-key order is commit order, not insert order
# ---------------------------------------------------------------------------

def test_key_order_is_commit_order(outbox_db, pgoutbox):
    db = outbox_db
    t = db.aggtype("interleave")
    a, b = db.connect(), db.connect()
    e = lambda key, n: util.event(t, key, "Step", {"n": n})
    a_rows = [e("k", 1), e("j", 1)]
    b_rows = [e("k", 2), e("j", 2)]
    a_more = [e("k", 3), e("j", 3)]
    with a.cursor() as cur:
        util.insert_events(cur, a_rows[:1])      # A first inserts k/1 ...
    with b.cursor() as cur:
        util.insert_events(cur, b_rows)          # ... B inserts k/2, j/2 and commits first
    b.commit()
    with a.cursor() as cur:
        util.insert_events(cur, a_rows[1:] + a_more)
    a.commit()
    endpos = db.wal_lsn()
    rows = db.rows()
    run_to_endpos(pgoutbox, db, endpos)
    messages = db.kafka_messages()
    util.check_delivery(messages, rows)
    first = util.first_deliveries_by_key(messages)
    topic = util.default_topic(t)
    ns = {k: [json.loads(rows[i].payload)["n"] for i in ids] for (tp, k), ids in first.items()}
    assert ns == {b"k": [2, 1, 3], b"j": [2, 1, 3]}, (
        "per-key order must follow commit order (B committed before A): %r" % ns)
    assert {tp for tp, _ in first} == {topic}


# ---------------------------------------------------------------------------
# 11. Confirm only what Kafka acknowledged: an unreachable broker
# ---------------------------------------------------------------------------

def test_unreachable_broker_confirms_nothing(outbox_db, pgoutbox):
    db = outbox_db
    t = db.aggtype("nobroker")
    util.commit_events(db.conn, [util.event(t, "k%d" % i, "T", {"i": i}) for i in range(5)])
    lsn = db.wal_lsn()   # >= the end of that transaction
    dead = "127.0.0.1:%d" % util.free_port()
    p = pgoutbox.start(*db.args(brokers=dead, shutdown_timeout=3), name="no-broker")

    def sent():
        assert p.poll() is None, ("pgoutbox exited %r while Kafka is unreachable (a transient "
                                  "failure)\n%s" % (p.returncode, p.describe()))
        ws = util.walsender_of(db.conn, db.slot)
        return ws is not None and ws[1] is not None and util.lsn_ge(db.conn, ws[1], lsn)

    # The walsender has sent the transaction to pgoutbox ...
    util.wait_for(sent, 30, "the walsender to send the transaction")
    # ... and for a while (a bounded observation, not a synchronisation) the
    # slot must not be confirmed past it, nor may pgoutbox give up.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert not db.confirmed_at_least(lsn), (
            "slot confirmed past a transaction Kafka never acknowledged: %r\n%s"
            % (util.slot_state(db.conn, db.slot), p.describe()))
        assert p.poll() is None, "pgoutbox exited %r while Kafka is unreachable\n%s" % (
            p.returncode, p.describe())
        time.sleep(0.1)
    p.terminate()
    p.expect_exit(util.EXIT_OK, 3 + 10)
    assert not db.confirmed_at_least(lsn), (
        "after SIGTERM the slot is confirmed past unacknowledged events: %r"
        % (util.slot_state(db.conn, db.slot),))
    assert util.topics_with(db.brokers, db.tag) == []
    # With Kafka back, everything arrives.
    run_to_endpos(pgoutbox, db, lsn, name="with-broker")
    util.check_delivery(db.kafka_messages(), db.rows())


# ---------------------------------------------------------------------------
# 12. Losing the PostgreSQL connection is transient
# ---------------------------------------------------------------------------

def test_reconnects_after_walsender_terminated(request, outbox_db, pgoutbox):
    db = outbox_db
    types = [db.aggtype("recon%d" % i) for i in range(2)]
    p = pgoutbox.start(*db.args())
    util.wait_attached(db.conn, db.slot, p, 30)
    killed = set()
    for rnd in range(3):
        for txn in range(10):
            util.commit_events(db.conn, [util.event(types[i % 2], "k%d" % (i % 4), "R",
                                                    {"round": rnd, "txn": txn, "i": i})
                                         for i in range(5)])
        lsn = db.wal_lsn()
        if rnd < 2:
            ws = util.walsender_of(db.conn, db.slot)
            assert ws is not None, "pgoutbox is not streaming\n" + p.describe()
            util.query_one(db.conn, "SELECT pg_terminate_backend(%s)", (ws[0],))
            killed.add(ws[0])
        util.wait_confirmed(db.conn, db.slot, lsn, 60, proc=p)
    ws = util.walsender_of(db.conn, db.slot)
    assert ws is not None and ws[0] not in killed, "pgoutbox did not reconnect\n" + p.describe()
    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)
    messages = db.kafka_messages()
    dups = util.check_delivery(messages, db.rows())
    util.note("%s: %d duplicates of %d messages" % (request.node.name, dups, len(messages)))


def test_host_list_asks_the_next_host_at_once(outbox_db, pgoutbox):
    """A conninfo listing several hosts (a primary and its standbys): a host
    that refuses the connection does not hold up the next one; the back-off
    grows only after a whole round over the list failed.  Two dead hosts
    before the live one cost no back-off (before: 1 s, then 2 s)."""
    db = outbox_db
    params = psycopg2.extensions.parse_dsn(db.dsn)
    dead = [util.free_port(), util.free_port()]
    dsn = "host=127.0.0.1,127.0.0.1,127.0.0.1 port=%d,%d,%s user=%s dbname=%s" % (
        dead[0], dead[1], params["port"], params["user"], params["dbname"])
    p = pgoutbox.start(*db.args(dsn=dsn))
    util.wait_attached(db.conn, db.slot, p, 30)
    took = time.monotonic() - p.started
    err = p.stderr
    for port in dead:
        assert re.search(r'WARNING:  could not connect to the server: connection to server at '
                         r'"127\.0\.0\.1", port %d failed: Connection refused\n.*; trying the '
                         r'next host\n' % port, err), err
    assert "reconnecting in" not in err, err
    assert took < 2.5, "streaming %.1f s after the start\n%s" % (took, p.describe())
    util.commit_events(db.conn, [util.event(db.aggtype("hosts"), "k", "H", {"n": 1})])
    util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 30, proc=p)
    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)


# ---------------------------------------------------------------------------
# 13. Schema changes of the outbox table while streaming
# ---------------------------------------------------------------------------

@pytest.mark.core
def test_outbox_schema_change(outbox_db, pgoutbox):
    db = outbox_db
    t = db.aggtype("ddl")
    rows = {}
    p = pgoutbox.start(*db.args())
    util.wait_attached(db.conn, db.slot, p, 30)
    ddl = [
        "ALTER TABLE public.outbox ADD COLUMN created_at timestamptz DEFAULT now()",
        "ALTER TABLE public.outbox ADD COLUMN note text",
        "ALTER TABLE public.outbox DROP COLUMN created_at",
    ]
    for step, stmt in enumerate([None] + ddl):
        if stmt:
            with db.conn.cursor() as cur:
                cur.execute(stmt)
            db.conn.commit()
        util.commit_events(db.conn, [util.event(t, "k%d" % i, "D", {"step": step, "i": i})
                                     for i in range(3)])
        rows.update(db.rows())
        util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 30, proc=p)
    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)
    util.check_delivery(db.kafka_messages(), rows)


# ---------------------------------------------------------------------------
# 14. --table: another table, columns in another order; the rest of the
#     publication is not the outbox
# ---------------------------------------------------------------------------

def test_table_option_and_other_tables_in_publication(outbox_db, pgoutbox):
    db = outbox_db
    t = db.aggtype("custom")
    with db.conn.cursor() as cur:
        cur.execute("CREATE SCHEMA app")
        cur.execute("CREATE TABLE app.events (note text, payload jsonb, type text NOT NULL,"
                    " aggregateid text NOT NULL, aggregatetype text NOT NULL,"
                    " id uuid PRIMARY KEY)")
        cur.execute("ALTER PUBLICATION pgoutbox ADD TABLE app.events")
        cur.execute("GRANT SELECT ON app.events TO PUBLIC")
    db.conn.commit()
    with db.conn.cursor() as cur:   # one transaction touching both tables
        util.insert_events(cur, [util.event(t, "decoy", "Wrong", {"decoy": True})],
                           table="public.outbox")
        util.insert_events(cur, [util.event(t, "k%d" % i, "Right", {"i": i}) for i in range(5)],
                           table="app.events")
    db.conn.commit()
    util.commit_events(db.conn, [util.event(t, "decoy2", "Wrong", None)], table="public.outbox")
    endpos = db.wal_lsn()
    rows = util.fetch_rows(db.conn, "app.events")
    run_to_endpos(pgoutbox, db, endpos, "--table", "app.events")
    util.check_delivery(db.kafka_messages(), rows)


# ---------------------------------------------------------------------------
# 15. Once everything is acknowledged, the slot catches up with the WAL end
# ---------------------------------------------------------------------------

CATCH_UP_BOUND = 8   # seconds; a correct daemon needs the ack time (~1-2 s) plus ~0.1 s


def test_slot_catches_up_after_slow_ack(outbox_db, pgoutbox):
    """An event whose acknowledgement is slow (first message to a new topic:
    Kafka creates it) followed by WAL that is not an outbox event.  The
    walsender reports that WAL's end while the event is still unacknowledged;
    once Kafka acknowledged, nothing is in flight and the slot must reach the
    WAL end promptly, not at whatever later WAL happens to come by.

    Several rounds: PostgreSQL's own background WAL (a standby snapshot every
    15 s) could rescue one round by luck, not the one right after it."""
    db = outbox_db
    with db.conn.cursor() as cur:
        cur.execute("CREATE TABLE public.trailing (v text)")
    db.conn.commit()
    p = pgoutbox.start(*db.args("-v"))
    util.wait_attached(db.conn, db.slot, p, 30)
    rows = {}
    for rnd in range(3):
        t = db.aggtype("slowack%d" % rnd)          # a topic Kafka does not have yet
        util.commit_events(db.conn, [util.event(t, "k", "T", {"round": rnd})])
        rows.update(db.rows())
        with db.conn.cursor() as cur:
            cur.execute("INSERT INTO public.trailing SELECT 'x' FROM generate_series(1, 100)")
        db.conn.commit()
        lsn = db.wal_lsn()
        started = time.monotonic()
        try:
            util.wait_confirmed(db.conn, db.slot, lsn, CATCH_UP_BOUND, proc=p)
        except AssertionError as e:
            ws = util.query_one(db.conn, "SELECT r.sent_lsn::text, r.write_lsn::text,"
                                         " r.flush_lsn::text FROM pg_replication_slots s"
                                         " JOIN pg_stat_replication r ON r.pid = s.active_pid"
                                         " WHERE s.slot_name = %s", (db.slot,))
            in_kafka = len(db.kafka_messages())
            raise AssertionError(
                "round %d: slot not confirmed to the WAL end %s within %d s although Kafka "
                "has all %d events; walsender sent/write/flush = %r\n%s"
                % (rnd, lsn, CATCH_UP_BOUND, in_kafka, ws, e)) from None
        util.note("slow ack round %d: slot caught up in %.1f s"
                  % (rnd, time.monotonic() - started))
    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)
    util.check_delivery(db.kafka_messages(), rows)


# ---------------------------------------------------------------------------
# 16. An event that cannot be published stops pgoutbox before it is confirmed
# ---------------------------------------------------------------------------

def test_unpublishable_event_stops_without_confirming(outbox_db, pgoutbox):
    db = outbox_db
    good = db.aggtype("good")
    first = util.commit_events(db.conn, [util.event(good, "k", "T", {"n": 1})])
    bad_id = util.commit_events(db.conn, [util.event("not a/valid topic ü " + db.tag, "k", "T",
                                                     {"n": 2})])[0]
    after_bad = db.wal_lsn()
    util.commit_events(db.conn, [util.event(good, "k", "T", {"n": 3})])
    p = pgoutbox.start(*db.args(endpos=db.wal_lsn()))
    p.expect_exit(util.EXIT_RUNTIME, ENDPOS_TIMEOUT)
    assert bad_id in p.stderr, "the error does not name the event:\n" + p.stderr
    assert not db.confirmed_at_least(after_bad), (
        "slot confirmed past the event that was never published: %r"
        % (util.slot_state(db.conn, db.slot),))
    ids = {m.id for m in db.kafka_messages()}
    assert set(first) <= ids, "the event before the bad one was not published"
    assert bad_id not in ids


# ---------------------------------------------------------------------------
# 17. Backpressure: more bytes than the producer queue holds
# ---------------------------------------------------------------------------

def test_backpressure_small_producer_queue(request, outbox_db, pgoutbox):
    """40 events of ~200 KB (8 MB) through a 1 MB producer queue: pgoutbox
    must pause reading WAL rather than fail, and lose or reorder nothing."""
    db = outbox_db
    rng = seeded_rng(request)
    t = db.aggtype("bp")
    for txn in range(8):
        util.commit_events(db.conn, [
            util.event(t, "k%d" % (i % 3), "Big",
                       json.dumps({"txn": txn, "i": i,
                                   "blob": ["%064x" % rng.getrandbits(256) for _ in range(3000)]}))
            for i in range(5)])
    endpos = db.wal_lsn()
    rows = db.rows()
    p = run_to_endpos(pgoutbox, db, endpos, "-X", "queue.buffering.max.kbytes=1024")
    util.note("backpressure: %s" % ("pause logged" if "full" in p.stderr
                                    else "no pause visible in the log"))
    messages = db.kafka_messages()
    util.check_delivery(messages, rows)
    for k, ids in util.first_deliveries_by_key(messages).items():
        order = [(json.loads(rows[i].payload)["txn"], json.loads(rows[i].payload)["i"])
                 for i in ids]
        assert order == sorted(order), "key %r out of commit order under backpressure" % (k,)
