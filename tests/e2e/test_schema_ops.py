"""What users do to the outbox while pgoutbox runs (issue 11): a partitioned
outbox table (published via its root or not, a partition attached while
streaming), the table dropped and re-created or renamed, the publication
altered, an event larger than any limit, a producer queue smaller than the
largest event, a stream of transactions without events while Kafka is slow,
a connect that never completes, a hang-up while the stream is paused.

Each case was reproduced on main before the pipeline restructuring; there
events were confirmed past without reaching Kafka, or pgoutbox waited
forever, said nothing, or exited on an event it should have dead-lettered.
Here every event reaches Kafka, its dead-letter topic, or stops pgoutbox
loudly with the slot held before it.
"""

import hashlib
import http.client
import socket
import threading
import time

import psycopg2
import pytest
from confluent_kafka import Consumer

import faults_util as fu
import util
from conftest import ENDPOS_TIMEOUT

LIST_COLUMNS = ("id uuid NOT NULL, aggregatetype text NOT NULL, aggregateid text NOT NULL,"
                " type text NOT NULL, payload jsonb")


def execute(conn, *statements):
    with conn.cursor() as cur:
        for s in statements:
            cur.execute(s)
    conn.commit()


def events_of(db, n, kinds, tag="ev"):
    """n outbox rows over the aggregate types `kinds` (suffixed with the test's tag)."""
    return [util.event(db.aggtype(kinds[i % len(kinds)]), "k%d" % (i % 7), tag, {"seq": i})
            for i in range(n)]


def run_to_endpos(pgoutbox, db, *extra, name=None):
    endpos = db.wal_lsn()
    p = pgoutbox.start(*db.args(*extra, endpos=endpos), name=name)
    p.expect_exit(util.EXIT_OK, ENDPOS_TIMEOUT)
    assert db.confirmed_at_least(endpos)
    return p


def confirmed(db):
    return fu.confirmed(db.conn, db.slot)


def get(port, path, timeout=2.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


# ---------------------------------------------------------------------------
# Partitioned outbox tables
# ---------------------------------------------------------------------------

def make_partitioned(db, via_root):
    """Replace the fixture's outbox by a table partitioned by aggregate type
    (two partitions), published with or without publish_via_partition_root."""
    a, b = db.aggtype("pa"), db.aggtype("pb")
    execute(db.conn,
            "DROP PUBLICATION pgoutbox",
            "DROP TABLE public.outbox",
            "CREATE TABLE public.outbox (%s, PRIMARY KEY (id, aggregatetype))"
            " PARTITION BY LIST (aggregatetype)" % LIST_COLUMNS,
            "CREATE TABLE public.outbox_a PARTITION OF public.outbox FOR VALUES IN ('%s')" % a,
            "CREATE TABLE public.outbox_b PARTITION OF public.outbox FOR VALUES IN ('%s')" % b,
            "CREATE PUBLICATION pgoutbox FOR TABLE public.outbox WITH (publish = 'insert',"
            " publish_via_partition_root = %s)" % ("true" if via_root else "false"))
    return a, b


@pytest.mark.server
@pytest.mark.parametrize("via_root", [True, pytest.param(False, marks=pytest.mark.core)],
                         ids=["via-root", "partitions"])
def test_partitioned_outbox(outbox_db, pgoutbox, via_root):
    db = outbox_db
    a, b = make_partitioned(db, via_root)
    rows = [util.event(a if i % 2 else b, "k%d" % (i % 5), "Part", {"seq": i}) for i in range(100)]
    util.commit_events(db.conn, rows[:50])
    for r in rows[50:]:
        util.commit_events(db.conn, [r])
    run_to_endpos(pgoutbox, db)
    messages = db.kafka_messages()
    util.check_delivery(messages, util.fetch_rows(db.conn))
    assert len({m.id for m in messages}) == 100, "%d of 100 delivered" % len({m.id for m in messages})


@pytest.mark.server
def test_partition_attached_while_streaming(outbox_db, pgoutbox):
    """A partition created after pgoutbox connected streams under its own
    name: it is identified on the side connection, not ignored."""
    db = outbox_db
    a, b = make_partitioned(db, via_root=False)
    c = db.aggtype("pc")
    p = pgoutbox.start(*db.args())
    util.wait_attached(db.conn, db.slot, p, 30)
    util.commit_events(db.conn, [util.event(a, "k", "Before", {"n": i}) for i in range(20)])
    execute(db.conn, "CREATE TABLE public.outbox_c PARTITION OF public.outbox"
                     " FOR VALUES IN ('%s')" % c)
    util.commit_events(db.conn, [util.event(c, "k", "New", {"n": i}) for i in range(30)])
    util.commit_events(db.conn, [util.event(b, "k", "After", {"n": i}) for i in range(20)])
    end = db.wal_lsn()
    util.wait_confirmed(db.conn, db.slot, end, 60, p)
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)
    messages = db.kafka_messages()
    util.check_delivery(messages, util.fetch_rows(db.conn))
    assert len({m.id for m in messages}) == 70


