"""pgoutbox's command line: help, version, every usage error with its exact
message, runtime failures with exit 2, and passwords never printed."""

import re

import psycopg2.extensions
import pytest

import util
from conftest import ENDPOS_TIMEOUT, REPO, SHUTDOWN_TIMEOUT
from offline import assert_usage_error, no_session_stack, pgoutbox_offline  # noqa: F401

PG_STYLE_ERROR = re.compile(r"\b(ERROR|FATAL):  \S")
PG_STYLE_ANY = re.compile(r"\b(LOG|DEBUG[1-5]?|INFO|NOTICE|WARNING|ERROR|FATAL):  \S")
FAILURE_BOUND = 30   # seconds within which a run that cannot work must exit


# ---------------------------------------------------------------------------
# No server needed
# ---------------------------------------------------------------------------

def test_help(pgoutbox_offline):
    p = pgoutbox_offline.run("--help", timeout=10)
    assert p.returncode == 0, p.describe()
    out = p.stdout
    for opt in ("-d", "-b", "--slot"):
        assert opt in out, "--help output lacks %s:\n%s" % (opt, out)
    assert "usage" in out.lower(), out


def test_version(pgoutbox_offline):
    p = pgoutbox_offline.run("--version", timeout=10)
    assert p.returncode == 0, p.describe()
    m = re.match(r"pgoutbox (\d+(?:\.\d+)+\S*)\s*$", p.stdout)
    assert m, "--version printed %r" % p.stdout
    meson = re.search(r"version\s*:\s*'([^']+)'", (REPO / "meson.build").read_text())
    if meson:
        assert m.group(1) == meson.group(1), "version %s differs from meson.build's %s" % (
            m.group(1), meson.group(1))


def test_usage_error_goes_to_stderr_with_hint(pgoutbox_offline):
    p = pgoutbox_offline.run("--bogus", timeout=10)
    assert p.returncode == util.EXIT_USAGE, p.describe()
    assert p.stdout == "", p.stdout
    assert p.stderr.splitlines() == ['pgoutbox: unknown option "--bogus"',
                                     'Try "pgoutbox --help" for more information.'], p.stderr


# Every error of the command line: the exact message (after "pgoutbox: "),
# exit 1, the --help hint.  Errors come before any connection, so the servers
# of D need not exist.  SECRET must never be printed.
SECRET = "S3cretPw"
D = ["-d", "dbname=x", "-b", "127.0.0.1:1"]
PER_TABLE = ("topic_template, topic_prefix, id_column, key_column, type_column, payload_column, "
             "aggregatetype_column, value_format, key_format, cloudevents_source or header.NAME")
RESERVED = "pgoutbox sets id, type, content-type, ce_* and pgoutbox.* itself"
OPTIONS_ONLY = "pgoutbox takes options only; quote a value that contains spaces"
SECONDS = "use seconds from 0 to 86400"
LSN = "not an LSN; use two hexadecimal numbers X/Y, such as 0/16B3748"
TOPIC = ("not a valid Kafka topic name; use 1 to 249 letters, digits, '.', '_' or '-' "
         "(not \".\" or \"..\")")
METRICS = ("use PORT, HOST:PORT or [IPV6]:PORT, the port a number up to 65535 "
           "(a bare PORT binds 127.0.0.1)")
SEVENTEEN_HEADERS = [a for i in range(17) for a in ("--header", "h%d=c%d" % (i, i))]
SIXTY_FIVE_TABLES = ", ".join("t%d" % i for i in range(65))

