"""Exactly-once delivery (issue 13): `delivery = exactly-once` under the
faults of test_faults.py.  A read_committed consumer must see every committed
event exactly once (lost = 0, duplicates = 0) whatever happens: pgoutbox
killed at random moments, the broker killed and restarted, PostgreSQL
restarted (immediate), the network cut, forced abortable errors, a frozen
pgoutbox fenced by the one that took over, a replay from a slot far behind
Kafka, events Kafka refuses in a delivery report.

As in test_faults.py a writer thread keeps committing small transactions
(some rolled back) while the fault happens; fu.verify() then reads Kafka
back with an independent read_committed consumer and checks every event
against its row.  Each test notes a row of docs/guarantees.md's
exactly-once table.  PGOUTBOX_SOAK=1 runs the long variants (20 kill
rounds, longer outages, more rounds of everything).
"""

import http.client
import os
import random
import re
import signal
import threading
import time
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import faults_util as fu
import util
from faults_util import SOAK, lsn, lsn_text
from test_faults import reconnect, restartable_outbox_db  # noqa: F401  (a fixture)

EOS = ("--delivery", "exactly-once")
KILL_ROUNDS = 20 if SOAK else 8
OUTAGE_ROUNDS = 3 if SOAK else 1
PG_RESTART_ROUNDS = 3 if SOAK else 1
TERM_ROUNDS = 10 if SOAK else 3
CATCH_UP_S = 300 if SOAK else 90


def seeded_rng(request):
    seed = int(os.environ.get("E2E_SEED") or random.randrange(1 << 30))
    print("%s: random seed %d (set E2E_SEED to repeat)" % (request.node.name, seed))
    return random.Random(seed)


def types_of(db, name, n=2):
    return [db.aggtype("%s%d" % (name, i)) for i in range(n)]


def alive(p):
    assert p.poll() is None, "pgoutbox exited (%r)\n%s" % (p.returncode, p.describe())


def start_streaming(db, pgoutbox, writer, *extra, name=None, env=None, **kw):
    p = pgoutbox.start(*db.args(*(EOS + extra), **kw), name=name, env=env)
    util.wait_attached(db.conn, db.slot, p, 30)
    writer.start()
    writer.wait_events(50)
    fu.wait_caught_up(db, p, writer.last_lsn(), 60)
    return p


def finish(db, p, writer, timeout=CATCH_UP_S):
    writer.stop()
    fu.wait_caught_up(db, p, writer.last_lsn(), timeout)
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)


def verify_once(db, writer, what):
    """fu.verify (read_committed, every event against its row) and 0 duplicates."""
    rows, messages, lost, dups = fu.verify(db, writer)
    assert dups == 0, "%s: %d duplicate deliveries seen by a read_committed consumer" % (what, dups)
    return rows, messages, lost, dups


def committed_messages(db, isolation="read_committed", timeout=30):
    """What a consumer with `isolation` can read of the test's topics now: up
    to each partition's end (for read_committed the last stable offset, so a
    transaction left open by a killed pgoutbox is not waited for)."""
    topics = util.topics_with(db.brokers, db.tag)
    existing = util.list_topics(db.brokers)
    parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(existing.get(t, 0))]
    if not parts:
        return []
    c = Consumer({"bootstrap.servers": db.brokers, "group.id": "e2e-eos-" + uuid.uuid4().hex,
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "isolation.level": isolation})
    out, eof = [], set()
    try:
        c.assign(parts)
        deadline = time.monotonic() + timeout
        while len(eof) < len(parts):
            if time.monotonic() > deadline:
                raise AssertionError("reading Kafka (%s) timed out" % isolation)
            for m in c.consume(num_messages=1000, timeout=1.0):
                if m.error():
                    if m.error().code() == -191:    # _PARTITION_EOF
                        eof.add((m.topic(), m.partition()))
                        continue
                    if m.error().code() in fu.RETRIABLE_READ_ERRORS:
                        continue
                    raise KafkaException(m.error())
                eof.discard((m.topic(), m.partition()))
                out.append(util.Message(m))
    finally:
        c.close()
    return out