# ---------------------------------------------------------------------------
# The table dropped and re-created, renamed; the publication altered
# ---------------------------------------------------------------------------

def streaming(db, pgoutbox, n=10):
    """pgoutbox streaming, n events delivered and confirmed."""
    p = pgoutbox.start(*db.args())
    util.wait_attached(db.conn, db.slot, p, 30)
    util.commit_events(db.conn, events_of(db, n, ["pre"]))
    util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 60, p)
    return p


def expect_stop_at_change(db, p, before, words):
    """pgoutbox exits 2 saying `words`, and the slot stays before the change
    (committed after WAL position `before`)."""
    p.expect_exit(util.EXIT_RUNTIME, 60)
    for w in words:
        assert w in p.stderr, "%r not in the error:\n%s" % (w, p.describe())
    c = confirmed(db)
    assert c <= fu.lsn(before) + 1024 * 1024, "confirmed %s" % fu.lsn_text(c)
    return c


@pytest.mark.server
def test_table_recreated_outside_publication(outbox_db, pgoutbox):
    db = outbox_db
    p = streaming(db, pgoutbox)
    before = db.wal_lsn()
    execute(db.conn, "DROP TABLE public.outbox",
            "CREATE TABLE public.outbox (%s, PRIMARY KEY (id))" % LIST_COLUMNS,
            "GRANT SELECT ON public.outbox TO PUBLIC")
    change = db.wal_lsn()
    util.commit_events(db.conn, events_of(db, 20, ["post"]))
    c = expect_stop_at_change(db, p, before, ["public.outbox", "not in publication \"pgoutbox\"",
                                               "ALTER PUBLICATION pgoutbox ADD TABLE"])
    assert c < fu.lsn(change), "the slot was confirmed past the re-creation (%s >= %s)" % (
        fu.lsn_text(c), change)
    # A restart stops at once, before streaming anything.
    p2 = pgoutbox.start(*db.args(), name="restart")
    p2.expect_exit(util.EXIT_RUNTIME, 60)
    assert "not in publication" in p2.stderr, p2.describe()
    assert confirmed(db) == c
    fu.report("outbox table dropped and re-created outside the publication", 1, 10, 0, 0,
              "- (exit 2 naming the table, slot held before the change; restart exits 2 too)")


@pytest.mark.server
def test_table_renamed(outbox_db, pgoutbox):
    db = outbox_db
    p = streaming(db, pgoutbox)
    before = db.wal_lsn()
    execute(db.conn, "ALTER TABLE public.outbox RENAME TO outbox_old")
    rename = db.wal_lsn()
    util.commit_events(db.conn, events_of(db, 5, ["post"]), table="public.outbox_old")
    c = expect_stop_at_change(db, p, before, ["public.outbox"])
    assert ("does not exist" in p.stderr or "renamed" in p.stderr), p.describe()
    assert c < fu.lsn(db.wal_lsn())
    assert c <= fu.lsn(rename) + 16384 or c < fu.lsn(rename), fu.lsn_text(c)
    fu.report("outbox table renamed while streaming", 1, 10, 0, 0,
              "- (exit 2 naming the table, slot held before the rename)")


