"""`pgoutbox --check`: one line per item (`ok|FAIL|warn  <check>: <detail>`),
exit 0 when all pass, 2 when one fails, 1 on bad configuration; never a
password in the output."""

import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg2.extensions
import pytest

import util
from conftest import REPO, STACK_SH, _read_env_file

LINE = re.compile(r"^(ok|FAIL|warn) {2,}([a-z_][a-z_ ]*): (.+)$")
CHECK_BOUND = 30   # seconds a check may take (Kafka's part waits at most ~5 s)


def run_check(pgoutbox, *args, expect):
    p = pgoutbox.run("--check", *args, timeout=CHECK_BOUND)
    assert p.returncode == expect, "exit %r, expected %r\nstdout:\n%s\n%s" % (
        p.returncode, expect, p.stdout, p.describe())
    results = {}
    for line in p.stdout.splitlines():
        m = LINE.match(line)
        if m:
            results.setdefault(m.group(2), []).append((m.group(1), m.group(3)))
        else:
            assert re.match(r"^(all checks passed|check failed): ", line), \
                "unexpected line in --check output: %r" % line
    return p, results


def status(results, check):
    assert check in results, "no %r line in --check output: %r" % (check, results)
    return results[check][0][0]


def assert_only_failure(results, *checks):
    failed = sorted(c for c, rs in results.items() for st, _ in rs if st == "FAIL")
    assert failed == sorted(checks), "failed checks %r, expected %r:\n%r" % (
        failed, sorted(checks), results)


ALL_CHECKS = ("connection", "wal_level", "role", "slot", "slot in use", "slot wal_status",
              "publication", "table", "table privilege", "publication table", "columns",
              "kafka brokers", "kafka topic creation")


@pytest.mark.core
def test_check_all_ok(outbox_db, pgoutbox):
    db = outbox_db
    p, results = run_check(pgoutbox, *db.args(), expect=util.EXIT_OK)
    for check in ALL_CHECKS:
        assert status(results, check) == "ok", "%s: %r" % (check, results[check])
    assert db.slot in results["slot"][0][1]
    assert "all checks passed" in p.stdout
    # Nothing streamed: the slot was not touched.
    assert util.slot_state(db.conn, db.slot)[1] is False


@pytest.mark.core
def test_check_missing_slot(outbox_db, pgoutbox):
    db = outbox_db
    slot = "no_such_slot_%s" % db.tag
    _, results = run_check(pgoutbox, *db.args(slot=slot), expect=util.EXIT_RUNTIME)
    assert_only_failure(results, "slot")
    assert slot in results["slot"][0][1]


def test_check_missing_publication(outbox_db, pgoutbox):
    db = outbox_db
    pub = "no_such_pub_%s" % db.tag
    _, results = run_check(pgoutbox, *db.args(publication=pub), expect=util.EXIT_RUNTIME)
    assert_only_failure(results, "publication")
    assert pub in results["publication"][0][1]


@pytest.mark.core
def test_check_table_not_in_publication(outbox_db, pgoutbox):
    db = outbox_db
    with db.conn.cursor() as cur:
        cur.execute("CREATE TABLE other (i int)")
        cur.execute("ALTER PUBLICATION pgoutbox SET TABLE other")
    db.conn.commit()
    _, results = run_check(pgoutbox, *db.args(), expect=util.EXIT_RUNTIME)
    assert_only_failure(results, "publication table")


def test_check_publication_without_inserts(outbox_db, pgoutbox):
    db = outbox_db
    with db.conn.cursor() as cur:
        cur.execute("ALTER PUBLICATION pgoutbox SET (publish = 'delete')")
    db.conn.commit()
    _, results = run_check(pgoutbox, *db.args(), expect=util.EXIT_RUNTIME)
    assert_only_failure(results, "publication")
    assert "insert" in results["publication"][0][1]


def test_check_missing_column_and_nullable_key(outbox_db, pgoutbox):
    db = outbox_db
    with db.conn.cursor() as cur:
        cur.execute("ALTER TABLE outbox DROP COLUMN type")
        cur.execute("ALTER TABLE outbox ALTER COLUMN aggregateid DROP NOT NULL")
    db.conn.commit()
    _, results = run_check(pgoutbox, *db.args(), expect=util.EXIT_RUNTIME)
    assert_only_failure(results, "columns")
    assert '"type"' in results["columns"][0][1]
    assert status(results, "column nullability") == "warn"
    assert "aggregateid" in results["column nullability"][0][1]


