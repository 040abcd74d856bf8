"""Settings: the table in cdc/config.c against README.md and the sample config,
every error of the -c file with its exact message, and SIGHUP reloads (applied,
or refused with the same message and the old config kept)."""

import re
import signal

import pytest

import util
from conftest import REPO, SHUTDOWN_TIMEOUT
from offline import (  # noqa: F401
    assert_usage_error,
    no_session_stack,
    nowhere_args,
    pgoutbox_offline,
    wait_started,
)

SAMPLE = REPO / "scripts" / "pgoutbox.conf.sample"
README = REPO / "README.md"


def list_settings(runner):
    """{name: (default, "reload"|"restart")} from the hidden --list-settings."""
    p = runner.run("--list-settings", timeout=10)
    assert p.returncode == 0, p.describe()
    out = {}
    for line in p.stdout.splitlines():
        name, default, when, doc = line.split("\t")
        assert doc.strip(), "setting %s has no documentation" % name
        assert when in ("reload", "restart"), line
        out[name] = (default, when)
    assert "conninfo" in out and "log_level" in out, p.stdout
    return out


def readme_file_keys():
    """The `file key` column of README's options table(s)."""
    keys = set()
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and line.lstrip().startswith("|"):
            m = re.fullmatch(r"`([a-z_][a-z0-9_.]*)`(?:\s*¹)?", cells[1])  # ¹: may be set per table
            if m:
                keys.add(m.group(1))
    return keys


def test_every_setting_in_readme(pgoutbox_offline):
    settings = list_settings(pgoutbox_offline)
    missing = sorted(set(settings) - readme_file_keys())
    assert not missing, "settings missing from README.md's options table: %s" % missing


def test_reloadable_settings_marked_in_readme(pgoutbox_offline):
    rows = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4:
            m = re.fullmatch(r"`([a-z_][a-z0-9_.]*)`(?:\s*¹)?", cells[1])  # ¹: may be set per table
            if m:
                rows[m.group(1)] = line
    for name, (_, when) in list_settings(pgoutbox_offline).items():
        if when == "reload":
            assert "reloadable" in rows[name].lower(), "README does not say %s is reloadable" % name


def test_every_setting_in_sample_config(pgoutbox_offline):
    text = SAMPLE.read_text()
    for name, (default, when) in list_settings(pgoutbox_offline).items():
        m = re.search(r"^#\s*%s\s*=\s*(.*)$" % re.escape(name), text, re.M)
        assert m, "scripts/pgoutbox.conf.sample lacks a '#%s = ...' line" % name
        if default:
            assert m.group(1).strip() == default, (
                "sample says %s = %r, the default is %r" % (name, m.group(1), default))
        if when == "reload":
            before = text[:m.start()].rsplit("\n\n", 1)[-1]
            assert "[reload]" in before, "sample does not mark %s as [reload]" % name


# ---------------------------------------------------------------------------
# SIGHUP
# ---------------------------------------------------------------------------

def write_conf(path, db, log_level, extra=""):
    path.write_text("# e2e\nconninfo = %s\nbrokers = %s\nslot = %s\nlog_level = %s\n%s"
                    % (db.dsn, db.brokers, db.slot, log_level, extra))


def start_streaming(pgoutbox, db, conf):
    p = pgoutbox.start("-c", conf, "--shutdown-timeout", SHUTDOWN_TIMEOUT)
    util.wait_attached(db.conn, db.slot, p, 30)
    util.wait_for(lambda: p.poll() is not None or "streaming from slot" in p.stderr, 30,
                  "the streaming log line")
    return p


