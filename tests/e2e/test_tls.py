"""PostgreSQL over TLS: pgoutbox's connection is libpq's, so `sslmode=verify-full
sslrootcert=CA` in the conninfo gives a verified, encrypted replication stream.

This module starts its own TLS-enabled PostgreSQL with
`scripts/stack.sh start --pg-only --pg-tls` (a throwaway CA and a server
certificate for localhost/127.0.0.1); Kafka is the session's stack.
"""

import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2.extensions
import pytest

import util
from conftest import ENDPOS_TIMEOUT, SETUP_SLOT_SH, SHUTDOWN_TIMEOUT, STACK_SH

ATTACH_TIMEOUT = 30
CERT_ERROR_TIMEOUT = 20
KEEPS_RETRYING = 5  # seconds a run with a wrong CA must stay up by itself


def _output(p):
    return "exit status %d\n--- stdout\n%s--- stderr\n%s" % (p.returncode, p.stdout[-3000:],
                                                            p.stderr[-3000:])


class TlsCluster:
    def __init__(self, port, ca):
        self.port = port
        self.ca = ca

    def dsn(self, dbname="postgres", **overrides):
        """conninfo that verifies the server's certificate against the stack's CA."""
        params = {"host": "localhost", "port": str(self.port), "user": "postgres",
                  "dbname": dbname, "sslmode": "verify-full", "sslrootcert": str(self.ca)}
        params.update(overrides)
        return psycopg2.extensions.make_dsn(**params)


