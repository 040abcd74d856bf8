"""scripts/setup-slot.sh against a real PostgreSQL: creates table, publication and
slot; is idempotent; --drop keeps the table; every failed check says what to
change and exits 1; passwords are never printed; a partitioned outbox table is
published via its root; --failover (17+) makes a failover slot after checking
primary and standby.

Needs the stack of scripts/test.sh (PGOUTBOX_PG in the environment). Checks that
need a server with wal_level = replica start their own PostgreSQL of the same
major with `scripts/stack.sh start --pg-only --wal-level replica` for this
module. The --failover tests need PostgreSQL 17+ and the stack's standby
(`scripts/stack.sh start --pg 17 --standby`); the one for older servers runs
on those.
"""

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest

import util

REPO = Path(__file__).resolve().parents[2]
SETUP_SLOT = REPO / "scripts" / "setup-slot.sh"
STACK = REPO / "scripts" / "stack.sh"
PG_BIN = Path("/usr/lib/postgresql/15/bin")

OUTBOX_COLUMNS = [
    ("id", "uuid", "NO"),
    ("aggregatetype", "text", "NO"),
    ("aggregateid", "text", "NO"),
    ("type", "text", "NO"),
    ("payload", "jsonb", "YES"),
]


# ---------------------------------------------------------------------------
# Helpers and fixtures (this module's own; conftest.py belongs to the daemon tests)
# ---------------------------------------------------------------------------

def dsn_with(dsn, **overrides):
    params = psycopg2.extensions.parse_dsn(dsn)
    params.update(overrides)
    return psycopg2.extensions.make_dsn(**params)


def query(dsn, sql, params=None):
    """All rows of one query, in its own autocommit connection."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def setup_slot(*args, timeout=60):
    """Run scripts/setup-slot.sh; returns the CompletedProcess (text output)."""
    return subprocess.run([str(SETUP_SLOT)] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def output(p):
    return "exit status %d\n--- stdout\n%s--- stderr\n%s" % (p.returncode, p.stdout, p.stderr)


def slot_row(dsn, slot):
    rows = query(dsn, "SELECT slot_type, plugin, database, restart_lsn::text,"
                      " confirmed_flush_lsn::text, catalog_xmin::text"
                      " FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    return rows[0] if rows else None


def publication_row(dsn, pub):
    rows = query(dsn, "SELECT oid, pubinsert, pubupdate, pubdelete, pubtruncate"
                      " FROM pg_publication WHERE pubname = %s", (pub,))
    return rows[0] if rows else None


def published_tables(dsn, pub):
    return query(dsn, "SELECT schemaname, tablename FROM pg_publication_tables"
                      " WHERE pubname = %s ORDER BY 1, 2", (pub,))


def table_oid(dsn, qualified):
    return query(dsn, "SELECT to_regclass(%s)::oid", (qualified,))[0][0]


def server_major(dsn):
    return int(query(dsn, "SHOW server_version_num")[0][0]) // 10000


def wait_for(what, cond, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.1)  # polling interval


def set_and_reload(dsn, name, value):
    """ALTER SYSTEM SET name = value (RESET for None) and wait until a new
    session sees it."""
    if value is None:
        query(dsn, "ALTER SYSTEM RESET %s" % name)
    else:
        query(dsn, "ALTER SYSTEM SET %s = %%s" % name, (value,))
    query(dsn, "SELECT pg_reload_conf()")
    if value is not None:
        wait_for("%s = %r" % (name, value),
                 lambda: query(dsn, "SELECT current_setting(%s)", (name,))[0][0] == value)
    else:
        wait_for("%s to be reset" % name,
                 lambda: query(dsn, "SELECT source <> 'configuration file' OR sourcefile NOT LIKE"
                                    " '%%postgresql.auto.conf' FROM pg_settings WHERE name = %s",
                               (name,))[0][0])


def drop_slots_of(admin_dsn, dbname):
    """Drop every replication slot of database `dbname` (ending its users first)."""
    deadline = time.monotonic() + 20
    while True:
        rows = query(admin_dsn, "SELECT slot_name, active_pid FROM pg_replication_slots"
                                " WHERE database = %s", (dbname,))
        if not rows:
            return
        for name, pid in rows:
            if pid is not None:
                query(admin_dsn, "SELECT pg_terminate_backend(%s)", (pid,))
            else:
                query(admin_dsn, "SELECT pg_drop_replication_slot(slot_name)"
                                 " FROM pg_replication_slots WHERE slot_name = %s", (name,))
        if time.monotonic() > deadline:
            raise AssertionError("could not drop the slots of %s: %r" % (dbname, rows))
        time.sleep(0.1)  # polling interval while terminated walsenders exit


@pytest.fixture(scope="module")
def pg():
    """libpq conninfo of the stack's PostgreSQL (wal_level = logical)."""
    dsn = os.environ.get("PGOUTBOX_PG")
    if not dsn:
        pytest.fail("PGOUTBOX_PG is not set: run these tests with scripts/test.sh, which starts "
                    "a PostgreSQL + Kafka stack and exports its variables (or run "
                    "`scripts/stack.sh start` and `set -a; . STATE/env; set +a` first)",
                    pytrace=False)
    return dsn