def test_sighup_reloads_log_level(outbox_db, pgoutbox, tmp_path):
    db = outbox_db
    conf = tmp_path / "pgoutbox.conf"
    write_conf(conf, db, "log")
    p = start_streaming(pgoutbox, db, conf)
    t = db.aggtype("hup")
    util.commit_events(db.conn, [util.event(t, "k1", "T", {"n": 1})])
    util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 30, proc=p)
    assert "DEBUG:" not in p.stderr, p.describe()

    write_conf(conf, db, "debug")
    p.signal(signal.SIGHUP)
    util.wait_for(lambda: 'setting "log_level" changed to "debug"' in p.stderr, 15,
                  "the reload to be logged")
    util.commit_events(db.conn, [util.event(t, "k2", "T", {"n": 2})])
    lsn = db.wal_lsn()
    util.wait_confirmed(db.conn, db.slot, lsn, 30, proc=p)
    util.wait_for(lambda: "DEBUG:" in p.stderr, 15, "DEBUG lines after the reload")

    # And back: no more DEBUG lines after the next reload.
    write_conf(conf, db, "warning")
    p.signal(signal.SIGHUP)
    util.wait_for(lambda: "configuration reloaded" in p.stderr.split("changed to \"debug\"")[-1],
                  15, "the second reload")
    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)
    util.check_delivery(db.kafka_messages(), db.rows())


def test_sighup_invalid_file_keeps_running(outbox_db, pgoutbox, tmp_path):
    db = outbox_db
    conf = tmp_path / "pgoutbox.conf"
    write_conf(conf, db, "log")
    p = start_streaming(pgoutbox, db, conf)

    conf.write_text(conf.read_text() + "bogus_setting = 1\n")
    p.signal(signal.SIGHUP)
    util.wait_for(lambda: "could not reload the configuration" in p.stderr, 15,
                  "the failed reload to be logged")
    assert ('ERROR:  could not reload the configuration: %s:6: unknown setting "bogus_setting"\n'
            % conf) in p.stderr, p.describe()

    write_conf(conf, db, "nonsense-level")
    p.signal(signal.SIGHUP)
    util.wait_for(lambda: "nonsense-level" in p.stderr, 15, "the bad value to be reported")
    assert ('ERROR:  could not reload the configuration: %s:5: invalid value "nonsense-level" '
            'for log_level: use debug, log, warning or error\n' % conf) in p.stderr, p.describe()

    # A restart-only change is named (without its value) and not applied.
    write_conf(conf, db, "log", extra="status_interval = 5000\n")
    p.signal(signal.SIGHUP)
    util.wait_for(lambda: 'setting "status_interval" cannot be changed' in p.stderr, 15,
                  "the restart-only warning")

    # Still streaming with the old configuration.
    util.commit_events(db.conn, [util.event(db.aggtype("hupbad"), "k", "T", {"n": 1})])
    util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 30, proc=p)
    assert p.poll() is None, p.describe()
    assert "DEBUG:" not in p.stderr
    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)
    util.check_delivery(db.kafka_messages(), db.rows())


# ---------------------------------------------------------------------------
# Errors of the -c file: the exact message, exit 1, the --help hint.  They
# come before any connection: the servers of D need not exist.
# ---------------------------------------------------------------------------

SECRET = "S3cretPw"
D = ["-d", "dbname=x", "-b", "127.0.0.1:1"]
PER_TABLE = ("topic_template, topic_prefix, id_column, key_column, type_column, payload_column, "
             "aggregatetype_column, value_format, key_format, cloudevents_source or header.NAME")
RESERVED = "pgoutbox sets id, type, content-type, ce_* and pgoutbox.* itself"

