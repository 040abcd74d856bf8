"""One pgoutbox for several databases (issue 14): [source NAME] sections, one
shared producer, each source its own slot, ledger and guarantees; a source
that fails stops alone (on_source_failure = continue) or stops everything
(stop-all); metrics and /healthz per source; SIGHUP adds and removes sources;
two slots splitting the outbox tables of one database.
"""

import http.client
import re
import signal
import time

import psycopg2
import pytest

import faults_util as fu
import util
from offline import pgoutbox_offline  # noqa: F401
from test_daemon import write_config

LABELS = re.compile(r'^(pgoutbox_[a-z_]+)\{source="([^"]*)",slot="([^"]*)",database="([^"]*)"'
                    r'(?:,[^}]*)?\} (\S+)$')


def get(port, path, timeout=5):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def per_source(port, name):
    """{source: value} of metric `name`."""
    out = {}
    for line in get(port, "/metrics")[1].splitlines():
        m = LABELS.match(line)
        if m and m.group(1) == name:
            out[m.group(2)] = float(m.group(5))
    return out


def source_lines(name, db, *extra):
    return ["[source %s]" % name, "conninfo = %s" % db.dsn, "slot = %s" % db.slot] + list(extra)


def config_for(tmp_path, dbs, *global_lines, extra=None, name="sources.conf"):
    lines = ["brokers = %s" % dbs[0][1].brokers, "shutdown_timeout = 10",
             "publication = pgoutbox"] + list(global_lines)
    for n, db in dbs:
        lines += source_lines(n, db, *((extra or {}).get(n, [])))
    return write_config(tmp_path, lines, name=name)


def writers_for(dbs, seed):
    return {n: fu.Writer(db, ["%s_%s" % (n, db.tag)], seed=seed + i, pace=0.006)
            for i, (n, db) in enumerate(dbs)}


def caught_up(dbs, writers, p, timeout=90):
    for n, db in dbs:
        fu.wait_caught_up(db, p, writers[n].last_lsn(), timeout)


def test_three_databases_one_process(request, outbox_dbs, pgoutbox, tmp_path):
    """Three databases, continuous load on all, kill -9 rounds: nothing lost,
    per-key order kept, in every database; one producer, three slots."""
    dbs = [("billing", outbox_dbs()), ("shop", outbox_dbs()), ("crm", outbox_dbs())]
    port = util.free_port()
    conf = config_for(tmp_path, dbs, "metrics = %d" % port)
    writers = writers_for(dbs, 11)
    p = pgoutbox.start("-c", conf)
    for n, db in dbs:
        util.wait_attached(db.conn, db.slot, p, 30)
    for w in writers.values():
        w.start()
    try:
        for w in writers.values():
            w.wait_events(w.events + 100)
        for rnd in range(3):
            p.kill()
            p = pgoutbox.start("-c", conf, name="after-kill-%d" % rnd)
            for w in writers.values():
                w.wait_events(w.events + 60)
        caught_up(dbs, writers, p)
        # Metrics are labelled per source; the health endpoint says all stream.
        up = per_source(port, "pgoutbox_up")
        assert up == {"billing": 1, "shop": 1, "crm": 1}, up
        status, body = get(port, "/healthz")
        assert status == 200 and body.strip() == "streaming (3 sources)", (status, body)
        events = per_source(port, "pgoutbox_events_published_total")
        assert set(events) == {"billing", "shop", "crm"} and all(v > 0 for v in events.values())
    finally:
        for w in writers.values():
            w.stop()
    caught_up(dbs, writers, p)
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)
    total = 0
    for n, db in dbs:
        rows, messages, lost, dups = fu.verify(db, writers[n])
        assert lost == 0
        total += len(rows)
    # The log names the source of each line.
    assert re.search(r"LOG:  billing: streaming from slot", p.stderr), p.describe()
    fu.report("3 databases, one process, kill -9 (continuous load on all)", 3, total, 0, 0,
              "- (one producer; every source caught up after each restart)")


