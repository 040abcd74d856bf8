"""Settings: the table in cdc/config.c against README.md and the sample config,
the -c file, and SIGHUP reloads (applied, or refused with the old config kept)."""

import re
import signal

import util
from conftest import REPO, SHUTDOWN_TIMEOUT

SAMPLE = REPO / "scripts" / "pgoutbox.conf.sample"
README = REPO / "README.md"


def list_settings(pgoutbox):
    """{name: (default, "reload"|"restart")} from the hidden --list-settings."""
    p = pgoutbox.run("--list-settings", timeout=10)
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


def test_every_setting_in_readme(pgoutbox):
    settings = list_settings(pgoutbox)
    missing = sorted(set(settings) - readme_file_keys())
    assert not missing, "settings missing from README.md's options table: %s" % missing


def test_reloadable_settings_marked_in_readme(pgoutbox):
    rows = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4:
            m = re.fullmatch(r"`([a-z_][a-z0-9_.]*)`(?:\s*¹)?", cells[1])  # ¹: may be set per table
            if m:
                rows[m.group(1)] = line
    for name, (_, when) in list_settings(pgoutbox).items():
        if when == "reload":
            assert "reloadable" in rows[name].lower(), "README does not say %s is reloadable" % name


def test_every_setting_in_sample_config(pgoutbox):
    text = SAMPLE.read_text()
    for name, (default, when) in list_settings(pgoutbox).items():
        m = re.search(r"^#\s*%s\s*=\s*(.*)$" % re.escape(name), text, re.M)
        assert m, "scripts/pgoutbox.conf.sample lacks a '#%s = ...' line" % name
        if default:
            assert m.group(1).strip() == default, (
                "sample says %s = %r, the default is %r" % (name, m.group(1), default))
        if when == "reload":
            before = text[:m.start()].rsplit("\n\n", 1)[-1]
            assert "[reload]" in before, "sample does not mark %s as [reload]" % name


def test_unknown_key_in_file(pgoutbox, tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("slot = x\nno_such_key = 1\n")
    p = pgoutbox.run("-c", conf, "-d", "dbname=x", "-b", "127.0.0.1:1", timeout=10)
    assert p.returncode == util.EXIT_USAGE, p.describe()
    assert "no_such_key" in p.stderr and ":2:" in p.stderr, p.stderr


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
    assert "bogus_setting" in p.stderr, p.describe()
    assert re.search(r"ERROR:  could not reload", p.stderr), p.describe()

    write_conf(conf, db, "nonsense-level")
    p.signal(signal.SIGHUP)
    util.wait_for(lambda: "nonsense-level" in p.stderr, 15, "the bad value to be reported")

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
def test_sample_keys_are_known(pgoutbox, tmp_path):
    """Uncommenting the sample's settings gives a file pgoutbox accepts."""
    settings = list_settings(pgoutbox)
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
    p = pgoutbox.run("-c", conf, "-d", "host=127.0.0.1 port=%d dbname=x connect_timeout=2"
                     % util.free_port(), "-b", "127.0.0.1:%d" % util.free_port(), "--check",
                     timeout=30)
    assert p.returncode == util.EXIT_RUNTIME, p.describe()


