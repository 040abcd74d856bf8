"""Helpers for pgoutbox's end-to-end tests: the daemon as a subprocess, PostgreSQL
side (events, LSNs, slot state) and an independent Kafka reader.

Nothing here goes through pgoutbox's own code: Kafka is read back with
confluent_kafka, PostgreSQL with psycopg2.  Waiting is always "poll a condition
until a deadline", never a bare sleep that hopes a race is over.
"""

import glob
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid

import psycopg2
import psycopg2.extras
from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")

# Exit codes of the contract.
EXIT_OK = 0
EXIT_USAGE = 1
EXIT_RUNTIME = 2


# ---------------------------------------------------------------------------
# Polling
# ---------------------------------------------------------------------------

def wait_for(condition, timeout, what, interval=0.05):
    """Call condition() until it returns something truthy; return that value.

    Fails the test naming `what` when `timeout` seconds pass first.  The short
    pause between calls is the polling interval, not a hidden synchronisation.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---------------------------------------------------------------------------
# The daemon as a subprocess
# ---------------------------------------------------------------------------

def tail(text, lines=60):
    return "\n".join(text.splitlines()[-lines:])


class PgoutboxProcess:
    """One run of the pgoutbox binary; stdout and stderr go to files in the
    test's tmp_path so that nothing blocks on a full pipe and everything can be
    shown when the test fails."""

    def __init__(self, binary, args, workdir, name, env):
        self.args = [str(binary)] + [str(a) for a in args]
        self.name = name
        self.stdout_path = workdir / (name + ".stdout")
        self.stderr_path = workdir / (name + ".stderr")
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
            env=env, start_new_session=True)
        self.returncode = None

    # -- output -------------------------------------------------------------
    def _read(self, path):
        for f in (self._out, self._err):
            if not f.closed:
                f.flush()
        return path.read_bytes().decode("utf-8", errors="replace")

    @property
    def stdout(self):
        return self._read(self.stdout_path)

    @property
    def stderr(self):
        return self._read(self.stderr_path)

    def describe(self):
        return "%s: %s\n--- stderr (tail) ---\n%s" % (
            self.name, " ".join(self.args), tail(self.stderr))

    def sanitizer_report(self):
        err = self.stderr
        for marker in SANITIZER_MARKERS:
            if marker in err:
                return marker
        return None

    def assert_no_sanitizer_report(self):
        marker = self.sanitizer_report()
        assert marker is None, "sanitizer report (%r) in %s" % (marker, self.describe())

    # -- lifecycle ------------------------------------------------------------
    def poll(self):
        rc = self.proc.poll()
        if rc is not None:
            self._finish(rc)
        return rc

    def _finish(self, rc):
        self.returncode = rc
        for f in (self._out, self._err):
            if not f.closed:
                f.close()

    def wait(self, timeout):
        """Wait for the process to exit by itself; return its exit status.

        On timeout the process is killed and the test fails with its stderr.
        A sanitizer report in stderr fails the test whatever the status.
        """
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("pgoutbox did not exit within %.0f s\n%s"
                                 % (timeout, self.describe()))
        self._finish(rc)
        self.assert_no_sanitizer_report()
        return rc

    def signal(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def terminate(self):
        self.signal(signal.SIGTERM)

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._finish(self.proc.wait())

    def stop(self, grace=10):
        """Teardown path: SIGTERM, then SIGKILL after `grace` seconds."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
        self._finish(self.proc.wait())

    def expect_exit(self, expected, timeout):
        rc = self.wait(timeout)
        assert rc == expected, "pgoutbox exited %r, expected %r\n%s" % (
            rc, expected, self.describe())
        return rc


# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

def connect(dsn, autocommit=False):
    conn = psycopg2.connect(dsn)
    conn.set_client_encoding("UTF8")
    conn.autocommit = autocommit
    return conn