# (id, file text, message with {path} for the file, extra command-line arguments)
FILE_ERRORS = [
    ("unknown-key", "slot = x\nno_such_key = 1\n", '{path}:2: unknown setting "no_such_key"', []),
    ("line-numbers-count-comments", "# comment\n\n   # indented comment\nfrobnicate = 3\n",
     '{path}:4: unknown setting "frobnicate"', []),
    ("missing-equals", "slot pgoutbox\n",
     '{path}:1: missing "=" after "slot"; use key = value', []),
    ("missing-equals-not-echoed", SECRET + "\n",
     '{path}:1: expected key = value, found no "="', []),
    ("empty-key", " = x\n", '{path}:1: missing key before "="', []),
    ("unclosed-double-quote", 'slot = "pgoutbox\n',
     '{path}:1: invalid value for slot: the " that starts it is not closed', []),
    ("lone-quote", "slot = '\n",
     "{path}:1: invalid value for slot: the ' that starts it is not closed", []),
    ("unclosed-quote-conninfo", "conninfo = 'host=x password=%s\n" % SECRET,
     "{path}:1: invalid value for conninfo: the ' that starts it is not closed", []),
    ("unclosed-quote-kafka", 'kafka.sasl.password = "%s\n' % SECRET,
     '{path}:1: invalid value for kafka.sasl.password: the " that starts it is not closed', []),
    ("line-too-long", "slot = %s\n" % ("x" * 9000),
     "{path}:1: line too long (at most 8190 bytes)", []),
    # kafka.*, header.*, table.* keys
    ("kafka-no-property", "kafka. = 1\n",
     '{path}:1: invalid key "kafka.": missing property name after "kafka."', []),
    ("header-no-name", "header. = tenant_id\n",
     '{path}:1: invalid key "header.": the header name is empty', []),
    ("header-reserved", "header.content-type = ct\n",
     '{path}:1: invalid key "header.content-type": header name "content-type" is reserved: '
     + RESERVED, []),
    ("header-reserved-prefix", "header.pgoutbox.lsn = l\n",
     '{path}:1: invalid key "header.pgoutbox.lsn": header name "pgoutbox.lsn" is reserved: '
     + RESERVED, []),
    ("header-no-column", "header.tenant =\n",
     '{path}:1: invalid value "" for header.tenant: the column name is empty', []),
    ("table-key-empty", "table. = x\n",
     '{path}:1: invalid key "table.": missing SCHEMA.TABLE.SETTING after "table."', []),
    ("table-key-no-schema", "table.outbox = x\n",
     '{path}:1: invalid key "table.outbox": table name "outbox" needs a schema (schema.table)', []),
    ("table-key-no-setting", "table.public.outbox = x\n",
     '{path}:1: invalid key "table.public.outbox": missing setting after the table name; use '
     'table.SCHEMA.TABLE.SETTING', []),
    ("table-key-unknown-setting", "table.public.outbox.colour = red\n",
     '{path}:1: invalid key "table.public.outbox.colour": unknown setting "colour"; per table: '
     + PER_TABLE, []),
    ("table-key-not-per-table", "table.public.outbox.slot = x\n",
     '{path}:1: invalid key "table.public.outbox.slot": "slot" cannot be set per table; per '
     'table: ' + PER_TABLE, []),
    ("table-key-unterminated-quote", 'table."Out Box.key_column = k\n',
     '{path}:1: invalid key "table."Out Box.key_column": unterminated quoted identifier in '
     'table name', []),
    ("table-key-empty-part", "table.public..key_column = k\n",
     '{path}:1: invalid key "table.public..key_column": empty identifier in table name', []),
    ("table-key-header-reserved", "table.public.outbox.header.type = t\n",
     '{path}:1: invalid key "table.public.outbox.header.type": header name "type" is reserved: '
     + RESERVED, []),
    ("table-key-bad-value", "table.public.outbox.value_format = xml\n",
     '{path}:1: invalid value "xml" for table.public.outbox.value_format: use raw, envelope or '
     'cloudevents', []),
    ("table-key-empty-column", "table.public.outbox.type_column =\n",
     '{path}:1: invalid value "" for table.public.outbox.type_column: the column name is '
     'empty', []),
    ("table-key-unlisted-table", "slot = x\ntable.public.other.key_column = k\n",
     "{path}:2: table.public.other.key_column names table public.other, which is not one of the "
     "outbox tables (table = public.outbox)", []),
    # values of settings
    ("value-enum", "# levels\n\nlog_level = loud\n",
     '{path}:3: invalid value "loud" for log_level: use debug, log, warning or error', []),
    ("value-enum-quoted", 'log_format = "xml"\n',
     '{path}:1: invalid value "xml" for log_format: use text or json', []),
    ("value-int", "shutdown_timeout = 1.5\n",
     '{path}:1: invalid value "1.5" for shutdown_timeout: not an integer; use seconds from 0 to '
     '86400', []),
    ("value-int-range", "status_interval = 50\n",
     '{path}:1: invalid value "50" for status_interval: out of range; use milliseconds from 100 '
     'to 3600000', []),
    ("value-lsn", "endpos = 0/XYZ\n",
     '{path}:1: invalid value "0/XYZ" for endpos: not an LSN; use two hexadecimal numbers X/Y, '
     'such as 0/16B3748', []),
    ("value-table", "table = public.outbox.extra\n",
     '{path}:1: invalid value "public.outbox.extra" for table: unexpected "." after table '
     'public.outbox; quote a name that contains "."', []),
    ("value-metrics", "metrics = :9187\n",
     '{path}:1: invalid value ":9187" for metrics: empty host before ":"; write 0.0.0.0:9187 for '
     'every IPv4 interface or a bare 9187 for 127.0.0.1', []),
    ("value-template", "topic_template = outbox.${\n",
     '{path}:1: invalid value "outbox.${" for topic_template: expected ${column}', []),
    ("value-column", "payload_column =\n",
     '{path}:1: invalid value "" for payload_column: the column name is empty', []),
    ("value-topic", "dlq_topic = dead letters\n",
     '{path}:1: invalid value "dead letters" for dlq_topic: not a valid Kafka topic name; use 1 '
     'to 249 letters, digits, \'.\', \'_\' or \'-\' (not "." or "..")', []),
    # a broken file is broken even where the command line wins
    ("bad-value-overridden", "log_level = loud\n",
     '{path}:1: invalid value "loud" for log_level: use debug, log, warning or error',
     ["--log-level", "debug"]),
    # required settings: from neither the file nor the command line
    ("no-brokers", "conninfo = host=x password=%s\nslot = x\n" % SECRET,
     "no Kafka brokers given: use -b BROKERS (or brokers in the -c file)", None),
]


