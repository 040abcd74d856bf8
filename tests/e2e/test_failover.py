"""A database failover under load (PostgreSQL 17+): a failover slot, a
physical standby that synchronises it, pgoutbox on a multi-host conninfo
(`host=primary,standby ... target_session_attrs=read-write`), the primary
killed (pg_ctl stop -m immediate) and the standby promoted.  An independent
consumer then compares Kafka with the *new* primary's outbox:

  - lost:   rows the new primary has that never reached Kafka (must be 0);
  - ghosts: events in Kafka whose row the new primary does not have (their
            transaction committed on the old primary only).

To make the standby lag behind as it does in a real outage, its WAL stream
(and its slot sync worker) goes through a TCP proxy that is cut a moment
before the primary dies: the last transactions of the old primary never
reach the standby.  With synchronized_standby_slots naming the standby's
slot (what docs/guarantees.md prescribes), PostgreSQL holds those
transactions back from pgoutbox: 0 ghosts.  Without it they are published
and become ghosts; the test reports how many.  In both, pgoutbox is
restarted right after it reached the new primary: a position it confirmed
on the old timeline must not make the new primary's slot skip anything
(issue 12).

Each run gets its own primary + standby (conftest's standby_pair: a
failover consumes them) and uses the session's Kafka.
"""

import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2
import pytest

import faults_util as fu
import util
from conftest import SETUP_SLOT_SH

pytestmark = [pytest.mark.pg_min(17), pytest.mark.core]

SLOT = "pgoutbox"
CUT_EVENTS = 400         # events the old primary commits after the standby was cut off
AFTER_EVENTS = 300       # events committed on the new primary
TIMEOUT = 90