def test_failed_source_stops_alone(request, outbox_dbs, pgoutbox, tmp_path):
    """One database's slot is dropped mid-stream: that source stops with its
    own clear error; the others lose nothing and stream on; /healthz names
    it; the process keeps running (on_source_failure = continue)."""
    dbs = [("a", outbox_dbs()), ("b", outbox_dbs()), ("c", outbox_dbs())]
    port = util.free_port()
    conf = config_for(tmp_path, dbs, "metrics = %d" % port)
    writers = writers_for(dbs, 21)
    p = pgoutbox.start("-c", conf)
    for n, db in dbs:
        util.wait_attached(db.conn, db.slot, p, 30)
    for w in writers.values():
        w.start()
    victim = dbs[1][1]
    try:
        for w in writers.values():
            w.wait_events(w.events + 80)
        admin = victim.connect(autocommit=True)

        def dropped():
            util.query_one(admin, "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                                  " WHERE slot_name = %s AND active_pid IS NOT NULL", (victim.slot,))
            try:
                util.query_one(admin, "SELECT pg_drop_replication_slot(%s)", (victim.slot,))
            except psycopg2.errors.ObjectInUse:
                return False
            return True
        util.wait_for(dropped, 20, "dropping slot %s" % victim.slot, interval=0.01)
        util.wait_for(lambda: "source b failed" in p.stderr, 30, "source b to fail")
        for n in ("a", "c"):
            writers[n].wait_events(writers[n].events + 80)
        assert p.poll() is None, p.describe()
        status, body = get(port, "/healthz")
        assert status == 503 and body.startswith("source b: stopping: ") and victim.slot in body, (
            status, body)
        assert per_source(port, "pgoutbox_up") == {"a": 1, "b": 0, "c": 1}
    finally:
        for w in writers.values():
            w.stop()
    caught_up([d for d in dbs if d[0] != "b"], writers, p)
    assert re.search(r'ERROR:  b: replication slot "%s" does not exist' % victim.slot, p.stderr), (
        p.describe())
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)
    for n, db in dbs:
        if n != "b":
            assert fu.verify(db, writers[n])[2] == 0
    fu.report("3 databases, one slot dropped mid-stream (on_source_failure = continue)", 1,
              sum(writers[n].events for n in ("a", "c")), 0, 0,
              "- (that source stops naming its slot; the others stream on, /healthz 503 names it)")


