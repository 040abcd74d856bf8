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


def test_check_all_ok(outbox_db, pgoutbox):
    db = outbox_db
    p, results = run_check(pgoutbox, *db.args(), expect=util.EXIT_OK)
    for check in ALL_CHECKS:
        assert status(results, check) == "ok", "%s: %r" % (check, results[check])
    assert db.slot in results["slot"][0][1]
    assert "all checks passed" in p.stdout
    # Nothing streamed: the slot was not touched.
    assert util.slot_state(db.conn, db.slot)[1] is False


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