def query_one(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        row = cur.fetchone()
    if not conn.autocommit:
        conn.commit()
    return row


def current_wal_lsn(conn):
    """pg_current_wal_lsn() as text: an LSN at or past the end of every
    transaction this session (or anyone) committed before the call."""
    return query_one(conn, "SELECT pg_current_wal_lsn()::text")[0]


def slot_state(conn, slot):
    """(confirmed_flush_lsn text or None, active bool) or None if the slot is gone."""
    return query_one(conn, "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots"
                           " WHERE slot_name = %s", (slot,))


def slot_confirmed_at_least(conn, slot, lsn):
    row = query_one(conn, "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots"
                          " WHERE slot_name = %s", (lsn, slot))
    assert row is not None, "replication slot %s vanished" % slot
    return bool(row[0])


def walsender_of(conn, slot):
    """(pid, sent_lsn text) of the walsender streaming from `slot`, or None."""
    return query_one(conn, "SELECT r.pid, r.sent_lsn::text FROM pg_replication_slots s"
                           " JOIN pg_stat_replication r ON r.pid = s.active_pid"
                           " WHERE s.slot_name = %s", (slot,))


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lsn_ge(conn, a, b):
    return bool(query_one(conn, "SELECT %s::pg_lsn >= %s::pg_lsn", (a, b))[0])


def wait_confirmed(conn, slot, lsn, timeout, proc=None):
    """Poll until the slot's confirmed_flush_lsn >= lsn.  If `proc` is given,
    fail early (with its stderr) when the daemon dies meanwhile."""
    def ok():
        if proc is not None and proc.poll() is not None:
            raise AssertionError("pgoutbox exited (%r) before the slot reached %s\n%s"
                                 % (proc.returncode, lsn, proc.describe()))
        return slot_confirmed_at_least(conn, slot, lsn)
    try:
        wait_for(ok, timeout, "slot %s confirmed_flush_lsn >= %s" % (slot, lsn))
    except AssertionError as e:
        state = slot_state(conn, slot)
        msg = "%s (slot state: %r)" % (e, state)
        if proc is not None:
            msg += "\n" + proc.describe()
        raise AssertionError(msg) from None


def wait_attached(conn, slot, proc, timeout):
    """Poll until a walsender is streaming from `slot` (pgoutbox connected)."""
    def ok():
        if proc.poll() is not None:
            raise AssertionError("pgoutbox exited (%r) before attaching to slot %s\n%s"
                                 % (proc.returncode, slot, proc.describe()))
        st = slot_state(conn, slot)
        assert st is not None, "replication slot %s vanished" % slot
        return st[1]
    wait_for(ok, timeout, "pgoutbox to attach to slot %s" % slot)


INSERT_SQL = ("INSERT INTO %s (id, aggregatetype, aggregateid, type, payload)"
              " VALUES %%s")
INSERT_TEMPLATE = "(%s::uuid, %s, %s, %s, %s::jsonb)"


def new_id():
    return str(uuid.uuid4())


def event(aggregatetype, aggregateid, type_, payload):
    """An outbox row as a tuple in column order; payload is a JSON-able value
    (dumped to text here), a str (already JSON text) or None (SQL NULL)."""
    if payload is not None and not isinstance(payload, str):
        payload = json.dumps(payload, ensure_ascii=False)
    return (new_id(), aggregatetype, aggregateid, type_, payload)


def insert_events(cur, rows, table="public.outbox"):
    psycopg2.extras.execute_values(cur, INSERT_SQL % table, rows, template=INSERT_TEMPLATE,
                                   page_size=1000)


def commit_events(conn, rows, table="public.outbox"):
    """Insert rows in one transaction and commit it; return the ids."""
    with conn.cursor() as cur:
        insert_events(cur, rows, table)
    conn.commit()
    return [r[0] for r in rows]


class Row:
    __slots__ = ("id", "aggregatetype", "aggregateid", "type", "payload", "commit_ms")

    def __init__(self, id, aggregatetype, aggregateid, type, payload, commit_ms):
        self.id, self.aggregatetype, self.aggregateid = id, aggregatetype, aggregateid
        self.type, self.payload, self.commit_ms = type, payload, commit_ms

    def __repr__(self):
        return "Row(%s %s/%s %s)" % (self.id, self.aggregatetype, self.aggregateid, self.type)


def fetch_rows(conn, table="public.outbox"):
    """Every row of the outbox table as PostgreSQL sees it: payload as its text
    output, and the commit time of the inserting transaction floored to ms.

    Must be called while the rows are as inserted (xmin is the inserting
    transaction)."""
    with conn.cursor() as cur:
        cur.execute("SELECT id::text, aggregatetype, aggregateid, type, payload::text,"
                    " floor(extract(epoch from pg_xact_commit_timestamp(xmin)) * 1000)::bigint"
                    " FROM " + table)
        rows = {r[0]: Row(*r) for r in cur.fetchall()}
    conn.commit()
    for r in rows.values():
        assert r.commit_ms is not None, "no commit timestamp for %r (track_commit_timestamp off?)" % r
    return rows


# ---------------------------------------------------------------------------
# Kafka, read back independently
# ---------------------------------------------------------------------------

class Message:
    """A consumed Kafka record, detached from librdkafka."""
    __slots__ = ("topic", "partition", "offset", "key", "value", "headers",
                 "timestamp_type", "timestamp")

    def __init__(self, m):
        self.topic = m.topic()
        self.partition = m.partition()
        self.offset = m.offset()
        self.key = m.key()
        self.value = m.value()
        self.headers = list(m.headers() or [])
        self.timestamp_type, self.timestamp = m.timestamp()

    def header(self, name):
        """The single value of header `name` (bytes); fails if absent or repeated."""
        values = [v for k, v in self.headers if k == name]
        assert len(values) == 1, "message %s[%d]@%d has %d %r headers: %r" % (
            self.topic, self.partition, self.offset, len(values), name, self.headers)
        return values[0]

    @property
    def id(self):
        v = self.header("id")
        assert v is not None, "null id header on %s[%d]@%d" % (self.topic, self.partition,
                                                               self.offset)
        return v.decode("utf-8")

    def __repr__(self):
        return "Message(%s[%d]@%d key=%r)" % (self.topic, self.partition, self.offset, self.key)


def list_topics(brokers, timeout=15):
    admin = AdminClient({"bootstrap.servers": brokers})
    md = admin.list_topics(timeout=timeout)
    return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}