def assert_no_duplicates(messages, what):
    ids = [m.id for m in messages]
    dups = len(ids) - len(set(ids))
    assert dups == 0, "%s: %d duplicates among %d committed messages" % (what, dups, len(ids))


def wait_confirmed_in_kafka(db, writer, confirmed_lsn, what, timeout=15):
    """Every transaction wholly at or before confirmed_lsn is committed in
    Kafka (polled: commit markers are written just after the commit
    returns), without duplicates.  Returns how many transactions that is."""
    state = {}

    def ok():
        msgs = committed_messages(db)
        state["msgs"] = msgs
        have = {m.id for m in msgs}
        covered = [t for t in writer.txns if t.after is not None and t.after <= confirmed_lsn]
        state["missing"] = [i for t in covered for i in t.ids if i not in have]
        state["covered"] = len(covered)
        return not state["missing"]
    try:
        util.wait_for(ok, timeout, "%s: the confirmed transactions in Kafka" % what, interval=0.5)
    except AssertionError:
        raise AssertionError("%s: the slot was confirmed at %s, past %d events that a "
                             "read_committed consumer does not see, e.g. %r"
                             % (what, lsn_text(confirmed_lsn), len(state["missing"]),
                                state["missing"][:5])) from None
    assert_no_duplicates(state["msgs"], what)
    return state["covered"]


def scrape(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/metrics")
        return c.getresponse().read().decode()
    finally:
        c.close()


def metric(body, name):
    """The value of family `name` (its one series, with or without labels)."""
    m = re.search(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), body, re.M)
    return float(m.group(1)) if m else None


# ---------------------------------------------------------------------------
# kill -9 at random moments
# ---------------------------------------------------------------------------

def test_eos_kill9_rounds(request, outbox_db, pgoutbox):
    db = outbox_db
    rng = seeded_rng(request)
    writer = fu.Writer(db, types_of(db, "kill"), seed=rng.randrange(1 << 30))
    writer.start()
    try:
        writer.wait_events(50)
        for rnd in range(KILL_ROUNDS):
            p = pgoutbox.start(*db.args(*EOS), name="round%02d" % rnd)
            # A random moment: starting, fencing, reading the state,
            # replaying, streaming, committing.
            time.sleep(rng.uniform(0.05, 3.0))
            alive(p)
            p.kill()
            util.wait_for(lambda: not util.slot_state(db.conn, db.slot)[1], 30,
                          "slot %s to become inactive" % db.slot)
            c = fu.confirmed(db.conn, db.slot)
            covered = wait_confirmed_in_kafka(db, writer, c, "after kill -9 #%d" % rnd)
            print("round %d: killed after %.2f s; slot at %s covers %d of %d transactions"
                  % (rnd, time.monotonic() - p.started, lsn_text(c), covered, len(writer.txns)))
        p = pgoutbox.start(*db.args(*EOS), name="final")
        recovery = fu.wait_caught_up(db, p, writer.last_lsn(), CATCH_UP_S, since=p.started)
        finish(db, p, writer)
    finally:
        writer.stop()
    rows, messages, lost, dups = verify_once(db, writer, "kill -9 rounds")
    fu.report("exactly-once: kill -9 at random moments", KILL_ROUNDS, len(rows), lost, dups,
              "%.1f s (restart to caught up)" % recovery)


# ---------------------------------------------------------------------------
# SIGTERM in the middle of transactions: a quick clean exit, no duplicates
# ---------------------------------------------------------------------------