class FreshDB:
    def __init__(self, admin_dsn, name):
        self.name = name
        self.dsn = dsn_with(admin_dsn, dbname=name)


@pytest.fixture
def fresh_db(pg):
    """A new, empty database for one test; its slots and itself are dropped after."""
    name = "setup_slot_%s" % uuid.uuid4().hex[:12]
    query(pg, 'CREATE DATABASE "%s"' % name)
    try:
        yield FreshDB(pg, name)
    finally:
        drop_slots_of(pg, name)
        wait_standby_forgets_slots_of(name)
        query(pg, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)


def wait_standby_forgets_slots_of(dbname):
    """Before DROP DATABASE: the standby's slot sync worker must have dropped
    its copies of the database's failover slots. PostgreSQL 17 replays a DROP
    DATABASE whose slot copy the worker holds at that moment by failing its
    startup process ("replication slot ... is active"), which shuts the
    standby down."""
    standby = os.environ.get("PGOUTBOX_STANDBY_PG")
    if not standby:
        return
    try:
        copies = lambda: query(standby, "SELECT count(*) FROM pg_replication_slots"  # noqa: E731
                                        " WHERE database = %s", (dbname,))[0][0]

        def gone():
            util.poke_slot_sync(standby)   # not the worker's nap of up to 30 s
            return copies() == 0
        wait_for("the standby to drop its copies of the slots of " + dbname, gone, timeout=60)
    except psycopg2.OperationalError:
        pass  # the standby is down (a test stopped it): nothing to wait for