def test_stop_all(outbox_dbs, pgoutbox, tmp_path):
    dbs = [("a", outbox_dbs()), ("b", outbox_dbs())]
    conf = config_for(tmp_path, dbs, "on_source_failure = stop-all")
    p = pgoutbox.start("-c", conf)
    for n, db in dbs:
        util.wait_attached(db.conn, db.slot, p, 30)
    util.commit_events(dbs[0][1].conn, [util.event(dbs[0][1].aggtype("x"), "k", "T", {})])
    victim = dbs[1][1]
    admin = victim.connect(autocommit=True)
    util.query_one(admin, "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                          " WHERE slot_name = %s", (victim.slot,))
    util.wait_for(lambda: not util.slot_state(admin, victim.slot)[1], 20, "the walsender to go")
    try:
        util.query_one(admin, "SELECT pg_drop_replication_slot(%s)", (victim.slot,))
    except psycopg2.errors.ObjectInUse:
        pass   # pgoutbox reconnected first; it stops when it is dropped below
    p.expect_exit(util.EXIT_RUNTIME, 60)
    assert "stopping every source (on_source_failure = stop-all)" in p.stderr, p.describe()


def test_two_slots_one_database(outbox_db, pgoutbox, tmp_path):
    """A busy database split over two slots (one publication per table group)."""
    db = outbox_db
    with db.conn.cursor() as cur:
        cur.execute("CREATE TABLE public.outbox2 (LIKE public.outbox INCLUDING ALL)")
        cur.execute("GRANT SELECT ON public.outbox2 TO PUBLIC")
        cur.execute("CREATE PUBLICATION pgoutbox2 FOR TABLE public.outbox2 WITH (publish = 'insert')")
    db.conn.commit()
    util.query_one(db.connect(autocommit=True),
                   "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (db.slot + "_2",))
    try:
        conf = write_config(tmp_path, [
            "brokers = %s" % db.brokers, "conninfo = %s" % db.dsn, "shutdown_timeout = 10",
            "[source one]", "slot = %s" % db.slot, "publication = pgoutbox", "table = public.outbox",
            "[source two]", "slot = %s_2" % db.slot, "publication = pgoutbox2",
            "table = public.outbox2", "topic_prefix = two."])
        r1 = [util.event(db.aggtype("one"), "k%d" % i, "T", {"i": i}) for i in range(40)]
        r2 = [util.event(db.aggtype("two"), "k%d" % i, "T", {"i": i}) for i in range(40)]
        util.commit_events(db.conn, r1)
        util.commit_events(db.conn, r2, table="public.outbox2")
        end = db.wal_lsn()
        p = pgoutbox.start("-c", conf)
        util.wait_confirmed(db.conn, db.slot, end, 60, p)
        util.wait_confirmed(db.conn, db.slot + "_2", end, 60, p)
        p.terminate()
        p.expect_exit(util.EXIT_OK, 30)
        got = util.read_topics(db.brokers, ["outbox.event." + db.aggtype("one"),
                                            "two.outbox.event." + db.aggtype("two")])
        assert {m.id for m in got} == {r[0] for r in r1 + r2}
    finally:
        util.query_one(db.connect(autocommit=True),
                       "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                       " WHERE slot_name = %s", (db.slot + "_2",))


def test_reload_adds_and_removes_sources(outbox_dbs, pgoutbox, tmp_path):
    a, b = outbox_dbs(), outbox_dbs()
    conf = config_for(tmp_path, [("a", a)])
    p = pgoutbox.start("-c", conf)
    util.wait_attached(a.conn, a.slot, p, 30)
    util.commit_events(b.conn, [util.event(b.aggtype("late"), "k", "T", {})])
    config_for(tmp_path, [("a", a), ("b", b)])        # same file, now with b
    p.signal(signal.SIGHUP)
    util.wait_for(lambda: "source b added" in p.stderr, 15, "source b to be added")
    util.wait_confirmed(b.conn, b.slot, b.wal_lsn(), 60, p)
    assert len(b.kafka_messages()) == 1
    config_for(tmp_path, [("b", b)])                  # a removed
    p.signal(signal.SIGHUP)
    util.wait_for(lambda: "source a stopped and removed" in p.stderr, 30, "source a to go")
    util.wait_for(lambda: not util.slot_state(a.conn, a.slot)[1], 30, "a's walsender to go")
    assert p.poll() is None
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)


def test_check_every_source(outbox_dbs, pgoutbox, tmp_path):
    a, b = outbox_dbs(), outbox_dbs()
    conf = config_for(tmp_path, [("a", a), ("b", b)], extra={"b": ["table = public.nope"]})
    p = pgoutbox.run("-c", conf, "--check", timeout=60)
    assert p.returncode == 2, p.describe()
    out = p.stdout
    assert out.index("source a:") < out.index("source b:") < out.index("kafka:"), out
    b_part = out[out.index("source b:"):out.index("kafka:")]
    assert 'FAIL  table: table "public.nope" does not exist' in b_part, out
    assert "FAIL" not in out[out.index("source a:"):out.index("source b:")], out


@pytest.mark.parametrize("lines,message", [
    (["[source a]", "brokers = x"],
     ':{n}: setting "brokers" cannot be set per source (source a): it belongs to the process; '
     'set it outside any [source] section'),
    (["[source a]", "kafka.acks = 1"],
     ':{n}: kafka.* cannot be set per source (source a): all sources share one producer'),
    (["[source a]", "conninfo = x", "[source a]"],
     ':{n}: source a is defined twice (first at line {m})'),
    (["[source a b]"],
     ':{n}: invalid section "[source a b]": \' \' is not allowed in a source name; use letters, '
     'digits, \'_\' and \'-\''),
    (["[table x]"], ':{n}: unknown section "[table x]": the only section is [source NAME]'),
    (["[source a"], ':{n}: invalid section header: a line that starts with "[" must end with "]"; '
     'use [source NAME]'),
    (["[source a]", "slot = s"],
     'source a has no PostgreSQL connection: set conninfo in its [source a] section (or '
     '--source a.conninfo=...)'),
    (["[source a]", "conninfo = x", "[source b]", "conninfo = x"],
     'sources a and b use the same connection and slot "pgoutbox": give each source its own slot'),
])
def test_source_config_errors(pgoutbox_offline, tmp_path, lines, message):
    path = write_config(tmp_path, ["brokers = 127.0.0.1:9"] + lines, name="bad.conf")
    p = pgoutbox_offline.run("-c", path, timeout=10)
    assert p.returncode == util.EXIT_USAGE, p.describe()
    n = len(lines) + 1
    want = message.format(n=n, m=2)
    if want.startswith(":"):
        want = str(path) + want
    assert p.stderr.startswith("pgoutbox: " + want + "\n"), p.stderr


def test_backlog_of_one_source_does_not_starve_another(outbox_dbs, pgoutbox, tmp_path):
    """Source a drains a backlog through a small producer queue while source b
    commits one event at a time: b's events are confirmed while a is still
    draining (the queue is shared fairly), not after a's backlog."""
    a, b = outbox_dbs(), outbox_dbs()
    with a.conn.cursor() as cur:
        cur.execute("INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload)"
                    " SELECT gen_random_uuid(), %s, 'k' || (g %% 50), 'Backlog',"
                    " jsonb_build_object('g', g, 'pad', repeat('x', 200))"
                    " FROM generate_series(1, 200000) g", (a.aggtype("bulk"),))
    a.conn.commit()
    a_end = a.wal_lsn()
    # A small queue and a long linger: a's drain takes a while, and without
    # fair shares a would hold the whole queue.
    conf = config_for(tmp_path, [("a", a), ("b", b)], "kafka.linger.ms = 50",
                      "kafka.queue.buffering.max.messages = 2000")
    p = pgoutbox.start("-c", conf)
    util.wait_attached(a.conn, a.slot, p, 30)
    util.wait_attached(b.conn, b.slot, p, 30)
    lat, a_done = [], []
    for i in range(5):
        t = time.monotonic()
        util.commit_events(b.conn, [util.event(b.aggtype("live"), "k", "Live", {"i": i})])
        util.wait_confirmed(b.conn, b.slot, b.wal_lsn(), 60, p)
        lat.append(time.monotonic() - t)
        a_done.append(util.slot_confirmed_at_least(a.conn, a.slot, a_end))
    t = time.monotonic()
    util.wait_confirmed(a.conn, a.slot, a_end, 300, p)
    rest = time.monotonic() - t
    util.note("fair share: source b's events confirmed in max %.2f s while a drained 200,000 "
              "(a still draining for %.1f s after b's last)" % (max(lat), rest))
    assert not a_done[0], "a's backlog drained before b's first event: the test proves nothing"
    assert max(lat[:3]) < 5, "source b waited %s s behind a's backlog" % lat
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)
    assert len({m.id for m in b.kafka_messages()}) == 5


def test_setup_slot_databases(outbox_dbs, pgoutbox, stack, tmp_path):
    """setup-slot.sh --databases sets up every listed database (its own slot
    each, skipping one without the table), is idempotent, and prints the
    [source] sections one pgoutbox streams them all with."""
    import subprocess
    from conftest import SETUP_SLOT_SH

    a, b, c = outbox_dbs(), outbox_dbs(), outbox_dbs()
    with c.conn.cursor() as cur:
        cur.execute("DROP TABLE public.outbox")
    c.conn.commit()
    base = stack.dsn("postgres")
    for run in range(2):
        r = subprocess.run([str(SETUP_SLOT_SH), "-d", base, "--slot", "multi",
                            "--databases", "%s,%s,%s" % (a.name, b.name, c.name)],
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "database %s: no table public.outbox, skipped" % c.name in r.stdout, r.stdout
        assert "set up 2 database(s)" in r.stdout, r.stdout
    sections = r.stdout[r.stdout.index("[source "):].replace("<your conninfo>", base)
    for db in (a, b):
        slot = ("multi_%s" % db.name)[:63]
        assert "slot = %s" % slot in sections, sections
        assert util.slot_state(db.conn, slot) is not None
    conf = write_config(tmp_path, ["brokers = %s" % a.brokers, "shutdown_timeout = 10",
                                   sections], name="multi.conf")
    for db in (a, b):
        util.commit_events(db.conn, [util.event(db.aggtype("m"), "k", "T", {})])
    p = pgoutbox.start("-c", conf)
    for db in (a, b):
        util.wait_confirmed(db.conn, ("multi_%s" % db.name)[:63], db.wal_lsn(), 60, p)
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)
    for db in (a, b):
        assert len(db.kafka_messages()) == 1
        util.query_one(db.connect(autocommit=True), "SELECT pg_drop_replication_slot(%s)",
                       (("multi_%s" % db.name)[:63],))


def test_hot_standby_per_source(outbox_dbs, pgoutbox, tmp_path):
    """Two pgoutbox processes with the same sources: the second stands by for
    each source, and takes every one over when the first is killed."""
    dbs = [("a", outbox_dbs()), ("b", outbox_dbs())]
    conf = config_for(tmp_path, dbs)
    writers = writers_for(dbs, 31)
    active = pgoutbox.start("-c", conf, name="active")
    for n, db in dbs:
        util.wait_attached(db.conn, db.slot, active, 30)
    standby = pgoutbox.start("-c", conf, name="standby")
    util.wait_for(lambda: standby.stderr.count("standing by") >= 2, 30,
                  "the second process to stand by for both sources")
    for w in writers.values():
        w.start()
    try:
        for w in writers.values():
            w.wait_events(w.events + 50)
        old = {n: util.walsender_of(db.conn, db.slot)[0] for n, db in dbs}
        active.kill()
        t = time.monotonic()
        for n, db in dbs:
            util.wait_for(lambda: (util.walsender_of(db.conn, db.slot) or (old[n],))[0] != old[n],
                          30, "the standby to take source %s over" % n)
        took = time.monotonic() - t
        for w in writers.values():
            w.wait_events(w.events + 30)
    finally:
        for w in writers.values():
            w.stop()
    caught_up(dbs, writers, standby)
    standby.terminate()
    standby.expect_exit(util.EXIT_OK, 30)
    for n, db in dbs:
        assert fu.verify(db, writers[n])[2] == 0
    util.note("hot standby with 2 sources: both taken over in %.1f s after kill -9" % took)
    assert took < 5
