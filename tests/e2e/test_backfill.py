"""Backfill, replay and cleanup (issue 16).

- `--backfill` creates the slot and reads the outbox table in its snapshot:
  rows committed before the slot's consistent point come from the table,
  later ones from the stream; with a writer inserting throughout, every
  event arrives exactly once and per-key order holds across the boundary.
  The default run backfills 50,000 rows; PGOUTBOX_SOAK=1 1,000,000 (rate and
  peak RSS are noted for docs/guarantees.md).
- A slot invalidated under load while Kafka is away: pgoutbox exits 2 with
  the recovery commands; `setup-slot.sh --recreate` + `pgoutbox --backfill
  --since ...` (the cut-off pgoutbox printed) deliver every event committed
  since the last one Kafka acknowledged, and streaming goes on.
- An interrupted backfill prints its resume point; `--backfill-resume`
  finishes it without a gap (by physical order and by an order column).
- `--since` by a creation-time column and by commit time; `--replay
  --topic-prefix` re-publishes without touching the live slot.
- `cleanup = delete` under kill -9 rounds never deletes a row whose event
  Kafka has not acknowledged, and keeps the table bounded.

As everywhere in the suite, Kafka is read back with an independent consumer
and waiting is polling a condition against a deadline.
"""

import os
import re
import signal
import subprocess
import threading
import time

import pytest

import faults_util as fu
import util
from conftest import SETUP_SLOT_SH
from faults_util import SOAK, lsn, lsn_text
from test_faults import neighbour_wal, seeded_rng, types_of

BACKFILL_ROWS = 1000000 if SOAK else 50000
RSS_LIMIT_KB = 64 * 1024
CATCH_UP_S = 300 if SOAK else 120
NKEYS = 8


def drop_slot(db):
    util.query_one(db.conn, "SELECT pg_drop_replication_slot(%s)", (db.slot,))
    db.conn.commit()


def preload(db, types, n, nkeys=NKEYS, table="public.outbox", chunk=50000):
    """n rows over the writer's keys (fu.Writer: key i is (types[i % len], "k<i>")),
    each key's seq counting up in insertion order from 1.  Returns the seq each
    key reached, for the writer to go on from."""
    with db.conn.cursor() as cur:
        for start in range(0, n, chunk):
            cur.execute(
                "INSERT INTO " + table + " (id, aggregatetype, aggregateid, type, payload)"
                " SELECT gen_random_uuid(), (%s::text[])[(g %% %s) %% %s + 1], 'k' || (g %% %s),"
                " 'Tick', jsonb_build_object('key', 'k' || (g %% %s), 'seq', g / %s + 1,"
                " 'pad', repeat('p', g %% 41))"
                " FROM generate_series(%s, %s) g",
                (types, nkeys, len(types), nkeys, nkeys, nkeys, start, min(n, start + chunk) - 1))
            db.conn.commit()
    return {(types[i % len(types)], "k%d" % i): (n - 1 - i) // nkeys + 1 if i < n else 0
            for i in range(nkeys)}


def add_order_column(db):
    """A bigserial column to order the backfill by (with an index, as the docs say)."""
    with db.conn.cursor() as cur:
        cur.execute("ALTER TABLE outbox ADD COLUMN seq bigserial")
        cur.execute("CREATE INDEX ON outbox (seq)")
    db.conn.commit()
    return ["--order-column", "seq"]


def verify_unordered(db, writer):
    """fu.verify without the per-key order check: a backfill in physical order
    does not promise per-key order (a row can land on an earlier heap page)."""
    rows = util.fetch_rows(db.conn)
    messages = fu.kafka_messages(db)
    got = {m.id for m in messages}
    lost = sorted(set(rows) - got)
    assert not lost, "%d committed events never reached Kafka (of %d), e.g. %r" % (
        len(lost), len(rows), lost[:5])
    dups = util.check_delivery(messages, rows, forbidden_ids=writer.rolled_back)
    return rows, messages, len(lost), dups


def writer_after(db, types, seqs, seed, **kw):
    w = fu.Writer(db, types, seed=seed, **kw)
    w.seq.update(seqs)
    return w


