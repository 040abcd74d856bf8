#!/usr/bin/python3
"""compat.py — is pgoutbox's output what Debezium's outbox event router
produced? The same workload through both, compared per event.

    scripts/bench/peer/compat.py --pgoutbox BIN [--libs DIR] [--out DIR]
                                 [--json FILE] [-X PROP=VAL ...] [--json-arg ARG ...]

Needs a running stack (scripts/stack.sh: PGOUTBOX_PG, PGOUTBOX_BROKERS in
the environment) with the default outbox table and pgoutbox's publication
(scripts/setup-slot.sh --create-table); --libs defaults to what
scripts/bench/peer/resolve.sh resolves. scripts/bench/run.sh runs it as its
`compat` scenario.

Three slots are created before the workload: one for pgoutbox (defaults),
one for Debezium with StringConverter and one for Debezium with
JsonConverter (schemas off), both Debezium setups with the outbox event
router at its defaults plus `type` as a header, as
docs/migrating-from-debezium.md describes. They run one after the other
into the same topics (pgoutbox to --endpos, then each Debezium until all its
events are in Kafka), so each partition holds pgoutbox's events, then the
first Debezium's, then the second's. Events are matched by their `id`
header and compared field by field: topic, key bytes, value bytes, headers,
partition, timestamp, and per key the order of the events (which must be
commit order). The workload (workload()) mixes keys that quoting changes
in different ways (digits, quotes, backslashes, control characters, non-ASCII,
the empty string), payloads of every JSON kind, a TOASTed one and a NULL,
one-row and many-row transactions, and a rolled-back transaction.

Expected differences: the timestamp (Debezium's is its processing time),
Debezium's own `__debezium.context.*` headers and, with JsonConverter, the
key and value quoted as JSON strings and so (murmur2 of other bytes) other
partitions. A third column checks what a pgoutbox option producing that
quoted key (`key_format = json-string`, not in pgoutbox yet) would give:
computed here from pgoutbox's output with the quoting of Kafka Connect's
JsonConverter (Jackson) and Kafka's murmur2 partitioner. Once pgoutbox has
such an option, --json-arg runs pgoutbox a second time with it (a slot of
its own) and compares that output with the JsonConverter setup directly:
key and partition must then be identical.

Prints a table with one row per field; exit 0 if every difference is an
expected one, 1 otherwise, 2 if the comparison could not run.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import psycopg2
import psycopg2.extensions
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import debezium  # noqa: E402

PUBLICATION = "bench_dbz"
CONTEXT_HEADER_PREFIX = "__debezium.context."
SETUPS = [("string", "StringConverter"), ("json", "JsonConverter (schemas off)")]


class Options:
    def __init__(self, pgoutbox, libs, out, x=(), proto=3, partitions=3, run=None, json_args=()):
        self.pgoutbox, self.libs, self.out = pgoutbox, libs, out
        self.x, self.proto, self.partitions = list(x), proto, partitions
        # pgoutbox arguments meant to reproduce the JsonConverter setup (e.g. a
        # future --key-format json-string): a fourth run, compared with it
        self.json_args = list(json_args)
        self.run = run or "%x" % (int(time.time()) % 0x1000000)


def log(*a):
    print("compat:", *a, file=sys.stderr, flush=True)


# ------------------------------------------------------------- encodings

def murmur2(data):
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as an
    unsigned 32-bit value; librdkafka's murmur2 partitioners use the same."""
    m, r = 0x5bd1e995, 24
    length = len(data)
    h = (0x9747b28c ^ length) & 0xffffffff
    for i in range(length // 4):
        k = data[4 * i] | data[4 * i + 1] << 8 | data[4 * i + 2] << 16 | data[4 * i + 3] << 24
        k = (k * m) & 0xffffffff
        k ^= k >> r
        k = (k * m) & 0xffffffff
        h = ((h * m) & 0xffffffff) ^ k
    rest, tail = length % 4, length & ~3
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xffffffff
    h ^= h >> 13
    h = (h * m) & 0xffffffff
    h ^= h >> 15
    return h


def kafka_partition(key, partitions):
    """The Java client's default partition of a non-null key
    (Utils.toPositive(murmur2(key)) % partitions)."""
    return (murmur2(key) & 0x7fffffff) % partitions


def json_string(text):
    """text as a JSON string the way Kafka Connect's JsonConverter (Jackson
    2.16's UTF-8 generator) writes one: `"` and `\\` escaped, \\b \\t \\n \\f
    \\r, other control characters as \\u00XX, characters beyond U+FFFF as
    their two UTF-16 surrogates \\uD83D\\uDE00 (hex in upper case), everything
    else as UTF-8. (The surrogates are what the workload's emoji showed.)"""
    out = ['"']
    short = {8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}
    for ch in text:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif o < 0x20:
            out.append(short.get(o) or "\\u%04X" % o)
        elif o > 0xFFFF:
            o -= 0x10000
            out.append("\\u%04X\\u%04X" % (0xD800 + (o >> 10), 0xDC00 + (o & 0x3FF)))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out).encode("utf-8")


