"""Kafka over TLS and SASL/SCRAM: pgoutbox hands librdkafka's properties
through (`-X PROP=VAL`, `kafka.PROP = VAL` in the file), so
`security.protocol=ssl` or `sasl_ssl` with `ssl.ca.location` gives a verified,
encrypted (and authenticated) producer connection.

The session's broker has the listeners: scripts/test.sh and conftest's own
stack start it with `scripts/stack.sh start --kafka-tls` (an SSL and a
SASL_SSL listener with SCRAM-SHA-256/512, a certificate for
localhost/127.0.0.1 from a throwaway CA; the env gets PGOUTBOX_KAFKA_*).
pgoutbox is only ever given a TLS listener; Kafka is read back over PLAINTEXT.
A stack without those listeners fails this module rather than skipping it.
"""

import http.client
import re
import subprocess
import uuid

import pytest

import util
from conftest import ENDPOS_TIMEOUT

TLS_VARS = ("PGOUTBOX_KAFKA_SSL_BROKERS", "PGOUTBOX_KAFKA_SASL_BROKERS", "PGOUTBOX_KAFKA_CA",
            "PGOUTBOX_KAFKA_SASL_USER", "PGOUTBOX_KAFKA_SASL_PASSWORD")
CHECK_BOUND = 30       # seconds a --check may take (Kafka's part waits at most ~5 s)
ERROR_TIMEOUT = 20     # seconds until the refused connection is in the log
KEEPS_RETRYING = 5     # seconds a refused run must stay up by itself
REFUSED_DRAIN = 2      # --shutdown-timeout of a refused run: no ack will come
SASL_ERROR = "SASL authentication error"
CERT_ERROR = "certificate verify failed"
STALL_TIMEOUT = 2      # --kafka-stall-timeout of a refused run
STALLED = "Kafka has acknowledged nothing for"


def _healthz(port):
    """(status, body) of pgoutbox's /healthz, or None while it does not answer."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        c.request("GET", "/healthz")
        r = c.getresponse()
        return r.status, r.read().decode()
    except OSError:
        return None
    finally:
        c.close()


def _refused_args(port):
    """A refused run reports itself unhealthy after STALL_TIMEOUT s."""
    return ("--kafka-stall-timeout", str(STALL_TIMEOUT), "--metrics", "127.0.0.1:%d" % port)


class KafkaTls:
    """The TLS listeners of the session's broker (scripts/stack.sh --kafka-tls)."""

    def __init__(self, env):
        self.ssl_brokers = env["PGOUTBOX_KAFKA_SSL_BROKERS"]
        self.sasl_brokers = env["PGOUTBOX_KAFKA_SASL_BROKERS"]
        self.ca = env["PGOUTBOX_KAFKA_CA"]
        self.user = env["PGOUTBOX_KAFKA_SASL_USER"]
        self.password = env["PGOUTBOX_KAFKA_SASL_PASSWORD"]

    def ssl(self, ca=None):
        """-X options of the SSL listener (host name verification is librdkafka's default)."""
        return ["-X", "security.protocol=ssl", "-X", "ssl.ca.location=%s" % (ca or self.ca)]

    def sasl(self, mechanism="SCRAM-SHA-512", password=None):
        """-X options of the SASL_SSL listener, password on the command line."""
        return ["-X", "security.protocol=sasl_ssl", "-X", "ssl.ca.location=%s" % self.ca,
                "-X", "sasl.mechanisms=%s" % mechanism, "-X", "sasl.username=%s" % self.user,
                "-X", "sasl.password=%s" % (password or self.password)]


@pytest.fixture(scope="module")
def kafka_tls(stack):
    missing = [v for v in TLS_VARS if not stack.env.get(v)]
    if missing:
        pytest.fail("the stack's Kafka has no TLS listeners (%s not set): start it with"
                    " `scripts/stack.sh start --kafka-tls` (scripts/test.sh does)"
                    % ", ".join(missing), pytrace=False)
    return KafkaTls(stack.env)


@pytest.fixture
def wrong_ca(tmp_path):
    """A CA certificate that did not sign the broker's certificate."""
    ca = tmp_path / "wrong-ca.crt"
    gen = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                          "-days", "2", "-subj", "/CN=not the stack's CA",
                          "-keyout", str(tmp_path / "wrong-ca.key"), "-out", str(ca)],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert gen.returncode == 0, "openssl failed (%d):\n%s" % (gen.returncode, gen.stderr)
    return ca


def _insert(db, agg, n):
    rows = [util.event(agg, "account-%d" % (i % 3), "Opened", {"n": i, "kafka_tls": True})
            for i in range(n)]
    return util.commit_events(db.conn, rows)


