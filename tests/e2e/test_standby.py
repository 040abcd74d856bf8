"""pgoutbox and physical standbys.

PostgreSQL 16+ decodes on a hot standby: pgoutbox with `-d` pointing at the
standby streams from a slot created there, as long as the primary keeps the
catalog rows the slot needs (hot_standby_feedback through the standby's
physical slot), and a promotion keeps the slot, so pgoutbox goes on from the
promoted server.  Before 16 a standby cannot decode: pgoutbox waits for it
to become a primary (a switchover in progress), it does not give up.
"""

import re
import subprocess
import threading
import time
import uuid

import psycopg2
import pytest

import faults_util as fu
import util
from conftest import SETUP_SLOT_SH

pytestmark = pytest.mark.core


def query(dsn, sql, params=None):
    conn = util.connect(dsn, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def reload_setting(dsn, name, value):
    query(dsn, "ALTER SYSTEM SET %s = %%s" % name, (value,))
    query(dsn, "SELECT pg_reload_conf()")
    util.wait_for(lambda: query(dsn, "SELECT current_setting(%s)", (name,))[0][0] == value, 30,
                  "%s = %r after the reload" % (name, value))


def wait_replayed(dsn):
    """Until the standby has replayed the database's creation."""
    def ok():
        try:
            util.connect(dsn).close()
            return True
        except psycopg2.OperationalError:
            return False
    util.wait_for(ok, 60, "the standby to replay CREATE DATABASE", interval=0.1)


def create_standby_slot(primary_admin, standby, slot):
    """A pgoutput slot made on the standby.  Its creation waits for a
    running-xacts record from the primary: ask the primary for one."""
    conn = util.connect(standby, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = '60s'")
            done = []

            def kick():
                while not done:
                    query(primary_admin, "SELECT pg_log_standby_snapshot()")
                    time.sleep(0.2)   # pacing of the kicks
            t = threading.Thread(target=kick, daemon=True)
            t.start()
            try:
                cur.execute("SELECT lsn::text FROM pg_create_logical_replication_slot(%s,"
                            " 'pgoutput')", (slot,))
                return cur.fetchone()[0]
            finally:
                done.append(True)
                t.join(10)
    finally:
        conn.close()


def check_lines(pgoutbox, *args, expect):
    p = pgoutbox.run("--check", *args, timeout=60)
    assert p.returncode == expect, "exit %r\n%s\n%s" % (p.returncode, p.stdout, p.describe())
    lines = {}
    for line in p.stdout.splitlines():
        m = re.match(r"^(ok|FAIL|warn) {2,}([a-z_][a-z_ ]*): (.+)$", line)
        if m:
            lines.setdefault(m.group(2), []).append((m.group(1), m.group(3)))
    return lines


# ---------------------------------------------------------------------------
# Before 16: a standby is waited for
# ---------------------------------------------------------------------------

@pytest.mark.pg_max(15)
def test_standby_before_16_is_waited_for(stack, standby_pair, pgoutbox):
    """A conninfo that reaches a standby of 13, 14 or 15 (no target_session_attrs,
    or a switchover in progress): pgoutbox retries with back-off and says
    why, --check fails naming the reason."""
    pair = standby_pair
    tag = uuid.uuid4().hex[:10]
    dbname = "standby_%s" % tag
    query(pair.dsn(pair.primary_port), 'CREATE DATABASE "%s"' % dbname)
    primary = pair.dsn(pair.primary_port, dbname)
    setup = subprocess.run([str(SETUP_SLOT_SH), "-d", primary, "--create-table"],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    standby = pair.dsn(pair.standby_port, dbname)
    wait_replayed(standby)

    p = pgoutbox.start("-d", standby, "-b", stack.brokers, "--shutdown-timeout", "10")
    why = ("127.0.0.1:%s is a standby in recovery and PostgreSQL %d cannot decode there (16+ "
           "can); waiting for a primary (set target_session_attrs=read-write to skip standbys); "
           "reconnecting in " % (pair.standby_port, stack.pg_version))
    util.wait_for(lambda: p.poll() is not None or p.stderr.count(why) >= 2, 30,
                  "pgoutbox to retry the standby twice")
    assert p.poll() is None, "pgoutbox gave up on a standby\n" + p.describe()
    assert "WARNING:  " + why + "1000 ms\n" in p.stderr, p.stderr
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)

    lines = check_lines(pgoutbox, "-d", standby, "-b", stack.brokers, expect=util.EXIT_RUNTIME)
    assert lines["standby"] == [
        ("FAIL", "the server is a standby in recovery and PostgreSQL %d cannot decode there "
                 "(16+ can): point the connection at the primary (with a host list, add "
                 "target_session_attrs=read-write)" % stack.pg_version)]


# ---------------------------------------------------------------------------
# 16+: decoding on the standby, and its promotion
# ---------------------------------------------------------------------------

@pytest.mark.pg_min(16)
def test_decoding_on_a_standby_survives_its_promotion(stack, standby_pair, pgoutbox):
    """pgoutbox -d STANDBY streams from a slot made on the standby while the
    application writes to the primary; --check judges the standby's
    settings; the primary dies, the standby is promoted, and pgoutbox goes
    on from the same slot on the same server: every row the promoted server
    has is in Kafka, and nothing else (a standby decodes only what it
    replayed: no ghosts, with or without synchronized_standby_slots)."""
    pair = standby_pair
    tag = uuid.uuid4().hex[:10]
    dbname = "standby_%s" % tag
    slot = "standby_%s" % tag
    admin = pair.dsn(pair.primary_port)
    query(admin, 'CREATE DATABASE "%s"' % dbname)
    primary = pair.dsn(pair.primary_port, dbname)
    setup = subprocess.run([str(SETUP_SLOT_SH), "-d", primary, "--create-table", "--slot",
                            "unused_%s" % tag], capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    query(primary, "SELECT pg_drop_replication_slot(%s)", ("unused_%s" % tag,))
    standby = pair.dsn(pair.standby_port, dbname)
    sb_admin = pair.dsn(pair.standby_port)
    wait_replayed(standby)
    create_standby_slot(admin, standby, slot)

    args = ["-d", standby, "-b", stack.brokers, "--slot", slot, "--shutdown-timeout", "10"]
    lines = check_lines(pgoutbox, *args, expect=util.EXIT_OK)
    assert lines["standby"] == [
        ("ok", "the server is a standby (decoding there needs PostgreSQL 16+); "
               'hot_standby_feedback = on through the primary\'s slot "%s"' % pair.standby_slot)]
    assert lines["slot in use"] == [("ok", "no other process streams from it")]
    reload_setting(sb_admin, "hot_standby_feedback", "off")
    lines = check_lines(pgoutbox, *args, expect=util.EXIT_OK)
    assert lines["standby"] == [
        ("warn", "the server is a standby and hot_standby_feedback is off: the primary may "
                 "remove catalog rows the slot still needs, and the standby then invalidates "
                 "the slot (a conflict); set hot_standby_feedback = on")]
    reload_setting(sb_admin, "hot_standby_feedback", "on")
    reload_setting(sb_admin, "primary_slot_name", "")
    lines = check_lines(pgoutbox, *args, expect=util.EXIT_OK)
    assert lines["standby"] == [
        ("warn", "the server is a standby with hot_standby_feedback = on but no "
                 "primary_slot_name: while it is disconnected the primary forgets its feedback "
                 "and may remove rows the slot needs; give it a physical slot")]
    reload_setting(sb_admin, "primary_slot_name", pair.standby_slot)

    types = ["standby%d_%s" % (i, tag) for i in range(2)]
    p = pgoutbox.start(*args, name="run0")
    sconn = util.connect(standby, autocommit=True)
    util.wait_attached(sconn, slot, p, 30)
    assert re.search(r'streaming from slot "%s" on 127\.0\.0\.1:%s \(publication "pgoutbox", '
                     r"protocol \d, a standby\)" % (slot, pair.standby_port), p.stderr), p.stderr

    class DB:
        dsn = pair.both(dbname)
        brokers = stack.brokers

        @staticmethod
        def kafka_messages():
            return util.read_test_topics(stack.brokers, tag)
    writer = fu.Writer(DB, types, seed=hash(tag) & 0xFFFFFF, reconnect_for=120)
    writer.start()
    try:
        writer.wait_events(500)
        # Streamed from the standby: the standby's slot follows the primary's commits.
        mark = fu.lsn(query(primary, "SELECT pg_current_wal_lsn()::text")[0][0])
        util.wait_confirmed(sconn, slot, fu.lsn_text(mark), 60, p)

        before = util.walsender_of(sconn, slot)
        pair.sh("kill-primary")
        killed = time.monotonic()
        pair.sh("promote")
        sconn.close()
        sconn = util.connect(standby, autocommit=True)
        util.wait_for(lambda: p.poll() is not None or util.slot_state(sconn, slot)[1], 90,
                      "pgoutbox to stream from the promoted standby", interval=0.1)
        assert p.poll() is None, "pgoutbox exited at the promotion\n" + p.describe()
        again_s = time.monotonic() - killed
        after = util.walsender_of(sconn, slot)
        how = ("the same walsender streamed on" if before and after and before[0] == after[0]
               else "reconnected %.1f s after the kill" % again_s)
        writer.wait_events(writer.events + 300, timeout=120)
    finally:
        writer.stop()
    end = util.current_wal_lsn(sconn)
    util.wait_confirmed(sconn, slot, end, 60, p)
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)

    rows = util.fetch_rows(sconn)
    sconn.close()
    messages = fu.kafka_messages(DB)
    in_kafka = {m.id for m in messages}
    lost = set(rows) - in_kafka
    ghosts = in_kafka - set(rows)
    util.note("| PostgreSQL %d, decoding on the standby, its primary killed and it promoted | "
              "%d rows on the promoted server | %d lost | %d duplicates | %d ghosts | %s |"
              % (stack.pg_version, len(rows), len(lost), len(messages) - len(in_kafka),
                 len(ghosts), how))
    assert not lost and not ghosts, "%d lost (e.g. %r), %d ghosts (e.g. %r)" % (
        len(lost), sorted(lost)[:3], len(ghosts), sorted(ghosts)[:3])
    util.check_delivery(messages, rows)
    fu.check_key_order(messages, rows)