def peak_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def backfill_stats(stderr):
    m = re.search(r"backfill complete: (\d+) rows published and acknowledged by Kafka in "
                  r"([\d.]+) s \((\d+) rows/s\)", stderr)
    assert m, "no 'backfill complete' line:\n" + util.tail(stderr, 30)
    return int(m.group(1)), float(m.group(2)), int(m.group(3))


def wait_log(p, pattern, timeout, what):
    def found():
        if p.poll() is not None:
            raise AssertionError("pgoutbox exited (%r) while waiting for %s\n%s"
                                 % (p.returncode, what, p.describe()))
        return re.search(pattern, p.stderr)
    return util.wait_for(found, timeout, what, interval=0.1)


def resume_point(stderr):
    m = re.search(r"--backfill-resume '([^']*)'", stderr)
    assert m, "no resume point printed:\n" + util.tail(stderr, 20)
    return m.group(1)


# ---------------------------------------------------------------------------
# 1. Backfill + stream: exactly once across the boundary, bounded memory
# ---------------------------------------------------------------------------

# core: CREATE_REPLICATION_SLOT ... USE_SNAPSHOT is spelt differently before 15.
@pytest.mark.core
def test_backfill_then_stream_exactly_once(request, outbox_db, pgoutbox):
    db = outbox_db
    rng = seeded_rng(request)
    types = types_of(db, "bf")
    drop_slot(db)
    order = add_order_column(db)
    t = time.monotonic()
    seqs = preload(db, types, BACKFILL_ROWS)
    print("preloaded %d rows in %.1f s" % (BACKFILL_ROWS, time.monotonic() - t))
    writer = writer_after(db, types, seqs, rng.randrange(1 << 30))
    writer.start()
    writer.wait_events(100)
    # The plain build for the memory figure when there is one, as the fault tests do.
    binary = fu.PLAIN_BIN if SOAK and fu.PLAIN_BIN.exists() else None
    args = db.args("--backfill", *order)
    p = pgoutbox.start(*args, name="backfill") if binary is None else \
        pgoutbox_plain(pgoutbox, binary, args)
    wait_log(p, r"backfill complete", CATCH_UP_S, "the backfill to complete")
    during = writer.events
    wait_log(p, r"streaming from slot", 60, "streaming to start")
    writer.wait_events(during + 200)
    writer.stop()
    fu.wait_caught_up(db, p, writer.last_lsn(), CATCH_UP_S)
    rss = peak_rss_kb(p.proc.pid)
    p.terminate()
    p.expect_exit(util.EXIT_OK, 60)
    n, secs, rate = backfill_stats(p.stderr)
    assert n >= BACKFILL_ROWS, "backfilled %d rows, expected at least the %d preloaded" % (
        n, BACKFILL_ROWS)
    rows, messages, lost, dups = fu.verify(db, writer)
    assert dups == 0, "%d duplicates: the backfill and the stream overlap" % dups
    streamed = len(rows) - n
    assert streamed > 0, "nothing came from the stream"
    fu.report("backfill %d rows + concurrent writer (%s build)"
              % (BACKFILL_ROWS, "plain" if binary else os.path.basename(os.path.dirname(os.path.dirname(str(pgoutbox.binary))))), 1, len(rows), lost, dups,
              "%d backfilled in %.1f s (%d rows/s), %d streamed after; peak RSS %.1f MB"
              % (n, secs, rate, streamed, rss / 1024.0))
    if binary is not None:
        assert rss < RSS_LIMIT_KB, "peak RSS %d kB over %d kB" % (rss, RSS_LIMIT_KB)


def pgoutbox_plain(runner, binary, args):
    p = util.PgoutboxProcess(binary, args, runner.workdir, "backfill-plain", runner.env())
    runner.runs.append(p)
    return p


# ---------------------------------------------------------------------------
# 2. The slot invalidated under load while Kafka is away, recovered by backfill
# ---------------------------------------------------------------------------