@pytest.mark.server
def test_publication_stops_publishing_inserts(outbox_db, pgoutbox):
    db = outbox_db
    p = streaming(db, pgoutbox)
    before = db.wal_lsn()
    execute(db.conn, "ALTER PUBLICATION pgoutbox SET (publish = 'update')")
    after_alter = db.wal_lsn()
    util.commit_events(db.conn, events_of(db, 20, ["skip"]))
    c = expect_stop_at_change(db, p, before, ["does not publish inserts"])
    assert c < fu.lsn(after_alter), "confirmed %s, past the ALTER (ends before %s)" % (
        fu.lsn_text(c), after_alter)
    assert not any(db.aggtype("skip") in m.topic for m in db.kafka_messages())
    fu.report("publication altered to publish = 'update' while streaming", 1, 10, 0, 0,
              "- (exit 2, slot held before the ALTER)")


@pytest.mark.server
def test_table_dropped_and_recreated_inside_publication_warns(outbox_db, pgoutbox):
    """Re-created and added back in one transaction: nothing is missing, it
    streams on, and the OID change is reported."""
    db = outbox_db
    p = streaming(db, pgoutbox)
    execute(db.conn, "DROP TABLE public.outbox",
            "CREATE TABLE public.outbox (%s, PRIMARY KEY (id))" % LIST_COLUMNS,
            "GRANT SELECT ON public.outbox TO PUBLIC",
            "ALTER PUBLICATION pgoutbox ADD TABLE public.outbox")
    util.commit_events(db.conn, events_of(db, 10, ["post"]))
    util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 60, p)
    util.wait_for(lambda: "re-created" in p.stderr, 30, "the re-creation to be reported")
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)
    assert len({m.id for m in db.kafka_messages()}) == 20


# ---------------------------------------------------------------------------
# Events larger than any limit
# ---------------------------------------------------------------------------

def test_oversized_event_dead_lettered(outbox_db, pgoutbox):
    """Refused by the producer at produce time (above message.max.bytes): with
    on_error = dlq it goes to the dead-letter topic as a trimmed copy with its
    size and SHA-256; the stream goes on; a restart does not stop on it."""
    db = outbox_db
    dlq = "dlq_%s" % db.tag
    big = util.event(db.aggtype("big"), "b", "Big", {"pad": "x" * 300000})
    small = events_of(db, 6, ["ok"])
    util.commit_events(db.conn, small[:3])
    util.commit_events(db.conn, [small[3], big, small[4]])
    util.commit_events(db.conn, small[5:])
    p = run_to_endpos(pgoutbox, db, "--on-error", "dlq", "--dlq-topic", dlq,
                      "-X", "message.max.bytes=200000")
    assert "dead-letter" in p.stderr and big[0] in p.stderr, p.describe()
    assert "stopped: 6 events in 3 transactions produced, 6 acknowledged by Kafka, 1 sent to the" \
        " dead-letter topic" in p.stderr, p.describe()
    letters = util.read_topics(db.brokers, [dlq])
    assert len(letters) == 1
    m = letters[0]
    h = dict(m.headers)
    payload = util.query_one(db.conn, "SELECT payload::text FROM public.outbox WHERE id = %s",
                             (big[0],))[0].encode()
    assert h["id"] == big[0].encode()
    assert h["pgoutbox.original.size"] == str(len(payload)).encode()
    assert h["pgoutbox.original.sha256"] == hashlib.sha256(payload).hexdigest().encode()
    # ... the same digest as PostgreSQL's own, to find the row
    assert util.query_one(db.conn, "SELECT encode(sha256(convert_to(payload::text, 'UTF8')), 'hex')"
                                   " FROM public.outbox WHERE id = %s", (big[0],))[0].encode() \
        == h["pgoutbox.original.sha256"]
    assert len(m.value) == 65536 and payload.startswith(m.value)
    assert b"MSG_SIZE_TOO_LARGE" in h["pgoutbox.error"] or b"too large" in h["pgoutbox.error"]
    delivered = {x.id for x in db.kafka_messages() if x.topic != dlq}
    assert delivered == {r[0] for r in small}
    # Nothing waits on it any more.
    run_to_endpos(pgoutbox, db, "--on-error", "dlq", "--dlq-topic", dlq,
                  "-X", "message.max.bytes=200000", name="again")
    fu.report("event above message.max.bytes, on_error=dlq: trimmed dead letter", 1, 6, 0, 0,
              "- (size + sha256 headers; stream goes on)")