def key_json_string(key):
    """What `key_format = json-string` would send for a key (bytes)."""
    return None if key is None else json_string(key.decode("utf-8"))


def value_json_string(value):
    """What a value format quoting the payload as a JSON string would send,
    as JsonConverter does: a NULL payload becomes the 4 bytes `null`, not a
    tombstone (the router hands JsonConverter a null of an optional string
    schema, which it writes as JSON null)."""
    return b"null" if value is None else json_string(value.decode("utf-8"))


# -------------------------------------------------------------- workload

KEYS = ["42", "7", "1000", "order-17", "ключ", 'quote"d', "back\\slash", "tab\tkey",
        "ctl\x01", "vt\x0b", "us\x1f", "del\x7f", "smile \U0001F600", "", "k" * 300,
        "line\u2028sep", "null", '{"k": 1}', "é"] + [str(i) for i in range(100, 121)]

PAYLOADS = [
    "{}",
    '{"a": 1}',
    '{"b": [1, 2.50, 1e3, -0, true, null], "a": {"z": "é", "y": "\\u0001\\n\\"q\\""}}',
    '"just a string"',
    "[1, 2, 3]",
    "null",
    "true",
    "123.4500",
    '{"emoji": "\U0001F600", "esc": "\\u00e9", "slash": "a/b", "bs": "\\\\"}',
    None,  # SQL NULL: a tombstone
    "BIG",  # replaced by a ~6 KB incompressible object (TOASTed)
]


def workload(run):
    """[(rollback, [(id, aggregatetype, aggregateid, type, payload), ...]), ...]
    in commit order, deterministic for a run."""
    big = json.dumps({"data": "".join(uuid.uuid5(uuid.NAMESPACE_OID, "%d" % i).hex
                                      for i in range(190))})
    topics = ["cmpa_" + run, "cmpb_" + run]
    seq = [0]

    def row(key, payload_i, topic_i=None, typ="CompatEvent"):
        seq[0] += 1
        p = PAYLOADS[payload_i % len(PAYLOADS)]
        return (str(uuid.uuid5(uuid.NAMESPACE_URL, "pgoutbox-compat/%s/%d" % (run, seq[0]))),
                topics[seq[0] % 2 if topic_i is None else topic_i], key,
                typ, big if p == "BIG" else p)

    txns = []
    for i in range(len(KEYS) + 5):  # one-row transactions, every key and payload
        txns.append((False, [row(KEYS[i % len(KEYS)], i)]))
    txns.append((False, [row(KEYS[i % 7], i) for i in range(30)]))  # one many-row transaction
    txns.append((True, [row("rolled-back", 1), row("42", 2)]))  # never sent
    for i in range(60):  # the same few keys again: per-key order across transactions
        txns.append((False, [row(KEYS[i % 5], i + 3, typ="Type%d" % (i % 3))]))
    return txns