def test_eos_sigterm_mid_transaction(request, outbox_db, pgoutbox):
    db = outbox_db
    rng = seeded_rng(request)
    writer = fu.Writer(db, types_of(db, "term"), max_rows=20, seed=rng.randrange(1 << 30))
    p = start_streaming(db, pgoutbox, writer, name="run0")
    exits = []
    try:
        for rnd in range(TERM_ROUNDS):
            writer.wait_events(writer.events + rng.randint(50, 400))
            t = time.monotonic()
            p.terminate()
            p.expect_exit(util.EXIT_OK, 40)
            exits.append(time.monotonic() - t)
            p = pgoutbox.start(*db.args(*EOS), name="run%d" % (rnd + 1))
            fu.wait_caught_up(db, p, writer.last_lsn(), CATCH_UP_S, since=p.started)
        finish(db, p, writer)
    finally:
        writer.stop()
    # Half a transaction is given up at once, not waited for until the
    # shutdown timeout (10 s here).
    assert max(exits) < 8, "SIGTERM took %.1f s" % max(exits)
    rows, messages, lost, dups = verify_once(db, writer, "SIGTERM rounds")
    fu.report("exactly-once: SIGTERM mid-transaction + restart", TERM_ROUNDS, len(rows), lost, dups,
              "exit within %s" % fu.seconds(exits))


# ---------------------------------------------------------------------------
# The broker killed and restarted
# ---------------------------------------------------------------------------

def test_eos_broker_killed(request, outbox_db, pgoutbox, stack):
    db = outbox_db
    rng = seeded_rng(request)
    writer = fu.Writer(db, types_of(db, "broker"), seed=rng.randrange(1 << 30))
    p = start_streaming(db, pgoutbox, writer)
    recoveries = []
    try:
        for rnd in range(OUTAGE_ROUNDS):
            hold = rng.uniform(10, 30) if SOAK else 5.0
            with fu.StoppedKafka(stack, "KILL"):
                down = time.monotonic()
                while time.monotonic() - down < hold:
                    alive(p)
                    time.sleep(0.2)
            back = time.monotonic()
            alive(p)
            writer.wait_events(writer.events + 20)
            recoveries.append(fu.wait_caught_up(db, p, writer.last_lsn(), CATCH_UP_S, since=back))
            print("round %d: broker down %.1f s, caught up %.1f s after it returned"
                  % (rnd, hold, recoveries[-1]))
        finish(db, p, writer)
    finally:
        writer.stop()
    rows, messages, lost, dups = verify_once(db, writer, "broker killed")
    fu.report("exactly-once: broker killed + restarted", OUTAGE_ROUNDS, len(rows), lost, dups,
              "%s after broker back" % fu.seconds(recoveries))


# ---------------------------------------------------------------------------
# PostgreSQL restarted (immediate): the slot may come back far behind Kafka
# ---------------------------------------------------------------------------

def test_eos_postgres_immediate_restart(request, restartable_outbox_db, pgoutbox, stack):
    db = restartable_outbox_db
    rng = seeded_rng(request)
    writer = fu.Writer(db, types_of(db, "pgr"), seed=rng.randrange(1 << 30))
    p = start_streaming(db, pgoutbox, writer, "--replication-timeout", "6")
    recoveries = []
    try:
        for rnd in range(PG_RESTART_ROUNDS):
            fu.pg_restart(stack, "immediate")
            ready = time.monotonic()
            reconnect(db)
            alive(p)
            writer.wait_events(writer.events + 20, timeout=90)
            recoveries.append(fu.wait_caught_up(db, p, writer.last_lsn(), CATCH_UP_S, since=ready))
        finish(db, p, writer)
    finally:
        writer.stop()
    rows, messages, lost, dups = verify_once(db, writer, "PostgreSQL restart")
    fu.report("exactly-once: PostgreSQL restart -m immediate", PG_RESTART_ROUNDS, len(rows), lost,
              dups, "%s from server ready to caught up" % fu.seconds(recoveries))


# ---------------------------------------------------------------------------
# The network to PostgreSQL cut
# ---------------------------------------------------------------------------

