"""Fixtures of the end-to-end suite: a real PostgreSQL (13 to 18) + Kafka stack,
a fresh database with outbox table, publication and slot per test, and pgoutbox
runs whose stderr is kept per test and checked for sanitizer reports.

Run as `/usr/bin/python3 -m pytest -v tests/e2e`.  `scripts/test.sh` exports the
stack's variables (PGOUTBOX_PG, PGOUTBOX_BROKERS, PG*, PGOUTBOX_KAFKA_* of the
TLS listeners, PGOUTBOX_PG_VERSION, PGOUTBOX_STANDBY_* with a standby) and
PGOUTBOX_BIN; when they are absent the session starts its own throwaway stack
with `scripts/stack.sh start --kafka-tls` and stops it at the end: with
PGOUTBOX_PG_VERSION=N set, of PostgreSQL N (`--pg N`, after
`scripts/install-deps.sh --pg N`), and with PGOUTBOX_STANDBY=1 with a standby.

The server's major is `stack.pg_version` (from the env file's
PGOUTBOX_PG_VERSION, checked against the server); `@pytest.mark.pg_min(N)`
skips a test on older servers, `@pytest.mark.pg_max(N)` on newer ones,
`@pytest.mark.standby` without a standby.  `@pytest.mark.core` marks the
subset scripts/test.sh runs on every major, `@pytest.mark.server` the tests
of what the server does that it runs on the newest major too (the whole
suite runs on Debian's 15).
"""

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg2.extensions
import pytest

import util

REPO = Path(__file__).resolve().parents[2]
STACK_SH = REPO / "scripts" / "stack.sh"
SETUP_SLOT_SH = REPO / "scripts" / "setup-slot.sh"

STACK_VARS = ("PGOUTBOX_STATE", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE",
              "PGOUTBOX_PG", "PGOUTBOX_BROKERS", "PGOUTBOX_PG_LOG", "PGOUTBOX_KAFKA_LOG",
              # the server (stack.sh --pg N) and its standby (--standby)
              "PGOUTBOX_PG_VERSION", "PGOUTBOX_PG_SERVER_VERSION", "PGOUTBOX_PG_BINDIR",
              "PGOUTBOX_PG_DATA", "PGOUTBOX_STANDBY_PG", "PGOUTBOX_STANDBY_PORT",
              "PGOUTBOX_STANDBY_DATA", "PGOUTBOX_STANDBY_LOG", "PGOUTBOX_STANDBY_SLOT",
              # stack.sh --kafka-tls (test_kafka_tls.py)
              "PGOUTBOX_KAFKA_SSL_BROKERS", "PGOUTBOX_KAFKA_SASL_BROKERS", "PGOUTBOX_KAFKA_CA",
              "PGOUTBOX_KAFKA_SASL_USER", "PGOUTBOX_KAFKA_SASL_PASSWORD")

# Seconds a pgoutbox run gets to drain on SIGTERM (passed as --shutdown-timeout),
# and the bound on how long a run to --endpos may take.
SHUTDOWN_TIMEOUT = 10
ENDPOS_TIMEOUT = 60


# ---------------------------------------------------------------------------
# The stack
# ---------------------------------------------------------------------------

class Stack:
    """Where PostgreSQL and Kafka listen.  `env` holds the variables
    scripts/stack.sh wrote (exported to every pgoutbox run).  `pg_version` is
    the server's major; `standby` the conninfo of its standby, or None."""

    def __init__(self, env):
        self.env = env
        self.pg = env["PGOUTBOX_PG"]
        self.brokers = env["PGOUTBOX_BROKERS"]
        params = psycopg2.extensions.parse_dsn(self.pg)
        self.host = params.get("host", env.get("PGHOST", "127.0.0.1"))
        self.port = params.get("port", env.get("PGPORT", "5432"))
        self.user = params.get("user", env.get("PGUSER", "postgres"))
        # An env file older than stack.sh --pg has no version: Debian's 15.
        self.pg_version = int(env.get("PGOUTBOX_PG_VERSION") or 15)
        self.standby = env.get("PGOUTBOX_STANDBY_PG")

    def dsn(self, dbname=None, **overrides):
        params = psycopg2.extensions.parse_dsn(self.pg)
        if dbname is not None:
            params["dbname"] = dbname
        params.update(overrides)
        return psycopg2.extensions.make_dsn(**params)


def _read_env_file(path):
    """The variables a shell gets by sourcing `path`."""
    script = 'set -a; . "$1" >/dev/null; for v in %s; do printf "%%s=%%s\\0" "$v" "${!v-}"; done' % (
        " ".join(STACK_VARS))
    out = subprocess.run(["bash", "-c", script, "_", str(path)], check=True,
                         capture_output=True).stdout.decode()
    env = {}
    for item in out.split("\0"):
        if "=" in item:
            k, v = item.split("=", 1)
            if v:
                env[k] = v
    return env


