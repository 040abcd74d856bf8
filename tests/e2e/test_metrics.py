"""--metrics: Prometheus text at /metrics (validated with promtool), /healthz,
values that move as events flow, the HTTP listener's limits and error answers,
a health endpoint that slow, idle or too many clients and a process out of
file descriptors cannot silence, bad addresses, and reload."""

import http.client
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import threading
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


SOURCE_LABELS = re.compile(r'source="(?:[^"\\]|\\.)*",slot="(?:[^"\\]|\\.)*",'
                           r'database="(?:[^"\\]|\\.)*",?')


def parse(text, source="default"):
    """{(name, labels): float} of one source's samples (and the unlabelled
    build_info); every line a HELP/TYPE comment or a sample.  The source,
    slot and database labels are checked on every other sample and dropped
    from the key, so that {kind="X"} and {le="0.1"} remain."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = SAMPLE.match(line)
        assert m, "not a Prometheus sample line: %r" % line
        name, labels = m.group(1), m.group(2) or ""
        if name != "pgoutbox_build_info":
            assert labels.startswith('{source="'), "sample without source labels: %r" % line
            if not labels.startswith('{source="%s",' % source):
                continue
            labels = SOURCE_LABELS.sub("", labels, count=1)
            labels = "" if labels == "{}" else labels
        out[(name, labels)] = float(m.group(3))
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
    # The breakdown: PostgreSQL's part once per transaction with events, Kafka's per event,
    # each no longer than the whole.
    assert m[("pgoutbox_produce_to_ack_seconds_count", "")] == n
    assert 1 <= m[("pgoutbox_commit_to_receive_seconds_count", "")] <= n
    assert m[("pgoutbox_produce_to_ack_seconds_sum", "")] <= m[("pgoutbox_commit_to_ack_seconds_sum", "")]
    assert m[("pgoutbox_commit_to_ack_seconds_bucket", '{le="0.0001"}')] <= n
    assert m[("pgoutbox_in_flight_messages", "")] == 0
    hi, lo = lsn.split("/")
    assert m[("pgoutbox_received_lsn", "")] >= (int(hi, 16) << 32 | int(lo, 16))
    util.wait_for(lambda: metric(port, "pgoutbox_confirmed_lsn") >= (int(hi, 16) << 32 | int(lo, 16)),
                  15, "confirmed_lsn to reach %s" % lsn)
    assert m[("pgoutbox_replication_lag_bytes", "")] >= 0

    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)
    util.check_delivery(db.kafka_messages(), db.rows())


def limit(name):
    """A #define of cdc/metrics.h, so that the tests follow the header."""
    m = re.search(r"^#define %s\s+(\d+)" % name, (REPO / "cdc" / "metrics.h").read_text(), re.M)
    assert m, "no %s in cdc/metrics.h" % name
    return int(m.group(1))


MAX_CLIENTS = limit("METRICS_MAX_CLIENTS")
MAX_REQUEST = limit("METRICS_MAX_REQUEST")
REQUEST_TIMEOUT = limit("METRICS_REQUEST_TIMEOUT_MS") / 1000.0

# What an orchestrator's probe allows (Kubernetes' default timeoutSeconds is 1;
# 2 s is the probe).
PROBE_TIMEOUT = 2.0
# How fast /healthz must answer under abuse: the 100 ms the issue asks for,
# plus 150 ms for scheduling on a shared 2-core machine running the ASan
# build next to PostgreSQL, Kafka and other tests.  Measured so (the tests
# print a note): p50 0.2-0.8 ms, worst 13 ms; before the fix most probes
# timed out at 2 s.
PROBE_BOUND = 0.25