def test_eos_network_cut(request, outbox_db, pgoutbox, stack):
    db = outbox_db
    rng = seeded_rng(request)
    proxy = fu.TcpProxy(stack.host, stack.port)
    proxy.start()
    writer = fu.Writer(db, types_of(db, "net"), seed=rng.randrange(1 << 30))
    dsn = db.stack.dsn(db.name, host="127.0.0.1", port=str(proxy.port),
                       options="-c wal_sender_timeout=6s")
    try:
        p = start_streaming(db, pgoutbox, writer, "--replication-timeout", "6", dsn=dsn)
        losses = fu.log_count(p, "reconnecting in")
        accepted = proxy.accepted
        proxy.cut()
        try:
            util.wait_for(lambda: fu.log_count(p, "reconnecting in") > losses or p.poll() is not None,
                          20, "pgoutbox to notice the cut")
            alive(p)
            time.sleep(2)
        finally:
            proxy.heal()
        healed = time.monotonic()
        util.wait_for(lambda: proxy.accepted > accepted, 60, "pgoutbox to reconnect via the proxy")
        writer.wait_events(writer.events + 20)
        recovery = fu.wait_caught_up(db, p, writer.last_lsn(), CATCH_UP_S, since=healed)
        finish(db, p, writer)
    finally:
        writer.stop()
        proxy.close()
    assert proxy.error is None, "proxy failed: %r" % (proxy.error,)
    rows, messages, lost, dups = verify_once(db, writer, "network cut")
    fu.report("exactly-once: network cut both ways", 1, len(rows), lost, dups,
              "caught up %.1f s after heal" % recovery)


# ---------------------------------------------------------------------------
# Forced abortable errors: abort, read again from the slot
# ---------------------------------------------------------------------------

def test_eos_forced_aborts(request, outbox_db, pgoutbox):
    db = outbox_db
    rng = seeded_rng(request)
    writer = fu.Writer(db, types_of(db, "abort"), seed=rng.randrange(1 << 30))
    port = util.free_port()
    every = 7     # every 7th Kafka transaction fails when it is committed
    p = start_streaming(db, pgoutbox, writer, "--metrics", "127.0.0.1:%d" % port,
                        env={"PGOUTBOX_TEST_ABORT_EVERY": str(every)})
    try:
        writer.wait_events(writer.events + 500)
        util.wait_for(lambda: (metric(scrape(port), "pgoutbox_kafka_transactions_aborted_total") or 0) >= 3,
                      60, "three forced aborts")
        body = scrape(port)
        finish(db, p, writer)
    finally:
        writer.stop()
    aborted = metric(body, "pgoutbox_kafka_transactions_aborted_total")
    assert "aborting the Kafka transaction" in p.stderr
    rows, messages, lost, dups = verify_once(db, writer, "forced aborts")
    # What a read_uncommitted consumer sees besides: copies of the aborted
    # transactions that reached the broker before the abort.
    uncommitted = committed_messages(db, "read_uncommitted")
    assert len(uncommitted) >= len(messages)
    fu.report("exactly-once: forced abortable error in every %dth Kafka transaction (%d aborts; "
              "read_uncommitted saw %d extra copies)" % (every, aborted, len(uncommitted) - len(messages)), 1,
              len(rows), lost, dups, "-")


# ---------------------------------------------------------------------------
# A frozen pgoutbox, fenced by the one that took its slot over
# ---------------------------------------------------------------------------