def write_workload(conn, txns):
    for rollback, rows in txns:
        with conn.cursor() as cur:
            for r in rows:
                cur.execute("INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) "
                            "VALUES (%s, %s, %s, %s, %s::jsonb)", r)
        if rollback:
            conn.rollback()
        else:
            conn.commit()


def touch_workload(conn, txns):
    """Updates and deletes of outbox rows reach neither (the publication
    publishes inserts; pgoutbox ignores the rest, so would the router)."""
    with conn.cursor() as cur:
        cur.execute("UPDATE outbox SET type = 'Updated' WHERE id = %s", (txns[0][1][0][0],))
        cur.execute("DELETE FROM outbox WHERE id = %s", (txns[1][1][0][0],))
    conn.commit()


# ----------------------------------------------------------------- kafka

def create_topics(brokers, topics, partitions):
    ac = AdminClient({"bootstrap.servers": brokers})
    for _, f in ac.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1)
                                  for t in topics]).items():
        f.result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = ac.list_topics(timeout=10)
        if all(t in md.topics and len(md.topics[t].partitions) == partitions and
               all(p.leader >= 0 for p in md.topics[t].partitions.values()) for t in topics):
            return
        time.sleep(0.1)
    raise RuntimeError("topics without leaders: %s" % topics)


def high_watermarks(brokers, topics, partitions):
    c = Consumer({"bootstrap.servers": brokers, "group.id": "compat-wm"})
    try:
        hw = {}
        for t in topics:
            for p in range(partitions):
                for attempt in range(100):
                    try:
                        hw[(t, p)] = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                        break
                    except KafkaException:
                        if attempt == 99:
                            raise
                        time.sleep(0.1)
        return hw
    finally:
        c.close()


def wait_total(brokers, topics, partitions, want, timeout, alive):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = sum(high_watermarks(brokers, topics, partitions).values())
        if n >= want:
            return n
        if not alive():
            break
        time.sleep(0.2)
    return sum(high_watermarks(brokers, topics, partitions).values())