def topics_with(brokers, fragment):
    """Names of the existing topics containing `fragment` (a test's unique tag)."""
    return sorted(t for t in list_topics(brokers) if fragment in t)


def _watermarks(consumer, tp, timeout=15):
    """(low, high) of one partition that list_topics already showed.  A
    consumer just created may not have the topic in its own metadata yet
    (a topic auto-created a moment ago): librdkafka answers that with
    _UNKNOWN_PARTITION, so fetch this client's metadata for the topic and
    ask again, until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
        except KafkaException as e:
            if e.args[0].code() != KafkaError._UNKNOWN_PARTITION or time.monotonic() > deadline:
                raise
            consumer.list_topics(tp.topic, timeout=5)
            time.sleep(0.1)


def read_topics(brokers, topics, timeout=60):
    """Every record of every partition of `topics`, from offset 0 (low
    watermark) to the high watermark read at the start.  Deterministic: it
    stops when each partition's position reaches its high watermark, it does
    not wait for "nothing more arrives".  A topic that does not exist yields
    nothing."""
    existing = list_topics(brokers)
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": "e2e-reader-" + uuid.uuid4().hex,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "isolation.level": "read_committed",
    })
    messages = []
    try:
        assignment = []
        high = {}
        for topic in topics:
            for p in range(existing.get(topic, 0)):
                tp = TopicPartition(topic, p)
                lo, hi = _watermarks(consumer, tp)
                if hi > lo:
                    assignment.append(TopicPartition(topic, p, lo))
                    high[(topic, p)] = hi
        if not assignment:
            return messages
        consumer.assign(assignment)
        pending = set(high)
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise AssertionError("reading Kafka timed out; partitions still short of their"
                                     " high watermark: %r" % sorted(pending))
            for m in consumer.consume(num_messages=1000, timeout=1.0):
                if m.error():
                    raise KafkaException(m.error())
                k = (m.topic(), m.partition())
                if k in high and m.offset() < high[k]:
                    messages.append(Message(m))
                    if m.offset() + 1 >= high[k]:
                        pending.discard(k)
            if pending:
                # Covers offset gaps (e.g. control records) at a partition's end.
                for tp in consumer.position([TopicPartition(t, p) for t, p in pending]):
                    if tp.offset >= 0 and tp.offset >= high[(tp.topic, tp.partition)]:
                        pending.discard((tp.topic, tp.partition))
    finally:
        consumer.close()
    return messages


def read_test_topics(brokers, tag):
    """All records of all topics whose name contains the test's tag."""
    return read_topics(brokers, topics_with(brokers, tag))


def record_batches(log_dir, topic):
    """(producer_id, attributes) of every record batch Kafka stored for `topic`,
    read from the broker's segment files in `log_dir` (Kafka's on-disk record
    batch format v2: baseOffset int64, batchLength int32, partitionLeaderEpoch
    int32, magic int8, crc uint32, attributes int16, lastOffsetDelta int32,
    firstTimestamp int64, maxTimestamp int64, producerId int64, ...).

    This is how a test sees producer settings from outside: an idempotent
    producer's batches carry its producer id, others carry -1."""
    batches = []
    for seg in sorted(glob.glob(os.path.join(glob.escape(log_dir), glob.escape(topic) + "-*",
                                             "*.log"))):
        with open(seg, "rb") as f:
            data = f.read()
        pos = 0
        while pos + 61 <= len(data):
            base_offset, length = struct.unpack_from(">qi", data, pos)
            if length <= 0:
                break
            magic = data[pos + 16]
            assert magic == 2, "unexpected record batch magic %d in %s" % (magic, seg)
            attributes, = struct.unpack_from(">h", data, pos + 21)
            producer_id, = struct.unpack_from(">q", data, pos + 43)
            batches.append((producer_id, attributes))
            pos += 12 + length
    return batches