def test_oversized_event_stops(outbox_db, pgoutbox):
    db = outbox_db
    big = util.event(db.aggtype("big"), "b", "Big", {"pad": "x" * 300000})
    util.commit_events(db.conn, events_of(db, 3, ["ok"]))
    before = db.wal_lsn()
    util.commit_events(db.conn, [big])
    p = pgoutbox.start(*db.args("-X", "message.max.bytes=200000"))
    p.expect_exit(util.EXIT_RUNTIME, 60)
    assert big[0] in p.stderr and "on_error = dlq" in p.stderr, p.describe()
    assert confirmed(db) <= fu.lsn(before)


def test_message_max_bytes_above_queue(outbox_db, pgoutbox):
    """An event up to message.max.bytes would never fit a smaller queue:
    refused at start, and by --check, naming both settings."""
    db = outbox_db
    for extra in ((), ("--check",)):
        p = pgoutbox.run(*db.args("-X", "message.max.bytes=20000000", *extra), timeout=30)
        assert p.returncode == util.EXIT_USAGE, p.describe()
        assert "message.max.bytes = 20000000" in p.stderr, p.describe()
        assert "queue.buffering.max.kbytes = 16384" in p.stderr, p.describe()


# ---------------------------------------------------------------------------
# Bounded: transactions without events while Kafka is slow
# ---------------------------------------------------------------------------

@pytest.mark.pg_min(14)     # 13 sends no messages: test_neighbour_transactions_... is 13's
def test_empty_transactions_do_not_grow_memory(outbox_db, pgoutbox, stack):
    """200,000 transactions with nothing for pgoutbox (logical messages of
    another prefix, which PostgreSQL 14+ streams as Begin/Message/Commit)
    while one event waits for a frozen broker: the ledger folds them."""
    db = outbox_db
    assert fu.PLAIN_BIN.exists(), "build the plain daemon first: meson compile -C build"
    port = util.free_port()
    # The plain build: ASan's quarantine of freed memory would inflate RSS.
    p = util.PgoutboxProcess(fu.PLAIN_BIN, db.args("--metrics", str(port)), pgoutbox.workdir,
                             "plain", pgoutbox.env())
    pgoutbox.runs.append(p)
    util.wait_attached(db.conn, db.slot, p, 30)
    util.commit_events(db.conn, events_of(db, 1, ["warm"]))
    util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 60, p)
    with fu.FrozenKafka(stack):
        util.commit_events(db.conn, events_of(db, 1, ["held"]))
        time.sleep(0)   # the event is in flight from here on (the broker cannot answer)
        rss0 = fu.rss_kb(p.proc.pid)
        conn = db.connect(autocommit=True)
        with conn.cursor() as cur:
            cur.execute("SET synchronous_commit = off")
            cur.execute("DO $$ BEGIN FOR i IN 1..200000 LOOP"
                        " PERFORM pg_logical_emit_message(true, 'not-ours', 'x'); COMMIT;"
                        " END LOOP; END $$")
        end = fu.lsn(db.wal_lsn())

        def received():
            for line in get(port, "/metrics")[1].splitlines():
                if line.startswith("pgoutbox_received_lsn{"):
                    return float(line.split()[1]) >= end - 4096
            return False
        util.wait_for(received, 120, "pgoutbox to read the 200,000 transactions", interval=0.2)
        rss1 = fu.rss_kb(p.proc.pid)
        assert confirmed(db) < end, "confirmed past an unacknowledged event"
    util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 120, p)
    growth = rss1 - rss0
    util.note("200,000 empty transactions with Kafka frozen: RSS %d kB -> %d kB (+%d kB)"
              % (rss0, rss1, growth))
    # The old ring of 24-byte entries grew to 2^18 entries: 6 MB.
    assert growth < 3000, "RSS grew by %d kB over 200,000 transactions without events" % growth
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)
    assert len({m.id for m in db.kafka_messages()}) == 2