def test_slot_invalidated_recovered_by_backfill(request, outbox_db, pgoutbox, stack):
    db = outbox_db
    rng = seeded_rng(request)
    types = types_of(db, "lost")
    order = add_order_column(db)   # per-key order of the backfilled gap (docs: order column)
    writer = fu.Writer(db, types, seed=rng.randrange(1 << 30))
    p = pgoutbox.start(*db.args(shutdown_timeout=2), name="doomed")
    util.wait_attached(db.conn, db.slot, p, 30)
    writer.start()
    writer.wait_events(300)
    fu.wait_caught_up(db, p, writer.last_lsn(), 60)
    admin = util.connect(stack.dsn("postgres"), autocommit=True)
    busy = "e2e_walfill_%s" % db.tag
    try:
        fu.execute(admin, "ALTER SYSTEM SET max_slot_wal_keep_size = '32MB'")
        util.query_one(admin, "SELECT pg_reload_conf()")
        with admin.cursor() as cur:
            cur.execute("CREATE TABLE %s (id bigserial PRIMARY KEY, v text)" % busy)
        with fu.FrozenKafka(stack):
            writer.wait_events(writer.events + 300)

            def lost():
                neighbour_wal(stack, busy, 70, pause=0)
                fu.execute(admin, "CHECKPOINT")
                row = fu.slot_row(db.conn, db.slot)
                db.conn.commit()
                return row is None or row[3] == "lost"
            util.wait_for(lost, 120, "wal_status = 'lost' for slot %s" % db.slot, interval=0)
            p.expect_exit(util.EXIT_RUNTIME, 60)
    finally:
        fu.execute(admin, "ALTER SYSTEM RESET max_slot_wal_keep_size")
        util.query_one(admin, "SELECT pg_reload_conf()")
        with admin.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS %s" % busy)
        admin.close()
    err = p.stderr
    print(util.tail(err, 6))
    m = re.search(r"setup-slot\.sh --recreate .*pgoutbox --backfill --since '([^']+)'", err)
    assert m and "invalidated" in err, "the message must give the recovery commands:\n" + err
    since = m.group(1)
    # The gap: committed, not in Kafka.
    before = fu.kafka_ids(db)
    setup = subprocess.run([str(SETUP_SLOT_SH), "-d", db.dsn, "--slot", db.slot, "--recreate"],
                           capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, **stack.env))
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert "pgoutbox --backfill" in setup.stdout, setup.stdout
    assert fu.slot_row(db.conn, db.slot) is None, "--recreate must leave the slot to the backfill"
    db.conn.commit()
    t = time.monotonic()
    p2 = pgoutbox.start(*db.args("--backfill", "--since", since, *order), name="recover")
    wait_log(p2, r"backfill complete", CATCH_UP_S, "the backfill to complete")
    recovered = time.monotonic() - t
    writer.wait_events(writer.events + 300)
    writer.stop()
    fu.wait_caught_up(db, p2, writer.last_lsn(), CATCH_UP_S)
    p2.terminate()
    p2.expect_exit(util.EXIT_OK, 60)
    n, secs, rate = backfill_stats(p2.stderr)
    rows, messages, lost_n, dups = fu.verify(db, writer)
    gap = set(rows) - before
    # Duplicates are bounded by the cut-off: only rows committed at or after it.
    since_ms = util.query_one(db.conn, "SELECT floor(extract(epoch FROM %s::timestamptz) * 1000)"
                                       "::bigint", (since,))[0]
    db.conn.commit()
    dup_ids = {m.id for m in messages if m.id in before}
    early = [i for i in dup_ids if rows[i].commit_ms < since_ms]
    counts = {}
    for m in messages:
        counts[m.id] = counts.get(m.id, 0) + 1
    twice = [i for i, c in counts.items() if c > 1 and rows[i].commit_ms < since_ms]
    assert not twice, "%d events committed before the cut-off were published again" % len(twice)
    del early
    fu.report("slot invalidated under load (Kafka frozen), setup-slot.sh --recreate + --backfill "
              "--since", 1, len(rows), lost_n, dups,
              "%d events were in the gap; backfill of %d rows in %.1f s (complete %.1f s after "
              "the start), then streaming" % (len(gap), n, secs, recovered))