@pytest.fixture(scope="module")
def replica_pg():
    """conninfo of a private PostgreSQL with wal_level = replica (stopped after the module)."""
    state = Path(tempfile.mkdtemp(prefix="pgoutbox-replica-"))
    major = os.environ.get("PGOUTBOX_PG_VERSION") or "15"
    start = subprocess.run([str(STACK), "start", "--pg-only", "--wal-level", "replica",
                            "--pg", major, "--state", str(state)],
                           capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    try:
        assert start.returncode == 0, "scripts/stack.sh start failed:\n" + output(start)
        env = dict(line.split("=", 1) for line in (state / "env").read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
        yield "host=127.0.0.1 port=%s user=postgres dbname=postgres" % env["PGPORT"]
    finally:
        subprocess.run([str(STACK), "stop", "--state", str(state), "--clean"],
                       capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        shutil.rmtree(state, ignore_errors=True)


# ---------------------------------------------------------------------------
# Creating, idempotence, dropping
# ---------------------------------------------------------------------------

@pytest.mark.core
def test_creates_table_publication_and_slot(fresh_db):
    p = setup_slot("-d", fresh_db.dsn, "--create-table")
    assert p.returncode == 0, output(p)

    cols = query(fresh_db.dsn, "SELECT column_name, data_type, is_nullable"
                               " FROM information_schema.columns"
                               " WHERE table_schema = 'public' AND table_name = 'outbox'"
                               " ORDER BY ordinal_position")
    assert cols == OUTBOX_COLUMNS
    pk = query(fresh_db.dsn, "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
                             " ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)"
                             " WHERE i.indrelid = 'public.outbox'::regclass AND i.indisprimary")
    assert pk == [("id",)]

    pub = publication_row(fresh_db.dsn, "pgoutbox")
    assert pub is not None, output(p)
    assert pub[1:] == (True, False, False, False), "publish must be 'insert' only: %r" % (pub,)
    assert published_tables(fresh_db.dsn, "pgoutbox") == [("public", "outbox")]
    assert query(fresh_db.dsn, "SELECT pubviaroot FROM pg_publication WHERE pubname = 'pgoutbox'") \
        == [(True,)], "publish_via_partition_root must be on:\n" + output(p)

    slot = slot_row(fresh_db.dsn, "pgoutbox")
    assert slot is not None, output(p)
    assert slot[:3] == ("logical", "pgoutput", fresh_db.name)


@pytest.mark.core
def test_second_run_changes_nothing(fresh_db):
    first = setup_slot("-d", fresh_db.dsn, "--create-table")
    assert first.returncode == 0, output(first)
    before = (table_oid(fresh_db.dsn, "public.outbox"),
              publication_row(fresh_db.dsn, "pgoutbox"),
              slot_row(fresh_db.dsn, "pgoutbox"))

    for args in (["--create-table"], []):
        again = setup_slot("-d", fresh_db.dsn, *args)
        assert again.returncode == 0, output(again)
        assert "already exists" in again.stdout, output(again)
        assert "created" not in again.stdout, output(again)
        after = (table_oid(fresh_db.dsn, "public.outbox"),
                 publication_row(fresh_db.dsn, "pgoutbox"),
                 slot_row(fresh_db.dsn, "pgoutbox"))
        # Same table and publication OIDs; a recreated slot would have moved on.
        assert after == before


def test_custom_names_schema_and_quoting(fresh_db):
    odd_pub = 'pub"; DROP TABLE x; --'
    p = setup_slot("-d", fresh_db.dsn, "--create-table", "--table", 'events."Out Box"',
                   "--publication", odd_pub, "--slot", "custom_slot")
    assert p.returncode == 0, output(p)
    assert table_oid(fresh_db.dsn, 'events."Out Box"') is not None
    assert published_tables(fresh_db.dsn, odd_pub) == [("events", "Out Box")]
    assert slot_row(fresh_db.dsn, "custom_slot")[:2] == ("logical", "pgoutput")
    assert publication_row(fresh_db.dsn, "pgoutbox") is None
    again = setup_slot("-d", fresh_db.dsn, "--table", 'events."Out Box"',
                       "--publication", odd_pub, "--slot", "custom_slot")
    assert again.returncode == 0, output(again)


@pytest.mark.core
def test_drop_removes_slot_and_publication_keeps_table(fresh_db):
    p = setup_slot("-d", fresh_db.dsn, "--create-table")
    assert p.returncode == 0, output(p)
    query(fresh_db.dsn, "INSERT INTO public.outbox VALUES (gen_random_uuid(), 'a', '1', 't', '{}')")

    d = setup_slot("-d", fresh_db.dsn, "--drop")
    assert d.returncode == 0, output(d)
    assert slot_row(fresh_db.dsn, "pgoutbox") is None
    assert publication_row(fresh_db.dsn, "pgoutbox") is None
    assert query(fresh_db.dsn, "SELECT count(*) FROM public.outbox") == [(1,)]

    again = setup_slot("-d", fresh_db.dsn, "--drop")
    assert again.returncode == 0, output(again)
    assert "does not exist" in again.stdout, output(again)


@pytest.mark.core
def test_drop_refuses_an_active_slot(fresh_db):
    p = setup_slot("-d", fresh_db.dsn, "--create-table")
    assert p.returncode == 0, output(p)
    recv = subprocess.Popen([str(PG_BIN / "pg_recvlogical"), "-d", fresh_db.dsn, "-S", "pgoutbox",
                             "--start", "-o", "proto_version=1", "-o", "publication_names=pgoutbox",
                             "-f", "/dev/null"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        pid = None
        while pid is None:
            rows = query(fresh_db.dsn, "SELECT active_pid FROM pg_replication_slots"
                                       " WHERE slot_name = 'pgoutbox'")
            pid = rows[0][0] if rows else None
            assert recv.poll() is None, "pg_recvlogical exited: %s" % recv.stderr.read()
            assert time.monotonic() < deadline, "pg_recvlogical did not attach to the slot"
            time.sleep(0.05)  # polling interval

        d = setup_slot("-d", fresh_db.dsn, "--drop")
        assert d.returncode == 1, output(d)
        assert str(pid) in d.stderr and "in use" in d.stderr, output(d)
        assert slot_row(fresh_db.dsn, "pgoutbox") is not None
        assert publication_row(fresh_db.dsn, "pgoutbox") is not None
    finally:
        recv.terminate()
        recv.wait(timeout=30)


# ---------------------------------------------------------------------------
# Failed checks
# ---------------------------------------------------------------------------

@pytest.mark.core
def test_refuses_wal_level_replica(replica_pg):
    p = setup_slot("-d", replica_pg, "--create-table")
    assert p.returncode == 1, output(p)
    assert "wal_level is replica" in p.stderr, output(p)
    assert "wal_level = logical" in p.stderr and "restart" in p.stderr, output(p)
    # Nothing was changed.
    assert table_oid(replica_pg, "public.outbox") is None
    assert publication_row(replica_pg, "pgoutbox") is None


@pytest.mark.core
def test_reports_no_free_replication_slot(replica_pg):
    (max_slots,) = query(replica_pg, "SELECT current_setting('max_replication_slots')::int")[0]
    names = ["fill_%d" % i for i in range(max_slots)]
    try:
        for n in names:
            query(replica_pg, "SELECT pg_create_physical_replication_slot(%s)", (n,))
        p = setup_slot("-d", replica_pg, "--create-table")
        assert p.returncode == 1, output(p)
        assert "max_replication_slots" in p.stderr, output(p)
        assert "wal_level" in p.stderr, "every failed check is reported:\n" + output(p)
    finally:
        query(replica_pg, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                          " WHERE slot_name LIKE 'fill\\_%%'")


def test_missing_table_without_create_table(fresh_db):
    p = setup_slot("-d", fresh_db.dsn)
    assert p.returncode == 1, output(p)
    assert "public.outbox" in p.stderr and "does not exist" in p.stderr, output(p)
    assert "--create-table" in p.stderr, output(p)

    p = setup_slot("-d", fresh_db.dsn, "--table", "shop.events")
    assert p.returncode == 1, output(p)
    assert "shop.events" in p.stderr, output(p)

    assert publication_row(fresh_db.dsn, "pgoutbox") is None
    assert slot_row(fresh_db.dsn, "pgoutbox") is None


def test_existing_publication_without_the_table_is_not_altered(fresh_db):
    query(fresh_db.dsn, "CREATE TABLE other (id int PRIMARY KEY)")
    query(fresh_db.dsn, "CREATE PUBLICATION pgoutbox FOR TABLE other")
    p = setup_slot("-d", fresh_db.dsn, "--create-table")
    assert p.returncode == 1, output(p)
    assert "does not publish table public.outbox" in p.stderr, output(p)
    assert "ALTER PUBLICATION" in p.stderr, output(p)
    assert published_tables(fresh_db.dsn, "pgoutbox") == [("public", "other")]
    assert slot_row(fresh_db.dsn, "pgoutbox") is None


@pytest.mark.core
def test_existing_slot_with_another_plugin(fresh_db):
    query(fresh_db.dsn, "SELECT pg_create_logical_replication_slot('pgoutbox', 'test_decoding')")
    p = setup_slot("-d", fresh_db.dsn, "--create-table")
    assert p.returncode == 1, output(p)
    assert "test_decoding" in p.stderr and "pgoutput" in p.stderr, output(p)
    d = setup_slot("-d", fresh_db.dsn, "--drop")
    assert d.returncode == 1, output(d)
    assert slot_row(fresh_db.dsn, "pgoutbox")[1] == "test_decoding"


@pytest.mark.core
def test_role_without_replication_or_select(fresh_db):
    setup = setup_slot("-d", fresh_db.dsn, "--create-table", "--slot", "unused")
    assert setup.returncode == 0, output(setup)
    role = "setup_slot_plain_%s" % uuid.uuid4().hex[:8]
    query(fresh_db.dsn, 'CREATE ROLE "%s" LOGIN' % role)
    try:
        p = setup_slot("-d", dsn_with(fresh_db.dsn, user=role), "--slot", "other")
        assert p.returncode == 1, output(p)
        assert "may not replicate" in p.stderr and "REPLICATION" in p.stderr, output(p)
        assert "may not read table public.outbox" in p.stderr, output(p)
        assert "GRANT SELECT" in p.stderr, output(p)
        assert slot_row(fresh_db.dsn, "other") is None
    finally:
        drop_slots_of(dsn_with(fresh_db.dsn, dbname="postgres"), fresh_db.name)
        query(fresh_db.dsn, 'DROP ROLE "%s"' % role)


# ---------------------------------------------------------------------------
# Passwords are never printed
# ---------------------------------------------------------------------------

def test_password_never_printed(pg, fresh_db):
    password = "pw-%s" % uuid.uuid4().hex
    wrong = "wrong-%s" % uuid.uuid4().hex
    query(pg, "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgoutbox_pw')"
              " THEN CREATE ROLE pgoutbox_pw LOGIN REPLICATION PASSWORD 'x'; END IF; END$$")
    query(pg, "ALTER ROLE pgoutbox_pw LOGIN REPLICATION PASSWORD %s", (password,))
    # The role owns the database, so it may create the table and the publication.
    query(pg, 'ALTER DATABASE "%s" OWNER TO pgoutbox_pw' % fresh_db.name)

    params = psycopg2.extensions.parse_dsn(fresh_db.dsn)
    host, port = params["host"], params["port"]
    good = "host=%s port=%s user=pgoutbox_pw dbname=%s password=%s" % (
        host, port, fresh_db.name, password)
    bad = good.replace(password, wrong)
    uri = "postgresql://pgoutbox_pw:%s@%s:%s/%s" % (password, host, port, fresh_db.name)
    spaced = "host=%s port=%s user=pgoutbox_pw dbname=%s password='%s x'" % (
        host, port, fresh_db.name, password)

    runs = {
        "wrong password": setup_slot("-d", bad),
        "missing table": setup_slot("-d", good),
        "quoted password with a space": setup_slot("-d", spaced),
        "create": setup_slot("-d", good, "--create-table"),
        "again, as URI": setup_slot("-d", uri, "--create-table"),
        "drop": setup_slot("-d", good, "--drop"),
    }
    expected = {"wrong password": 1, "missing table": 1, "quoted password with a space": 1,
                "create": 0, "again, as URI": 0, "drop": 0}
    for what, p in runs.items():
        assert p.returncode == expected[what], "%s:\n%s" % (what, output(p))
        for secret in (password, wrong):
            assert secret not in p.stdout + p.stderr, "%s printed a password:\n%s" % (
                what, output(p))
    assert "password authentication failed" in runs["wrong password"].stderr, \
        output(runs["wrong password"])
    assert "password=..." in runs["wrong password"].stderr, output(runs["wrong password"])


# ---------------------------------------------------------------------------
# Usage
# ---------------------------------------------------------------------------

def test_usage():
    h = setup_slot("--help")
    assert h.returncode == 0 and "usage:" in h.stdout and "--create-table" in h.stdout, output(h)
    assert "--failover" in h.stdout and "--standby" in h.stdout, output(h)
    for args in (["--bogus"], [], ["-d"], ["-d", "x", "--slot", "Bad-Name"],
                 ["-d", "x", "--standby", "y"]):
        p = setup_slot(*args)
        assert p.returncode == 1, "%r:\n%s" % (args, output(p))
        assert "usage:" in p.stderr and p.stdout == "", "%r:\n%s" % (args, output(p))


# ---------------------------------------------------------------------------
# Publication: inserts, via the partition root
# ---------------------------------------------------------------------------

PARTITIONED_OUTBOX = """
CREATE TABLE public.outbox (
    id uuid NOT NULL, aggregatetype text NOT NULL, aggregateid text NOT NULL,
    type text NOT NULL, payload jsonb, PRIMARY KEY (id, aggregatetype)
) PARTITION BY LIST (aggregatetype);
CREATE TABLE public.outbox_order PARTITION OF public.outbox FOR VALUES IN ('order');
CREATE TABLE public.outbox_other PARTITION OF public.outbox DEFAULT;
"""


def insert_relations(dsn, slot):
    """The relation (schema.name, from its Relation message) of each Insert
    that pgoutput would send for what the slot holds now (peeked, not
    consumed). Via the partition root, pgoutput describes the partition too
    but sends the row under the root's OID."""
    rows = query(dsn, "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
                      " 'proto_version', '1', 'publication_names', 'pgoutbox')", (slot,))
    names, inserts = {}, []
    for (data,) in rows:
        data = bytes(data)
        oid = int.from_bytes(data[1:5], "big")
        if data[:1] == b"R":  # 'R', Int32 oid, namespace\0, name\0, ...
            nsp, rel = data[5:].split(b"\0")[:2]
            names[oid] = "%s.%s" % (nsp.decode(), rel.decode())
        elif data[:1] == b"I":  # 'I', Int32 oid, 'N', TupleData
            inserts.append(names.get(oid, "oid %d (never described)" % oid))
    return inserts


@pytest.mark.core
def test_partitioned_outbox_streams_under_its_own_name(fresh_db):
    query(fresh_db.dsn, PARTITIONED_OUTBOX)
    p = setup_slot("-d", fresh_db.dsn)
    assert p.returncode == 0, output(p)
    assert "publish_via_partition_root = true" in p.stdout, output(p)
    assert published_tables(fresh_db.dsn, "pgoutbox") == [("public", "outbox")]
    query(fresh_db.dsn, "INSERT INTO public.outbox VALUES"
                        " (gen_random_uuid(), 'order', 'o-1', 'Created', '{}'),"
                        " (gen_random_uuid(), 'customer', 'c-1', 'Moved', '{}')")
    assert insert_relations(fresh_db.dsn, "pgoutbox") == ["public.outbox", "public.outbox"]


@pytest.mark.core
def test_existing_publication_of_partitions_is_refused(fresh_db):
    query(fresh_db.dsn, PARTITIONED_OUTBOX)
    query(fresh_db.dsn, "CREATE PUBLICATION pgoutbox FOR TABLE public.outbox WITH (publish = 'insert')")
    p = setup_slot("-d", fresh_db.dsn)
    assert p.returncode == 1, output(p)
    assert "without publish_via_partition_root" in p.stderr, output(p)
    assert "ALTER PUBLICATION pgoutbox SET (publish_via_partition_root = true)" in p.stderr, output(p)
    assert slot_row(fresh_db.dsn, "pgoutbox") is None

    # The hint is what it takes.
    query(fresh_db.dsn, "ALTER PUBLICATION pgoutbox SET (publish_via_partition_root = true)")
    again = setup_slot("-d", fresh_db.dsn)
    assert again.returncode == 0, output(again)
    query(fresh_db.dsn, "INSERT INTO public.outbox VALUES (gen_random_uuid(), 'order', 'o', 't', NULL)")
    assert insert_relations(fresh_db.dsn, "pgoutbox") == ["public.outbox"]


def test_existing_publication_of_a_plain_table_without_via_root(fresh_db):
    setup = setup_slot("-d", fresh_db.dsn, "--create-table", "--slot", "unused")
    assert setup.returncode == 0, output(setup)
    query(fresh_db.dsn, "DROP PUBLICATION pgoutbox")
    query(fresh_db.dsn, "CREATE PUBLICATION pgoutbox FOR TABLE public.outbox WITH (publish = 'insert')")
    p = setup_slot("-d", fresh_db.dsn)
    assert p.returncode == 0, output(p)
    assert "publish_via_partition_root = false" in p.stdout and "ALTER PUBLICATION" in p.stdout, \
        output(p)


def test_existing_publication_without_inserts(fresh_db):
    setup = setup_slot("-d", fresh_db.dsn, "--create-table", "--slot", "unused")
    assert setup.returncode == 0, output(setup)
    query(fresh_db.dsn, "ALTER PUBLICATION pgoutbox SET (publish = 'update, delete')")
    p = setup_slot("-d", fresh_db.dsn)
    assert p.returncode == 1, output(p)
    assert "does not publish inserts" in p.stderr, output(p)
    assert "SET (publish = 'insert')" in p.stderr, output(p)
    assert slot_row(fresh_db.dsn, "pgoutbox") is None


# ---------------------------------------------------------------------------
# --failover
# ---------------------------------------------------------------------------

def slot_failover(dsn, slot):
    rows = query(dsn, "SELECT failover FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    return rows[0][0] if rows else None


def standby_copy(standby_dsn, slot):
    """(synced, temporary) of the standby's copy of slot, or None."""
    rows = query(standby_dsn, "SELECT synced, temporary FROM pg_replication_slots"
                              " WHERE slot_name = %s", (slot,))
    return rows[0] if rows else None


@pytest.fixture
def standby():
    """conninfo of the stack's standby (of the primary's postgres database)."""
    dsn = os.environ.get("PGOUTBOX_STANDBY_PG")
    assert dsn, "the standby marker should have skipped this test"
    return dsn


@pytest.mark.core
def test_failover_refused_before_17(pg, fresh_db):
    if server_major(pg) >= 17:
        pytest.skip("the server has failover slots")
    p = setup_slot("-d", fresh_db.dsn, "--create-table", "--failover")
    assert p.returncode == 1, output(p)
    assert "--failover needs PostgreSQL 17 or later" in p.stderr, output(p)
    assert table_oid(fresh_db.dsn, "public.outbox") is None
    assert slot_row(fresh_db.dsn, "pgoutbox") is None


@pytest.mark.core
@pytest.mark.pg_min(17)
@pytest.mark.standby
def test_failover_slot_is_synchronised_to_the_standby(fresh_db, standby):
    sb = standby  # slots are per cluster; the new database may not have replayed there yet
    with util.SlotSyncPoker(sb):   # not the slot sync worker's nap of up to 30 s
        p = setup_slot("-d", fresh_db.dsn, "--create-table", "--failover", "--standby", sb,
                       timeout=120)
    assert p.returncode == 0, output(p)
    assert "created logical failover replication slot pgoutbox" in p.stdout, output(p)
    assert "standby slot pgoutbox_standby:" in p.stdout and "streaming" in p.stdout, output(p)
    assert slot_failover(fresh_db.dsn, "pgoutbox") is True
    copy = standby_copy(sb, "pgoutbox")
    assert copy is not None and copy[0] is True, "no synced copy on the standby: %r\n%s" % (
        copy, output(p))
    if copy[1]:
        assert "still temporary" in p.stdout, output(p)

    again = setup_slot("-d", fresh_db.dsn, "--failover", "--standby", sb, timeout=120)
    assert again.returncode == 0, output(again)
    assert "already exists (logical, plugin pgoutput, failover)" in again.stdout, output(again)
    assert "created" not in again.stdout, output(again)

    # Without --standby the standby's side is named, not checked.
    quick = setup_slot("-d", fresh_db.dsn, "--failover")
    assert quick.returncode == 0, output(quick)
    assert "not checked" in quick.stdout and "sync_replication_slots = on" in quick.stdout, \
        output(quick)


@pytest.mark.core
@pytest.mark.pg_min(17)
@pytest.mark.standby
def test_failover_on_an_existing_ordinary_slot(pg, fresh_db, standby):
    first = setup_slot("-d", fresh_db.dsn, "--create-table")
    assert first.returncode == 0, output(first)
    assert slot_failover(fresh_db.dsn, "pgoutbox") is False

    # A slot of another database is that problem, not also this one.
    other = setup_slot("-d", pg, "--failover")
    assert other.returncode == 1, output(other)
    assert "belongs to database %s" % fresh_db.name in other.stderr, output(other)
    assert "not a failover slot" not in other.stderr, output(other)

    p = setup_slot("-d", fresh_db.dsn, "--failover")
    assert p.returncode == 1, output(p)
    assert "is not a failover slot" in p.stderr, output(p)
    m = re.search(r"-c '(ALTER_REPLICATION_SLOT [^']*)'", p.stderr)
    assert m, output(p)
    assert slot_failover(fresh_db.dsn, "pgoutbox") is False

    # The hint's command, over a replication connection, is what it takes.
    alter = subprocess.run([str(PG_BIN / "psql"), "-X", "-d", fresh_db.dsn + " replication=database",
                            "-c", m.group(1)], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    assert alter.returncode == 0, alter.stderr
    assert slot_failover(fresh_db.dsn, "pgoutbox") is True
    again = setup_slot("-d", fresh_db.dsn, "--failover")
    assert again.returncode == 0, output(again)


@pytest.mark.core
@pytest.mark.pg_min(17)
@pytest.mark.standby
def test_failover_needs_synchronized_standby_slots(pg, fresh_db):
    before = query(pg, "SHOW synchronized_standby_slots")[0][0]
    assert before, "stack.sh --standby sets synchronized_standby_slots on 17+"
    set_and_reload(pg, "synchronized_standby_slots", "")
    try:
        p = setup_slot("-d", fresh_db.dsn, "--create-table", "--failover")
        assert p.returncode == 1, output(p)
        assert "synchronized_standby_slots is empty" in p.stderr, output(p)
        # The hint names the streaming standby's slot.
        assert "ALTER SYSTEM SET synchronized_standby_slots = '%s'" % before in p.stderr, output(p)
        assert table_oid(fresh_db.dsn, "public.outbox") is None
        assert slot_row(fresh_db.dsn, "pgoutbox") is None

        set_and_reload(pg, "synchronized_standby_slots", "no_such_slot")
        p = setup_slot("-d", fresh_db.dsn, "--create-table", "--failover")
        assert p.returncode == 1, output(p)
        assert "names slot no_such_slot, which does not exist" in p.stderr, output(p)
    finally:
        set_and_reload(pg, "synchronized_standby_slots", None)
    assert query(pg, "SHOW synchronized_standby_slots")[0][0] == before


@pytest.mark.core
@pytest.mark.pg_min(17)
@pytest.mark.standby
def test_failover_checks_the_standby(pg, fresh_db, standby):
    sb = standby

    p = setup_slot("-d", fresh_db.dsn, "--create-table", "--failover", "--standby", fresh_db.dsn)
    assert p.returncode == 1, output(p)
    assert "the server of --standby is not a standby" in p.stderr, output(p)

    set_and_reload(standby, "sync_replication_slots", "off")
    set_and_reload(standby, "hot_standby_feedback", "off")
    try:
        p = setup_slot("-d", fresh_db.dsn, "--create-table", "--failover", "--standby", sb)
        assert p.returncode == 1, output(p)
        assert "sync_replication_slots is off on the standby" in p.stderr, output(p)
        assert "hot_standby_feedback is off on the standby" in p.stderr, output(p)
        assert "2 checks failed; nothing was changed" in p.stderr, output(p)
        assert slot_row(fresh_db.dsn, "pgoutbox") is None
    finally:
        set_and_reload(standby, "sync_replication_slots", None)
        set_and_reload(standby, "hot_standby_feedback", None)


@pytest.mark.core
@pytest.mark.pg_min(17)
@pytest.mark.standby
def test_failover_with_the_standby_down(pg, fresh_db):
    state = os.environ.get("PGOUTBOX_STATE")
    assert state, "needs scripts/stack.sh's state directory (PGOUTBOX_STATE)"
    slot = query(pg, "SHOW synchronized_standby_slots")[0][0]

    def stack(*args):
        r = subprocess.run([str(STACK)] + list(args) + ["--state", state], capture_output=True,
                           text=True, timeout=180, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, "stack.sh %s:\n%s" % (" ".join(args), output(r))

    def streaming():
        return query(pg, "SELECT count(*) FROM pg_stat_replication s JOIN pg_replication_slots r"
                         " ON r.active_pid = s.pid WHERE r.slot_name = %s AND s.state = 'streaming'",
                     (slot,))[0][0] == 1

    stack("kill-standby")
    try:
        wait_for("the standby's walsender to go", lambda: not streaming())
        p = setup_slot("-d", fresh_db.dsn, "--create-table", "--failover")
        assert p.returncode == 1, output(p)
        assert "no standby streams from slot %s" % slot in p.stderr, output(p)
        assert slot_row(fresh_db.dsn, "pgoutbox") is None
    finally:
        stack("restart-pg", "--standby")
        wait_for("the standby to stream again", streaming, timeout=60)