def test_eos_zombie_fenced(request, outbox_db, pgoutbox):
    db = outbox_db
    rng = seeded_rng(request)
    writer = fu.Writer(db, types_of(db, "zombie"), seed=rng.randrange(1 << 30))
    # The zombie's walsender gives up 3 s after it stops answering.
    zdsn = db.stack.dsn(db.name, options="-c wal_sender_timeout=3s")
    zombie = start_streaming(db, pgoutbox, writer, dsn=zdsn, name="zombie")
    try:
        writer.wait_events(writer.events + 100)
        os.kill(zombie.proc.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        heir = pgoutbox.start(*db.args(*EOS), name="heir")
        util.wait_for(lambda: "streaming from slot" in heir.stderr or heir.poll() is not None, 60,
                      "the second pgoutbox to take the slot over")
        alive(heir)
        taken = time.monotonic() - frozen
        writer.wait_events(writer.events + 100)
        fu.wait_caught_up(db, heir, writer.last_lsn(), CATCH_UP_S)
        os.kill(zombie.proc.pid, signal.SIGCONT)
        util.wait_for(lambda: "fenced" in zombie.stderr or zombie.poll() is not None, 60,
                      "the resumed pgoutbox to find itself fenced")
        util.wait_for(lambda: "standing by" in zombie.stderr or zombie.poll() is not None, 60,
                      "the fenced pgoutbox to stand by")
        alive(zombie)
        writer.wait_events(writer.events + 100)
        finish(db, heir, writer)
        zombie.terminate()
        zombie.expect_exit(util.EXIT_OK, 30)
    finally:
        writer.stop()
        try:
            os.kill(zombie.proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert "fenced" in zombie.stderr and "rebuilding the Kafka producer" in zombie.stderr
    rows, messages, lost, dups = verify_once(db, writer, "zombie")
    fu.report("exactly-once: frozen pgoutbox (SIGSTOP) fenced by its successor, then resumed", 1,
              len(rows), lost, dups, "took over %.1f s after the freeze" % taken)


# ---------------------------------------------------------------------------
# The slot far behind Kafka: the replay is acknowledged, not sent again
# ---------------------------------------------------------------------------

def test_eos_replay_skipped(outbox_db, pgoutbox):
    db = outbox_db
    copy = db.slot + "_old"
    admin = db.connect(autocommit=True)
    util.query_one(admin, "SELECT pg_copy_logical_replication_slot(%s, %s)", (db.slot, copy))
    try:
        t = db.aggtype("replay")
        for i in range(20):
            util.commit_events(db.conn, [util.event(t, "k%d" % (j % 5), "T", {"i": i, "j": j})
                                         for j in range(5)])
        end = db.wal_lsn()
        p = pgoutbox.start(*db.args(*EOS), name="first")
        util.wait_confirmed(db.conn, db.slot, end, 60, proc=p)
        p.terminate()
        p.expect_exit(util.EXIT_OK, 30)
        # The slot goes back to where it was before those 100 events (as a
        # PostgreSQL 15 slot can after a crash): all of them come again.
        util.wait_for(lambda: not util.slot_state(db.conn, db.slot)[1], 30, "the slot inactive")
        util.query_one(admin, "SELECT pg_drop_replication_slot(%s)", (db.slot,))
        util.query_one(admin, "SELECT pg_copy_logical_replication_slot(%s, %s)", (copy, db.slot))
        assert not db.confirmed_at_least(end)
        p = pgoutbox.start(*db.args(*EOS), name="again")
        util.wait_confirmed(db.conn, db.slot, end, 30, proc=p)
        confirmed_s = time.monotonic() - p.started
        p.terminate()
        p.expect_exit(util.EXIT_OK, 30)
    finally:
        util.query_one(admin, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                              " WHERE slot_name = %s", (copy,))
    assert "acknowledged without sending it again" in p.stderr, p.describe()
    rows = util.fetch_rows(db.conn)
    messages = fu.kafka_messages(db)
    dups = util.check_delivery(messages, rows)
    assert dups == 0, "%d duplicates after the replay" % dups
    fu.report("exactly-once: slot rewound behind Kafka (100 events replayed)", 1, len(rows), 0, dups,
              "confirmed again %.1f s after start" % confirmed_s)


# ---------------------------------------------------------------------------
# Refused in a delivery report: abort, then refused at once, dead-lettered
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("on_error", ["dlq", "stop"])
def test_eos_refused_in_report(outbox_db, pgoutbox, on_error):
    db = outbox_db
    big = db.aggtype("big")
    small = db.aggtype("small")
    dlq = "dlq." + db.tag
    admin = AdminClient({"bootstrap.servers": db.brokers})
    # The topic takes 1 kB; the producer would send up to 1 MB: only the
    # broker refuses it, in the delivery report.
    for f in admin.create_topics([NewTopic(util.default_topic(big), 1, 1,
                                           config={"max.message.bytes": "1024"})]).values():
        f.result(30)
    p = pgoutbox.start(*db.args(*EOS, "--on-error", on_error, "--dlq-topic", dlq), name=on_error)
    util.wait_attached(db.conn, db.slot, p, 30)
    good = [util.event(small, "k", "Good", {"n": n}) for n in range(3)]
    poison = util.event(big, "k", "Big", {"pad": "x" * 4096})
    util.commit_events(db.conn, good[:1])
    end0 = db.wal_lsn()
    util.wait_confirmed(db.conn, db.slot, end0, 60, proc=p)
    util.commit_events(db.conn, [good[1], poison, good[2]])
    end = db.wal_lsn()
    if on_error == "stop":
        p.expect_exit(util.EXIT_RUNTIME, 60)
        assert poison[0] in p.stderr, p.describe()
        assert not db.confirmed_at_least(end)
        ids = [m.id for m in committed_messages(db)]
        assert sorted(ids) == sorted([good[0][0]]), ids
    else:
        util.wait_confirmed(db.conn, db.slot, end, 60, proc=p)
        p.terminate()
        p.expect_exit(util.EXIT_OK, 30)
        msgs = committed_messages(db)
        by_topic = {}
        for m in msgs:
            by_topic.setdefault(m.topic, []).append(m.id)
        assert sorted(by_topic.get(util.default_topic(small), [])) == sorted(g[0] for g in good)
        assert by_topic.get(dlq) == [poison[0]], by_topic
        assert util.default_topic(big) not in by_topic
    # Aborted once for the report, then refused at produce time: no loop.
    assert p.stderr.count("the event is refused at once when it is read again") == 1, p.describe()
    assert "refused in an earlier, aborted Kafka transaction" in p.stderr, p.describe()
    fu.report("exactly-once: event refused in its delivery report, on_error=%s" % on_error, 1, 4, 0,
              0, "one abort, then %s" % ("dead-lettered" if on_error == "dlq" else "exit 2"))


# ---------------------------------------------------------------------------
# Metrics, and the loop kept serving while transactions commit
# ---------------------------------------------------------------------------

def test_eos_metrics_and_loop(request, outbox_db, pgoutbox):
    db = outbox_db
    rng = seeded_rng(request)
    writer = fu.Writer(db, types_of(db, "metrics"), pace=0.001, seed=rng.randrange(1 << 30))
    port = util.free_port()
    p = start_streaming(db, pgoutbox, writer, "--metrics", "127.0.0.1:%d" % port)
    times = []
    halt = threading.Event()

    def probe():
        while not halt.is_set():
            t = time.monotonic()
            try:
                scrape(port)
            except OSError:
                pass
            times.append(time.monotonic() - t)
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    try:
        writer.wait_events(writer.events + 1500, timeout=120)
    finally:
        halt.set()
        t.join(10)
    body = scrape(port)
    finish(db, p, writer)
    from test_metrics import promtool_check
    promtool_check(body)
    committed = metric(body, "pgoutbox_kafka_transactions_committed_total")
    assert committed and committed > 0, body
    assert metric(body, "pgoutbox_kafka_transaction_commit_seconds_count") == committed
    assert metric(body, "pgoutbox_kafka_transaction_events_count") == committed
    assert metric(body, "pgoutbox_kafka_transaction_events_sum") >= \
        metric(body, "pgoutbox_events_published_total")
    times.sort()
    p99, worst = times[int(0.99 * (len(times) - 1))], times[-1]
    print("/metrics while committing: %d requests, p99 %.1f ms, max %.1f ms; %d Kafka transactions, "
          "%.1f events each" % (len(times), p99 * 1000, worst * 1000, committed,
                                metric(body, "pgoutbox_kafka_transaction_events_sum") / committed))
    assert worst < 0.5, "the loop stalled %.0f ms" % (worst * 1000)
    verify_once(db, writer, "metrics")
    util.note("exactly-once: /metrics answered in max %.1f ms (p99 %.1f ms) over %d requests while "
              "%d Kafka transactions committed" % (worst * 1000, p99 * 1000, len(times), committed))


# ---------------------------------------------------------------------------
# A state topic that does not exist yet is created, compacted
# ---------------------------------------------------------------------------

def test_eos_creates_state_topic(outbox_db, pgoutbox):
    db = outbox_db
    # Not named after the tag: read_test_topics() reads every topic that is.
    state = "pgoutbox.state.e2e-%s" % uuid.uuid4().hex[:8]
    t = db.aggtype("fresh")
    p = pgoutbox.start(*db.args(*EOS, "--state-topic", state))
    util.wait_attached(db.conn, db.slot, p, 30)
    util.commit_events(db.conn, [util.event(t, "k", "T", {"n": 1})])
    util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 60, proc=p)
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)
    assert 'created state topic "%s" (compacted)' % state in p.stderr, p.describe()
    from confluent_kafka.admin import ConfigResource
    admin = AdminClient({"bootstrap.servers": db.brokers})
    res = ConfigResource("topic", state)
    cfg = list(admin.describe_configs([res]).values())[0].result(30)
    assert cfg["cleanup.policy"].value == "compact", cfg["cleanup.policy"].value
    assert [m.id for m in committed_messages(db)] != []
    # A second run finds the record and starts from it.
    p = pgoutbox.start(*db.args(*EOS, "--state-topic", state), name="again")
    util.wait_for(lambda: "Kafka has every transaction up to" in p.stderr or p.poll() is not None, 30,
                  "the state record to be read")
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)
    for f in admin.delete_topics([state]).values():
        f.result(30)