def test_check_template_column_missing(outbox_db, pgoutbox):
    db = outbox_db
    _, results = run_check(pgoutbox, *db.args("--topic-template", "t.${tenant}"),
                           expect=util.EXIT_RUNTIME)
    assert_only_failure(results, "columns")
    assert '"tenant"' in results["columns"][0][1]


def test_check_every_table_against_its_mapping(outbox_db, pgoutbox, tmp_path):
    """With several outbox tables, each is checked against its own mapping:
    a column missing from the second one fails, naming that table."""
    db = outbox_db
    with db.conn.cursor() as cur:
        cur.execute('CREATE SCHEMA "Billing"')
        cur.execute('CREATE TABLE "Billing"."Out Box" ("Event Id" uuid PRIMARY KEY, '
                    '"Customer" text NOT NULL, kind text, data jsonb)')
        cur.execute('ALTER PUBLICATION pgoutbox ADD TABLE "Billing"."Out Box"')
    db.conn.commit()
    q = '"Billing"."Out Box"'
    conf = tmp_path / "two.conf"
    conf.write_text("\n".join([
        "table = public.outbox, %s" % q,
        "table.%s.id_column = Event Id" % q,
        "table.%s.key_column = Customer" % q,
        "table.%s.type_column = Type" % q,          # not in that table
        "table.%s.payload_column = data" % q,
        "table.%s.topic_template = billing.${kind}" % q,
    ]) + "\n")
    _, results = run_check(pgoutbox, *db.args("-c", str(conf)), expect=util.EXIT_RUNTIME)
    assert_only_failure(results, "columns")
    # One line per table for the per-table checks, in the configured order.
    for check in ("table", "table privilege", "publication table", "columns"):
        assert len(results[check]) == 2, (check, results[check])
    (st1, d1), (st2, d2) = results["columns"]
    assert st1 == "ok" and "aggregatetype" in d1, d1
    assert st2 == "FAIL" and '"Type"' in d2 and "Out Box" in d2, d2
    assert '"kind"' not in d2 and '"Customer"' not in d2, d2
    assert "Out Box" in results["table"][1][1], results["table"]

    # Once the column exists, every check passes.
    with db.conn.cursor() as cur:
        cur.execute('ALTER TABLE "Billing"."Out Box" ADD COLUMN "Type" text NOT NULL')
    db.conn.commit()
    _, results = run_check(pgoutbox, *db.args("-c", str(conf)), expect=util.EXIT_OK)
    assert [st for st, _ in results["columns"]] == ["ok", "ok"], results["columns"]


def test_check_missing_table(outbox_db, pgoutbox):
    db = outbox_db
    _, results = run_check(pgoutbox, *db.args("--table", "public.nope"), expect=util.EXIT_RUNTIME)
    assert_only_failure(results, "table")


@pytest.mark.core
def test_check_slot_in_use(outbox_db, pgoutbox):
    db = outbox_db
    p = pgoutbox.start(*db.args())
    util.wait_attached(db.conn, db.slot, p, 30)
    _, results = run_check(pgoutbox, *db.args(), expect=util.EXIT_RUNTIME)
    assert_only_failure(results, "slot in use")
    assert str(util.walsender_of(db.conn, db.slot)[0]) in results["slot in use"][0][1]


def test_check_unreachable_broker(outbox_db, pgoutbox):
    db = outbox_db
    broker = "127.0.0.1:%d" % util.free_port()
    _, results = run_check(pgoutbox, *db.args(brokers=broker), expect=util.EXIT_RUNTIME)
    assert_only_failure(results, "kafka brokers")
    assert broker in results["kafka brokers"][0][1]


def test_check_unreachable_database(pgoutbox, stack):
    dsn = "host=127.0.0.1 port=%d dbname=x connect_timeout=3" % util.free_port()
    _, results = run_check(pgoutbox, "-d", dsn, "-b", stack.brokers, expect=util.EXIT_RUNTIME)
    assert_only_failure(results, "connection")


def test_check_bad_kafka_property_is_usage_error(outbox_db, pgoutbox):
    db = outbox_db
    p, _ = run_check(pgoutbox, *db.args("-X", "no.such.property=1"), expect=util.EXIT_USAGE)
    assert "no.such.property" in p.stdout + p.stderr