CLI_ERRORS = [
    # getopt
    ("unknown-long", ["--bogus"], 'unknown option "--bogus"'),
    ("unknown-long-with-value", ["--password=" + SECRET], 'unknown option "--password"'),
    ("unknown-short", ["-Q"], 'unknown option "-Q"'),
    ("unknown-short-in-cluster", ["-vQ"], 'unknown option "-Q"'),
    ("ambiguous", ["--s", "x"],
     'option "--s" is ambiguous: it may be --slot, --state-topic, --shutdown-timeout, '
     '--status-interval, --stats-interval, --since, --since-column, --source'),
    ("missing-argument-long", ["--slot"], 'option "--slot" requires an argument'),
    ("missing-argument-abbreviated", ["--conf"], 'option "--config" requires an argument'),
    ("missing-argument-short", ["-d"], 'option "-d" requires an argument'),
    ("missing-argument-X", D + ["-X"], 'option "-X" requires an argument'),
    ("argument-not-allowed", ["--help=yes"], 'option "--help" takes no argument'),
    ("unexpected-argument", D + ["start"], 'unexpected argument "start": ' + OPTIONS_ONLY),
    ("unexpected-keyword-argument", D + ["--slot", "x", "password=" + SECRET],
     'unexpected argument "password=...": ' + OPTIONS_ONLY),
    ("unquoted-conninfo", ["-b", "k:1", "-d", "host=x", "password=" + SECRET],
     'unexpected argument after the value of -d: quote a connection string that contains '
     'spaces (-d "host=... dbname=...")'),
    ("unquoted-kafka-value", D + ["-X", "sasl.password=", SECRET],
     "unexpected argument after the value of -X: quote a value that contains spaces"),
    # required settings
    ("no-conninfo", ["-b", "k:1"],
     "no PostgreSQL connection given: use -d CONNINFO (or conninfo in the -c file)"),
    ("no-brokers", ["-d", "dbname=x"],
     "no Kafka brokers given: use -b BROKERS (or brokers in the -c file)"),
    # enumerations
    ("log-level", D + ["--log-level", "loud"],
     'invalid value "loud" for log_level: use debug, log, warning or error'),
    ("log-format", D + ["--log-format", "xml"],
     'invalid value "xml" for log_format: use text or json'),
    ("value-format", D + ["--value-format", "json"],
     'invalid value "json" for value_format: use raw, envelope or cloudevents'),
    ("on-error", D + ["--on-error", "skip"], 'invalid value "skip" for on_error: use stop or dlq'),
    # integers
    ("int-word", D + ["--shutdown-timeout", "soon"],
     'invalid value "soon" for shutdown_timeout: not an integer; ' + SECONDS),
    ("int-fraction", D + ["--stats-interval", "1.5"],
     'invalid value "1.5" for stats_interval: not an integer; ' + SECONDS),
    ("int-empty", D + ["--kafka-stall-timeout", ""],
     'invalid value "" for kafka_stall_timeout: not an integer; ' + SECONDS),
    ("int-leading-space", D + ["--shutdown-timeout", " 5"],
     'invalid value " 5" for shutdown_timeout: not an integer; ' + SECONDS),
    ("int-above", D + ["--shutdown-timeout", "86401"],
     'invalid value "86401" for shutdown_timeout: out of range; ' + SECONDS),
    ("int-overflow", D + ["--shutdown-timeout", "99999999999999999999"],
     'invalid value "99999999999999999999" for shutdown_timeout: out of range; ' + SECONDS),
    ("int-negative", D + ["--kafka-stall-timeout", "-1"],
     'invalid value "-1" for kafka_stall_timeout: out of range; ' + SECONDS),
    ("int-below", D + ["--status-interval", "99"],
     'invalid value "99" for status_interval: out of range; use milliseconds from 100 to 3600000'),
    ("int-zero-or-range", D + ["--replication-timeout", "1"],
     'invalid value "1" for replication_timeout: out of range; use 0 (off) or seconds from 2 '
     'to 86400'),
    # LSN
    ("endpos-word", D + ["--endpos", "banana"], 'invalid value "banana" for endpos: ' + LSN),
    ("endpos-half", D + ["--endpos", "0/"], 'invalid value "0/" for endpos: ' + LSN),
    ("endpos-too-big", D + ["--endpos", "100000000/0"],
     'invalid value "100000000/0" for endpos: ' + LSN),
    # topics and columns
    ("dlq-topic", D + ["--dlq-topic", "dead letters"],
     'invalid value "dead letters" for dlq_topic: ' + TOPIC),
    ("dlq-topic-dots", D + ["--dlq-topic", ".."], 'invalid value ".." for dlq_topic: ' + TOPIC),
    ("topic-prefix", D + ["--topic-prefix", "env a."],
     'invalid value "env a." for topic_prefix: \' \' is not allowed in a Kafka topic name; use '
     "letters, digits, '.', '_' or '-'"),
    ("topic-template-unclosed", D + ["--topic-template", "x.${aggregatetype"],
     'invalid value "x.${aggregatetype" for topic_template: expected ${column}'),
    ("topic-template-empty", D + ["--topic-template", ""],
     'invalid value "" for topic_template: topic template is empty'),
    ("topic-template-chars", D + ["--topic-template", "bad topic ${aggregatetype}"],
     'invalid value "bad topic ${aggregatetype}" for topic_template: "bad topic " is not allowed '
     "in a Kafka topic name (use letters, digits, '.', '_' and '-')"),
    ("column-empty", D + ["--key-column", ""],
     'invalid value "" for key_column: the column name is empty'),
    # metrics
    ("metrics-word", D + ["--metrics", "nonsense"],
     'invalid value "nonsense" for metrics: not a port number; expected PORT, HOST:PORT or '
     '[V6]:PORT'),
    ("metrics-port-range", D + ["--metrics", "127.0.0.1:99999"],
     'invalid value "127.0.0.1:99999" for metrics: port 99999 is out of range (1-65535)'),
    ("metrics-no-port", D + ["--metrics", "127.0.0.1:"],
     'invalid value "127.0.0.1:" for metrics: missing port after ":"'),
    # the table list
    ("table-empty", D + ["--table", ""],
     'invalid value "" for table: no table given; use [schema.]table[, ...]'),
    ("table-three-parts", D + ["--table", "a.b.c"],
     'invalid value "a.b.c" for table: unexpected "." after table a.b; quote a name that '
     'contains "."'),
    ("table-unterminated-quote", D + ["--table", '"Out Box'],
     'invalid value ""Out Box" for table: unterminated quoted identifier in table name'),
    ("table-empty-part", D + ["--table", "public."],
     'invalid value "public." for table: empty identifier in table name'),
    ("table-empty-item", D + ["--table", "a,,b"],
     'invalid value "a,,b" for table: empty identifier in table name'),
    ("table-twice", D + ["--table", "outbox, public.outbox"],
     'invalid value "outbox, public.outbox" for table: table public.outbox is listed twice'),
    ("table-too-many", D + ["--table", SIXTY_FIVE_TABLES],
     'invalid value "%s" for table: more than 64 tables' % SIXTY_FIVE_TABLES),
    ("table-space", D + ["--table", "a b"],
     'invalid value "a b" for table: unexpected "b" after table public.a; separate tables with '
     '"," and quote a name that contains spaces'),
    # -X
    ("X-no-equals", D + ["-X", "acks"], 'invalid value "acks" for -X: expected PROPERTY=VALUE'),
    ("X-secret-no-equals", D + ["-X", "sasl.password"],
     "invalid value for -X: expected PROPERTY=VALUE"),
    ("X-no-name", D + ["-X", "=" + SECRET],
     'invalid value for -X: missing property name before "="; use PROPERTY=VALUE'),
    # --header
    ("header-no-equals", D + ["--header", "tenant"],
     'invalid value "tenant" for --header: expected NAME=COLUMN'),
    ("header-no-name", D + ["--header", "=tenant_id"],
     'invalid value "=tenant_id" for --header: the header name is empty'),
    ("header-reserved", D + ["--header", "id=aggregateid"],
     'invalid value "id=aggregateid" for --header: header name "id" is reserved: ' + RESERVED),
    ("header-reserved-prefix", D + ["--header", "ce_source=src"],
     'invalid value "ce_source=src" for --header: header name "ce_source" is reserved: '
     + RESERVED),
    ("header-no-column", D + ["--header", "tenant="],
     'invalid value "tenant=" for --header: the column name is empty'),
    ("headers-too-many", D + SEVENTEEN_HEADERS,
     "too many headers for table public.outbox: 17 mapped, at most 16"),
    # --table-option
    ("table-option-no-schema", D + ["--table-option", "outbox.key_column=k"],
     'invalid value "outbox.key_column=k" for --table-option: missing setting after the table '
     'name; use SCHEMA.TABLE.SETTING=VALUE'),
    ("table-option-bare-name", D + ["--table-option", "outbox"],
     'invalid value "outbox" for --table-option: table name "outbox" needs a schema '
     '(schema.table)'),
    ("table-option-no-equals", D + ["--table-option", "public.outbox.key_column"],
     'invalid value "public.outbox.key_column" for --table-option: expected '
     'SCHEMA.TABLE.SETTING=VALUE'),
    ("table-option-unknown-setting", D + ["--table-option", "public.outbox.colour=red"],
     'invalid value "public.outbox.colour=red" for --table-option: unknown setting "colour"; '
     'per table: ' + PER_TABLE),
    ("table-option-not-per-table", D + ["--table-option", "public.outbox.slot=x"],
     'invalid value "public.outbox.slot=x" for --table-option: "slot" cannot be set per table; '
     'per table: ' + PER_TABLE),
    ("table-option-unterminated-quote", D + ["--table-option", '"Out Box.x.key_column=k'],
     'invalid value ""Out Box.x.key_column=k" for --table-option: unterminated quoted '
     'identifier in table name'),
    ("table-option-empty-part", D + ["--table-option", "public..key_column=k"],
     'invalid value "public..key_column=k" for --table-option: empty identifier in table name'),
    ("table-option-header-no-name", D + ["--table-option", "public.outbox.header.=c"],
     'invalid value "public.outbox.header.=c" for --table-option: the header name is empty'),
    ("table-option-header-reserved", D + ["--table-option", "public.outbox.header.type=c"],
     'invalid value "public.outbox.header.type=c" for --table-option: header name "type" is '
     'reserved: ' + RESERVED),
    ("table-option-bad-value", D + ["--table-option", "public.outbox.value_format=xml"],
     'invalid value "xml" for --table-option public.outbox.value_format: use raw, envelope or '
     'cloudevents'),
    ("table-option-empty-column", D + ["--table-option", "public.outbox.key_column="],
     'invalid value "" for --table-option public.outbox.key_column: the column name is empty'),
    ("table-option-unlisted-table", D + ["--table-option", "public.other.key_column=k"],
     "--table-option public.other.key_column names table public.other, which is not one of "
     "the outbox tables (table = public.outbox)"),
    ("table-option-unlisted-quoted", D + ["--table-option", '"Billing"."Out Box".key_column=k'],
     '--table-option "Billing"."Out Box".key_column names table "Billing"."Out Box", which is '
     'not one of the outbox tables (table = public.outbox)'),
]


@pytest.mark.parametrize("args,message", [c[1:] for c in CLI_ERRORS],
                         ids=[c[0] for c in CLI_ERRORS])
def test_command_line_error(pgoutbox_offline, args, message):
    p = pgoutbox_offline.run(*args, timeout=10)
    assert_usage_error(p, message)
    assert SECRET not in p.stderr + p.stdout, "secret printed:\n" + p.stderr


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
def test_password_not_printed_bad_conninfo(pgoutbox_offline, dsn):
    p = pgoutbox_offline.run("-d", dsn, "-b", "127.0.0.1:%d" % util.free_port(), timeout=10,
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