# ---------------------------------------------------------------------------
# --check, and a state record of another slot
# ---------------------------------------------------------------------------

def test_eos_check(outbox_db, pgoutbox):
    db = outbox_db
    p = pgoutbox.run("--check", *db.args(*EOS), timeout=30)
    assert p.returncode == util.EXIT_OK, p.stdout + p.describe()
    for item in ("kafka transactions", "kafka state topic", "kafka ACLs"):
        assert re.search(r"^ok +%s: " % item, p.stdout, re.M), p.stdout


def test_eos_state_of_another_slot(outbox_db, pgoutbox):
    db = outbox_db
    txn_id = "e2e-shared-" + db.tag
    t = db.aggtype("shared")
    p = pgoutbox.start(*db.args(*EOS, "--transactional-id", txn_id), name="first")
    util.wait_attached(db.conn, db.slot, p, 30)
    util.commit_events(db.conn, [util.event(t, "k", "T", {"n": 1})])
    util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 60, proc=p)
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)
    other = db.slot + "_other"
    admin = db.connect(autocommit=True)
    util.query_one(admin, "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (other,))
    try:
        p2 = pgoutbox.start(*db.args(*EOS, "--transactional-id", txn_id, slot=other), name="other")
        p2.expect_exit(util.EXIT_USAGE, 60)
    finally:
        util.wait_for(lambda: not util.slot_state(db.conn, other)[1], 30, "the other slot inactive")
        util.query_one(admin, "SELECT pg_drop_replication_slot(%s)", (other,))
    assert db.slot in p2.stderr and other in p2.stderr and txn_id in p2.stderr, p2.describe()


# ---------------------------------------------------------------------------
# Configurations exactly-once cannot run
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case, args, message", [
    ("transactional.id", ["-d", "x", "-X", "transactional.id=mine"],
     "Kafka property transactional.id is pgoutbox's: set delivery = exactly-once, and "
     "transactional_id to choose the id"),
    ("two sources", list(EOS) + ["--source", "a.conninfo=x", "--source", "a.slot=a",
                                 "--source", "b.conninfo=y", "--source", "b.slot=b"],
     "delivery = exactly-once takes one source: its Kafka transactions record one slot's "
     "position; run a pgoutbox per source"),
    ("backfill", list(EOS) + ["-d", "x", "--backfill"],
     "--backfill and --replay publish at least once: run them with delivery = at-least-once, "
     "then stream with exactly-once"),
    ("empty id", list(EOS) + ["-d", "x", "--transactional-id", ""],
     'invalid value "" for transactional_id: empty; leave it unset for the default '
     'pgoutbox-<database system identifier>-<slot>'),
])
def test_eos_configuration_errors(pgoutbox, case, args, message):
    from offline import assert_usage_error
    p = pgoutbox.run("-b", "127.0.0.1:%d" % util.free_port(), *args, timeout=10)
    assert_usage_error(p, message)