def exchange(port, data, timeout=10):
    """Send raw bytes, read until the server closes; (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        reply = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.0 (\d{3}) ", lines[0])
    assert m, "not an HTTP/1.0 status line: %r" % reply[:200]
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(m.group(1)), headers, body.decode()


def probe(port, timeout=PROBE_TIMEOUT):
    """One /healthz probe: (status or the exception's name, seconds taken)."""
    t0 = time.monotonic()
    try:
        status = get(port, "/healthz", timeout=timeout)[0]
    except (OSError, http.client.HTTPException) as e:
        status = type(e).__name__
    return status, time.monotonic() - t0


def probe_report(what, results):
    times = sorted(t for _, t in results)
    util.note("metrics %s: %d probes, p50 %.1f ms, max %.1f ms, failed %d" % (
        what, len(results), 1000 * statistics.median(times), 1000 * times[-1],
        sum(1 for st, _ in results if st != 200)))


def check_probes(what, results):
    probe_report(what, results)
    bad = [(st, round(t, 3)) for st, t in results if st != 200 or t > PROBE_BOUND]
    assert not bad, "%s: %d of %d /healthz probes failed or took over %.0f ms: %r" % (
        what, len(bad), len(results), PROBE_BOUND * 1000, bad)


HTTP_ERRORS = [
    # (request, status, body)
    (b"GET /nope HTTP/1.0\r\n\r\n", 404, 'not found: "/nope"; try /metrics or /healthz\n'),
    (b"GET /healthzx?a=b HTTP/1.1\r\nHost: x\r\n\r\n", 404,
     'not found: "/healthzx"; try /metrics or /healthz\n'),
    (b"POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n", 405,
     'method "POST" is not allowed: use GET or HEAD\n'),
    (b"get /healthz HTTP/1.0\r\n\r\n", 405, 'method "get" is not allowed: use GET or HEAD\n'),
    (b"GET /healthz\r\n\r\n", 400,
     'bad request: malformed request line "GET /healthz"; expected METHOD PATH HTTP/1.x\n'),
    (b"GET  /healthz HTTP/1.0\r\n\r\n", 400,
     'bad request: malformed request line "GET  /healthz HTTP/1.0"; expected METHOD PATH '
     'HTTP/1.x\n'),
    (b"\r\n\r\n", 400, "bad request: empty request line; expected METHOD PATH HTTP/1.x\n"),
    (b"GET /healthz HTTP/1.0\tx\r\n\r\n", 400,
     "bad request: the request line contains a control character (byte 22)\n"),
    (b"GET /healthz HTP/1.0\r\n\r\n", 400,
     'bad request: malformed HTTP version "HTP/1.0"; expected HTTP/1.0 or HTTP/1.1\n'),
    (b"GET /healthz HTTP/2.0\r\n\r\n", 505,
     'HTTP version "HTTP/2.0" is not supported: use HTTP/1.0 or HTTP/1.1\n'),
    (b"GET healthz HTTP/1.0\r\n\r\n", 400,
     'bad request: request target "healthz" is not a path; try /metrics or /healthz\n'),
    (b"GET /healthz HTTP/1.0\r\nX: a\0b\r\n\r\n", 400,
     "bad request: the request contains a NUL byte\n"),
    (b"GET /healthz HTTP/1.0\r\n", 400,  # then shut down: see exchange_shut()
     "bad request: the connection was shut down before the blank line that ends the headers\n"),
]


def exchange_shut(port, data, timeout=10):
    """Like exchange(), with the client's side shut down after sending."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply


def test_http_answers_and_errors(outbox_db, pgoutbox):
    """Each answer, error or not, says what it is about: status, reason and a
    body naming what was wrong with that request."""
    db = outbox_db
    p, port = start_with_metrics(pgoutbox, db)

    status, headers, body = exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert (status, body) == (200, "streaming\n")
    assert headers["Content-Length"] == "10" and headers["Connection"] == "close", headers
    # HEAD: the same headers, no body.
    status, headers, body = exchange(port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, headers["Content-Length"], body) == (200, "10", ""), (status, headers, body)
    status, headers, body = exchange(port, b"HEAD /metrics HTTP/1.0\n\n")   # bare LF
    assert status == 200 and int(headers["Content-Length"]) > 1000 and body == ""
    status, _, body = exchange(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
    assert status == 200 and parse(body)[("pgoutbox_up", "")] == 1

    for request, want_status, want_body in HTTP_ERRORS[:-1]:
        status, headers, body = exchange(port, request)
        assert (status, body) == (want_status, want_body), request
        assert headers["Content-Length"] == str(len(want_body.encode())), (request, headers)
        if status == 405:
            assert headers.get("Allow") == "GET, HEAD", headers
    request, want_status, want_body = HTTP_ERRORS[-1]
    reply = exchange_shut(port, request)
    assert reply.startswith(b"HTTP/1.0 400 Bad Request\r\n"), reply
    assert reply.endswith(want_body.encode()), reply

    # Too large: more than METRICS_MAX_REQUEST bytes without the end of the
    # headers.  The client is still sending when the answer comes; it gets
    # the answer all the same (the server reads on until it closes).
    big = b"GET /metrics HTTP/1.0\r\nX-Pad: " + b"a" * (2 * MAX_REQUEST)
    status, _, body = exchange(port, big)
    assert (status, body) == (431, "request too large: the request line and headers exceed "
                                   "%d bytes\n" % MAX_REQUEST)
    # Exactly at the limit is fine.
    pad = MAX_REQUEST - len(b"GET /healthz HTTP/1.0\r\nX: \r\n\r\n")
    status, _, body = exchange(port, b"GET /healthz HTTP/1.0\r\nX: " + b"a" * pad + b"\r\n\r\n")
    assert (status, body) == (200, "streaming\n")

    # A request that does not arrive whole in time: 408, after the deadline
    # (a total from the connection, not per byte).
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        t0 = time.monotonic()
        s.sendall(b"GET /heal")
        reply = s.recv(65536)
        took = time.monotonic() - t0
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.0 408 Request Timeout\r\n"), reply
    assert reply.endswith(b"request timeout: the request line and headers did not arrive within "
                          b"%d ms\n" % int(REQUEST_TIMEOUT * 1000)), reply
    assert REQUEST_TIMEOUT - 0.1 <= took <= REQUEST_TIMEOUT + 1.5, took
    assert get(port, "/healthz")[0] == 200
    assert p.poll() is None, p.describe()


class SlowClients:
    """n connections to port that never complete a request — the even ones
    send nothing, the odd ones one byte of a request per second — each opened
    again as soon as the server closes it.  Runs in a thread; records how long
    the server kept each connection."""

    REQUEST = b"GET /healthz HTTP/1.0\r\nUser-Agent: slow\r\n\r\n"

    def __init__(self, port, n):
        self.port, self.n = port, n
        self.lifetimes = []          # seconds from connect to the server's close
        self.opened = 0
        self._stop = threading.Event()
        self._socks = [None] * n
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, i):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", self.port))
        self._socks[i] = [s, time.monotonic(), 0, time.monotonic() + 1.0]
        self.opened += 1

    def _run(self):
        for i in range(self.n):
            self._open(i)
        while not self._stop.is_set():
            now = time.monotonic()
            for i, entry in enumerate(self._socks):
                s, born, sent, next_byte = entry
                closed = False
                if i % 2 == 1 and now >= next_byte and sent < len(self.REQUEST) - 4:
                    try:
                        sent += s.send(self.REQUEST[sent:sent + 1])
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed = True
                    entry[2], entry[3] = sent, next_byte + 1.0
                try:
                    while True:
                        data = s.recv(4096)
                        if not data:
                            closed = True
                            break
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
                if closed:
                    self.lifetimes.append(now - born)
                    s.close()
                    self._open(i)
            self._stop.wait(0.02)
        for entry in self._socks:
            entry[0].close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def test_healthz_with_slow_clients(outbox_db, pgoutbox):
    """16 clients that hold connections without completing a request (issue
    11: with 8 slots and a 5 s idle timeout, /healthz missed 14 of 20 2 s
    probes): every probe is answered within PROBE_BOUND, and each slow client
    is closed after the request deadline, however it trickles bytes."""
    db = outbox_db
    p, port = start_with_metrics(pgoutbox, db)
    results = []
    with SlowClients(port, 16) as slow:
        util.wait_for(lambda: slow.opened >= 16, 10, "16 slow clients to connect")
        t0 = time.monotonic()
        for _ in range(20):
            results.append(probe(port))
            time.sleep(0.25)    # pacing: 20 probes over ~2.5 request deadlines
        took = time.monotonic() - t0
    check_probes("/healthz with 16 slow clients", results)
    assert len(slow.lifetimes) >= 16, "the server closed only %d slow clients in %.1f s" % (
        len(slow.lifetimes), took)
    assert max(slow.lifetimes) <= REQUEST_TIMEOUT + 1.0, (
        "slow clients held for up to %.1f s (request deadline %.1f s)"
        % (max(slow.lifetimes), REQUEST_TIMEOUT))
    assert p.poll() is None, p.describe()


def raise_nofile(n):
    """Make room for n sockets in this process; returns the old limits."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    if old[0] < n:
        if old[1] != resource.RLIM_INFINITY and old[1] < n:
            pytest.fail("this test needs %d file descriptors; the hard limit is %d" % (n, old[1]))
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, old[1]))
    return old