def read_all(brokers, ends):
    """Every message of the topic-partitions in ends ({(topic, p): end offset}),
    from offset 0: {(topic, p): [message dict in offset order]}."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": "compat-read",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(t, p, 0) for (t, p), end in ends.items() if end > 0])
    got = {tp: [] for tp in ends}
    want = sum(ends.values())
    n = 0
    deadline = time.monotonic() + 60
    try:
        while n < want and time.monotonic() < deadline:
            for m in c.consume(num_messages=1000, timeout=0.5):
                if m.error():
                    continue
                tp = (m.topic(), m.partition())
                if m.offset() >= ends.get(tp, 0):
                    continue
                got[tp].append({"topic": m.topic(), "partition": m.partition(),
                                "offset": m.offset(), "key": m.key(), "value": m.value(),
                                "headers": [(k, v) for k, v in (m.headers() or [])],
                                "timestamp": m.timestamp()[1]})
                n += 1
    finally:
        c.close()
    if n < want:
        raise RuntimeError("read %d of %d messages back" % (n, want))
    for tp in got:
        got[tp].sort(key=lambda x: x["offset"])
    return got


# ------------------------------------------------------------- compare

def header(msg, name):
    """The first header called name (bytes), or None."""
    for k, v in msg["headers"]:
        if k == name:
            return v
    return None


def event_id(msg):
    """The id header as text (the event id), or None."""
    v = header(msg, "id")
    return None if v is None else v.decode("utf-8", "replace")


class Field:
    """One row of the table for one setup: how many events agreed."""

    def __init__(self, name, expect, note=""):
        self.name, self.expect, self.note = name, expect, note  # expect: "same" or "differ"
        self.same = self.differ = 0
        self.examples = []

    def add(self, equal, example=None):
        if equal:
            self.same += 1
        else:
            self.differ += 1
            if example is not None and len(self.examples) < 3:
                self.examples.append(example)

    def ok(self):
        if self.expect == "same":
            return self.differ == 0
        if self.expect == "differ":
            return self.same == 0
        return True  # "any": reported, not judged

    def cell(self):
        n = self.same + self.differ
        if n == 0:
            return "–"
        if self.differ == 0:
            s = "identical (%d/%d)" % (self.same, n)
        elif self.same == 0:
            s = "differs (%d/%d)" % (self.differ, n)
        else:
            s = "differs for %d of %d" % (self.differ, n)
        if not self.ok():
            s = "**UNEXPECTED: %s**" % s
        elif self.differ and self.expect != "same":
            s += ", expected"
        return s + (" — " + self.note if self.note else "")

    def as_dict(self):
        return {"field": self.name, "expect": self.expect, "same": self.same,
                "differ": self.differ, "ok": self.ok(), "note": self.note,
                "examples": [repr(e) for e in self.examples], "cell": self.cell()}


def in_commit_order(ids, commit_order):
    """True if ids (of one key, in Kafka order) are all known events, each
    once, in commit order."""
    rank = {eid: i for i, eid in enumerate(commit_order)}
    r = [rank.get(e) for e in ids]
    return None not in r and len(set(r)) == len(r) and r == sorted(r)


def key_order(msgs):
    """{(topic, key): [id, ...]} in partition offset order."""
    seqs = {}
    for m in sorted(msgs, key=lambda x: (x["partition"], x["offset"])):
        seqs.setdefault((m["topic"], m["key"]), []).append(event_id(m))
    return seqs


def compare(pgo, other, setup, commit_order, commit_ms, partitions):
    """Fields of `other` (a Debezium setup's messages) against pgoutbox's.
    setup: "string", "json", or "variant" (pgo is then pgoutbox run with
    --json-arg arguments, other the JsonConverter setup: the key and the
    partition must then be the same, the value is reported)."""
    json_conv = setup == "json"
    by_id = {event_id(m): m for m in other}
    F = {}

    def f(name, expect, note=""):
        F[name] = F.get(name) or Field(name, expect, note)
        return F[name]

    f("events", "same", "matched by the id header")
    f("topic", "same")
    if json_conv:
        f("key", "differ", "the key quoted as a JSON string (\"42\" → \"\\\"42\\\"\")")
        f("key = JsonConverter's quoting of pgoutbox's key", "same")
        f("value", "any", "each value quoted as a JSON string; a NULL payload is the JSON "
                          "null (4 bytes), not a tombstone")
        f("value = JsonConverter's quoting of pgoutbox's value", "same")
        f("partition", "any", "murmur2 of other key bytes")
        f("partition = murmur2(quoted key)", "same")
    elif setup == "variant":
        f("key", "same")
        f("value", "any", "the same only if the arguments quote the value too")
        f("partition", "same")
    else:
        f("key", "same")
        f("value", "same")
        f("partition", "same")
    f("header id", "same")
    f("header type", "same")
    f("other headers", "same", "besides Debezium's own %s*" % CONTEXT_HEADER_PREFIX)
    f("timestamp", "any", "Debezium: its processing time; pgoutbox: the commit time")
    for m in pgo:
        eid = event_id(m)
        d = by_id.get(eid)
        F["events"].add(d is not None, eid)
        if d is None:
            continue
        F["topic"].add(m["topic"] == d["topic"], (m["topic"], d["topic"]))
        F["key"].add(m["key"] == d["key"], (m["key"], d["key"]))
        F["value"].add(m["value"] == d["value"], (m["value"], d["value"]))
        F["partition"].add(m["partition"] == d["partition"], (m["key"], m["partition"], d["partition"]))
        if json_conv:
            F["key = JsonConverter's quoting of pgoutbox's key"].add(
                key_json_string(m["key"]) == d["key"], (m["key"], d["key"]))
            F["value = JsonConverter's quoting of pgoutbox's value"].add(
                value_json_string(m["value"]) == d["value"], (m["value"], d["value"]))
            F["partition = murmur2(quoted key)"].add(
                d["key"] is not None and kafka_partition(d["key"], partitions) == d["partition"],
                (d["key"], d["partition"]))
        F["header id"].add(header(m, "id") == header(d, "id"))
        F["header type"].add(header(m, "type") == header(d, "type"),
                             (header(m, "type"), header(d, "type")))
        mo = sorted((k, v) for k, v in m["headers"] if k not in ("id", "type"))
        do = sorted((k, v) for k, v in d["headers"]
                    if k not in ("id", "type") and not k.startswith(CONTEXT_HEADER_PREFIX))
        F["other headers"].add(mo == do, (mo, do))
        F["timestamp"].add(m["timestamp"] == d["timestamp"], None)
    extra = set(by_id) - {event_id(m) for m in pgo}
    for eid in extra:
        F["events"].add(False, ("only in Debezium", eid))
    # per-key order: commit order on both sides
    fo = f("per-key order = commit order", "same")
    for (t, k), ids in key_order(other).items():
        fo.add(in_commit_order(ids, commit_order), (t, k, ids[:5]))
    ctx = sorted({k for d in other for k, _ in d["headers"] if k.startswith(CONTEXT_HEADER_PREFIX)})
    deltas = [d["timestamp"] - commit_ms[event_id(d)] for d in other
              if commit_ms.get(event_id(d)) is not None]
    info = {"debezium_only_headers": ctx,
            "timestamp_minus_commit_ms": [min(deltas), max(deltas)] if deltas else None}
    return F, info


def check_pgoutbox(pgo, commit_order, commit_ms, partitions):
    """pgoutbox on its own: the contract's timestamp, partitioning and order."""
    F = {}
    F["timestamp = commit time"] = Field("timestamp = commit time", "same")
    F["partition = murmur2(key)"] = Field("partition = murmur2(key)", "same",
                                          "as the Java client's default partitioner")
    F["per-key order = commit order"] = Field("per-key order = commit order", "same")
    for m in pgo:
        c = commit_ms.get(event_id(m))
        if c is not None:
            F["timestamp = commit time"].add(m["timestamp"] == int(c), (m["timestamp"], c))
        if m["key"] is not None:
            F["partition = murmur2(key)"].add(
                kafka_partition(m["key"], partitions) == m["partition"], (m["key"], m["partition"]))
    for (t, k), ids in key_order(pgo).items():
        F["per-key order = commit order"].add(in_commit_order(ids, commit_order), (t, k, ids[:5]))
    return F


# ------------------------------------------------------------------ run

def run(o):
    """The whole comparison; returns a JSON-able result (see table())."""
    pg = os.environ["PGOUTBOX_PG"]
    brokers = os.environ["PGOUTBOX_BROKERS"]
    shutil.rmtree(o.out, ignore_errors=True)
    os.makedirs(o.out)
    conn = psycopg2.connect(pg)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (PUBLICATION,))
    if not cur.fetchone():
        cur.execute("CREATE PUBLICATION %s FOR TABLE public.outbox WITH (publish = 'insert')"
                    % PUBLICATION)
    slots = {"pgoutbox": "cmp_pgo", "string": "cmp_dbz_string", "json": "cmp_dbz_json"}
    if o.json_args:
        slots["variant"] = "cmp_pgo_variant"
    for s in slots.values():
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = %s", (s,))
        cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (s,))
    txns = workload(o.run)
    topics = sorted({r[1] for _, rows in txns for r in rows})
    create_topics(brokers, ["outbox.event." + t for t in topics], o.partitions)
    conn.autocommit = False
    write_workload(conn, txns)
    cur = conn.cursor()
    cur.execute("SELECT id::text, extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000 "
                "FROM outbox WHERE aggregatetype = ANY(%s)", (topics,))
    commit_ms = {i: float(t) // 1 for i, t in cur.fetchall()}
    conn.commit()
    touch_workload(conn, txns)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT pg_current_wal_insert_lsn()")
    endpos = cur.fetchone()[0]
    committed = [r for rb, rows in txns if not rb for r in rows]
    n = len(committed)
    commit_order = [r[0] for r in committed]
    ktopics = ["outbox.event." + t for t in topics]
    log("%d events in %d transactions (and a rolled-back one) to %s, end %s"
        % (n, sum(1 for rb, _ in txns if not rb), ", ".join(ktopics), endpos))

    # pgoutbox, to the end position
    with open(os.path.join(o.out, "pgoutbox.log"), "w") as lf:
        rc = subprocess.run([o.pgoutbox, "-d", pg, "-b", brokers, "--slot", slots["pgoutbox"],
                             "--endpos", endpos] + o.x, stderr=lf, timeout=300).returncode
    if rc != 0:
        raise RuntimeError("pgoutbox exited %d (%s)" % (rc, lf.name))
    bounds = [high_watermarks(brokers, ktopics, o.partitions)]
    if sum(bounds[0].values()) != n:
        raise RuntimeError("pgoutbox wrote %d messages, expected %d" % (sum(bounds[0].values()), n))
    pgp = psycopg2.extensions.parse_dsn(pg)
    for i, (setup, _) in enumerate(SETUPS):
        dz = debezium.Connect(o.libs, os.path.join(o.out, "debezium-" + setup), pgp, brokers,
                              slots[setup], PUBLICATION, "compat_" + setup, config="tuned",
                              converter=setup)
        log("Debezium with %s" % setup)
        dz.start()
        try:
            got = wait_total(brokers, ktopics, o.partitions, (i + 2) * n, 240, dz.alive)
            time.sleep(1.0)  # anything beyond the expected count shows up as extra
        finally:
            dz.stop()
        if got < (i + 2) * n:
            raise RuntimeError("Debezium (%s) wrote %d of %d messages (%s):\n%s"
                               % (setup, got - (i + 1) * n, n, dz.log_path, dz.log_tail()))
        bounds.append(high_watermarks(brokers, ktopics, o.partitions))
    names = ["pgoutbox"] + [s for s, _ in SETUPS]
    if o.json_args:
        with open(os.path.join(o.out, "pgoutbox-variant.log"), "w") as lf:
            rc = subprocess.run([o.pgoutbox, "-d", pg, "-b", brokers, "--slot", slots["variant"],
                                 "--endpos", endpos] + o.x + o.json_args, stderr=lf,
                                timeout=300).returncode
        if rc != 0:
            raise RuntimeError("pgoutbox %s exited %d (%s)" % (" ".join(o.json_args), rc, lf.name))
        bounds.append(high_watermarks(brokers, ktopics, o.partitions))
        names.append("variant")
    msgs = read_all(brokers, bounds[-1])
    parts = {k: [] for k in names}
    for tp, ms in msgs.items():
        for m in ms:
            k = 0
            while k < len(bounds) - 1 and m["offset"] >= bounds[k][tp]:
                k += 1
            parts[names[k]].append(m)
    for c in slots.values():
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = %s AND NOT active", (c,))
    conn.close()

    pgo = parts["pgoutbox"]
    result = {"events": n, "topics": ktopics, "partitions": o.partitions, "endpos": endpos,
              "pgoutbox_alone": [x.as_dict() for x in
                                 check_pgoutbox(pgo, commit_order, commit_ms, o.partitions).values()],
              "setups": {}, "unexpected": []}
    for x in result["pgoutbox_alone"]:
        if not x["ok"]:
            result["unexpected"].append("pgoutbox: %s: %s" % (x["field"], x["cell"]))
    pairs = [(setup, title, pgo, parts[setup]) for setup, title in SETUPS]
    if o.json_args:
        pairs.append(("variant", "JsonConverter vs pgoutbox %s" % " ".join(o.json_args),
                      parts["variant"], parts["json"]))
    for setup, title, mine, theirs in pairs:
        F, info = compare(mine, theirs, setup, commit_order, commit_ms, o.partitions)
        result["setups"][setup] = {"title": title, "fields": [x.as_dict() for x in F.values()],
                                   "messages": len(parts[setup])}
        result["setups"][setup].update(info)
        for x in F.values():
            if not x.ok():
                result["unexpected"].append("%s: %s: %s; e.g. %s"
                                            % (title, x.name, x.cell(), "; ".join(map(repr, x.examples))))
    return result


def table(r):
    """The result as markdown lines: one row per field, one column per setup."""
    L = ["%d events (%s, %d partitions each); pgoutbox with its defaults, Debezium 'tuned'"
         % (r["events"], ", ".join(r["topics"]), r["partitions"]), ""]
    cols = list(r["setups"])
    L.append("| field | %s |" % " | ".join(
        r["setups"][s]["title"] if s == "variant" else "Debezium, " + r["setups"][s]["title"]
        for s in cols))
    L.append("|---|" + "---|" * len(cols))
    names = []
    for s in cols:
        for x in r["setups"][s]["fields"]:
            if x["field"] not in names:
                names.append(x["field"])
    for name in names:
        cells = []
        for s in cols:
            x = next((y for y in r["setups"][s]["fields"] if y["field"] == name), None)
            cells.append(x["cell"] if x else "–")
        L.append("| %s | %s |" % (name, " | ".join(cells)))
    L.append("| Debezium's own headers | %s |" % " | ".join(
        ", ".join(r["setups"][s]["debezium_only_headers"]) or "none" for s in cols))
    L.append("| Debezium timestamp − commit time (ms) | %s |" % " | ".join(
        "%s to %s" % tuple("{:,.0f}".format(v) for v in r["setups"][s]["timestamp_minus_commit_ms"])
        if r["setups"][s]["timestamp_minus_commit_ms"] else "–" for s in cols))
    L.append("")
    L.append("pgoutbox alone: " + "; ".join("%s: %s" % (x["field"], x["cell"])
                                              for x in r["pgoutbox_alone"]))
    L.append("")
    if r["unexpected"]:
        L.append("UNEXPECTED differences:")
        L.extend("- " + u for u in r["unexpected"])
    else:
        L.append("every difference is an expected one")
    return L


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pgoutbox", required=True)
    ap.add_argument("--libs", help="Debezium jars (default: scripts/bench/peer/resolve.sh)")
    ap.add_argument("--out", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "pgoutbox-compat"))
    ap.add_argument("--json", help="also write the result as JSON to this file")
    ap.add_argument("-X", dest="xprops", action="append", default=[])
    ap.add_argument("--json-arg", dest="json_args", action="append", default=[],
                    help="a pgoutbox argument meant to reproduce the JsonConverter setup (repeat "
                         "for several, e.g. --json-arg=--key-format --json-arg=json-string): "
                         "pgoutbox runs a second time with them and is compared with Debezium's "
                         "JsonConverter output, key and partition expected identical")
    a = ap.parse_args()
    try:
        libs = a.libs or subprocess.run([os.path.join(HERE, "resolve.sh")], check=True,
                                        capture_output=True, text=True).stdout.strip()
        r = run(Options(a.pgoutbox, libs, a.out, sum((["-X", x] for x in a.xprops), []),
                        json_args=a.json_args))
    except Exception as e:  # noqa: BLE001 — any failure to run is exit 2
        log("error: could not compare: %s" % e)
        return 2
    print("\n".join(table(r)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    return 1 if r["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())