@pytest.fixture(scope="module")
def tls_pg(stack):
    """A private TLS-enabled PostgreSQL of the stack's major (stopped after the module)."""
    # Not under pytest's tmp (mode 0700): the postgres user must reach it.
    state = Path(tempfile.mkdtemp(prefix="pgoutbox-tls-"))
    state.chmod(0o755)
    start = subprocess.run([str(STACK_SH), "start", "--pg-only", "--pg-tls", "--pg",
                            str(stack.pg_version), "--state", str(state)],
                           capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    try:
        assert start.returncode == 0, "scripts/stack.sh start --pg-tls failed:\n" + _output(start)
        env = dict(line.split("=", 1) for line in (state / "env").read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
        assert "PGOUTBOX_PG_CA" in env, "stack.sh --pg-tls wrote no PGOUTBOX_PG_CA:\n%r" % env
        cluster = TlsCluster(env["PGPORT"], env["PGOUTBOX_PG_CA"])
        conn = util.connect(cluster.dsn(), autocommit=True)
        try:
            assert util.query_one(conn, "SELECT ssl FROM pg_stat_ssl"
                                        " WHERE pid = pg_backend_pid()")[0] is True
        finally:
            conn.close()
        yield cluster
    finally:
        subprocess.run([str(STACK_SH), "stop", "--state", str(state), "--clean"],
                       capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        shutil.rmtree(state, ignore_errors=True)


class TlsDB:
    def __init__(self, cluster, brokers, name, slot, tag):
        self.cluster = cluster
        self.brokers = brokers
        self.name = name
        self.slot = slot
        self.tag = tag
        self.dsn = cluster.dsn(name)
        self.conn = util.connect(self.dsn)

    def aggtype(self, name):
        return "%s_%s" % (name, self.tag)

    def args(self, *extra, endpos=None, dsn=None):
        a = ["-d", dsn or self.dsn, "-b", self.brokers, "--slot", self.slot,
             "--shutdown-timeout", str(SHUTDOWN_TIMEOUT)]
        if endpos is not None:
            a += ["--endpos", endpos]
        return a + list(extra)


@pytest.fixture
def tls_db(tls_pg, stack, pgoutbox):
    """A fresh database in the TLS cluster with outbox table, publication and slot
    `tls_slot`, made by scripts/setup-slot.sh over a verify-full connection."""
    tag = uuid.uuid4().hex[:10]
    name = "tls_%s" % tag
    admin = util.connect(tls_pg.dsn(), autocommit=True)
    db = None
    try:
        with admin.cursor() as cur:
            cur.execute('CREATE DATABASE "%s"' % name)
        setup = subprocess.run([str(SETUP_SLOT_SH), "-d", tls_pg.dsn(name), "--create-table",
                                "--slot", "tls_slot"], capture_output=True, text=True,
                               timeout=120, stdin=subprocess.DEVNULL)
        assert setup.returncode == 0, "scripts/setup-slot.sh failed:\n" + _output(setup)
        db = TlsDB(tls_pg, stack.brokers, name, "tls_slot", tag)
        assert util.slot_state(db.conn, "tls_slot") is not None, "setup-slot.sh made no slot"
        yield db
    finally:
        pgoutbox.stop_all()
        if db is not None:
            db.conn.close()
        deadline = time.monotonic() + 20
        while True:
            rows = util.query_one(admin, "SELECT count(*) FROM (SELECT CASE WHEN active_pid IS NULL"
                                         " THEN pg_drop_replication_slot(slot_name)::text"
                                         " ELSE pg_terminate_backend(active_pid)::text END"
                                         " FROM pg_replication_slots WHERE database = %s) s",
                                  (name,))[0]
            if rows == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # polling interval while a terminated walsender exits
        with admin.cursor() as cur:
            cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
        admin.close()


def _insert(db, agg, n, start=0):
    rows = [util.event(agg, "order-%d" % (i % 3), "Created", {"n": i, "tls": True})
            for i in range(start, start + n)]
    return util.commit_events(db.conn, rows)


def _check_kafka(db, agg, brokers):
    rows = {i: r for i, r in util.fetch_rows(db.conn).items() if r.aggregatetype == agg}
    messages = util.read_topics(brokers, [util.default_topic(agg)])
    dups = util.check_delivery(messages, rows)
    if dups:
        util.note("test_tls: %d duplicate deliveries (at least once)" % dups)
    return rows


def test_streams_over_verified_tls(tls_db, stack, pgoutbox):
    agg = tls_db.aggtype("tls")
    _insert(tls_db, agg, 5)
    endpos = util.current_wal_lsn(tls_db.conn)
    tls_db.conn.commit()

    run = pgoutbox.run(*tls_db.args(endpos=endpos), timeout=ENDPOS_TIMEOUT)
    assert run.returncode == util.EXIT_OK, run.describe()
    assert util.slot_confirmed_at_least(tls_db.conn, tls_db.slot, endpos)
    assert len(_check_kafka(tls_db, agg, stack.brokers)) == 5

    # The walsender serving pgoutbox is on an SSL connection.
    p = pgoutbox.start(*tls_db.args())
    util.wait_attached(tls_db.conn, tls_db.slot, p, ATTACH_TIMEOUT)
    row = util.query_one(tls_db.conn,
                         "SELECT s.ssl, s.version, r.application_name FROM pg_stat_ssl s"
                         " JOIN pg_stat_replication r USING (pid)"
                         " JOIN pg_replication_slots sl ON sl.active_pid = r.pid"
                         " WHERE sl.slot_name = %s", (tls_db.slot,))
    assert row is not None, "no walsender for slot %s\n%s" % (tls_db.slot, p.describe())
    assert row[0] is True, "walsender connection is not SSL: %r" % (row,)
    assert row[2] == "pgoutbox", "unexpected application_name: %r" % (row,)

    _insert(tls_db, agg, 3, start=5)
    lsn = util.current_wal_lsn(tls_db.conn)
    util.wait_confirmed(tls_db.conn, tls_db.slot, lsn, ENDPOS_TIMEOUT, proc=p)
    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 20)
    assert len(_check_kafka(tls_db, agg, stack.brokers)) == 8


def test_wrong_ca_does_not_stream(tls_db, stack, pgoutbox, tmp_path):
    wrong_ca = tmp_path / "wrong-ca.crt"
    gen = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                          "-days", "2", "-subj", "/CN=not the stack's CA",
                          "-keyout", str(tmp_path / "wrong-ca.key"), "-out", str(wrong_ca)],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert gen.returncode == 0, "openssl failed:\n" + _output(gen)

    agg = tls_db.aggtype("tlsbad")
    _insert(tls_db, agg, 3)
    before = util.slot_state(tls_db.conn, tls_db.slot)
    assert before is not None

    p = pgoutbox.start(*tls_db.args(dsn=tls_db.cluster.dsn(tls_db.name, sslrootcert=str(wrong_ca))))
    util.wait_for(lambda: p.poll() is not None or "certificate verify failed" in p.stderr.lower(),
                  CERT_ERROR_TIMEOUT, "pgoutbox to report the failed certificate check")
    assert p.poll() is None, "pgoutbox exited (%r) instead of retrying\n%s" % (p.returncode,
                                                                             p.describe())
    # It keeps retrying by itself, it does not give up.
    try:
        rc = p.proc.wait(timeout=KEEPS_RETRYING)
    except subprocess.TimeoutExpired:
        rc = None
    assert rc is None, "pgoutbox exited (%r) within %d s\n%s" % (rc, KEEPS_RETRYING, p.describe())
    assert p.stderr.lower().count("certificate verify failed") >= 2, (
        "expected repeated connection attempts\n" + p.describe())

    after = util.slot_state(tls_db.conn, tls_db.slot)
    assert after == before, "slot moved or was attached: %r -> %r" % (before, after)
    assert util.read_topics(stack.brokers, [util.default_topic(agg)]) == []

    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 20)
    assert util.slot_state(tls_db.conn, tls_db.slot)[0] == before[0]