def open_idle(port, n, timeout=30):
    """n connections that send nothing; returns the sockets once every one
    has connected (or failed: the server may already have closed it)."""
    socks = []
    sel = selectors.DefaultSelector()
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            socks.append(s)
            sel.register(s, selectors.EVENT_WRITE)
        pending = n
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            assert left > 0, "%d of %d connections still not connected after %d s" % (
                pending, n, timeout)
            for key, _ in sel.select(left):
                sel.unregister(key.fileobj)
                pending -= 1
    finally:
        sel.close()
    return socks


def test_healthz_with_2000_idle_connections(outbox_db, pgoutbox):
    """2,000 idle connections, far more than the client slots (issue 11: they
    blocked /healthz for about 10 s): each new connection displaces the oldest
    idle one, so probes are answered at once, during and after the flood."""
    db = outbox_db
    p, port = start_with_metrics(pgoutbox, db)
    old = raise_nofile(2000 + 512)
    socks = []
    try:
        results = []
        for _ in range(4):
            socks += open_idle(port, 500)
            results.append(probe(port))
        for _ in range(10):
            results.append(probe(port))
        check_probes("/healthz with 2000 idle connections", results)
        # Still at most METRICS_MAX_CLIENTS open on the server's side: the
        # rest were closed (a closed one reads as EOF or reset here).
        alive = 0
        for s in socks:
            try:
                if s.recv(1) == b"":
                    continue
            except BlockingIOError:
                alive += 1
            except OSError:
                continue
        assert alive <= MAX_CLIENTS, "%d idle connections still open" % alive
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, old)
    assert p.poll() is None, p.describe()


