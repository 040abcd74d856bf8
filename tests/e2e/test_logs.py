"""Logs: log_format = json (one object per line), the periodic stats line,
and no password in either format."""

import json
import re

import psycopg2.extensions

import util
from conftest import ENDPOS_TIMEOUT, SHUTDOWN_TIMEOUT

PASSWORD = "JsonLogPw!42"


def dsn_with_password(db):
    """The test database's DSN plus a password (ignored by trust auth, but parsed)."""
    params = psycopg2.extensions.parse_dsn(db.dsn)
    params["password"] = PASSWORD
    return psycopg2.extensions.make_dsn(**params)


def json_lines(text):
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError("not a JSON line in json log output: %r" % line)
        assert isinstance(obj, dict), line
        out.append(obj)
    return out


def test_json_logs(outbox_db, pgoutbox):
    db = outbox_db
    util.commit_events(db.conn, [util.event(db.aggtype("json"), "k%d" % i, "T", {"i": i})
                                 for i in range(3)])
    endpos = db.wal_lsn()
    p = pgoutbox.run(*db.args("--log-format", "json", "-v", "-X", "sasl.password=KafkaJsonPw7",
                              dsn=dsn_with_password(db), endpos=endpos),
                     timeout=ENDPOS_TIMEOUT, drop_env=("PGPASSWORD",))
    assert p.returncode == util.EXIT_OK, p.describe()
    objs = json_lines(p.stderr)
    assert len(objs) >= 3, p.stderr
    for o in objs:
        assert set(o) <= {"ts", "level", "pid", "msg", "detail"}, o
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", o["ts"]), o
        assert o["level"] in ("DEBUG", "LOG", "WARNING", "ERROR", "FATAL"), o
        assert o["pid"] == p.proc.pid, o
        assert isinstance(o["msg"], str) and o["msg"], o
    assert any(o["level"] == "DEBUG" for o in objs), "-v gave no DEBUG objects"
    assert any("streaming from slot" in o["msg"] for o in objs)
    for secret in (PASSWORD, "KafkaJsonPw7"):
        assert secret not in p.stderr + p.stdout, "secret printed:\n" + p.stderr
    util.check_delivery(db.kafka_messages(), db.rows())


def test_json_logs_detail_field(outbox_db, pgoutbox, tmp_path):
    """A message with a DETAIL carries it in the same object."""
    db = outbox_db
    conf = tmp_path / "pgoutbox.conf"
    conf.write_text("log_format = json\n")
    p = pgoutbox.start("-c", conf, *db.args())
    util.wait_attached(db.conn, db.slot, p, 30)
    conf.write_text("log_format = json\nno_such_key = 1\n")
    p.signal(1)  # SIGHUP
    util.wait_for(lambda: "could not reload" in p.stderr, 15, "the failed reload")
    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)
    errs = [o for o in json_lines(p.stderr) if o["level"] == "ERROR"]
    assert errs and "no_such_key" in errs[0]["msg"] and errs[0]["detail"], p.stderr


def test_stats_line(outbox_db, pgoutbox):
    db = outbox_db
    p = pgoutbox.start(*db.args("--stats-interval", "1"))
    util.wait_attached(db.conn, db.slot, p, 30)
    util.commit_events(db.conn, [util.event(db.aggtype("stats"), "k", "T", {"n": 1}),
                                 util.event(db.aggtype("stats"), "k", "T", {"n": 2})])
    util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 30, proc=p)
    stats = re.compile(r"LOG:  stats: streaming, 2 events \(\+\d+\) in 1 transactions published, "
                       r"0 in flight, received [0-9A-F]+/[0-9A-F]+, confirmed [0-9A-F]+/[0-9A-F]+, "
                       r"lag \d+ bytes, 0 reconnects, [\d.]+ s backpressure")
    util.wait_for(lambda: stats.search(p.stderr), 15, "a stats line counting 2 events")
    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)


def test_stats_off_and_bad_values(outbox_db, pgoutbox):
    db = outbox_db
    for args in (["--log-format", "xml"], ["--stats-interval", "-1"]):
        p = pgoutbox.run(*db.args(*args), timeout=10)
        assert p.returncode == util.EXIT_USAGE, p.describe()
        assert args[0].lstrip("-").replace("-", "_") in p.stderr, p.stderr
