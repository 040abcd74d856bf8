"""pgoutbox's command line: help, version, usage errors, runtime failures with
exit 2, and passwords never printed."""

import re

import psycopg2.extensions
import pytest

import util
from conftest import ENDPOS_TIMEOUT, REPO, SHUTDOWN_TIMEOUT

PG_STYLE_ERROR = re.compile(r"\b(ERROR|FATAL):  \S")
PG_STYLE_ANY = re.compile(r"\b(LOG|DEBUG[1-5]?|INFO|NOTICE|WARNING|ERROR|FATAL):  \S")
FAILURE_BOUND = 30   # seconds within which a run that cannot work must exit


# ---------------------------------------------------------------------------
# No server needed
# ---------------------------------------------------------------------------

def test_help(pgoutbox):
    p = pgoutbox.run("--help", timeout=10)
    assert p.returncode == 0, p.describe()
    out = p.stdout
    for opt in ("-d", "-b", "--slot"):
        assert opt in out, "--help output lacks %s:\n%s" % (opt, out)
    assert "usage" in out.lower(), out


def test_version(pgoutbox):
    p = pgoutbox.run("--version", timeout=10)
    assert p.returncode == 0, p.describe()
    m = re.match(r"pgoutbox (\d+(?:\.\d+)+\S*)\s*$", p.stdout)
    assert m, "--version printed %r" % p.stdout
    meson = re.search(r"version\s*:\s*'([^']+)'", (REPO / "meson.build").read_text())
    if meson:
        assert m.group(1) == meson.group(1), "version %s differs from meson.build's %s" % (
            m.group(1), meson.group(1))


def test_unknown_option(pgoutbox):
    p = pgoutbox.run("--bogus", timeout=10)
    assert p.returncode == util.EXIT_USAGE, p.describe()
    assert "bogus" in p.stderr, "no message naming the option:\n" + p.stderr


def test_missing_brokers(pgoutbox):
    p = pgoutbox.run("-d", "host=127.0.0.1 dbname=postgres", timeout=10, drop_env=(
        "PGOUTBOX_BROKERS",))
    assert p.returncode == util.EXIT_USAGE, p.describe()
    assert re.search(r"-b|broker", p.stderr, re.I), "no message about brokers:\n" + p.stderr


@pytest.mark.parametrize("args", [["--endpos", "banana"], ["--shutdown-timeout", "soon"],
                                  ["--slot"]])
def test_invalid_values(pgoutbox, args):
    # Nothing listens on the addresses: bad values must be reported before connecting.
    p = pgoutbox.run("-d", "host=127.0.0.1 port=%d dbname=x" % util.free_port(),
                     "-b", "127.0.0.1:%d" % util.free_port(), *args, timeout=10)
    assert p.returncode == util.EXIT_USAGE, p.describe()
    assert p.stderr.strip(), "no message"
    assert args[0].lstrip("-") in p.stderr or args[-1] in p.stderr, p.stderr


def test_endpos_already_reached(outbox_db, pgoutbox):
    db = outbox_db
    confirmed = util.slot_state(db.conn, db.slot)[0]
    p = pgoutbox.run(*db.args(endpos=confirmed), timeout=FAILURE_BOUND)
    assert p.returncode == util.EXIT_OK, p.describe()


# ---------------------------------------------------------------------------
# Configuration and runtime failures against the stack
# ---------------------------------------------------------------------------

def test_bad_kafka_property(outbox_db, pgoutbox):
    db = outbox_db
    p = pgoutbox.run(*db.args("-X", "no.such.property=1"), timeout=FAILURE_BOUND)
    assert p.returncode == util.EXIT_USAGE, p.describe()
    assert "no.such.property" in p.stderr, p.stderr


def test_missing_slot(outbox_db, pgoutbox):
    db = outbox_db
    slot = "no_such_slot_%s" % db.tag
    p = pgoutbox.run(*db.args(slot=slot), timeout=FAILURE_BOUND)
    assert p.returncode == util.EXIT_RUNTIME, p.describe()
    assert slot in p.stderr, "stderr does not name the slot:\n" + p.stderr
    assert PG_STYLE_ERROR.search(p.stderr), "no ERROR:/FATAL: line:\n" + p.stderr


def test_missing_publication(outbox_db, pgoutbox):
    db = outbox_db
    # An event to decode, so that also a walsender-side check is reached.
    util.commit_events(db.conn, [util.event(db.aggtype("nopub"), "k", "T", {"n": 1})])
    pub = "no_such_pub_%s" % db.tag
    p = pgoutbox.run(*db.args(publication=pub), timeout=FAILURE_BOUND)
    assert p.returncode == util.EXIT_RUNTIME, p.describe()
    assert pub in p.stderr, "stderr does not name the publication:\n" + p.stderr
    assert util.topics_with(db.brokers, db.tag) == [], "published despite a missing publication"


# ---------------------------------------------------------------------------
# Passwords are never printed
# ---------------------------------------------------------------------------

PW_ROLE = "pgoutbox_pw"
PASSWORD = "S3cretPw!xyz"
WRONG_PASSWORD = "WrongPw123"