def fd_limit_leaving(pid, free):
    """The RLIMIT_NOFILE soft limit that leaves process pid exactly `free`
    file descriptor numbers to allocate (the limit bounds the numbers)."""
    used = {int(fd) for fd in os.listdir("/proc/%d/fd" % pid)}
    k = n = 0
    while True:
        if k not in used:
            if n == free:
                return k
            n += 1
        k += 1


def cpu_seconds(pid):
    """User + system CPU time of process pid so far (all its threads)."""
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_lines(path, needle):
    """Lines of a (possibly huge) log file containing needle."""
    n = 0
    with open(path, "rb") as f:
        for line in f:
            if needle in line:
                n += 1
    return n


def test_accept_backoff_when_out_of_fds(outbox_db, pgoutbox):
    """Out of file descriptors, accept() fails with EMFILE while connections
    wait (issue 11: 2.7 M warning lines in 5 s from poll() waking at once).
    The listener backs off with one warning, streaming goes on, and /healthz
    answers again once the connections are gone."""
    db = outbox_db
    p, port = start_with_metrics(pgoutbox, db)
    t = db.aggtype("fd")
    # One event first, so that the producer's broker connections exist.
    util.commit_events(db.conn, [util.event(t, "k0", "T", {"i": 0})])
    util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 30, proc=p)

    # prlimit(2) on the running daemon rather than a low limit from the
    # start: the limit then leaves exactly 4 descriptors free, whatever
    # ASan, librdkafka's threads and libpq have opened by now.
    soft, hard = resource.prlimit(p.proc.pid, resource.RLIMIT_NOFILE)
    low = fd_limit_leaving(p.proc.pid, 4)
    resource.prlimit(p.proc.pid, resource.RLIMIT_NOFILE, (low, hard))
    socks = []
    try:
        socks = open_idle(port, 40)   # 4 get a descriptor, the rest wait in the queue
        t0, cpu0 = time.monotonic(), cpu_seconds(p.proc.pid)
        # Streaming goes on meanwhile.
        util.commit_events(db.conn, [util.event(t, "k1", "T", {"i": 1})])
        util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 30, proc=p)
        util.wait_for(lambda: time.monotonic() - t0 >= 5, 10, "5 s with the connections open")
        assert p.poll() is None, p.describe()
        cpu, took = cpu_seconds(p.proc.pid) - cpu0, time.monotonic() - t0
        warnings = count_lines(p.stderr_path, b"could not accept a metrics connection")
        util.note("metrics EMFILE: %d accept warning line(s), %.2f s CPU in %.1f s" % (
            warnings, cpu, took))
        assert 1 <= warnings <= 3, "%d accept warnings in %.1f s" % (warnings, took)
        # Not spinning either (a loop woken at once, warning or not, takes a core).
        assert cpu < 0.5 * took, "%.1f s CPU in %.1f s" % (cpu, took)
        assert "Too many open files" in p.stderr, p.describe()
    finally:
        for s in socks:
            s.close()
    # Queued connections that closed are taken and dropped; then probes work.
    util.wait_for(lambda: probe(port)[0] == 200, 15, "/healthz to answer again")
    results = [probe(port) for _ in range(5)]
    check_probes("/healthz after EMFILE", results)
    resource.prlimit(p.proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)
    util.check_delivery(db.kafka_messages(), db.rows())


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