# ---------------------------------------------------------------------------
# 3. Interrupted and resumed
# ---------------------------------------------------------------------------

def metric(port, name):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/metrics")
        body = c.getresponse().read().decode()
    finally:
        c.close()
    # name{labels} value; `name` may carry a label the sample must have, e.g. state="read"
    base, _, want = name.partition("{")
    want = want.rstrip("}")
    for m in re.finditer(r"^%s\{([^}]*)\} (\d+)" % re.escape(base), body, re.M):
        if want in m.group(1):
            return int(m.group(2))
    return None


@pytest.mark.parametrize("order", ["physical", "column"])
def test_backfill_interrupted_and_resumed(request, outbox_db, pgoutbox, order):
    db = outbox_db
    types = types_of(db, "res")
    n = 60000
    drop_slot(db)
    extra = add_order_column(db) if order == "column" else []
    seqs = preload(db, types, n)
    writer = writer_after(db, types, seqs, 7)
    writer.start()
    port = util.free_port()
    # A small producer queue slows the backfill down enough to interrupt it midway.
    p = pgoutbox.start(*db.args("--backfill", "--backfill-batch", "50", "--metrics", str(port),
                                "-X", "queue.buffering.max.messages=200", *extra), name="first")

    def some_acked():
        if p.poll() is not None:
            raise AssertionError(p.describe())
        try:
            v = metric(port, 'pgoutbox_backfill_rows{state="acknowledged"}')
        except OSError:
            return False
        return v is not None and v >= 3000
    util.wait_for(some_acked, 60, "3000 backfilled rows acknowledged", interval=0.02)
    p.terminate()
    p.expect_exit(util.EXIT_OK, 60)
    assert "backfill interrupted" in p.stderr, p.describe()
    point = resume_point(p.stderr)
    assert point.startswith("1:") and len(point) > 2, point
    # Plain pgoutbox would skip the rest: the slot was never confirmed past its consistent point.
    p2 = pgoutbox.start(*db.args("--backfill", "--backfill-resume", point, *extra), name="resumed")
    wait_log(p2, r"backfill complete", CATCH_UP_S, "the resumed backfill to complete")
    writer.wait_events(writer.events + 200)
    writer.stop()
    fu.wait_caught_up(db, p2, writer.last_lsn(), CATCH_UP_S)
    p2.terminate()
    p2.expect_exit(util.EXIT_OK, 60)
    if order == "column":
        rows, messages, lost, dups = fu.verify(db, writer)
    else:
        rows, messages, lost, dups = verify_unordered(db, writer)
    fu.report("backfill of %d rows interrupted (SIGTERM) and resumed, %s order" % (n, order), 2,
              len(rows), lost, dups, "resumed at %s" % point[:40])


# ---------------------------------------------------------------------------
# 4. Selection: --since by a column, by commit time
# ---------------------------------------------------------------------------

def test_backfill_since(outbox_db, pgoutbox):
    db = outbox_db
    drop_slot(db)
    with db.conn.cursor() as cur:
        cur.execute("ALTER TABLE outbox ADD COLUMN created_at timestamptz NOT NULL DEFAULT now()")
    db.conn.commit()
    t = db.aggtype("since")
    old = util.commit_events(db.conn, [util.event(t, "a", "Old", {"n": i}) for i in range(20)])
    cut = util.query_one(db.conn, "SELECT now()::text")[0]
    db.conn.commit()
    new = util.commit_events(db.conn, [util.event(t, "a", "New", {"n": i}) for i in range(30)])
    # By the column: a replay, so the slot can be created by the second run.
    p = pgoutbox.run(*db.args("--replay", "--since", cut, "--since-column", "created_at",
                              "--topic-prefix", "col."), timeout=60)
    assert p.returncode == 0, p.describe()
    got = [m.id for m in util.read_topics(db.brokers, ["col.outbox.event." + t])]
    assert sorted(got) == sorted(new), "by column: %d delivered, %d expected" % (len(got), len(new))
    # By commit time, creating the slot.
    p = pgoutbox.start(*db.args("--backfill", "--since", cut, "--endpos", "0/1"), name="bytime")
    p.expect_exit(util.EXIT_OK, 60)
    got = [m.id for m in util.read_topics(db.brokers, ["outbox.event." + t])]
    assert sorted(got) == sorted(new) and not set(got) & set(old), p.describe()
    assert "0 of these rows have no known commit time" not in p.stderr