def _stream(db, pgoutbox, agg, ids, *args, brokers):
    """Run pgoutbox with `args` up to the current WAL position: it exits 0, the
    slot is confirmed there, and exactly the rows `ids` of aggregate type `agg`
    are in their topic (read over PLAINTEXT), each one faithful to its row.
    Returns the finished run."""
    endpos = db.wal_lsn()
    run = pgoutbox.run(*db.args(*args, brokers=brokers, endpos=endpos), timeout=ENDPOS_TIMEOUT)
    assert run.returncode == util.EXIT_OK, run.describe()
    assert db.confirmed_at_least(endpos)
    rows = {i: r for i, r in db.rows().items() if r.aggregatetype == agg}
    assert sorted(rows) == sorted(ids)
    dups = util.check_delivery(util.read_topics(db.brokers, [util.default_topic(agg)]), rows)
    if dups:
        util.note("test_kafka_tls: %d duplicate deliveries (at least once)" % dups)
    return run


def _no_secret(p, *secrets):
    for name, text in (("stdout", p.stdout), ("stderr", p.stderr)):
        for secret in secrets:
            assert secret not in text, "a password is in %s of %s" % (name, p.describe())


def _check(pgoutbox, db, *args, brokers, expect):
    """pgoutbox --check; returns (process, status of the `kafka brokers` line, its detail)."""
    p = pgoutbox.run("--check", *db.args(*args, brokers=brokers), timeout=CHECK_BOUND)
    assert p.returncode == expect, "--check exited %r, expected %r\nstdout:\n%s\n%s" % (
        p.returncode, expect, p.stdout, p.describe())
    lines = [ln for ln in p.stdout.splitlines() if "  kafka brokers: " in ln]
    assert len(lines) == 1, "one `kafka brokers` line expected:\n" + p.stdout
    status, _, detail = lines[0].partition("  kafka brokers: ")
    return p, status.strip(), detail


def _refused(db, p, agg, marker, lsn_before, endpos, port):
    """A run whose Kafka connection is refused: `marker` is logged (twice: it
    retries), it stays up, nothing reaches Kafka, the slot is not confirmed
    past `lsn_before`; after STALL_TIMEOUT s with events waiting, a warning
    and /healthz 503 say so with the last Kafka error; SIGTERM then stops it
    cleanly."""
    util.wait_for(lambda: p.poll() is not None or p.stderr.count(marker) >= 2,
                  ERROR_TIMEOUT, "pgoutbox to log %r twice" % marker)
    assert p.poll() is None, "pgoutbox exited (%r) instead of retrying\n%s" % (
        p.returncode, p.describe())
    lines = [ln for ln in p.stderr.splitlines() if marker in ln]
    assert all(" WARNING:  Kafka FAIL: " in ln for ln in lines), "\n".join(lines)
    util.wait_attached(db.conn, db.slot, p, ENDPOS_TIMEOUT)
    try:  # it keeps retrying by itself, it does not give up
        rc = p.proc.wait(timeout=KEEPS_RETRYING)
    except subprocess.TimeoutExpired:
        rc = None
    assert rc is None, "pgoutbox exited (%r) within %d s\n%s" % (rc, KEEPS_RETRYING, p.describe())
    assert util.read_topics(db.brokers, [util.default_topic(agg)]) == []
    util.wait_for(lambda: p.poll() is not None or (_healthz(port) or (0, ""))[0] == 503,
                  ERROR_TIMEOUT, "/healthz to answer 503")
    status, body = _healthz(port)
    assert status == 503 and body.startswith(STALLED) and marker in body, (status, body)
    assert re.search(r"WARNING:  %s \d+ s while \d+ events wait; last Kafka error: .*%s"
                     % (STALLED, marker), p.stderr), p.describe()
    confirmed = util.slot_state(db.conn, db.slot)[0]
    assert util.lsn_ge(db.conn, lsn_before, confirmed), (
        "slot confirmed %s, past %s, with nothing acknowledged" % (confirmed, lsn_before))
    p.terminate()
    p.expect_exit(util.EXIT_OK, REFUSED_DRAIN + 20)
    assert not db.confirmed_at_least(endpos)


def test_streams_over_ssl(outbox_db, pgoutbox, kafka_tls):
    """security.protocol=ssl with the stack's CA: events arrive exactly, the
    slot is confirmed; librdkafka checks the host name by default."""
    db = outbox_db
    agg = db.aggtype("ssl")
    ids = _insert(db, agg, 5)
    run = _stream(db, pgoutbox, agg, ids, *kafka_tls.ssl(), "-v", "-X", "debug=security",
                  brokers=kafka_tls.ssl_brokers)
    # ssl.endpoint.identification.algorithm=https is librdkafka's (>= 2.0) default.
    assert "Enabled endpoint identification using hostname 127.0.0.1" in run.stderr, run.describe()