BAD_ADDRESSES = [
    # (--metrics value, the message after 'invalid value "VALUE" for metrics: ')
    ("nonsense", "not a port number; expected PORT, HOST:PORT or [V6]:PORT"),
    ("99999", "port 99999 is out of range (1-65535)"),
    ("127.0.0.1:", 'missing port after ":"'),
    ("127.0.0.1:99999", "port 99999 is out of range (1-65535)"),
    ("127.0.0.1:0", "port 0 is out of range (1-65535)"),
    ("127.0.0.1:123456789012", "port 123456789012 is out of range (1-65535)"),
    ("127.0.0.1:http", 'port "http" is not a number'),
    ("127.0.0.1:-1", 'port "-1" is not a number'),
    (":9187", 'empty host before ":"; write 0.0.0.0:9187 for every IPv4 interface or a bare '
              '9187 for 127.0.0.1'),
    ("::1:9187", "an IPv6 address goes in brackets: [::1]:9187"),
    ("::1", "an IPv6 address goes in brackets, followed by the port: [::1]:PORT"),
    ("[::1", '"[" without a closing "]"; expected [V6]:PORT'),
    ("[::1]", 'missing ":PORT" after "]"'),
    ("[::1]9187", 'expected ":PORT" after "]", not "9187"'),
    ("[]:9187", 'empty IPv6 address in "[]"'),
    ("[::1]:", 'missing port after ":"'),
    ("[::1]:65536", "port 65536 is out of range (1-65535)"),
    ("[localhost]:9187", '"localhost" is not an IPv6 address (only those go in brackets)'),
    ("h" * 300 + ":9187", "host longer than 255 characters"),
]


@pytest.mark.parametrize("addr,why", BAD_ADDRESSES, ids=[a[:20] for a, _ in BAD_ADDRESSES])
def test_metrics_bad_address(pgoutbox, addr, why):
    """A malformed address is a usage error that says what is wrong with it,
    before anything connects (nothing listens on -d or -b)."""
    p = pgoutbox.run("-d", "host=127.0.0.1 port=%d dbname=x" % util.free_port(),
                     "-b", "127.0.0.1:%d" % util.free_port(), "--metrics", addr, timeout=10)
    assert p.returncode == util.EXIT_USAGE, p.describe()
    assert p.stderr.startswith('pgoutbox: invalid value "%s" for metrics: %s\n' % (addr, why)), \
        p.stderr


def test_metrics_address_in_use(pgoutbox):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = "127.0.0.1:%d" % taken.getsockname()[1]
        p = pgoutbox.run("-d", "dbname=x", "-b", "127.0.0.1:1", "--metrics", addr, timeout=10)
    assert p.returncode == util.EXIT_USAGE, p.describe()
    assert ('ERROR:  could not bind metrics address "%s": Address already in use (another '
            'socket is bound to that port)\n' % addr) in p.stderr, p.stderr


def test_metrics_address_not_local(pgoutbox):
    # 192.0.2.0/24 is TEST-NET-1: never an address of this machine.
    p = pgoutbox.run("-d", "dbname=x", "-b", "127.0.0.1:1", "--metrics", "192.0.2.1:9187",
                     timeout=10)
    assert p.returncode == util.EXIT_USAGE, p.describe()
    assert ('ERROR:  could not bind metrics address "192.0.2.1:9187": Cannot assign requested '
            'address (not an address of this machine)\n') in p.stderr, p.stderr


def test_metrics_host_unresolvable(pgoutbox):
    # .invalid never resolves (RFC 6761); the resolver's reason text varies.
    p = pgoutbox.run("-d", "dbname=x", "-b", "127.0.0.1:1", "--metrics",
                     "nosuchhost.invalid:9187", timeout=30)
    assert p.returncode == util.EXIT_USAGE, p.describe()
    assert re.search(r'ERROR:  could not resolve host "nosuchhost\.invalid" of metrics address '
                     r'"nosuchhost\.invalid:9187": \S', p.stderr), p.stderr


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