@pytest.mark.parametrize("text,message,extra", [c[1:] for c in FILE_ERRORS],
                         ids=[c[0] for c in FILE_ERRORS])
def test_config_file_error(pgoutbox_offline, tmp_path, text, message, extra):
    conf = tmp_path / "pgoutbox.conf"
    conf.write_text(text)
    args = ["-c", conf] + (D + extra if extra is not None else [])
    p = pgoutbox_offline.run(*args, timeout=10)
    assert_usage_error(p, message.replace("{path}", str(conf)))
    assert SECRET not in p.stderr + p.stdout, "secret printed:\n" + p.stderr


def test_config_file_cannot_be_opened(pgoutbox_offline, tmp_path):
    missing = tmp_path / "no-such.conf"
    p = pgoutbox_offline.run("-c", missing, *D, timeout=10)
    assert_usage_error(p, 'could not open configuration file "%s": No such file or directory'
                       % missing)
    not_dir = tmp_path / "plain-file"
    not_dir.write_text("")
    p = pgoutbox_offline.run("-c", not_dir / "x.conf", *D, timeout=10)
    assert_usage_error(p, 'could not open configuration file "%s": Not a directory'
                       % (not_dir / "x.conf"))


def test_config_file_cannot_be_read(pgoutbox_offline, tmp_path):
    p = pgoutbox_offline.run("-c", tmp_path, *D, timeout=10)
    assert_usage_error(p, 'could not read configuration file "%s": Is a directory' % tmp_path)


