"""--metrics: Prometheus text at /metrics (validated with promtool), /healthz,
values that move as events flow, the HTTP listener's limits, and reload."""

import http.client
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

import util
from conftest import REPO, SHUTDOWN_TIMEOUT

PROMTOOL = shutil.which("promtool")


def get(port, path, method="GET", timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type"), r.read().decode()
    finally:
        c.close()


def try_get(port, path):
    try:
        return get(port, path, timeout=2)
    except OSError:
        return None


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def parse(text):
    """{(name, labels): float}; every line a HELP/TYPE comment or a sample."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = SAMPLE.match(line)
        assert m, "not a Prometheus sample line: %r" % line
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def promtool_check(text):
    assert PROMTOOL, "promtool not found: scripts/install-deps.sh installs Debian's prometheus"
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, "promtool check metrics failed:\n%s%s" % (r.stdout, r.stderr)


def metric(port, name, labels=""):
    status, _, body = get(port, "/metrics")
    assert status == 200
    return parse(body).get((name, labels))


def start_with_metrics(pgoutbox, db, *extra):
    port = util.free_port()
    p = pgoutbox.start(*db.args("--metrics", "127.0.0.1:%d" % port, *extra))
    util.wait_for(lambda: p.poll() is not None or (try_get(port, "/healthz") or (0,))[0] == 200,
                  30, "/healthz to answer 200")
    assert p.poll() is None, p.describe()
    return p, port


def test_metrics_and_healthz_while_streaming(outbox_db, pgoutbox):
    db = outbox_db
    p, port = start_with_metrics(pgoutbox, db)
    status, ctype, body = get(port, "/healthz")
    assert (status, body) == (200, "streaming\n")

    status, ctype, body = get(port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), ctype
    promtool_check(body)
    m = parse(body)
    version = re.search(r"version\s*:\s*'([^']+)'", (REPO / "meson.build").read_text()).group(1)
    assert m[("pgoutbox_build_info", '{version="%s"}' % version)] == 1
    for name in ("pgoutbox_events_published_total", "pgoutbox_bytes_published_total",
                 "pgoutbox_transactions_total", "pgoutbox_in_flight_messages",
                 "pgoutbox_received_lsn", "pgoutbox_confirmed_lsn",
                 "pgoutbox_replication_lag_bytes", "pgoutbox_commit_to_ack_seconds_count",
                 "pgoutbox_reconnects_total", "pgoutbox_backpressure_seconds_total"):
        assert (name, "") in m, "no %s in:\n%s" % (name, body)
    assert m[("pgoutbox_events_published_total", "")] == 0
    assert ("pgoutbox_commit_to_ack_seconds_bucket", '{le="0.001"}') in m
    assert ("pgoutbox_commit_to_ack_seconds_bucket", '{le="10"}') in m

    # Events flow: counters move, the slot is confirmed, lag comes back down.
    t = db.aggtype("mx")
    n = 0
    for i in range(3):
        rows = [util.event(t, "k%d" % j, "T", {"i": i, "j": j}) for j in range(5)]
        util.commit_events(db.conn, rows)
        n += len(rows)
    lsn = db.wal_lsn()
    util.wait_confirmed(db.conn, db.slot, lsn, 30, proc=p)
    util.wait_for(lambda: metric(port, "pgoutbox_events_published_total") == n, 15,
                  "events_published_total == %d" % n)
    status, _, body = get(port, "/metrics")
    promtool_check(body)
    m = parse(body)
    assert m[("pgoutbox_transactions_total", "")] >= 3
    assert m[("pgoutbox_bytes_published_total", "")] > n * 10
    assert m[("pgoutbox_commit_to_ack_seconds_count", "")] == n
    assert m[("pgoutbox_commit_to_ack_seconds_bucket", '{le="+Inf"}')] == n
    assert m[("pgoutbox_commit_to_ack_seconds_bucket", '{le="10"}')] == n
    assert 0 < m[("pgoutbox_commit_to_ack_seconds_sum", "")] < 10 * n
    assert m[("pgoutbox_in_flight_messages", "")] == 0
    hi, lo = lsn.split("/")
    assert m[("pgoutbox_received_lsn", "")] >= (int(hi, 16) << 32 | int(lo, 16))
    util.wait_for(lambda: metric(port, "pgoutbox_confirmed_lsn") >= (int(hi, 16) << 32 | int(lo, 16)),
                  15, "confirmed_lsn to reach %s" % lsn)
    assert m[("pgoutbox_replication_lag_bytes", "")] >= 0

    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)
    util.check_delivery(db.kafka_messages(), db.rows())


def test_http_limits(outbox_db, pgoutbox):
    db = outbox_db
    p, port = start_with_metrics(pgoutbox, db)
    assert get(port, "/nope")[0] == 404
    assert get(port, "/metrics", method="POST")[0] == 405
    # An idle client and a client that sends too much do not stop others.
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    big = socket.create_connection(("127.0.0.1", port))
    big.sendall(b"GET /metrics HTTP/1.0\r\nX-Pad: " + b"a" * 8192)
    big.settimeout(10)
    reply = b""
    try:
        while True:
            chunk = big.recv(4096)
            if not chunk:
                break
            reply += chunk
    except OSError:
        pass
    assert reply.startswith(b"HTTP/1.0 431"), reply[:100]
    assert get(port, "/healthz")[0] == 200
    # More connections than client slots: all are answered in time (idle ones time out).
    many = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    assert get(port, "/healthz", timeout=15)[0] == 200
    for s in idle + many + [big]:
        s.close()
    assert p.poll() is None, p.describe()


def test_healthz_503_with_reason(outbox_db, pgoutbox):
    db = outbox_db
    port = util.free_port()
    dead = "host=127.0.0.1 port=%d dbname=x connect_timeout=2" % util.free_port()
    p = pgoutbox.start(*db.args("--metrics", str(port), dsn=dead))
    r = util.wait_for(lambda: try_get(port, "/healthz") if p.poll() is None else
                      pytest.fail(p.describe()), 30, "/healthz to answer")
    util.wait_for(lambda: "could not connect" in (try_get(port, "/healthz") or (0, 0, ""))[2],
                  30, "/healthz to give the connection error")
    status, _, body = get(port, "/healthz")
    assert status == 503 and body.startswith("not streaming: could not connect"), (status, body)
    assert r is not None
    assert metric(port, "pgoutbox_up") == 0
    util.wait_for(lambda: metric(port, "pgoutbox_reconnects_total") >= 1, 30, "a reconnect")


def test_metrics_bad_address(pgoutbox):
    for addr in ("nonsense", "127.0.0.1:", "127.0.0.1:99999"):
        p = pgoutbox.run("-d", "dbname=x", "-b", "127.0.0.1:1", "--metrics", addr, timeout=10)
        assert p.returncode == util.EXIT_USAGE, p.describe()
        assert "metrics" in p.stderr, p.stderr


def test_metrics_reload_moves_listener(outbox_db, pgoutbox, tmp_path):
    db = outbox_db
    port1, port2 = util.free_port(), util.free_port()
    conf = tmp_path / "pgoutbox.conf"
    conf.write_text("metrics = %d\n" % port1)
    p = pgoutbox.start("-c", conf, *db.args())
    util.wait_for(lambda: p.poll() is None and (try_get(port1, "/healthz") or (0,))[0] == 200,
                  30, "metrics on the first port")
    conf.write_text("metrics = 127.0.0.1:%d\n" % port2)
    p.signal(signal.SIGHUP)
    util.wait_for(lambda: (try_get(port2, "/healthz") or (0,))[0] == 200, 15,
                  "metrics on the second port")
    assert try_get(port1, "/healthz") is None, "the first listener is still open"
    assert 'setting "metrics" changed' in p.stderr
    # Off again.
    conf.write_text("# metrics off\n")
    p.signal(signal.SIGHUP)
    util.wait_for(lambda: try_get(port2, "/healthz") is None, 15, "the listener to close")
    assert p.poll() is None


def test_backpressure_and_in_flight(outbox_db, pgoutbox):
    """A one-message producer queue forces pauses: backpressure time is
    counted, and nothing is left in flight once everything is confirmed."""
    db = outbox_db
    p, port = start_with_metrics(pgoutbox, db, "-X", "queue.buffering.max.messages=1",
                                 "-X", "linger.ms=50")
    t = db.aggtype("bpm")
    util.commit_events(db.conn, [util.event(t, "k%d" % i, "T", {"i": i}) for i in range(20)])
    util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 60, proc=p)
    util.wait_for(lambda: metric(port, "pgoutbox_events_published_total") == 20, 15,
                  "20 events published")
    assert "queue is full" in p.stderr, p.describe()
    assert metric(port, "pgoutbox_backpressure_seconds_total") > 0
    assert metric(port, "pgoutbox_in_flight_messages") == 0
    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)
    util.check_delivery(db.kafka_messages(), db.rows())