def _check_server_version(st):
    """The server is the major the env file names (a stale env file, or
    PGOUTBOX_PG_VERSION set by hand, would make version-dependent tests lie)."""
    conn = util.connect(st.dsn("postgres"), autocommit=True)
    try:
        num = int(util.query_one(conn, "SHOW server_version_num")[0])
    finally:
        conn.close()
    if num // 10000 != st.pg_version:
        pytest.fail("PGOUTBOX_PG_VERSION is %d but the server at %s is PostgreSQL %d"
                    % (st.pg_version, st.pg, num // 10000), pytrace=False)
    return st


def _start_args():
    """scripts/stack.sh start's options for the session's own stack."""
    args = ["--kafka-tls"]
    want = os.environ.get("PGOUTBOX_PG_VERSION")
    if want:
        args += ["--pg", want]
    if os.environ.get("PGOUTBOX_STANDBY") == "1":
        args += ["--standby"]
    return args


@pytest.fixture(scope="session")
def stack():
    if os.environ.get("PGOUTBOX_PG") and os.environ.get("PGOUTBOX_BROKERS"):
        yield _check_server_version(
            Stack({k: os.environ[k] for k in STACK_VARS if os.environ.get(k)}))
        return
    if not STACK_SH.exists():
        pytest.fail("PGOUTBOX_PG/PGOUTBOX_BROKERS are not set and %s does not exist" % STACK_SH,
                    pytrace=False)
    # Not under pytest's /tmp/pytest-of-root (mode 0700): the postgres user must
    # be able to reach its data directory.
    state = Path(tempfile.mkdtemp(prefix="pgoutbox-e2e-stack-"))
    state.chmod(0o755)
    start = subprocess.run([str(STACK_SH), "start"] + _start_args() + ["--state", str(state)],
                           capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    try:
        if start.returncode != 0:
            pytest.fail("scripts/stack.sh start failed (%d):\n%s\n%s"
                        % (start.returncode, start.stdout[-3000:], start.stderr[-3000:]),
                        pytrace=False)
        env = _read_env_file(state / "env")
        missing = [k for k in ("PGOUTBOX_PG", "PGOUTBOX_BROKERS") if k not in env]
        if missing:
            pytest.fail("%s lacks %s" % (state / "env", ", ".join(missing)))
        # Visible to every subprocess and to test modules that read the
        # environment themselves (as under scripts/test.sh).
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield _check_server_version(Stack(env))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        subprocess.run([str(STACK_SH), "stop", "--state", str(state), "--clean"],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _stack_for_session(request):
    """Without scripts/test.sh's variables, start the session's own stack up
    front, so that every test module (also those that only read PGOUTBOX_PG
    from the environment) has one."""
    if not (os.environ.get("PGOUTBOX_PG") and os.environ.get("PGOUTBOX_BROKERS")):
        request.getfixturevalue("stack")


def pytest_configure(config):
    config.addinivalue_line("markers", "pg_min(N): needs PostgreSQL N or later (skipped before)")
    config.addinivalue_line("markers", "pg_max(N): about PostgreSQL N or older (skipped after)")
    config.addinivalue_line("markers", "standby: needs the stack's standby (stack.sh --standby)")
    config.addinivalue_line("markers", "core: of the subset scripts/test.sh runs on every "
                                       "PostgreSQL major (-m core), not only on 15")
    config.addinivalue_line("markers", "server: exercises what the server does (decoding, "
                                       "catalogs, slots); scripts/test.sh runs it on the newest "
                                       "major too")


@pytest.fixture(autouse=True)
def _server_requirements(request):
    """Skip tests marked pg_min(N) on older servers, pg_max(N) on newer ones,
    standby without one."""
    mark = request.node.get_closest_marker("pg_min")
    upto = request.node.get_closest_marker("pg_max")
    needs_standby = request.node.get_closest_marker("standby") is not None
    if mark is None and upto is None and not needs_standby:
        return
    st = request.getfixturevalue("stack")
    if mark is not None and st.pg_version < mark.args[0]:
        pytest.skip("needs PostgreSQL %d or later; the server is %d" % (mark.args[0], st.pg_version))
    if upto is not None and st.pg_version > upto.args[0]:
        pytest.skip("about PostgreSQL %d and older; the server is %d" % (upto.args[0], st.pg_version))
    if needs_standby and not st.standby:
        pytest.skip("needs a standby (scripts/stack.sh start --standby, or PGOUTBOX_STANDBY=1)")


class StandbyPair:
    """A primary and its physical standby of their own, of the stack's
    major (scripts/stack.sh start --pg N --standby --pg-only in a temporary
    state directory), for tests that kill, reconfigure or promote them."""

    def __init__(self, state, env):
        self.state = state
        self.env = env
        self.primary_port = env["PGPORT"]
        self.standby_port = env["PGOUTBOX_STANDBY_PORT"]
        self.standby_slot = env["PGOUTBOX_STANDBY_SLOT"]

    def dsn(self, port, dbname="postgres"):
        return "host=127.0.0.1 port=%s user=postgres dbname=%s" % (port, dbname)

    def both(self, dbname):
        """The conninfo a user gives pgoutbox (and the application) for failover."""
        return ("host=127.0.0.1,127.0.0.1 port=%s,%s user=postgres dbname=%s "
                "target_session_attrs=read-write connect_timeout=2"
                % (self.primary_port, self.standby_port, dbname))

    def sh(self, *args, timeout=180):
        """scripts/stack.sh COMMAND on this pair (kill-primary, promote, ...)."""
        r = subprocess.run([str(STACK_SH)] + list(args) + ["--state", str(self.state)],
                           capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, "scripts/stack.sh %s failed (%d):\n%s%s" % (
            " ".join(args), r.returncode, r.stdout[-2000:], r.stderr[-3000:])


@pytest.fixture
def standby_pair(stack):
    state = Path(tempfile.mkdtemp(prefix="pgoutbox-pair-"))
    state.chmod(0o755)
    try:
        r = subprocess.run([str(STACK_SH), "start", "--pg", str(stack.pg_version), "--standby",
                            "--pg-only", "--state", str(state)], capture_output=True, text=True,
                           timeout=300, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            pytest.fail("scripts/stack.sh start --standby --pg-only failed (%d):\n%s"
                        % (r.returncode, r.stderr[-3000:]), pytrace=False)
        yield StandbyPair(state, _read_env_file(state / "env"))
    finally:
        subprocess.run([str(STACK_SH), "stop", "--state", str(state), "--clean"],
                       capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def pgoutbox_bin():
    binary = Path(os.environ.get("PGOUTBOX_BIN") or REPO / "build" / "cdc" / "pgoutbox")
    if not binary.is_absolute():
        binary = REPO / binary
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail("pgoutbox binary not found at %s: build it (meson setup build && meson "
                    "compile -C build) or set PGOUTBOX_BIN" % binary, pytrace=False)
    return binary


# ---------------------------------------------------------------------------
# pgoutbox runs
# ---------------------------------------------------------------------------

class Runner:
    """Starts pgoutbox runs for one test and cleans up after them."""

    def __init__(self, binary, stack, workdir, node):
        self.binary = binary
        self.stack = stack
        self.workdir = workdir
        self.runs = []
        node._pgoutbox_runs = self.runs

    def env(self, extra=None, drop=()):
        env = dict(os.environ)
        env.update(self.stack.env)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        for k in drop:
            env.pop(k, None)
        env.update(extra or {})
        return env

    def start(self, *args, name=None, env=None, drop_env=()):
        name = name or "run%d" % (len(self.runs) + 1)
        p = util.PgoutboxProcess(self.binary, args, self.workdir, name,
                                 self.env(env, drop_env))
        self.runs.append(p)
        return p

    def run(self, *args, timeout=30, **kw):
        """Start, wait for exit; returns the finished process."""
        p = self.start(*args, **kw)
        p.wait(timeout)
        return p

    def stop_all(self):
        for p in self.runs:
            p.stop()

    def sanitizer_reports(self):
        return [p for p in self.runs if p.sanitizer_report()]


@pytest.fixture
def pgoutbox(request, pgoutbox_bin, tmp_path):
    """Factory of pgoutbox runs; each gets the stack's variables in its environment."""
    runner = Runner(pgoutbox_bin, request.getfixturevalue("stack"), tmp_path, request.node)
    yield runner
    runner.stop_all()
    bad = runner.sanitizer_reports()
    if bad:
        pytest.fail("sanitizer report in pgoutbox stderr:\n"
                    + "\n".join(p.describe() for p in bad), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    runs = getattr(item, "_pgoutbox_runs", None)
    if rep.failed and runs:
        for p in runs:
            rep.sections.append(("pgoutbox %s: %s" % (p.name, " ".join(p.args[1:])[:300]),
                                 "exit status %r\n%s" % (p.returncode, util.tail(p.stderr, 80))))


def pytest_terminal_summary(terminalreporter):
    if util.NOTES:
        terminalreporter.section("pgoutbox e2e notes")
        for line in util.NOTES:
            terminalreporter.write_line(line)


# ---------------------------------------------------------------------------
# Per-test database with outbox table, publication and slot
# ---------------------------------------------------------------------------

class OutboxDB:
    publication = "pgoutbox"
    table = "public.outbox"

    def __init__(self, stack, name, slot, tag):
        self.stack = stack
        self.name = name
        self.slot = slot
        self.tag = tag
        self.dsn = stack.dsn(name)
        self.brokers = stack.brokers
        self._conns = []
        self.conn = self.connect()

    def connect(self, autocommit=False):
        c = util.connect(self.dsn, autocommit=autocommit)
        self._conns.append(c)
        return c

    def aggtype(self, name):
        """An aggregatetype unique to this test (so are its topics)."""
        return "%s_%s" % (name, self.tag)

    def args(self, *extra, endpos=None, slot=None, publication=None, dsn=None, brokers=None,
             shutdown_timeout=SHUTDOWN_TIMEOUT):
        """Command line of a pgoutbox run against this database."""
        a = ["-d", dsn or self.dsn, "-b", brokers or self.brokers,
             "--slot", slot or self.slot, "--publication", publication or self.publication,
             "--shutdown-timeout", str(shutdown_timeout)]
        if endpos is not None:
            a += ["--endpos", endpos]
        return a + list(extra)

    def wal_lsn(self):
        return util.current_wal_lsn(self.conn)

    def confirmed_at_least(self, lsn):
        return util.slot_confirmed_at_least(self.conn, self.slot, lsn)

    def rows(self):
        return util.fetch_rows(self.conn)

    def kafka_messages(self):
        return util.read_test_topics(self.brokers, self.tag)

    def close(self):
        for c in self._conns:
            if not c.closed:
                c.close()


def _drop_slot(dsn, slot):
    conn = util.connect(dsn, autocommit=True)
    try:
        def inactive():
            st = util.slot_state(conn, slot)
            if st is None or not st[1]:
                return True
            util.query_one(conn, "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                                 " WHERE slot_name = %s AND active_pid IS NOT NULL", (slot,))
            return False
        util.wait_for(inactive, 20, "walsender of slot %s to go away" % slot, interval=0.1)
        util.query_one(conn, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                             " WHERE slot_name = %s", (slot,))
    finally:
        conn.close()


def _create_outbox_db(request, stack, suffix=""):
    """A fresh UTF8 database with the default outbox table, publication
    `pgoutbox` and a slot unique to it, made by scripts/setup-slot.sh."""
    if not SETUP_SLOT_SH.exists():
        pytest.fail("%s does not exist" % SETUP_SLOT_SH)
    tag = uuid.uuid4().hex[:10]
    base = re.sub(r"[^a-z0-9]+", "_", (request.node.name + suffix).lower())[:30].strip("_")
    name = "e2e_%s_%s" % (base, tag)
    slot = "e2e_%s" % tag
    admin = util.connect(stack.dsn("postgres"), autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute('CREATE DATABASE "%s" TEMPLATE template0 ENCODING \'UTF8\''
                        " LC_COLLATE 'C' LC_CTYPE 'C'" % name)
    finally:
        admin.close()
    setup = subprocess.run([str(SETUP_SLOT_SH), "-d", stack.dsn(name), "--create-table",
                            "--slot", slot], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, **stack.env))
    if setup.returncode != 0:
        _destroy_outbox_db(stack, name, slot, None)
        pytest.fail("scripts/setup-slot.sh failed (%d):\n%s\n%s"
                    % (setup.returncode, setup.stdout[-2000:], setup.stderr[-2000:]),
                    pytrace=False)
    db = OutboxDB(stack, name, slot, tag)
    assert util.slot_state(db.conn, slot) is not None, "setup-slot.sh made no slot %s" % slot
    return db


def _destroy_outbox_db(stack, name, slot, db):
    if db is not None:
        db.close()
    try:
        _drop_slot(stack.dsn(name), slot)
    except Exception as e:  # database may not exist if CREATE failed
        if "does not exist" not in str(e):
            raise
    admin = util.connect(stack.dsn("postgres"), autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
    finally:
        admin.close()


@pytest.fixture
def outbox_db(request, stack, pgoutbox):
    """A fresh UTF8 database with the default outbox table, publication
    `pgoutbox` and a slot unique to the test, made by scripts/setup-slot.sh."""
    db = _create_outbox_db(request, stack)
    try:
        yield db
    finally:
        pgoutbox.stop_all()
        _destroy_outbox_db(stack, db.name, db.slot, db)


@pytest.fixture
def outbox_dbs(request, stack, pgoutbox):
    """make() → another fresh outbox database (as outbox_db), all dropped at the end."""
    made = []

    def make():
        db = _create_outbox_db(request, stack, "_%d" % len(made))
        made.append(db)
        return db
    try:
        yield make
    finally:
        pgoutbox.stop_all()
        for db in made:
            _destroy_outbox_db(stack, db.name, db.slot, db)