CHECK_ROLE = "pgoutbox_check"
CHECK_PASSWORD = "Ch3ckPw!secret"


@pytest.mark.core
def test_check_role_privileges_and_no_password(outbox_db, pgoutbox, stack):
    """A role without REPLICATION and without SELECT: both named; neither the
    PostgreSQL nor the SASL password appears anywhere."""
    db = outbox_db
    admin = util.connect(stack.dsn("postgres"), autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute("DO $$ BEGIN CREATE ROLE %s LOGIN; EXCEPTION WHEN duplicate_object OR"
                        " unique_violation THEN NULL; END $$" % CHECK_ROLE)
            cur.execute("SET password_encryption = 'scram-sha-256'")
            cur.execute("ALTER ROLE %s LOGIN NOREPLICATION PASSWORD %%s" % CHECK_ROLE,
                        (CHECK_PASSWORD,))
    finally:
        admin.close()
    dsn = psycopg2.extensions.make_dsn(host="127.0.0.1", port=stack.port, user=CHECK_ROLE,
                                       password=CHECK_PASSWORD, dbname=db.name)
    p, results = run_check(pgoutbox, *db.args("-X", "sasl.username=u", "-X",
                                              "sasl.password=KafkaCheckPw1", dsn=dsn),
                           expect=util.EXIT_RUNTIME)
    # Without REPLICATION the walsender refuses the connection itself.
    assert_only_failure(results, "connection")
    for text in (p.stdout, p.stderr):
        assert CHECK_PASSWORD not in text and "KafkaCheckPw1" not in text, p.stdout + p.stderr

    admin = util.connect(stack.dsn("postgres"), autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute("ALTER ROLE %s REPLICATION" % CHECK_ROLE)
    finally:
        admin.close()
    p, results = run_check(pgoutbox, *db.args(dsn=dsn), expect=util.EXIT_RUNTIME)
    assert_only_failure(results, "table privilege")
    assert status(results, "role") == "ok" and "REPLICATION" in results["role"][0][1]
    assert CHECK_PASSWORD not in p.stdout + p.stderr

    with db.conn.cursor() as cur:
        cur.execute("GRANT SELECT ON outbox TO %s" % CHECK_ROLE)
    db.conn.commit()
    p, results = run_check(pgoutbox, *db.args(dsn=dsn), expect=util.EXIT_OK)
    assert CHECK_PASSWORD not in p.stdout + p.stderr


@pytest.fixture(scope="module")
def replica_cluster(stack):
    """A PostgreSQL (of the stack's major) with wal_level = replica (no
    Kafka), for this module only."""
    state = Path(tempfile.mkdtemp(prefix="pgoutbox-e2e-replica-"))
    state.chmod(0o755)
    try:
        start = subprocess.run([str(STACK_SH), "start", "--pg-only", "--wal-level", "replica",
                                "--pg", str(stack.pg_version), "--state", str(state)],
                               capture_output=True, text=True,
                               timeout=120, stdin=subprocess.DEVNULL)
        assert start.returncode == 0, start.stderr[-2000:]
        yield _read_env_file(state / "env")["PGOUTBOX_PG"]
    finally:
        subprocess.run([str(STACK_SH), "stop", "--state", str(state), "--clean"],
                       capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        shutil.rmtree(state, ignore_errors=True)


@pytest.mark.core
def test_check_wal_level_replica(pgoutbox, stack, replica_cluster):
    _, results = run_check(pgoutbox, "-d", replica_cluster, "-b", stack.brokers,
                           expect=util.EXIT_RUNTIME)
    assert status(results, "wal_level") == "FAIL"
    assert "replica" in results["wal_level"][0][1]
    assert status(results, "connection") == "ok"


# ---------------------------------------------------------------------------
# Version matters: logical messages (14+), failover slots (17+), settings that
# invalidate the slot while pgoutbox is away (13+, 18+)
# ---------------------------------------------------------------------------

@pytest.mark.core
def test_check_messages_prefix(outbox_db, pgoutbox, stack):
    db = outbox_db
    if stack.pg_version < 14:
        _, results = run_check(pgoutbox, *db.args("--messages-prefix", "outbox"),
                               expect=util.EXIT_RUNTIME)
        assert_only_failure(results, "messages")
        assert results["messages"] == [("FAIL", 'messages_prefix = "outbox" needs PostgreSQL 14 '
                                        "or later: PostgreSQL 13 does not send logical decoding "
                                        "messages to pgoutput")]
    else:
        _, results = run_check(pgoutbox, *db.args("--messages-prefix", "outbox"),
                               expect=util.EXIT_OK)
        assert results["messages"] == [("ok", "transactional logical decoding messages with "
                                        'prefix "outbox" become events')]
    _, results = run_check(pgoutbox, *db.args(), expect=util.EXIT_OK)
    assert "messages" not in results


def reload_conf(dsn, name, value):
    """ALTER SYSTEM SET name = value (RESET for None), reload, and wait until
    a new session sees it."""
    conn = util.connect(dsn, autocommit=True)
    try:
        with conn.cursor() as cur:
            if value is None:
                cur.execute("ALTER SYSTEM RESET %s" % name)
            else:
                cur.execute("ALTER SYSTEM SET %s = %%s" % name, (value,))
            cur.execute("SELECT pg_reload_conf()")
    finally:
        conn.close()

    def seen():
        c = util.connect(dsn, autocommit=True)
        try:
            if value is not None:
                return util.query_one(c, "SELECT current_setting(%s)", (name,))[0] == value
            # reset: no longer from postgresql.auto.conf
            return util.query_one(c, "SELECT coalesce(sourcefile, '') NOT LIKE"
                                     " '%%postgresql.auto.conf' FROM pg_settings WHERE name = %s",
                                  (name,))[0]
        finally:
            c.close()
    util.wait_for(seen, 30, "%s = %r after a reload" % (name, value))


class WalWriter(threading.Thread):
    """Writes WAL (non-transactional logical messages of about 8 kB) until stopped."""

    def __init__(self, dsn):
        super().__init__(daemon=True)
        self.dsn, self.halt, self.error = dsn, threading.Event(), None

    def run(self):
        try:
            conn = util.connect(self.dsn, autocommit=True)
            with conn.cursor() as cur:
                while not self.halt.is_set():
                    cur.execute("SELECT pg_logical_emit_message(false, 'wal-writer', repeat('w', 8000))")
                    time.sleep(0.002)   # pacing: about 2-4 MB/s
            conn.close()
        except Exception as e:  # surfaced by stop()
            self.error = e

    def stop(self):
        self.halt.set()
        self.join(30)
        assert self.error is None, "the WAL writer failed: %r" % (self.error,)


KEEP_RE = re.compile(r"^max_slot_wal_keep_size = 64MB: at (?:the current WAL rate|the average WAL "
                     r"rate since the statistics were reset) of (\d+\.\d) MB/min the slot survives about ([\d.]+) (seconds|minutes|hours) of pgoutbox being down or "
                     r"Kafka not acknowledging \((\d+) MB left\), then a checkpoint invalidates it "
                     r"and the events since must be backfilled$")
ROOMY_RE = re.compile(r"^max_slot_wal_keep_size = 10TB: (\d+) MB of WAL left before a checkpoint "
                      r"invalidates the slot; no WAL was written during the 1 s sample, so how "
                      r"long that lasts depends on the load$|^max_slot_wal_keep_size = 10TB: at "
                      r"(the current WAL rate|the average WAL rate since the statistics were reset) "
                      r"of \d+\.\d MB/min the slot survives about [\d.]+ "
                      r"(hours|days) of pgoutbox being down or Kafka not acknowledging "
                      r"\(\d+ MB left\)$")


@pytest.mark.core
def test_check_max_slot_wal_keep_size(outbox_db, pgoutbox, stack):
    """max_slot_wal_keep_size: the time the slot survives at the WAL rate
    --check measures, a warning when that is less than a day."""
    db = outbox_db
    admin = stack.dsn("postgres")
    _, results = run_check(pgoutbox, *db.args(), expect=util.EXIT_OK)
    assert "slot wal keep size" not in results, "no line while the setting is -1: %r" % results
    reload_conf(admin, "max_slot_wal_keep_size", "64MB")
    try:
        writer = WalWriter(db.dsn)
        writer.start()
        try:
            _, results = run_check(pgoutbox, *db.args(), expect=util.EXIT_OK)
        finally:
            writer.stop()
        (st, detail), = results["slot wal keep size"]
        m = KEEP_RE.match(detail)
        assert st == "warn" and m, (st, detail)
        rate, left = float(m.group(1)), int(m.group(4))
        # What may still be written: the setting, rounded to whole WAL segments.
        assert rate > 1 and 0 < left <= 64 + 16, detail

        # Without the writer, 10 TB last longer than a day, also at the
        # average rate of a server that has run the whole suite (150 MB/min).
        reload_conf(admin, "max_slot_wal_keep_size", "10TB")
        _, results = run_check(pgoutbox, *db.args(), expect=util.EXIT_OK)
        (st, detail), = results["slot wal keep size"]
        assert st == "ok" and ROOMY_RE.match(detail), (st, detail)
    finally:
        reload_conf(admin, "max_slot_wal_keep_size", None)


@pytest.mark.core
@pytest.mark.pg_min(18)
def test_check_idle_replication_slot_timeout(outbox_db, pgoutbox, stack):
    db = outbox_db
    admin = stack.dsn("postgres")
    _, results = run_check(pgoutbox, *db.args(), expect=util.EXIT_OK)
    assert results["slot idle timeout"] == [
        ("ok", "idle_replication_slot_timeout = 0: the slot is never invalidated for being idle")]
    try:
        reload_conf(admin, "idle_replication_slot_timeout", "1h")
        _, results = run_check(pgoutbox, *db.args(), expect=util.EXIT_OK)
        assert results["slot idle timeout"] == [
            ("warn", "idle_replication_slot_timeout = 1h: once pgoutbox has not been connected "
                     "for 60 minutes, the next checkpoint (at most checkpoint_timeout = 5 minutes "
                     "later) invalidates the slot and the events since must be backfilled")]
        reload_conf(admin, "idle_replication_slot_timeout", "2d")
        _, results = run_check(pgoutbox, *db.args(), expect=util.EXIT_OK)
        assert results["slot idle timeout"] == [
            ("ok", "idle_replication_slot_timeout = 2d: once pgoutbox has not been connected "
                   "for 2.0 days, the next checkpoint (at most checkpoint_timeout = 5 minutes "
                   "later) invalidates the slot")]
    finally:
        reload_conf(admin, "idle_replication_slot_timeout", None)


SYNCED_RE = re.compile(r'^this standby has a synced copy of the primary\'s failover slot "[^"]+", '
                       r"confirmed up to [0-9A-F]+/[0-9A-F]+: after a promotion pgoutbox goes on "
                       r"from there$")


def _standby_copy(dsn, slot):
    """(synced, temporary) of the standby's copy of slot, or None."""
    c = util.connect(dsn, autocommit=True)
    try:
        return util.query_one(c, "SELECT synced, temporary FROM pg_replication_slots"
                                 " WHERE slot_name = %s", (slot,))
    finally:
        c.close()


@pytest.mark.core
@pytest.mark.pg_min(17)
@pytest.mark.standby
def test_check_failover_slot(outbox_db, pgoutbox, stack):
    """From the primary: failover slot or not, synchronized_standby_slots and
    whether its standbys are connected.  From the standby: its copy."""
    db = outbox_db
    admin = stack.dsn("postgres")
    standby = psycopg2.extensions.make_dsn(
        **dict(psycopg2.extensions.parse_dsn(stack.standby), dbname=db.name))
    standby_slot = stack.env["PGOUTBOX_STANDBY_SLOT"]

    _, results = run_check(pgoutbox, *db.args(), expect=util.EXIT_OK)
    assert results["slot failover"] == [
        ("warn", 'replication slot "%s" is not a failover slot, but 1 standby(s) stream from this '
                 "server: a promoted standby would not have it; make it one "
                 "(scripts/setup-slot.sh --failover)" % db.slot)]
    assert "slot sync" not in results

    slot = "e2e_fo_%s" % db.tag
    with util.SlotSyncPoker(standby):   # not the slot sync worker's nap of up to 30 s
        setup = subprocess.run([str(REPO / "scripts" / "setup-slot.sh"), "-d", db.dsn,
                                "--failover", "--standby", standby, "--slot", slot],
                               capture_output=True, text=True, timeout=180,
                               stdin=subprocess.DEVNULL)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    conn = util.connect(admin, autocommit=True)
    try:
        _, results = run_check(pgoutbox, *db.args(slot=slot), expect=util.EXIT_OK)
        assert results["slot failover"] == [
            ("ok", 'replication slot "%s" is a failover slot; synchronized_standby_slots = \'%s\' '
                   "holds pgoutbox back until those standbys have the WAL" % (slot, standby_slot))]
        assert results["slot sync"] == [
            ("ok", 'a standby is connected to slot "%s" (whether it has synced "%s" shows only '
                   "there: --check against the standby)" % (standby_slot, slot))]

        # On the standby: its copy, temporary until the primary's slot moves.
        standby_line = ("ok", "the server is a standby (decoding there needs PostgreSQL 16+); "
                              'hot_standby_feedback = on through the primary\'s slot "%s"'
                        % standby_slot)
        temporary = ("warn", 'this standby\'s copy of slot "%s" is still temporary: a promotion '
                             "now would drop it; it becomes usable once the primary's slot was "
                             "confirmed after the copy was made (pgoutbox streaming from the "
                             "primary does that)" % slot)
        # On the standby: its copy, temporary until the primary's slot moved
        # past what the copy reserved (test_failover.py sees it become
        # usable, which can take the slot sync worker tens of seconds).
        def copied():
            util.poke_slot_sync(standby)
            return _standby_copy(standby, slot) is not None
        util.wait_for(copied, 60, "the standby to copy slot %s" % slot, interval=0.2)
        _, results = run_check(pgoutbox, *db.args(slot=slot, dsn=standby), expect=util.EXIT_OK)
        assert results["standby"] == [standby_line]
        assert results["slot in use"][0][0] == "ok" and results["slot in use"][0][1].startswith(
            "a synced copy: only this standby's slot sync worker uses it"), results["slot in use"]
        (st, detail), = results["slot sync"]
        if (st, detail) != temporary:
            assert st == "ok" and SYNCED_RE.match(detail) and slot in detail, (st, detail)

        # synchronized_standby_slots as it should not be.
        reload_conf(admin, "synchronized_standby_slots", "")
        _, results = run_check(pgoutbox, *db.args(slot=slot), expect=util.EXIT_OK)
        assert results["slot failover"] == [
            ("warn", 'replication slot "%s" is a failover slot, but synchronized_standby_slots is '
                     "empty: pgoutbox may publish transactions a standby does not have yet, which "
                     "a failover to it then loses (ghost events); name the standbys' physical "
                     "slots there" % slot)]
        idle = "e2e_idle_%s" % db.tag
        util.query_one(conn, "SELECT pg_create_physical_replication_slot(%s)", (idle,))
        reload_conf(admin, "synchronized_standby_slots",
                    "%s, %s, no_such_slot_%s, %s" % (standby_slot, idle, db.tag, db.slot))
        _, results = run_check(pgoutbox, *db.args(slot=slot), expect=util.EXIT_OK)
        assert results["slot sync"] == [
            ("ok", 'a standby is connected to slot "%s" (whether it has synced "%s" shows only '
                   "there: --check against the standby)" % (standby_slot, slot)),
            ("warn", 'no standby is connected to slot "%s": pgoutbox\'s walsender waits until '
                     "one is and streams nothing meanwhile" % idle),
            ("warn", 'synchronized_standby_slots names slot "no_such_slot_%s", which does not '
                     "exist: pgoutbox's walsender waits for it and streams nothing" % db.tag),
            ("warn", 'synchronized_standby_slots names slot "%s", a logical slot, not a '
                     "standby's" % db.slot)]
    finally:
        reload_conf(admin, "synchronized_standby_slots", None)
        util.query_one(conn, "SELECT count(pg_drop_replication_slot(slot_name)) FROM"
                             " pg_replication_slots WHERE slot_name IN (%s, %s)",
                       (slot, "e2e_idle_%s" % db.tag))
        conn.close()
        # Before the fixture drops the database: PostgreSQL 17 stops a
        # standby that replays DROP DATABASE while it holds a copy of one of
        # the database's slots.
        def gone():
            util.poke_slot_sync(standby)   # not the worker's nap of up to 30 s
            return _standby_copy(standby, slot) is None
        util.wait_for(gone, 60, "the standby to drop its copy of %s" % slot, interval=0.2)