NEIGHBOUR_TXNS = 1000000


# 14 sends Begin and Commit for these too, and its ledger path is the one
# test_empty_transactions_do_not_grow_memory takes there (Begin, a message
# of another prefix, Commit): a million of them would cost the matrix a
# minute for nothing new.  15+ sends nothing for them.
@pytest.mark.core
@pytest.mark.pg_max(13)
def test_neighbour_transactions_do_not_grow_memory(outbox_db, pgoutbox, stack):
    """PostgreSQL 13 sends Begin and Commit for every transaction of the
    database, also one that changed only tables outside the publication
    (15 sends nothing for those; 13 has no logical messages either).  A neighbour commits 1,000,000 of them
    while one event waits for a frozen broker: pgoutbox's memory stays flat
    (the ledger folds them into the pending transaction's neighbours), it
    confirms nothing past the event, and once Kafka answers the slot catches
    up with the end of the neighbour's WAL."""
    db = outbox_db
    assert fu.PLAIN_BIN.exists(), "build the plain daemon first: meson compile -C build"
    execute(db.conn, "CREATE TABLE public.neighbour (n bigint)",
            "INSERT INTO public.neighbour VALUES (0)")
    port = util.free_port()
    # The plain build: ASan's quarantine of freed memory would inflate RSS.
    p = util.PgoutboxProcess(fu.PLAIN_BIN, db.args("--metrics", str(port)), pgoutbox.workdir,
                             "plain", pgoutbox.env())
    pgoutbox.runs.append(p)
    util.wait_attached(db.conn, db.slot, p, 30)
    util.commit_events(db.conn, events_of(db, 1, ["warm"]))
    util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 60, p)
    with fu.FrozenKafka(stack):
        # To the topic that exists: a topic first asked for while the broker
        # is frozen this long is another matter (see docs/guarantees.md).
        util.commit_events(db.conn, events_of(db, 1, ["warm"], tag="held"))
        held_at = fu.lsn(db.wal_lsn())
        rss0 = fu.rss_kb(p.proc.pid)
        conn = db.connect(autocommit=True)
        started = time.monotonic()
        with conn.cursor() as cur:
            cur.execute("SET synchronous_commit = off")
            cur.execute("DO $$ BEGIN FOR i IN 1..%d LOOP"
                        " UPDATE public.neighbour SET n = i; COMMIT;"
                        " END LOOP; END $$" % NEIGHBOUR_TXNS)
        end = fu.lsn(db.wal_lsn())
        committed_s = time.monotonic() - started

        def received():
            assert p.poll() is None, "pgoutbox exited (%r)\n%s" % (p.returncode, p.describe())
            for line in get(port, "/metrics")[1].splitlines():
                if line.startswith("pgoutbox_received_lsn{"):
                    return float(line.split()[1]) >= end - 4096
            return False
        util.wait_for(received, 300, "pgoutbox to read the neighbour's %d transactions"
                      % NEIGHBOUR_TXNS, interval=0.5)
        read_s = time.monotonic() - started
        rss1 = fu.rss_kb(p.proc.pid)
        assert confirmed(db) < held_at, "confirmed past an unacknowledged event"
    thawed = time.monotonic()
    util.wait_confirmed(db.conn, db.slot, fu.lsn_text(end), 120, p)
    caught_up_s = time.monotonic() - thawed
    growth = rss1 - rss0
    util.note("PostgreSQL %d, %d neighbour transactions (%.1f MB of WAL, committed in %.0f s, "
              "read in %.0f s) with Kafka frozen: RSS %d kB -> %d kB (%+d kB); confirmed to "
              "their end %.1f s after Kafka came back"
              % (stack.pg_version, NEIGHBOUR_TXNS, (end - held_at) / 1e6, committed_s, read_s,
                 rss0, rss1, growth, caught_up_s))
    # One 24-byte ledger entry per transaction would be 24 MB.
    assert growth < 3000, "RSS grew by %d kB over %d transactions without events" % (
        growth, NEIGHBOUR_TXNS)
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)
    # Read back as after any outage: a partition may lack a leader for a moment.
    assert len(fu.kafka_ids(db)) == 2