def test_config_file_quoting_accepted(pgoutbox_offline, tmp_path):
    """Quotes around a whole value go; quoted identifiers stay (also with "=" or
    a closing quote at the end), so that a per-table key can name the table."""
    conf = tmp_path / "pgoutbox.conf"
    conf.write_text("slot = 'pgoutbox'\n"
                    'log_format = "text"\n'
                    'table = "Billing"."Out Box"\n'
                    "table.\"Billing\".\"Out Box\".topic_prefix = 'billing.'\n"
                    'table."Billing"."Out Box".header.tenant = tenant_id\n')
    p = pgoutbox_offline.start("-c", conf, *nowhere_args())
    wait_started(p)
    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 30)

    conf.write_text('table = "a=b".c\ntable."a=b".c.key_column = k\n')
    p = pgoutbox_offline.start("-c", conf, *nowhere_args())
    wait_started(p)
    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 30)


def test_sample_keys_are_known(pgoutbox_offline, tmp_path):
    """Uncommenting the sample's settings gives a file pgoutbox accepts."""
    settings = list_settings(pgoutbox_offline)
    lines = []
    for line in SAMPLE.read_text().splitlines():
        m = re.match(r"^#([a-z_][a-z0-9_.]*)\s*=\s*(.*)$", line)
        if m and not m.group(1).startswith("kafka.") and m.group(2):
            assert m.group(1) in settings, "sample names unknown setting %s" % m.group(1)
            if m.group(1) not in ("conninfo", "brokers"):
                lines.append(line[1:])
    conf = tmp_path / "sample.conf"
    conf.write_text("\n".join(lines) + "\n")
    # --check loads the file, then finds no server: exit 2 (checks failed), not 1 (bad config).
    p = pgoutbox_offline.run("-c", conf, *nowhere_args(), "--check", timeout=30)
    assert p.returncode == util.EXIT_RUNTIME, p.describe()


def test_sighup_error_names_file_and_line(pgoutbox_offline, tmp_path):
    """A reload that fails says exactly what the same file says at start; the
    daemon (here retrying servers that do not exist) keeps running and
    reloads once the file is fixed."""
    conf = tmp_path / "pgoutbox.conf"
    dsn, brokers = nowhere_args()[1::2]
    good = "conninfo = %s password=%s\nbrokers = %s\n" % (dsn, SECRET, brokers)
    conf.write_text(good)
    p = pgoutbox_offline.start("-c", conf, "--shutdown-timeout", "5")
    wait_started(p)

    failures = [
        ("bogus_setting = 1\n", '%s:3: unknown setting "bogus_setting"' % conf),
        ("log_level = loud\n", '%s:3: invalid value "loud" for log_level: use debug, log, '
                               'warning or error' % conf),
        ("header.id = event_id\n", '%s:3: invalid key "header.id": header name "id" is '
                                   'reserved: %s' % (conf, RESERVED)),
        ("table.public.other.key_column = k\n", "%s:3: table.public.other.key_column names "
         "table public.other, which is not one of the outbox tables (table = public.outbox)"
         % conf),
    ]
    for n, (line, message) in enumerate(failures, 1):
        conf.write_text(good + line)
        p.signal(signal.SIGHUP)
        expected = "ERROR:  could not reload the configuration: %s\n" % message
        util.wait_for(lambda: p.poll() is not None or p.stderr.count(
            "could not reload the configuration") >= n, 15, "failed reload %d" % n)
        assert p.poll() is None, p.describe()
        assert expected in p.stderr, "expected %r in:\n%s" % (expected, p.stderr)

    conf.unlink()
    p.signal(signal.SIGHUP)
    expected = ('ERROR:  could not reload the configuration: could not open configuration file '
                '"%s": No such file or directory\n' % conf)
    util.wait_for(lambda: expected in p.stderr or p.poll() is not None, 15, "the missing file")
    assert expected in p.stderr, p.describe()

    conf.write_text(good + "log_level = debug\n")
    p.signal(signal.SIGHUP)
    util.wait_for(lambda: 'setting "log_level" changed to "debug"' in p.stderr
                  or p.poll() is not None, 15, "the fixed file to be applied")
    assert p.poll() is None, p.describe()
    assert "DETAIL:  the running configuration is kept" in p.stderr, p.stderr
    p.terminate()
    p.expect_exit(util.EXIT_OK, 30)
    assert SECRET not in p.stderr, "password printed:\n" + p.stderr