# ---------------------------------------------------------------------------
# The contract's mapping, checked
# ---------------------------------------------------------------------------

def default_topic(aggregatetype):
    return "outbox.event." + aggregatetype


def check_message_matches_row(m, row, topic_for=default_topic):
    """Every Kafka field of one delivery against the row in PostgreSQL; bytes
    compared exactly."""
    where = "%r for %r" % (m, row)
    assert m.topic == topic_for(row.aggregatetype), "topic: " + where
    assert m.key == row.aggregateid.encode("utf-8"), "key %r != %r: %s" % (
        m.key, row.aggregateid, where)
    if row.payload is None:
        assert m.value is None, "NULL payload must be a tombstone (null value), got %r: %s" % (
            m.value[:100], where)
    else:
        assert m.value is not None, "null value for a non-NULL payload: " + where
        expected = row.payload.encode("utf-8")
        assert m.value == expected, "value differs (len %d vs %d), first bytes %r vs %r: %s" % (
            len(m.value), len(expected), m.value[:80], expected[:80], where)
    assert m.header("id") == row.id.encode("utf-8"), "id header: " + where
    assert m.header("type") == row.type.encode("utf-8"), "type header %r: %s" % (
        m.header("type"), where)
    assert m.timestamp_type == TIMESTAMP_CREATE_TIME, "timestamp type %r: %s" % (
        m.timestamp_type, where)
    assert m.timestamp == row.commit_ms, "timestamp %r != commit time %r ms (diff %r): %s" % (
        m.timestamp, row.commit_ms, m.timestamp - row.commit_ms, where)


def check_delivery(messages, rows, topic_for=default_topic, forbidden_ids=()):
    """Exactly the committed rows reached Kafka, each delivery faithful to its
    row.  Returns the number of duplicate deliveries (allowed: at least once)."""
    by_id = {}
    for m in messages:
        by_id.setdefault(m.id, []).append(m)
    got, want = set(by_id), set(rows)
    missing, extra = want - got, got - want
    forbidden = got & set(forbidden_ids)
    assert not forbidden, "%d ids of rolled-back transactions reached Kafka, e.g. %r" % (
        len(forbidden), sorted(forbidden)[:5])
    assert not missing and not extra, (
        "Kafka has %d distinct ids, PostgreSQL committed %d: %d missing (e.g. %r), "
        "%d unexpected (e.g. %r)" % (len(got), len(want), len(missing), sorted(missing)[:5],
                                     len(extra), sorted(extra)[:5]))
    for i, ms in by_id.items():
        for m in ms:
            check_message_matches_row(m, rows[i], topic_for)
    return len(messages) - len(by_id)


def first_deliveries_by_key(messages):
    """{(topic, key): [id, ...]} in partition offset order, first delivery of
    each id only.  Messages with one key are in one partition of the topic."""
    order = sorted(messages, key=lambda m: (m.topic, m.partition, m.offset))
    seen = set()
    out = {}
    partitions = {}
    for m in order:
        k = (m.topic, m.key)
        partitions.setdefault(k, set()).add(m.partition)
        if m.id in seen:
            continue
        seen.add(m.id)
        out.setdefault(k, []).append(m.id)
    split = {k: v for k, v in partitions.items() if len(v) > 1}
    assert not split, "one key spread over several partitions: %r" % dict(list(split.items())[:3])
    return out


def poke_slot_sync(standby_dsn):
    """On a standby of 17+: wake the slot sync worker now.  Its nap between
    cycles doubles up to 30 s while no slot changes; a configuration reload
    sets its latch, so the next cycle (which also drops the copies of slots
    gone from the primary) runs at once.  Call it in a wait loop."""
    conn = connect(standby_dsn, autocommit=True)
    try:
        query_one(conn, "SELECT pg_reload_conf()")
    finally:
        conn.close()


class SlotSyncPoker:
    """with SlotSyncPoker(standby_dsn): poke_slot_sync() every half second
    inside, for a wait that happens elsewhere (setup-slot.sh --standby
    waiting for the copy)."""

    def __init__(self, standby_dsn, every=0.5):
        self.dsn, self.every = standby_dsn, every
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._halt.wait(self.every):
            try:
                poke_slot_sync(self.dsn)
            except psycopg2.Error:
                pass   # the standby restarting: the next poke will do

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._halt.set()
        self._thread.join(10)
        return False


# ---------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------

NOTES = []


def note(text):
    """A line for the session's summary (duplicate counts and the like), shown
    even when the test passes."""
    print(text)
    NOTES.append(text)


AUTH_ERROR_RE = re.compile(r"password authentication failed|authentication", re.I)