@pytest.fixture
def pw_role(stack, outbox_db):
    """Role pgoutbox_pw (scram-sha-256 over 127.0.0.1) that may replicate and
    read the outbox table.  Other test files may create it too."""
    admin = util.connect(stack.dsn("postgres"), autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute("DO $$ BEGIN CREATE ROLE %s LOGIN REPLICATION;"
                        " EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
                        % PW_ROLE)
            cur.execute("SET password_encryption = 'scram-sha-256'")
            cur.execute("ALTER ROLE %s LOGIN REPLICATION PASSWORD %%s" % PW_ROLE, (PASSWORD,))
    finally:
        admin.close()
    with outbox_db.conn.cursor() as cur:
        cur.execute("GRANT SELECT ON public.outbox TO %s" % PW_ROLE)
    outbox_db.conn.commit()
    return PW_ROLE


def pw_keyword_dsn(db, password):
    return psycopg2.extensions.make_dsn(host="127.0.0.1", port=db.stack.port, user=PW_ROLE,
                                        password=password, dbname=db.name)


def pw_uri(db, password):
    return "postgresql://%s:%s@127.0.0.1:%s/%s" % (PW_ROLE, password, db.stack.port, db.name)


def assert_no_password(p, *passwords):
    for pw in passwords:
        for stream, text in (("stderr", p.stderr), ("stdout", p.stdout)):
            assert pw not in text, "password %r printed on %s:\n%s" % (pw, stream, text)


NO_PW_ENV = ("PGPASSWORD", "PGPASSFILE")


@pytest.mark.parametrize("dsn", [
    "host=127.0.0.1 password=S3cretPw!xyz dbname=x bogus",
    "postgresql://pgoutbox_pw:S3cretPw!xyz@127.0.0.1:1/db?bogus_param=1",
    "postgresql://pgoutbox_pw:S3cretPw%zz@127.0.0.1:1/db",
    "postgresql://pgoutbox_pw:S3cretPw!xyz@[::1/db",
], ids=["keyword", "uri-param", "uri-percent", "uri-ipv6"])
def test_password_not_printed_bad_conninfo(pgoutbox, dsn):
    p = pgoutbox.run("-d", dsn, "-b", "127.0.0.1:%d" % util.free_port(), timeout=10,
                     drop_env=NO_PW_ENV)
    assert p.returncode == util.EXIT_USAGE, p.describe()
    assert p.stderr.strip(), "no message"
    assert_no_password(p, "S3cretPw")


def test_password_not_printed_missing_slot(outbox_db, pw_role, pgoutbox):
    db = outbox_db
    # The role's password works (so the failure below is the slot's).
    util.connect(pw_keyword_dsn(db, PASSWORD)).close()
    slot = "no_such_slot_%s" % db.tag
    p = pgoutbox.run(*db.args(slot=slot, dsn=pw_keyword_dsn(db, PASSWORD)),
                     timeout=FAILURE_BOUND, drop_env=NO_PW_ENV)
    assert p.returncode == util.EXIT_RUNTIME, p.describe()
    assert slot in p.stderr, p.describe()
    assert_no_password(p, PASSWORD)


def test_password_not_printed_auth_failure(outbox_db, pw_role, pgoutbox):
    db = outbox_db
    p = pgoutbox.start(*db.args(dsn=pw_uri(db, WRONG_PASSWORD)), drop_env=NO_PW_ENV)
    util.wait_for(lambda: p.poll() is not None or util.AUTH_ERROR_RE.search(p.stderr),
                  FAILURE_BOUND, "an authentication error in pgoutbox's stderr")
    if p.poll() is None:
        # Kept retrying: SIGTERM must still stop it cleanly.
        p.terminate()
        p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)
        util.note("auth failure: pgoutbox kept retrying until SIGTERM")
    else:
        p.wait(0)
        assert p.returncode in (util.EXIT_USAGE, util.EXIT_RUNTIME), p.describe()
        util.note("auth failure: pgoutbox gave up with exit %d" % p.returncode)
    assert util.AUTH_ERROR_RE.search(p.stderr), "no authentication error logged:\n" + p.stderr
    assert_no_password(p, WRONG_PASSWORD, PASSWORD)


@pytest.mark.parametrize("form", ["keyword", "uri"])
def test_password_not_printed_verbose_streaming(outbox_db, pw_role, pgoutbox, form):
    db = outbox_db
    t = db.aggtype("pw")
    util.commit_events(db.conn, [util.event(t, "k%d" % i, "T", {"i": i}) for i in range(5)])
    endpos = db.wal_lsn()
    dsn = pw_keyword_dsn(db, PASSWORD) if form == "keyword" else pw_uri(db, PASSWORD)
    p = pgoutbox.run(*db.args("-v", dsn=dsn, endpos=endpos), timeout=ENDPOS_TIMEOUT,
                     drop_env=NO_PW_ENV)
    assert p.returncode == util.EXIT_OK, p.describe()
    assert db.confirmed_at_least(endpos)
    assert PG_STYLE_ANY.search(p.stderr), "-v logged nothing in PostgreSQL style:\n" + p.stderr
    assert_no_password(p, PASSWORD)
    util.check_delivery(db.kafka_messages(), db.rows())


def test_kafka_password_not_printed(outbox_db, pgoutbox):
    db = outbox_db
    util.commit_events(db.conn, [util.event(db.aggtype("kpw"), "k", "T", {"n": 1})])
    endpos = db.wal_lsn()
    # SASL settings are not used on a PLAINTEXT listener, but are parsed and kept.
    p = pgoutbox.run(*db.args("-v", "-X", "sasl.username=e2e", "-X", "sasl.password=KafkaPw987",
                              endpos=endpos), timeout=ENDPOS_TIMEOUT)
    assert p.returncode == util.EXIT_OK, p.describe()
    assert_no_password(p, "KafkaPw987")
    util.check_delivery(db.kafka_messages(), db.rows())