def test_check_ssl_verifies_host_name(outbox_db, pgoutbox, kafka_tls):
    """The certificate names localhost and 127.0.0.1. Reached as `127.1` (the
    same address under a name the certificate does not carry) the broker is
    refused, unless host name verification is turned off."""
    db = outbox_db
    port = kafka_tls.ssl_brokers.rsplit(":", 1)[1]
    _, status, detail = _check(pgoutbox, db, *kafka_tls.ssl(), brokers="127.1:" + port,
                               expect=util.EXIT_RUNTIME)
    assert status == "FAIL" and CERT_ERROR in detail, detail
    _, status, detail = _check(pgoutbox, db, *kafka_tls.ssl(),
                               "-X", "ssl.endpoint.identification.algorithm=none",
                               brokers="127.1:" + port, expect=util.EXIT_OK)
    assert status == "ok", detail


def test_streams_over_sasl_ssl_scram_sha512(outbox_db, pgoutbox, kafka_tls, tmp_path):
    """SASL_SSL with SCRAM-SHA-512, the password in a 0600 config file as the
    README recommends: events arrive, the slot is confirmed, and the password
    is nowhere in the output, even with librdkafka's configuration dump."""
    db = outbox_db
    conf = tmp_path / "pgoutbox.conf"
    conf.write_text("kafka.security.protocol = sasl_ssl\n"
                    "kafka.sasl.mechanisms = SCRAM-SHA-512\n"
                    "kafka.sasl.username = %s\n"
                    "kafka.sasl.password = %s\n"
                    "kafka.ssl.ca.location = %s\n"
                    % (kafka_tls.user, kafka_tls.password, kafka_tls.ca))
    conf.chmod(0o600)
    agg = db.aggtype("scram512")
    ids = _insert(db, agg, 7)
    run = _stream(db, pgoutbox, agg, ids, "-c", conf, "-v", "-X", "debug=security,conf",
                  brokers=kafka_tls.sasl_brokers)
    assert "sasl.password = [redacted]" in run.stderr, run.describe()
    _no_secret(run, kafka_tls.password)


def test_check_sasl_ssl(outbox_db, pgoutbox, kafka_tls):
    """--check over SASL_SSL: passes with the user's password (SCRAM-SHA-256
    and -512), fails with exit 2 and the reason with a wrong one; no password
    is printed."""
    db = outbox_db
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        p, status, detail = _check(pgoutbox, db, *kafka_tls.sasl(mechanism),
                                   brokers=kafka_tls.sasl_brokers, expect=util.EXIT_OK)
        assert status == "ok" and kafka_tls.sasl_brokers in detail, detail
        assert "all checks passed" in p.stdout
        _no_secret(p, kafka_tls.password)

    wrong = "WrongScram-" + uuid.uuid4().hex
    p, status, detail = _check(pgoutbox, db, *kafka_tls.sasl(password=wrong),
                               brokers=kafka_tls.sasl_brokers, expect=util.EXIT_RUNTIME)
    assert status == "FAIL" and SASL_ERROR in detail, detail
    assert "check failed: 1 failed" in p.stdout, p.stdout
    _no_secret(p, wrong, kafka_tls.password)


def test_wrong_scram_password(outbox_db, pgoutbox, kafka_tls):
    """A wrong SCRAM password is a broker that refuses us: logged (without the
    password), retried, nothing delivered or confirmed; the right password then
    delivers everything."""
    db = outbox_db
    agg = db.aggtype("badscram")
    lsn_before = db.wal_lsn()
    ids = _insert(db, agg, 3)
    endpos = db.wal_lsn()
    wrong = "WrongScram-" + uuid.uuid4().hex

    port = util.free_port()
    p = pgoutbox.start(*db.args(*kafka_tls.sasl(password=wrong), *_refused_args(port),
                                brokers=kafka_tls.sasl_brokers, shutdown_timeout=REFUSED_DRAIN))
    _refused(db, p, agg, SASL_ERROR, lsn_before, endpos, port)
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in p.stderr, p.describe()
    _no_secret(p, wrong, kafka_tls.password)

    run = _stream(db, pgoutbox, agg, ids, *kafka_tls.sasl(), brokers=kafka_tls.sasl_brokers)
    _no_secret(run, kafka_tls.password)


def test_wrong_ca(outbox_db, pgoutbox, kafka_tls, wrong_ca):
    """A CA that did not sign the broker's certificate: the handshake is
    refused and retried, nothing is delivered or confirmed. (--check's
    certificate failure is test_check_ssl_verifies_host_name's.)"""
    db = outbox_db
    agg = db.aggtype("badca")
    lsn_before = db.wal_lsn()
    _insert(db, agg, 3)
    endpos = db.wal_lsn()

    port = util.free_port()
    p = pgoutbox.start(*db.args(*kafka_tls.ssl(ca=wrong_ca), *_refused_args(port),
                                brokers=kafka_tls.ssl_brokers, shutdown_timeout=REFUSED_DRAIN))
    _refused(db, p, agg, CERT_ERROR, lsn_before, endpos, port)