def query(dsn, sql, params=None):
    conn = util.connect(dsn, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def reload_setting(dsn, name, value):
    """ALTER SYSTEM SET name = value, reload, and wait until a new session sees it."""
    query(dsn, "ALTER SYSTEM SET %s = %%s" % name, (value,))
    query(dsn, "SELECT pg_reload_conf()")
    util.wait_for(lambda: query(dsn, "SELECT current_setting(%s)", (name,))[0][0] == value, 30,
                  "%s = %r after the reload" % (name, value))


def standby_through(fs, proxy):
    """Point the standby's WAL receiver (and with it the slot sync worker,
    which uses the same primary_conninfo) at the proxy; wait until it
    streams through it."""
    sb = fs.dsn(fs.standby_port)
    conninfo = ("host=127.0.0.1 port=%d user=postgres dbname=postgres application_name=%s"
                % (proxy.port, fs.standby_slot))
    query(sb, "ALTER SYSTEM SET primary_conninfo = %s", (conninfo,))
    query(sb, "SELECT pg_reload_conf()")

    def through():
        rows = query(sb, "SELECT sender_port, status FROM pg_stat_wal_receiver")
        return rows and rows[0][0] == proxy.port and rows[0][1] == "streaming"
    util.wait_for(through, 60, "the standby to stream through the proxy", interval=0.1)


def standby_copy(fs, dbname):
    """(synced, temporary, confirmed_flush_lsn int) of the standby's copy of the slot."""
    rows = query(fs.dsn(fs.standby_port, dbname),
                 "SELECT synced, temporary, confirmed_flush_lsn::text FROM pg_replication_slots"
                 " WHERE slot_name = %s", (SLOT,))
    return (rows[0][0], rows[0][1], fu.lsn(rows[0][2])) if rows else None


class FailoverDB:
    """What fu.Writer and fu.kafka_messages need of a database: its conninfo
    (both hosts) and the test's topics."""

    def __init__(self, dsn, brokers, tag):
        self.dsn, self.brokers, self.tag = dsn, brokers, tag

    def kafka_messages(self):
        return util.read_test_topics(self.brokers, self.tag)


@pytest.mark.parametrize("sync", [True, False], ids=["synchronized_standby_slots", "unset"])
def test_failover_loses_nothing(request, stack, standby_pair, pgoutbox, sync):
    fs = standby_pair
    tag = uuid.uuid4().hex[:10]
    dbname = "failover_%s" % tag
    types = ["failover%d_%s" % (i, tag) for i in range(2)]
    primary = fs.dsn(fs.primary_port, dbname)
    standby = fs.dsn(fs.standby_port, dbname)
    both = fs.both(dbname)

    proxy = fu.TcpProxy("127.0.0.1", fs.primary_port)
    proxy.start()
    writer = None
    try:
        standby_through(fs, proxy)
        query(fs.dsn(fs.primary_port), 'CREATE DATABASE "%s"' % dbname)

        def replayed():
            try:
                util.connect(standby).close()
                return True
            except psycopg2.OperationalError:
                return False
        util.wait_for(replayed, 60, "the standby to replay CREATE DATABASE", interval=0.1)
        with util.SlotSyncPoker(standby):   # not the slot sync worker's nap of up to 30 s
            setup = subprocess.run([str(SETUP_SLOT_SH), "-d", primary, "--create-table",
                                    "--failover", "--standby", standby, "--slot", SLOT],
                                   capture_output=True, text=True, timeout=180,
                                   stdin=subprocess.DEVNULL)
        assert setup.returncode == 0, "setup-slot.sh --failover failed:\n%s%s" % (
            setup.stdout, setup.stderr)
        if not sync:
            reload_setting(fs.dsn(fs.primary_port), "synchronized_standby_slots", "")

        p = pgoutbox.start("-d", both, "-b", stack.brokers, "--slot", SLOT,
                           "--shutdown-timeout", "10", name="run0")
        pconn = util.connect(primary, autocommit=True)
        util.wait_attached(pconn, SLOT, p, 30)
        fdb = FailoverDB(both, stack.brokers, tag)
        writer = fu.Writer(fdb, types, seed=hash(tag) & 0xFFFFFF, reconnect_for=120)
        writer.start()
        writer.wait_events(300)
        util.wait_confirmed(pconn, SLOT, fu.lsn_text(writer.last_lsn()), 60, p)

        # The standby's copy is usable only once synced and no longer
        # temporary, and it follows the primary's confirmations.
        mark = writer.last_lsn()

        def copy_ready():
            # The primary's slot moves its catalog_xmin at running-xacts
            # records (every 15 s by themselves); the standby's worker
            # syncs in its next cycle (after a nap of up to 30 s).  Both now.
            query(primary, "SELECT pg_log_standby_snapshot()")
            util.poke_slot_sync(standby)
            c = standby_copy(fs, dbname)
            return c is not None and c[0] and not c[1] and c[2] >= mark
        util.wait_for(copy_ready, 60, "the standby's copy of the slot to be synced, not "
                      "temporary, and confirmed past %s" % fu.lsn_text(mark), interval=0.2)
        # What --check says of it, on the standby.
        check = pgoutbox.run("--check", "-d", standby, "-b", stack.brokers, "--slot", SLOT,
                             timeout=60, name="check")
        assert check.returncode == util.EXIT_OK, check.stdout + check.describe()
        assert re.search(r'^ok {4}slot sync: this standby has a synced copy of the primary\'s '
                         r'failover slot "%s", confirmed up to [0-9A-F]+/[0-9A-F]+: after a '
                         r'promotion pgoutbox goes on from there$' % SLOT, check.stdout, re.M), \
            check.stdout

        # The standby falls behind: what the old primary commits from here
        # on never reaches it.
        proxy.cut()
        cut_events = writer.events
        writer.wait_events(cut_events + CUT_EVENTS)
        if not sync:
            # Nothing holds the walsender back: pgoutbox publishes (and
            # Kafka acknowledges) transactions the standby does not have.
            util.wait_confirmed(pconn, SLOT, fu.lsn_text(writer.last_lsn()), 60, p)
        pconn.close()

        fs.sh("kill-primary")
        killed = time.monotonic()
        old_ids = {i for t in list(writer.txns) for i in t.ids}
        fs.sh("promote")
        new = util.connect(standby, autocommit=True)

        def streaming():
            assert p.poll() is None, "pgoutbox exited (%r) at the failover\n%s" % (
                p.returncode, p.describe())
            st = util.slot_state(new, SLOT)
            assert st is not None, "the promoted standby has no slot %s" % SLOT
            return st[1]
        util.wait_for(streaming, TIMEOUT, "pgoutbox to stream from the promoted standby",
                      interval=0.1)
        to_streaming = time.monotonic() - killed
        switch_log = p.stderr

        # Right after it reached the new primary: a restart.  A position
        # from the old timeline confirmed to this server would make the new
        # run skip what the new primary commits below it.
        def not_ahead():
            row = query(standby, "SELECT confirmed_flush_lsn <= pg_current_wal_lsn(),"
                                 " confirmed_flush_lsn::text, pg_current_wal_lsn()::text"
                                 " FROM pg_replication_slots WHERE slot_name = %s", (SLOT,))
            assert row, "the promoted standby has no slot %s" % SLOT
            assert row[0][0], ("the new primary's slot was confirmed at %s, past its own WAL "
                               "end %s" % (row[0][1], row[0][2]))
        not_ahead()
        p.terminate()
        p.expect_exit(util.EXIT_OK, 30)
        not_ahead()
        p = pgoutbox.start("-d", both, "-b", stack.brokers, "--slot", SLOT,
                           "--shutdown-timeout", "10", name="run1")
        util.wait_attached(new, SLOT, p, 30)

        writer.wait_events(writer.events + AFTER_EVENTS, timeout=120)
        writer.stop()
        writer = None
        end = util.current_wal_lsn(new)
        util.wait_confirmed(new, SLOT, end, 60, p)
        not_ahead()
        p.terminate()
        p.expect_exit(util.EXIT_OK, 30)

        # The independent consumer's verdict against the new primary.
        rows = util.fetch_rows(new)
        new.close()
        messages = fu.kafka_messages(fdb)
        in_kafka = {m.id for m in messages}
        lost = sorted(set(rows) - in_kafka)
        ghosts = sorted(in_kafka - set(rows))
        real = [m for m in messages if m.id in rows]
        dups = len(real) - len(in_kafka & set(rows))
        survived = len(old_ids & set(rows))
        util.note("| PostgreSQL %d failover, synchronized_standby_slots %s | %d committed on the "
                  "old primary (%d of them on the new one) + %d on the new | %d delivered | "
                  "%d lost | %d duplicates | %d ghosts | %.1f s kill to streaming |"
                  % (stack.pg_version, "set" if sync else "unset", len(old_ids), survived,
                     len(rows) - survived, len(in_kafka & set(rows)), len(lost), dups,
                     len(ghosts), to_streaming))
        assert not lost, "%d events of the new primary never reached Kafka, e.g. %r" % (
            len(lost), lost[:5])
        util.check_delivery(real, rows)
        fu.check_key_order(real, rows)
        if sync:
            assert not ghosts, ("%d events in Kafka whose transaction the new primary does not "
                                "have, e.g. %r" % (len(ghosts), ghosts[:5]))
        else:
            # The scenario bites: without the setting the cut-off
            # transactions were published.
            assert ghosts, "no ghosts without synchronized_standby_slots: the standby did not lag"
        # The switch is logged with both positions.
        assert re.search(r'WARNING:  connected to another server: 127\.0\.0\.1:%s \(system \d+, '
                         r'timeline 2\) instead of system \d+ timeline 1; its slot is confirmed '
                         r'up to [0-9A-F]+/[0-9A-F]+, pgoutbox had confirmed [0-9A-F]+/[0-9A-F]+ '
                         r'on the previous one' % fs.standby_port, switch_log), switch_log
        assert 'streaming from slot "%s" on 127.0.0.1:%s' % (SLOT, fs.standby_port) in switch_log
    finally:
        if writer is not None:
            writer._halt.set()
            writer.join(30)
        proxy.close()