# ---------------------------------------------------------------------------
# 5. Replay for a new consumer: other topics, the live slot untouched
# ---------------------------------------------------------------------------

def test_replay_leaves_the_slot_alone(outbox_db, pgoutbox):
    db = outbox_db
    t = db.aggtype("replay")
    live = pgoutbox.start(*db.args(), name="live")
    util.wait_attached(db.conn, db.slot, live, 30)
    ids = util.commit_events(db.conn, [util.event(t, "k%d" % (i % 3), "E", {"i": i})
                                       for i in range(500)])
    util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 60, proc=live)
    # The walsender's pid: its sent position moves on with the cluster's WAL
    # (keepalives of other databases' traffic), the process stays.
    pid_before = util.walsender_of(db.conn, db.slot)[0]
    slots_before = util.query_one(db.conn, "SELECT count(*) FROM pg_replication_slots")[0]
    db.conn.commit()
    p = pgoutbox.run(*db.args("--replay", "--topic-prefix", "replay."), timeout=60)
    assert p.returncode == 0, p.describe()
    assert "replay complete: 500 rows" in p.stderr, p.describe()
    msgs = util.read_topics(db.brokers, ["replay.outbox.event." + t])
    rows = {i: r for i, r in util.fetch_rows(db.conn).items() if i in set(ids)}
    assert util.check_delivery(msgs, rows, topic_for=lambda a: "replay.outbox.event." + a) == 0
    assert util.walsender_of(db.conn, db.slot)[0] == pid_before, "the replay disturbed the live stream"
    assert util.query_one(db.conn, "SELECT count(*) FROM pg_replication_slots")[0] == slots_before
    db.conn.commit()
    live.terminate()
    live.expect_exit(util.EXIT_OK, 30)


# ---------------------------------------------------------------------------
# 6. cleanup = delete under kill -9: never ahead of Kafka, the table bounded
# ---------------------------------------------------------------------------

CLEANUP_ROUNDS = 20 if SOAK else 5


def table_ids(db):
    with db.conn.cursor() as cur:
        cur.execute("SELECT id::text FROM outbox")
        ids = {r[0] for r in cur.fetchall()}
    db.conn.commit()
    return ids