# ---------------------------------------------------------------------------
# Nothing blocks the loop, nothing spins
# ---------------------------------------------------------------------------

class SilentServer(threading.Thread):
    """Accepts TCP connections and never answers: a server that hangs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopped = False

    def run(self):
        self.sock.settimeout(0.2)
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                pass

    def stop(self):
        self.stopped = True
        self.sock.close()
        for c in self.conns:
            c.close()


def test_connecting_does_not_block_the_loop(stack, pgoutbox):
    """While PostgreSQL does not answer, /healthz and /metrics still do (the
    old blocking connect held the loop for connect_timeout each attempt)."""
    srv = SilentServer()
    srv.start()
    port = util.free_port()
    try:
        p = pgoutbox.start("-d", "host=127.0.0.1 port=%d user=x dbname=y connect_timeout=8" % srv.port,
                           "-b", stack.brokers, "--metrics", str(port))
        util.wait_for(lambda: srv.conns, 20, "pgoutbox to connect to the silent server")
        worst = 0.0
        for _ in range(10):
            t = time.monotonic()
            status, body = get(port, "/healthz", timeout=2)
            worst = max(worst, time.monotonic() - t)
            assert status == 503 and "connecting" in body, (status, body)
            time.sleep(0.3)
        assert worst < 0.5, "/healthz took %.2f s while connecting" % worst
        util.note("healthz while connecting to a silent server: worst %.1f ms" % (worst * 1000))
        util.wait_for(lambda: "no answer within 8 s" in p.stderr, 30, "the connect timeout")
        assert p.poll() is None
    finally:
        srv.stop()
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)


def test_hangup_while_paused(outbox_db, pgoutbox, stack):
    """Kafka's queue is full, so pgoutbox does not read; the walsender goes
    away.  The hang-up is seen at once (not after replication_timeout), and
    the loop does not spin on it meanwhile."""
    db = outbox_db
    p = pgoutbox.start(*db.args("-X", "queue.buffering.max.messages=5", "--replication-timeout", "0"))
    util.wait_attached(db.conn, db.slot, p, 30)
    with fu.FrozenKafka(stack):
        util.commit_events(db.conn, events_of(db, 50, ["held"]))
        util.wait_for(lambda: "queue is full" in p.stderr, 30, "backpressure")
        admin = db.connect(autocommit=True)
        ws = util.walsender_of(admin, db.slot)
        assert ws is not None
        cpu0 = fu.cpu_seconds(p.proc.pid)
        t = time.monotonic()
        util.query_one(admin, "SELECT pg_terminate_backend(%s)", (ws[0],))
        util.wait_for(lambda: "reconnecting" in p.stderr, 15, "the hang-up to be noticed")
        took = time.monotonic() - t
        time.sleep(2)    # a spinning loop would burn these two seconds
        cpu = fu.cpu_seconds(p.proc.pid) - cpu0
    util.note("hang-up while paused: noticed in %.1f s, %.2f CPU-s over %.1f s"
              % (took, cpu, time.monotonic() - t))
    assert took < 5, "the hang-up took %.1f s to notice" % took
    assert cpu < 1.0, "%.2f CPU seconds while paused: the loop spins" % cpu
    util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 120, p)
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)
    assert len({m.id for m in db.kafka_messages()}) == 50


# ---------------------------------------------------------------------------
# Recovery messages that are right
# ---------------------------------------------------------------------------

def test_slot_invalidated_while_kafka_down(outbox_db, pgoutbox, stack):
    """The slot is invalidated while events wait for a frozen broker: exit 2,
    and the messages say where the gap starts (the last confirmed position
    and its commit time) and that the waiting events will NOT come again."""
    db = outbox_db
    p = streaming(db, pgoutbox)
    confirmed0 = confirmed(db)
    last_commit = util.query_one(db.conn, "SELECT max(pg_xact_commit_timestamp(xmin)) FROM"
                                          " public.outbox")[0]
    admin = util.connect(stack.dsn("postgres"), autocommit=True)
    busy = "e2e_walfill_%s" % db.tag
    try:
        with fu.FrozenKafka(stack):
            util.commit_events(db.conn, events_of(db, 20, ["waiting"]))
            fu.execute(admin, "ALTER SYSTEM SET max_slot_wal_keep_size = '32MB'")
            util.query_one(admin, "SELECT pg_reload_conf()")
            with admin.cursor() as cur:
                cur.execute("CREATE TABLE %s (id bigserial PRIMARY KEY, v text)" % busy)

            def lost():
                with admin.cursor() as cur:
                    cur.execute("INSERT INTO %s (v) SELECT lpad('', 1800, md5(g::text))"
                                " FROM generate_series(1, 40000) g" % busy)
                fu.execute(admin, "CHECKPOINT")
                return fu.slot_row(db.conn, db.slot)[3] == "lost"
            util.wait_for(lost, 120, "wal_status = 'lost'", interval=0)
            # Where the gap starts: the slot's own last position (pgoutbox
            # may have confirmed a keepalive position after confirmed0).
            gap = fu.slot_row(db.conn, db.slot)[0]
            p.expect_exit(util.EXIT_RUNTIME, 90)
    finally:
        fu.execute(admin, "ALTER SYSTEM RESET max_slot_wal_keep_size")
        util.query_one(admin, "SELECT pg_reload_conf()")
        with admin.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS %s" % busy)
        admin.close()
    err = p.stderr
    assert "invalidated" in err and db.slot in err, p.describe()
    assert gap >= confirmed0, (fu.lsn_text(gap), fu.lsn_text(confirmed0))
    assert fu.lsn_text(gap) in err, "the gap's start %s is not named:\n%s" % (
        fu.lsn_text(gap), p.describe())
    assert last_commit.strftime("%Y-%m-%dT%H:%M:%S") in err, (
        "the last confirmed commit time %s is not named:\n%s" % (last_commit, p.describe()))
    assert "will NOT be sent again" in err, p.describe()
    assert "will be sent again after restart" not in err, p.describe()
    fu.report("slot invalidated while Kafka is down", 1, 10, 0, 0,
              "- (exit 2; names the gap's start LSN and commit time; in-flight events said lost)")


@pytest.mark.parametrize("via_root", [True, False], ids=["via-root", "partitions"])
def test_check_partitioned_outbox(outbox_db, pgoutbox, via_root):
    """--check names the partitions and how they stream."""
    db = outbox_db
    make_partitioned(db, via_root)
    p = pgoutbox.run(*db.args("--check"), timeout=60)
    out = p.stdout
    assert 'ok    table: table "public.outbox" exists (partitioned)' in out, out
    if via_root:
        assert p.returncode == 0, p.describe() + out
        assert ('ok    partitions: 2 partition(s); publication "pgoutbox" publishes them as '
                '"public.outbox" (publish_via_partition_root)') in out, out
    else:
        assert p.returncode == 0, p.describe() + out    # a warning, not a failure
        assert ('warn  partitions: 2 partition(s) stream under their own names (publication '
                '"pgoutbox" has publish_via_partition_root = false); pgoutbox maps them to '
                '"public.outbox" by OID') in out, out