def test_cleanup_delete_kill9(request, outbox_db, pgoutbox, stack):
    db = outbox_db
    rng = seeded_rng(request)
    writer = fu.Writer(db, types_of(db, "clean"), seed=rng.randrange(1 << 30))
    args = db.args("--cleanup", "delete", "--cleanup-batch", "300", "--cleanup-interval", "20")
    writer.start()
    checked = 0
    try:
        writer.wait_events(100)
        for rnd in range(CLEANUP_ROUNDS):
            p = pgoutbox.start(*args, name="round%02d" % rnd)
            time.sleep(rng.uniform(0.5, 3.0))
            assert p.poll() is None, p.describe()
            if rnd % 2:
                # Kafka away: events wait unacknowledged, and so must their rows.
                with fu.FrozenKafka(stack):
                    time.sleep(rng.uniform(1.0, 3.0))
                    p.kill()
            else:
                p.kill()
            util.wait_for(lambda: not util.slot_state(db.conn, db.slot)[1], 30,
                          "slot %s to become inactive" % db.slot)
            db.conn.commit()
            # Committed before the table is read: absent from it means deleted.
            committed = {i for t in list(writer.txns) for i in t.ids}
            deleted = committed - table_ids(db)
            in_kafka = fu.kafka_ids(db)
            early = deleted - in_kafka
            assert not early, ("round %d: %d rows were deleted but their events are not in Kafka, "
                               "e.g. %r" % (rnd, len(early), sorted(early)[:5]))
            checked += len(deleted)
            print("round %d: %d committed, %d deleted (all in Kafka), %d in the table"
                  % (rnd, len(committed), len(deleted), len(committed) - len(deleted)))
        p = pgoutbox.start(*args, name="steady")
        util.wait_attached(db.conn, db.slot, p, 30)
        sizes = []
        t_end = time.monotonic() + (60 if SOAK else 10)
        while time.monotonic() < t_end:
            sizes.append(util.query_one(db.conn, "SELECT count(*) FROM outbox")[0])
            db.conn.commit()
            time.sleep(0.5)
        rate = writer.events
    finally:
        writer.stop()
    fu.wait_caught_up(db, p, writer.last_lsn(), CATCH_UP_S)

    def drained():
        n = util.query_one(db.conn, "SELECT count(*) FROM outbox")[0]
        db.conn.commit()
        return n == 0
    util.wait_for(drained, 60, "cleanup to delete every confirmed row")
    port_deleted = p.stderr
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)
    del port_deleted
    committed = {i for t in writer.txns for i in t.ids}
    messages = fu.kafka_messages(db)
    got = {m.id for m in messages}
    lost = committed - got
    assert not lost, "%d committed events never reached Kafka, e.g. %r" % (len(lost), sorted(lost)[:5])
    assert not (got & writer.rolled_back), "rolled-back events reached Kafka"
    steady = sizes[len(sizes) // 2:]
    assert max(steady) < 5000, "the table grew under steady load: %r" % sizes
    fu.report("cleanup = delete, kill -9 at random moments", CLEANUP_ROUNDS, len(committed), 0,
              len(messages) - len(got),
              "%d deleted rows checked against Kafka after the kills; table under steady load "
              "(~%d events) at most %d rows, 0 after the writer stopped"
              % (checked, rate, max(steady)))


# ---------------------------------------------------------------------------
# 7. --check: size, oldest row, retention against the loss window
# ---------------------------------------------------------------------------

def check_lines(p):
    out = {}
    for line in p.stdout.splitlines():
        m = re.match(r"^(ok|warn|FAIL)\s+([a-z_ ]+): (.*)$", line)
        if m:
            out.setdefault(m.group(2), []).append((m.group(1), m.group(3)))
    return out


@pytest.mark.server
@pytest.mark.pg_min(14)     # 13 has no pg_stat_wal: its WAL rate is not known
def test_check_retention(outbox_db, pgoutbox, stack):
    db = outbox_db
    with db.conn.cursor() as cur:
        cur.execute("ALTER TABLE outbox ADD COLUMN created_at timestamptz NOT NULL DEFAULT now()")
    db.conn.commit()
    util.commit_events(db.conn, [util.event(db.aggtype("chk"), "a", "E", {"i": i}) for i in range(10)])
    admin = util.connect(stack.dsn("postgres"), autocommit=True)
    try:
        fu.execute(admin, "ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'")
        util.query_one(admin, "SELECT pg_reload_conf()")
        p = pgoutbox.run("--check", *db.args("--since-column", "created_at"), timeout=60)
        lines = check_lines(p)
        assert lines["table size"][0][0] == "ok" and "public" in lines["table size"][0][1], p.stdout
        assert lines["oldest row"][0][0] == "ok" and "created_at = " in lines["oldest row"][0][1]
        # Rows a few seconds old cannot cover what 1 GB of WAL lasts.
        assert lines["retention"][0][0] == "warn", p.stdout
        assert "max_slot_wal_keep_size = 1GB" in lines["retention"][0][1], p.stdout
        assert p.returncode == 0, p.describe()
        p = pgoutbox.run("--check", *db.args("--since-column", "created_at", "--cleanup", "delete"),
                         timeout=60)
        lines = check_lines(p)
        assert lines["retention"][0][0] == "ok" and "cleanup = delete" in lines["retention"][0][1]
        assert lines["cleanup"][0][0] == "ok", p.stdout
    finally:
        fu.execute(admin, "ALTER SYSTEM RESET max_slot_wal_keep_size")
        util.query_one(admin, "SELECT pg_reload_conf()")
        admin.close()
