#!/usr/bin/python3
"""bench.py — the scenarios of scripts/bench/run.sh (run that, not this).

Expects a running bench stack (PGOUTBOX_PG, PGOUTBOX_BROKERS, PGOUTBOX_STATE
in the environment), a release build of pgoutbox and the floor clients
(scripts/bench/floor, meson -Dbench=true). Writes OUT/results.json (plus
logs and raw per-run files in OUT/) for report.py.

Scenarios:
  drain     N events pre-written behind one slot per reader, all created at
            the same LSN; pg_recvlogical, the floor client (eager and
            napping: the best of them is the ceiling), pgoutbox (--endpos)
            and, with --peer debezium, Debezium drain one each.
  latency   pgbench -R at steady rates, synchronous_commit=on; consumer.py
            measures commit-to-consumer latency from the stamp in the
            payload; pgoutbox (then Debezium, tuned and at its defaults)
            runs throughout, and floor_latency on its own slot measures the
            floor during the same load.
  polling   the same load and consumer against polling_relay.py.
  sources   three databases, each with an outbox: one pgoutbox with three
            [source] sections against three single-source pgoutbox
            processes, draining the same backlog and under pgbench load on
            all three at once.
  compat    peer/compat.py: the same workload through pgoutbox and Debezium
            (StringConverter and JsonConverter), compared per event.
  eos       delivery = exactly-once against at-least-once: the drain
            (200 B, every workload) and the latency runs (read_committed
            consumer) with the two as alternating variants; the targets:
            drain >= 0.8x at-least-once, p99 at 2,000/s within
            at-least-once's p99 + 10 ms.
  profile   callgrind of pgoutbox draining 20k single-event transactions.
"""
import argparse
import copy
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import psycopg2
import psycopg2.extensions
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peer"))
import debezium  # noqa: E402  (scripts/bench/peer/debezium.py)
import report  # noqa: E402  (scripts/bench/report.py: what a run's figures are judged on)
REPO = os.path.dirname(os.path.dirname(HERE))
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
CLK = os.sysconf("SC_CLK_TCK")
PARTITIONS = 3
RUN = "%x" % (int(time.time()) % 0x1000000)  # topic suffix: several runs may share a broker

PG = os.environ["PGOUTBOX_PG"]
BROKERS = os.environ["PGOUTBOX_BROKERS"]
STATE = os.environ["PGOUTBOX_STATE"]


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ /proc

def proc_cpu(pid):
    """utime+stime of pid in seconds, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def proc_mem(pid):
    """(VmRSS kB, VmHWM kB) of pid, or (None, None)."""
    rss = hwm = None
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


class Sampler(threading.Thread):
    """Samples a process's CPU and peak RSS every 50 ms until stopped or gone
    (a walsender exits with its client: the last sample before that counts)."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.cpu0 = proc_cpu(pid) or 0.0
        self.cpu = self.cpu0
        self.hwm = 0
        self._halt = threading.Event()
        self.start()

    def run(self):
        while not self._halt.is_set():
            c = proc_cpu(self.pid)
            if c is None:
                return
            self.cpu = c
            _, h = proc_mem(self.pid)
            if h:
                self.hwm = max(self.hwm, h)
            self._halt.wait(0.05)

    def finish(self):
        self._halt.set()
        self.join()
        return self.cpu - self.cpu0, self.hwm


def kafka_pid():
    with open(os.path.join(STATE, "kafka", "pid")) as f:
        return int(f.read().strip())


def run_measured(cmd, stdout=None, stderr=None, env=None):
    """Run cmd; return (exit code, wall s, cpu s, max RSS kB) from wait4."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss


def wait_measured(p, timeout=None):
    """Reap p with its rusage; with timeout (s), kill it if it has not exited by then."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, 0 if deadline is None else os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            p.kill()
            deadline = None
            log("pid %d did not exit within %d s: killed" % (p.pid, timeout))
        else:
            time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru.ru_utime + ru.ru_stime, ru.ru_maxrss


# ---------------------------------------------------------------- database

def db(dsn=None):
    c = psycopg2.connect(dsn or PG)
    c.autocommit = True
    return c


def q(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


def q1(conn, sql, args=None):
    r = q(conn, sql, args)
    return r[0][0] if r else None


def exited(pid):
    """Whether the child pid has exited, without reaping it (wait_measured()
    still gets its rusage)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def slot_pid(conn, slot, timeout=30, clients=()):
    """The walsender streaming slot, once there is one; None after timeout,
    or as soon as every child pid of clients has exited (a drain shorter
    than the first look must not be timed as lasting the whole timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = q1(conn, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        if pid:
            return pid
        if clients and all(exited(c) for c in clients):
            return None
        time.sleep(0.01)
    return None


def create_slot(conn, name):
    q(conn, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (name,))
    return q1(conn, "SELECT lsn FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))


def drop_slot(conn, name):
    for _ in range(100):
        try:
            q(conn, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (name,))
            return
        except psycopg2.errors.ObjectInUse:
            time.sleep(0.1)


def dsn_of(dbname):
    """The stack's conninfo for another database of the same cluster."""
    return psycopg2.extensions.make_dsn(PG, dbname=dbname)


def setup_db(conn, dsn=None):
    """The outbox table and publication (scripts/setup-slot.sh), the payload
    bodies and the polling relay's table in the database of conn (at dsn)."""
    subprocess.run([os.path.join(REPO, "scripts", "setup-slot.sh"), "-d", dsn or PG, "--create-table",
                    "--slot", "bench_setup"], check=True, stdout=subprocess.DEVNULL)
    drop_slot(conn, "bench_setup")
    # The drain must measure decoding of the outbox inserts, not of an
    # autovacuum that happens to run meanwhile.
    q(conn, "ALTER TABLE outbox SET (autovacuum_enabled = off)")
    # 1000 incompressible payload bodies (hex), for ~200 B and ~4 KB JSON
    # values: {"seq": n, "data": "<hex>"}. pglz does not compress them, so
    # the 4 KB values are TOASTed out of line as real payloads of that size
    # would be.
    q(conn, """
        CREATE TABLE IF NOT EXISTS bench_payload (k int PRIMARY KEY, small text, big text);
        TRUNCATE bench_payload;
        INSERT INTO bench_payload
        SELECT k, substr(h, 1, 172), substr(h, 1, 4066)
        FROM (SELECT k, (SELECT string_agg(md5(random()::text || k || g), '')
                         FROM generate_series(1, 128) g) AS h
              FROM generate_series(0, 999) k) s;
        CREATE TABLE IF NOT EXISTS outbox_poll (
            seq bigserial PRIMARY KEY, id uuid NOT NULL, aggregatetype text NOT NULL,
            aggregateid text NOT NULL, type text NOT NULL, payload jsonb, sent_at timestamptz);
        CREATE INDEX IF NOT EXISTS outbox_poll_unsent ON outbox_poll (seq) WHERE sent_at IS NULL;
    """)


def write_events(conn, agg, n, per_txn, size):
    """Pre-write n events (synchronous_commit=off): per_txn events per
    transaction, or all of them in one transaction when per_txn >= n."""
    col = "small" if size == "200B" else "big"
    q(conn, "SET synchronous_commit = off")
    row = ("SELECT gen_random_uuid(), '{agg}', ((i + g) % 1000)::text, 'BenchEvent', "
           "jsonb_build_object('seq', i + g, 'data', p.{col}) "
           "FROM generate_series(1, {k}) g JOIN bench_payload p ON p.k = (i + g) % 1000")
    ins = "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) "
    if per_txn >= n:
        q(conn, "DO $$ DECLARE i bigint := 0; BEGIN " + ins
          + row.format(agg=agg, col=col, k=n) + "; END $$")
    else:
        q(conn, "DO $$ DECLARE i bigint := 0; BEGIN WHILE i < %d LOOP " % n + ins
          + row.format(agg=agg, col=col, k=per_txn) + "; COMMIT; i := i + %d; END LOOP; END $$" % per_txn)
    q(conn, "RESET synchronous_commit")
    return q1(conn, "SELECT pg_current_wal_insert_lsn()")


# ------------------------------------------------------------------- kafka

def create_topic(topic):
    ac = AdminClient({"bootstrap.servers": BROKERS})
    fs = ac.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    for _, f in fs.items():
        try:
            f.result(30)
        except Exception as e:  # already exists is fine
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise
    # wait for leaders
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = ac.list_topics(topic, timeout=10)
        t = md.topics.get(topic)
        if t and t.error is None and len(t.partitions) == PARTITIONS and \
                all(p.leader >= 0 for p in t.partitions.values()):
            return
        time.sleep(0.1)
    raise RuntimeError("topic %s has no leaders" % topic)


def topic_count(topic):
    c = Consumer({"bootstrap.servers": BROKERS, "group.id": "bench-count"})
    n = 0
    for p in range(PARTITIONS):
        for attempt in range(50):
            try:
                lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                break
            except Exception:  # a new topic's leader may not be known yet
                if attempt == 49:
                    raise
                time.sleep(0.2)
        n += hi - lo
    c.close()
    return n


class Watermarks:
    """Messages in a topic (sum of high - low watermarks over its partitions),
    through one client kept open: cheap enough to ask every 20 ms."""

    def __init__(self, topic):
        self.topic = topic
        self.c = Consumer({"bootstrap.servers": BROKERS, "group.id": "bench-watch"})

    def count(self):
        """The count, asking again (for up to 30 s) while a new topic's
        leaders are not known to this client yet."""
        deadline = time.monotonic() + 30
        while True:
            try:
                n = 0
                for p in range(PARTITIONS):
                    lo, hi = self.c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
                    n += hi - lo
                return n
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self):
        self.c.close()


class KafkaWatch(threading.Thread):
    """Watches a topic from time.monotonic() t0 on: when its first new message
    appeared (t_first) and when `want` new messages were there (t_done).
    Asks every 20 ms until the first, then every 50 ms."""

    def __init__(self, topic, want, on_done=None):
        super().__init__(daemon=True)
        self.wm = Watermarks(topic)
        self.base = self.wm.count()
        self.want = want
        self.t0 = time.monotonic()
        self.t_first = self.t_done = None
        self.seen = 0
        self.on_done = on_done  # called (in this thread) once want is reached
        self._halt = threading.Event()
        self.start()

    def run(self):
        while not self._halt.is_set():
            n = self.wm.count() - self.base
            now = time.monotonic()
            self.seen = n
            if n > 0 and self.t_first is None:
                self.t_first = now
            if n >= self.want:
                self.t_done = now
                if self.on_done:
                    self.on_done()
                return
            self._halt.wait(0.02 if self.t_first is None else 0.05)

    def wait(self, timeout):
        self.join(timeout)
        return self.t_done is not None

    def finish(self):
        self._halt.set()
        self.join()
        self.wm.close()
        return {"start_to_first_s": None if self.t_first is None else self.t_first - self.t0,
                "start_to_last_s": None if self.t_done is None else self.t_done - self.t0,
                "seen": self.seen}


def pg_params():
    """The stack's PostgreSQL as a dict (host, port, user, dbname, ...)."""
    return psycopg2.extensions.parse_dsn(PG)


def create_publication(conn, name):
    """A publication of the outbox table's inserts, as scripts/setup-slot.sh
    creates pgoutbox's: the peer's own."""
    q(conn, "DROP PUBLICATION IF EXISTS %s" % name)
    q(conn, "CREATE PUBLICATION %s FOR TABLE public.outbox WITH (publish = 'insert')" % name)


# ------------------------------------------------------------------ drain

def drain_recvlogical(args, out, conn, slot, endpos, tag):
    """pg_recvlogical drains slot to endpos: walsender + pgoutput, no Kafka."""
    cmd = ["pg_recvlogical", "-d", PG, "--slot", slot, "--start", "--no-loop",
           "--endpos", endpos, "-o", "proto_version=%d" % args.proto,
           "-o", "publication_names=pgoutbox", "-o", "messages=true", "-f", "/dev/null"]
    with open(os.path.join(out, "recvlogical-%s.log" % tag), "w") as lf:
        p = subprocess.Popen(cmd, stderr=lf)
        t0 = time.monotonic()
        wpid = slot_pid(conn, slot, clients=[p.pid])
        ws = Sampler(wpid) if wpid else None
        rc, cpu, _ = wait_measured(p)
        wall = time.monotonic() - t0
    ws_cpu, _ = ws.finish() if ws else (None, None)
    if rc != 0:
        raise RuntimeError("pg_recvlogical exited %d (%s)" % (rc, lf.name))
    return {"s": wall, "cpu_s": cpu, "walsender_cpu_s": ws_cpu}


def drain_floor(args, out, conn, slot, endpos, tag, mode):
    """floor_drain (eager or nap) drains slot to endpos: walsender + pgoutput
    + a client that touches nothing past the CopyData envelope."""
    cmd = [args.floor_drain, "-d", PG, "-s", slot, "-e", endpos, "-m", mode,
           "-p", str(args.proto)]
    with open(os.path.join(out, "floor-drain-%s-%s.log" % (mode, tag)), "w") as lf:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=lf, text=True)
        t0 = time.monotonic()
        wpid = slot_pid(conn, slot, clients=[p.pid])
        ws = Sampler(wpid) if wpid else None
        report = p.stdout.read()
        rc, cpu, _ = wait_measured(p)
        wall = time.monotonic() - t0
    ws_cpu, _ = ws.finish() if ws else (None, None)
    if rc != 0:
        raise RuntimeError("floor_drain exited %d (%s)" % (rc, lf.name))
    r = json.loads(report)
    return {"s": wall, "cpu_s": cpu, "walsender_cpu_s": ws_cpu, "events": r["events"],
            "stream_s": r["stream_s"], "naps": r["naps"], "polls": r["polls"],
            "copydata": r["copydata"]}


def drain_pgoutbox(args, out, conn, slot, endpos, tag, kpid, topic, xargs=()):
    """pgoutbox (with the -X options xargs besides the run's) drains slot
    into Kafka until the slot is confirmed at endpos."""
    cmd = [args.pgoutbox, "-d", PG, "-b", BROKERS, "--slot", slot, "--endpos", endpos,
           "--log-level", "log"] + args.x + list(xargs)
    k0 = proc_cpu(kpid)
    watch = KafkaWatch(topic, 1)  # start to first event in Kafka
    with open(os.path.join(out, "pgoutbox-drain-%s.log" % tag), "w") as lf:
        watch.t0 = time.monotonic()
        p = subprocess.Popen(cmd, stderr=lf)
        t0 = time.monotonic()
        ps = Sampler(p.pid)
        wpid = slot_pid(conn, slot, clients=[p.pid])
        ws = Sampler(wpid) if wpid else None
        rc, cpu, _ = wait_measured(p)
        wall = time.monotonic() - t0
    ws_cpu, _ = ws.finish() if ws else (None, None)
    # VmHWM sampled every 50 ms: ru_maxrss would include the RSS of the
    # forked Python process before exec.
    _, rss = ps.finish()
    k1 = proc_cpu(kpid)
    w = watch.finish()
    if rc != 0:
        raise RuntimeError("pgoutbox exited %d (%s)" % (rc, lf.name))
    confirmed = q1(conn, "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots WHERE slot_name = %s",
                   (endpos, slot))
    return {"s": wall, "cpu_s": cpu, "maxrss_kb": rss, "walsender_cpu_s": ws_cpu,
            "broker_cpu_s": k1 - k0, "confirmed": bool(confirmed),
            "start_to_first_s": w["start_to_first_s"]}


def drain_debezium(args, out, conn, slot, n, topic, tag, config, kpid):
    """Debezium (Kafka Connect standalone, outbox event router) drains slot
    into Kafka: from the JVM's start until n new events are in the topic
    (Debezium confirms the slot only at its offset flushes, so the end is
    seen in Kafka). CPU and RSS of the JVM, sampled up to that moment."""
    wd = os.path.join(out, "debezium-drain-%s-%s" % (tag, config))
    shutil.rmtree(wd, ignore_errors=True)
    dz = debezium.Connect(args.debezium_libs, wd, pg_params(), BROKERS, slot, DBZ_PUBLICATION,
                          "bench_dbz", config=config)
    at_done = {}

    def done():
        at_done["cpu"] = proc_cpu(dz.pid)
        at_done["rss"], at_done["hwm"] = proc_mem(dz.pid)
        at_done["broker_cpu"] = proc_cpu(kpid)
    k0 = proc_cpu(kpid)
    watch = KafkaWatch(topic, n, on_done=done)
    try:
        dz.start()
        watch.t0 = dz.t_start
        ps = Sampler(dz.pid)
        wpid = slot_pid(conn, slot, timeout=180)
        ws = Sampler(wpid) if wpid else None
        ok = watch.wait(max(300, n / 500))
        ws_cpu, _ = ws.finish() if ws else (None, None)
        _, hwm = ps.finish()
    finally:
        rc, cpu_total, _ = dz.stop()
    w = watch.finish()
    if not ok:
        raise RuntimeError("Debezium (%s) delivered %d of %d events (log: %s):\n%s"
                           % (config, w["seen"], n, dz.log_path, dz.log_tail()))
    first, last = w["start_to_first_s"], w["start_to_last_s"]
    return {"s": last, "start_to_first_s": first,
            "stream_s": last - first if first is not None else None,
            "cpu_s": at_done["cpu"] - ps.cpu0, "cpu_total_s": cpu_total,
            "maxrss_kb": max(hwm, at_done.get("hwm") or 0), "walsender_cpu_s": ws_cpu,
            "broker_cpu_s": at_done["broker_cpu"] - k0, "in_kafka": w["seen"], "exit": rc}


def div(a, b):
    return a / b if a is not None and b else None


def reader_name(args, who):
    if who in args.drain_variants:
        return "pgoutbox " + args.drain_variants[who][0]
    return READER_NAMES.get(who, "Debezium " + who[4:])


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


DBZ_PUBLICATION = "bench_dbz"
READER_NAMES = {"recv": "pg_recvlogical", "eager": "floor (eager)", "nap": "floor (napping)",
                "pgo": "pgoutbox"}
MAX_SLOTS = 30  # of the stack's max_replication_slots = 32: room for a floor and a spare


def parse_variants(spec):
    """--variants 'linger.ms=5;linger.ms=0,batch.num.messages=100': property
    sets separated by ';', the properties of a set by ',' (a comma not
    followed by NAME= stays in the value); 'defaults' (or nothing) is the
    set without extra properties. [(name, ["-X", prop, ...])], each name
    once."""
    res = []
    for part in spec.split(";"):
        part = part.strip()
        if part in ("", "defaults"):
            name, xargs = "defaults", []
        else:
            props = [x.strip() for x in re.split(r",(?=\s*[\w.-]+=)", part) if x.strip()]
            for x in props:
                if not re.match(r"^[\w.-]+=", x):
                    raise ValueError("not a PROPERTY=VALUE: %r" % x)
            name, xargs = ", ".join(props), sum((["-X", x] for x in props), [])
        if name not in (v[0] for v in res):
            res.append((name, xargs))
    return res


def scen_drain(args, out, res):
    """Each workload is written once behind one slot per reader and round,
    all created at the same LSN; every reader then drains its own slot, the
    order rotating from round to round (the first reader of fresh WAL may pay
    for what the later ones find cached), and the medians are reported.
    Readers: pg_recvlogical, floor_drain eager and napping (the best of the
    two is the ceiling), pgoutbox and, for the workloads in --peer-workloads,
    Debezium in each configuration of --peer-configs."""
    conn = db()
    n_txn = args.drain_events
    n_big = args.drain_big
    workloads = [
        ("1 event/txn", 1, n_txn), ("10 events/txn", 10, n_txn), ("1 txn", 0, n_big),
    ]
    rows = []
    kpid = kafka_pid()
    if args.peer == "debezium":
        create_publication(conn, DBZ_PUBLICATION)
    plan = [(size, w) for size in args.sizes.split(",") for w in workloads
            if {1: "t1", 10: "t10"}.get(w[1], "big") in args.workloads.split(",")]
    if not args.no_warmup:
        # Not recorded: warms the broker's JIT, the producer id and the caches,
        # so that the first measured workload does not pay for a cold JVM.
        plan.insert(0, ("200B", ("warm-up", 1, min(50000, n_txn)), True))
    for item in plan:
        size, (name, per_txn, n) = item[0], item[1]
        warm = len(item) > 2
        rounds = 1 if warm else args.repeat
        per = per_txn or n
        wl = {1: "t1", 10: "t10"}.get(per_txn, "big")
        tag = "%s_%s" % (wl, size.lower())
        if warm:
            tag = "warmup"
        readers = ["recv", "eager", "nap", "pgo"] + list(args.drain_variants)
        if warm:
            readers = ["pgo"]
        elif args.peer == "debezium" and "%s_%s" % (wl, size.lower()) in args.peer_workloads:
            readers += ["dbz-" + c for c in args.peer_configs]
        if len(readers) * rounds > MAX_SLOTS:
            raise RuntimeError("drain %s: %d readers x %d rounds need more than %d slots at once: "
                               "fewer --drain-variants or --repeat" % (name, len(readers), rounds, MAX_SLOTS))
        agg = "drain_%s_%s" % (tag, RUN)
        topic = "outbox.event." + agg
        log("drain %s, %s: writing %d events (%d round(s); readers %s)"
            % (name, size, n, rounds, ", ".join(readers)))
        create_topic(topic)
        slots = [{r: "bench_%s%d_%s" % (re.sub(r"\W", "", r), i, tag) for r in readers}
                 for i in range(rounds)]
        for sl in slots:
            for s_ in sl.values():
                create_slot(conn, s_)
        t0 = time.monotonic()
        endpos = write_events(conn, agg, n, per, size)
        t_write = time.monotonic() - t0
        wal = q1(conn, "SELECT pg_wal_lsn_diff(%s, confirmed_flush_lsn) FROM pg_replication_slots WHERE slot_name = %s",
                 (endpos, slots[0]["pgo"]))
        runs = []
        for i, sl in enumerate(slots):
            rtag = "%s-%d" % (tag, i + 1)
            k = i % len(readers)
            order = readers[k:] + readers[:k]
            run = {"order": order, "debezium": {}, "variants": {}}
            for who in order:
                log("drain %s, %s, round %d: %s to %s" % (name, size, i + 1, reader_name(args, who), endpos))
                if who == "recv":
                    r = drain_recvlogical(args, out, conn, sl[who], endpos, rtag)
                    run.update({"recv_s": r["s"], "recv_cpu_s": r["cpu_s"],
                                "recv_walsender_cpu_s": r["walsender_cpu_s"]})
                elif who in ("eager", "nap"):
                    r = drain_floor(args, out, conn, sl[who], endpos, rtag, who)
                    if r["events"] != n:
                        raise RuntimeError("floor_drain (%s) counted %d inserts of %d"
                                           % (who, r["events"], n))
                    run.update({"floor_%s_s" % who: r["s"], "floor_%s_cpu_s" % who: r["cpu_s"],
                                "floor_%s_walsender_cpu_s" % who: r["walsender_cpu_s"],
                                "floor_%s_polls" % who: r["polls"]})
                elif who == "pgo":
                    kafka0 = topic_count(topic)
                    r = drain_pgoutbox(args, out, conn, sl[who], endpos, rtag, kpid, topic)
                    run.update({"pgoutbox_s": r["s"], "pgoutbox_cpu_s": r["cpu_s"],
                                "pgoutbox_maxrss_kb": r["maxrss_kb"],
                                "walsender_cpu_s": r["walsender_cpu_s"],
                                "broker_cpu_s": r["broker_cpu_s"], "confirmed": r["confirmed"],
                                "in_kafka": topic_count(topic) - kafka0,
                                "pgoutbox_start_to_first_s": r["start_to_first_s"]})
                elif who in args.drain_variants:
                    vname, xargs = args.drain_variants[who]
                    kafka0 = topic_count(topic)
                    r = drain_pgoutbox(args, out, conn, sl[who], endpos, "%s-%s" % (rtag, who), kpid,
                                       topic, xargs)
                    r["in_kafka"] = topic_count(topic) - kafka0
                    run["variants"][vname] = r
                else:
                    cfg = who[4:]
                    run["debezium"][cfg] = drain_debezium(args, out, conn, sl[who], n, topic,
                                                          rtag, cfg, kpid)
            if not warm:
                run["ceiling_s"] = min(run["floor_eager_s"], run["floor_nap_s"])
                run["ratio"] = run["recv_s"] / run["pgoutbox_s"]
                run["ceiling_ratio"] = run["ceiling_s"] / run["pgoutbox_s"]
                for vname, v in run["variants"].items():
                    v["ceiling_ratio"] = run["ceiling_s"] / v["s"]
                log("drain %s, %s, round %d: pg_recvlogical %.0f/s, floor eager %.0f/s, napping %.0f/s, "
                    "pgoutbox %.0f/s (%.2f of the ceiling, %.2f of pg_recvlogical), %d in Kafka%s"
                    % (name, size, i + 1, n / run["recv_s"], n / run["floor_eager_s"],
                       n / run["floor_nap_s"], n / run["pgoutbox_s"], run["ceiling_ratio"],
                       run["ratio"], run["in_kafka"],
                       "".join("; pgoutbox %s %.0f/s (%.2f of the ceiling)"
                               % (v, n / d["s"], d["ceiling_ratio"])
                               for v, d in run["variants"].items()) +
                       "".join("; Debezium %s %.0f/s (first event after %.1f s)"
                               % (c, n / d["s"], d["start_to_first_s"] or -1)
                               for c, d in run["debezium"].items())))
            runs.append(run)
            for s_ in sl.values():
                drop_slot(conn, s_)
        if warm:
            q(conn, "TRUNCATE outbox")
            continue
        rec = {"workload": name, "size": size, "events": n, "per_txn": per,
               "write_s": t_write, "wal_bytes": float(wal), "endpos": endpos, "runs": runs}
        for k in ("recv_s", "pgoutbox_s", "recv_cpu_s", "recv_walsender_cpu_s", "pgoutbox_cpu_s",
                  "pgoutbox_maxrss_kb", "walsender_cpu_s", "broker_cpu_s",
                  "floor_eager_s", "floor_nap_s", "floor_eager_cpu_s", "floor_nap_cpu_s",
                  "floor_eager_walsender_cpu_s", "floor_nap_walsender_cpu_s", "ceiling_s",
                  "pgoutbox_start_to_first_s"):
            rec[k] = median(x.get(k) for x in runs)
        for k in ("ratio", "ceiling_ratio"):
            rec[k] = median(x[k] for x in runs)
            rec[k + "_min"] = min(x[k] for x in runs)
            rec[k + "_max"] = max(x[k] for x in runs)
        rec["recv_eps"] = n / rec["recv_s"]
        rec["pgoutbox_eps"] = n / rec["pgoutbox_s"]
        rec["floor_eager_eps"] = n / rec["floor_eager_s"]
        rec["floor_nap_eps"] = n / rec["floor_nap_s"]
        rec["ceiling_eps"] = n / rec["ceiling_s"]
        rec["confirmed"] = all(x["confirmed"] for x in runs)
        rec["in_kafka"] = min(x["in_kafka"] for x in runs)
        dz = {}
        for cfg in sorted({c for x in runs for c in x["debezium"]}):
            ds = [x["debezium"][cfg] for x in runs if cfg in x["debezium"]]
            d = {k: median(y.get(k) for y in ds) for k in ds[0] if k != "exit"}
            d["eps"] = n / d["s"]
            d["stream_eps"] = n / d["stream_s"] if d.get("stream_s") else None
            d["in_kafka"] = min(y["in_kafka"] for y in ds)
            d["rounds"] = len(ds)
            dz[cfg] = d
        rec["debezium"] = dz
        if args.drain_variants:
            # Side by side: pgoutbox with its defaults and with each -X set,
            # each in every round on a slot of its own.
            vs = {"defaults": {"s": rec["pgoutbox_s"], "cpu_s": rec["pgoutbox_cpu_s"],
                               "maxrss_kb": rec["pgoutbox_maxrss_kb"],
                               "walsender_cpu_s": rec["walsender_cpu_s"],
                               "ceiling_ratio": rec["ceiling_ratio"],
                               "ceiling_ratio_min": rec["ceiling_ratio_min"],
                               "ceiling_ratio_max": rec["ceiling_ratio_max"],
                               "confirmed": rec["confirmed"], "in_kafka": rec["in_kafka"],
                               "xprops": []}}
            for who, (vname, xargs) in args.drain_variants.items():
                ds = [x["variants"][vname] for x in runs if vname in x["variants"]]
                vs[vname] = {k: median(y[k] for y in ds)
                             for k in ("s", "cpu_s", "maxrss_kb", "walsender_cpu_s", "ceiling_ratio")}
                vs[vname].update({"ceiling_ratio_min": min(y["ceiling_ratio"] for y in ds),
                                  "ceiling_ratio_max": max(y["ceiling_ratio"] for y in ds),
                                  "confirmed": all(y["confirmed"] for y in ds),
                                  "in_kafka": min(y["in_kafka"] for y in ds),
                                  "xprops": xargs[1::2]})
            for v in vs.values():
                v["eps"] = n / v["s"]
                v["eps_vs_defaults"] = rec["pgoutbox_s"] / v["s"]
                v["cpu_vs_defaults"] = div(v["cpu_s"], rec["pgoutbox_cpu_s"])
            rec["variants"] = vs
        log("drain %s, %s: pgoutbox median %.2f of the ceiling (%.2f-%.2f), %.2f of pg_recvlogical, "
            "over %d rounds" % (name, size, rec["ceiling_ratio"], rec["ceiling_ratio_min"],
                                rec["ceiling_ratio_max"], rec["ratio"], len(runs)))
        rows.append(rec)
        q(conn, "TRUNCATE outbox")
        q(conn, "CHECKPOINT")
        res["drain"] = rows
        save(out, res)
    conn.close()


# --------------------------------------------------------- steady load

# ~200 B: {"ts": <stamp>, "seq": 0, "data": "<172 hex digits>"}. The stamp is
# clock_timestamp() in microseconds since the Unix epoch, taken by the INSERT
# of a one-statement transaction: the commit time less the rest of that
# statement and its commit (measured per rate: stamp_offset()). Every system
# is timed from it by consumer.py, Debezium's Kafka timestamp being its own
# processing time.
PAYLOAD_200 = ("""('{"ts": ' || (extract(epoch FROM clock_timestamp()) * 1000000)::bigint || """
               """', "seq": 0, "data": "%s"}')::jsonb""" % ("0123456789abcdef" * 11)[:172])


def pgbench(out, name, table, agg, rate, secs, dsn=None):
    """Run pgbench at rate inserts/s (one row per transaction, sync commit)
    against the database of dsn (default: the stack's); returns (processed,
    tps, pgbench's mean latency ms, schedule lag ms)."""
    script = os.path.join(out, "pgbench-%s.sql" % name)
    with open(script, "w") as f:
        f.write("\\set k random(1, 1000)\n")
        f.write("INSERT INTO %s (id, aggregatetype, aggregateid, type, payload) "
                "VALUES (gen_random_uuid(), '%s', :k, 'BenchEvent', %s);\n" % (table, agg, PAYLOAD_200))
    clients = 4 if rate <= 2000 else 8
    env = dict(os.environ, PGOPTIONS="-c synchronous_commit=on")
    cmd = ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-R", str(rate),
           "-T", str(secs), "-f", script, dsn or PG]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    with open(os.path.join(out, "pgbench-%s.log" % name), "w") as f:
        f.write(" ".join(cmd) + "\n" + r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError("pgbench failed: %s" % r.stderr[-500:])
    m = re.search(r"number of transactions actually processed: (\d+)", r.stdout)
    tps = re.search(r"tps = ([\d.]+) \(without initial", r.stdout)
    lat = re.search(r"latency average = ([\d.]+) ms", r.stdout)
    lag = re.search(r"rate limit schedule lag: avg ([\d.]+)", r.stdout)
    return (int(m.group(1)), float(tps.group(1)), float(lat.group(1)) if lat else None,
            float(lag.group(1)) if lag else None)


def warm_load(out, aggs, rate, secs, label):
    """Unmeasured load: pgbench at rate for secs on each database of aggs
    ({dsn or None for the stack's: aggregate type}) at once, each into a
    topic of its own, until all of it is in Kafka."""
    for a in aggs.values():
        create_topic("outbox.event." + a)
    ns = run_threads([lambda dsn=dsn, a=a: pgbench(out, a, "outbox", a, rate, secs, dsn)
                      for dsn, a in aggs.items()])
    for a, n in zip(aggs.values(), ns):
        if wait_in_kafka("outbox.event." + a, n[0], 120) is None:
            raise RuntimeError("%s did not deliver the warm-up load of %s" % (label, a))


def start_consumer(out, topic, raw=False):
    """consumer.py on topic, once it is ready; with raw, it also writes every
    latency (µs, one a line) to latency-TOPIC.raw: finish_consumer() returns
    its path as "raw_file"."""
    ef = os.path.join(out, "expect-%s" % topic)
    rf = os.path.join(out, "latency-%s.json" % topic)
    for f in (ef, rf, rf[:-5] + ".raw"):
        if os.path.exists(f):
            os.unlink(f)
    cmd = [PY, os.path.join(HERE, "consumer.py"), "--brokers", BROKERS,
           "--topic", topic, "--expect-file", ef, "--out", rf]
    if raw:
        cmd += ["--raw", rf[:-5] + ".raw"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError("consumer did not start")
    return p, ef, rf


def finish_consumer(p, ef, rf, count):
    with open(ef + ".tmp", "w") as f:
        f.write("%d\n" % count)
    os.rename(ef + ".tmp", ef)
    _, cpu, _ = wait_measured(p, 300)
    with open(rf) as f:
        st = json.load(f)
    st["consumer_cpu_s"] = cpu  # the instrument's own share of the two cores
    if os.path.exists(rf[:-5] + ".raw"):
        st["raw_file"] = rf[:-5] + ".raw"
    return st


class LagSampler(threading.Thread):
    """Every 200 ms: how far the walsender is behind the WAL (bytes not yet
    sent) and how far pgoutbox is behind the walsender (sent, not yet
    confirmed as flushed): which stage holds a backlog."""

    def __init__(self, slot):
        super().__init__(daemon=True)
        self.slot = slot
        self.unsent = []
        self.unconfirmed = []
        self._halt = threading.Event()
        self.start()

    def run(self):
        conn = db()
        while not self._halt.is_set():
            r = q(conn, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), r.sent_lsn), "
                        "pg_wal_lsn_diff(r.sent_lsn, r.flush_lsn) FROM pg_stat_replication r "
                        "JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = %s",
                  (self.slot,))
            if r and r[0][0] is not None:
                self.unsent.append(float(r[0][0]))
                self.unconfirmed.append(float(r[0][1] or 0))
            self._halt.wait(0.2)
        conn.close()

    def finish(self):
        self._halt.set()
        self.join()
        pick = lambda v, qq: sorted(v)[int(qq * (len(v) - 1))] if v else None
        return {"unsent_kb_p50": (pick(self.unsent, 0.5) or 0) / 1024,
                "unsent_kb_max": (max(self.unsent) if self.unsent else 0) / 1024,
                "unconfirmed_kb_p50": (pick(self.unconfirmed, 0.5) or 0) / 1024,
                "unconfirmed_kb_max": (max(self.unconfirmed) if self.unconfirmed else 0) / 1024}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# pgoutbox's latency histograms on --metrics, by the prefix of their figures:
# commit to Kafka's ack (per event), commit to reading the Begin (per
# transaction with events: PostgreSQL's part), produce to ack (per event:
# Kafka's part).
HISTOGRAMS = (("ack", "pgoutbox_commit_to_ack_seconds"),
              ("recv", "pgoutbox_commit_to_receive_seconds"),
              ("pta", "pgoutbox_produce_to_ack_seconds"))
_BUCKET = re.compile(r'^(pgoutbox_\w+_seconds)_bucket\{(.*)\} (\d+)$', re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape_histograms(port):
    """pgoutbox's latency histograms: {prefix: {source: {le: cumulative
    count}}} for the prefixes of HISTOGRAMS that /metrics has. Every sample
    carries source, slot and database labels (a build that had none counts
    as source "default"); a histogram missing from an older build is left
    out, but commit-to-ack must be there."""
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()
    names = {name: prefix for prefix, name in HISTOGRAMS}
    h = {}
    for m in _BUCKET.finditer(body):
        prefix = names.get(m.group(1))
        if prefix is None:
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        le = labels.get("le")
        if le is None:
            continue
        src = h.setdefault(prefix, {}).setdefault(labels.get("source", "default"), {})
        src[float("inf") if le == "+Inf" else float(le)] = int(m.group(3))
    if "ack" not in h:
        raise RuntimeError("no pgoutbox_commit_to_ack_seconds in pgoutbox's /metrics")
    return h


def histogram_sum(hs, prefix, sources=None):
    """One histogram ({le: count}) adding up prefix's series of several
    scrapes (one per process) over sources (None: every source)."""
    tot = {}
    for h in hs:
        for src, b in (h.get(prefix) or {}).items():
            if sources is None or src in sources:
                for le, c in b.items():
                    tot[le] = tot.get(le, 0) + c
    return tot


def histogram_quantiles(h0, h1, prefix="ack", qs=(0.5, 0.99, 0.999)):
    """Quantiles (ms) of the observations counted between two scrapes of one
    histogram ({le: cumulative count}), interpolated linearly inside a
    bucket as Prometheus' histogram_quantile() does; also the upper bound of
    the bucket each falls in. Keys: PREFIX_events, PREFIX_p50_ms,
    PREFIX_p50_le_ms, ..."""
    les = sorted(h1)
    cum = [h1[le] - h0.get(le, 0) for le in les]
    total = cum[-1] if cum else 0
    res = {prefix + "_events": total}
    for qq in qs:
        key = "%s_p%s" % (prefix, ("%g" % (qq * 100)).replace(".", ""))
        res[key + "_ms"] = res[key + "_le_ms"] = None
        if total == 0:
            continue
        rank = qq * total
        for i, le in enumerate(les):
            if cum[i] >= rank:
                lo = les[i - 1] if i else 0.0
                below = cum[i - 1] if i else 0
                if le == float("inf"):
                    val = lo
                else:
                    val = lo + (le - lo) * (rank - below) / max(cum[i] - below, 1)
                res[key + "_ms"] = val * 1000
                res[key + "_le_ms"] = le * 1000 if le != float("inf") else None
                break
    return res


def breakdown(h0s, h1s, sources=None):
    """Every histogram of HISTOGRAMS between two sets of scrapes (one scrape
    per process), over sources: the ack_*, recv_* and pta_* figures."""
    res = {}
    for prefix, _ in HISTOGRAMS:
        h1 = histogram_sum(h1s, prefix, sources)
        if h1:
            res.update(histogram_quantiles(histogram_sum(h0s, prefix, sources), h1, prefix))
    return res


def wait_breakdown(ports, h0s, n, sources=None, timeout=10):
    """breakdown() once the processes on ports have counted n acknowledged
    events since h0s (bounded: the consumer may see the last events before
    pgoutbox has served their delivery reports)."""
    deadline = time.monotonic() + timeout
    while True:
        r = breakdown(h0s, [scrape_histograms(p) for p in ports], sources)
        if r["ack_events"] >= n or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def stamp_offset(conn, table, agg):
    """How long before its commit each event's payload stamp was taken
    (commit time from track_commit_timestamp): p50/p99 in ms. Latencies
    from the stamp include this; the floor's (from the commit time) do not."""
    r = q(conn, "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY d) FROM ("
                "SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000 "
                "- (payload->>'ts')::numeric / 1000 AS d FROM " + table +
                " WHERE aggregatetype = %s AND payload ? 'ts') s", (agg,))
    v = r[0][0] if r else None
    return {"stamp_offset_p50_ms": float(v[0]) if v else None,
            "stamp_offset_p99_ms": float(v[1]) if v else None}


def quantiles_ms(lat_us, qs=(0.5, 0.99, 0.999)):
    """Nearest-rank quantiles (ms) of a list of latencies in µs."""
    s = sorted(lat_us)
    res = {"count": len(s)}
    for qq in qs:
        key = "p%s_ms" % ("%g" % (qq * 100)).replace(".", "")
        if not s:
            res[key] = None
            continue
        k = max(0, min(len(s) - 1, int(-(-qq * len(s) // 1)) - 1))
        res[key] = s[k] / 1000.0
    res["max_ms"] = s[-1] / 1000.0 if s else None
    return res


class LatencyFloor:
    """floor_latency on a slot of its own for one rate: created just before
    the load, so that it holds nothing older; it stamps every transaction
    committed after it started."""

    def __init__(self, args, out, conn, tag):
        self.conn, self.slot = conn, "bench_floor_lat"
        create_slot(conn, self.slot)
        self.file = os.path.join(out, "floor-latency-%s.txt" % tag)
        self.log = open(os.path.join(out, "floor-latency-%s.log" % tag), "w")
        self.p = subprocess.Popen([args.floor_latency, "-d", PG, "-s", self.slot, "-o", self.file,
                                   "-p", str(args.proto)], stdout=subprocess.PIPE,
                                  stderr=self.log, text=True)
        if self.p.stdout.readline().strip() != "ready":
            self.p.kill()
            self.p.wait()
            raise RuntimeError("floor_latency did not start (%s)" % self.log.name)
        self.wpid = slot_pid(conn, self.slot)
        self.w0 = proc_cpu(self.wpid) if self.wpid else None

    def finish(self):
        w1 = proc_cpu(self.wpid) if self.wpid else None
        self.p.send_signal(signal.SIGTERM)
        summary = self.p.stdout.read()
        rc, cpu, _ = wait_measured(self.p, 60)
        self.log.close()
        drop_slot(self.conn, self.slot)
        if rc != 0:
            raise RuntimeError("floor_latency exited %d (%s)" % (rc, self.log.name))
        with open(self.file) as f:
            lat = [int(line.split()[1]) for line in f if line.strip()]
        r = {"floor_" + k: v for k, v in quantiles_ms(lat).items()}
        r["floor_cpu_s"] = cpu
        r["floor_walsender_cpu_s"] = (w1 - self.w0) if w1 is not None and self.w0 is not None else None
        r["floor_summary"] = json.loads(summary) if summary.strip() else None
        return r


def wait_in_kafka(topic, want, timeout):
    """Poll until topic holds want messages; returns seconds waited or None."""
    wm = Watermarks(topic)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            if wm.count() >= want:
                return time.monotonic() - t0
            time.sleep(0.02)
        return None
    finally:
        wm.close()


def latency_systems(args):
    """The processes of the latency scenario, in order: (system, variant,
    -X arguments, rates, round, warm-up seconds, warm-up rate).

    Without --variants each pgoutbox variant (then each Debezium
    configuration) is one process streaming through all its rates, after
    --warm-secs of unmeasured load. With --variants the pgoutbox variants
    alternate rate by rate: each (variant, rate, round) is a process of its
    own on a fresh slot, the order rotating from one rate and round to the
    next so that a drift in the machine's load favours none of them; the
    first process gets the --warm-secs warm-up (the broker's), every one
    --variant-warm-secs at its own rate (its producer's)."""
    systems = []
    if args.interleave:
        vs = args.variants
        for rnd in range(args.variant_rounds):
            for i, rate in enumerate(args.lat_rates):
                k = (i + rnd) % len(vs)
                for vname, xargs, _ in vs[k:] + vs[:k]:
                    if not systems and args.warm_secs > args.variant_warm_secs:
                        warm = (args.warm_secs, 2000)  # the first also warms the broker
                    else:
                        warm = (args.variant_warm_secs, rate)
                    systems.append(("pgoutbox", vname, xargs, [rate], rnd + 1) + warm)
    else:
        systems = [("pgoutbox", vname, xargs, rates, 1, args.warm_secs, 2000)
                   for vname, xargs, rates in args.variants]
    if args.peer == "debezium":
        systems += [("debezium", cfg, None, rates, 1, args.warm_secs, 2000)
                    for cfg, rates in args.peer_latency]
    return systems


def scen_latency(args, out, res):
    """Per system (pgoutbox in each variant, then Debezium in each
    configuration; see latency_systems() for the order and the processes),
    per rate a fresh topic, a warm-up event waited for in Kafka, then
    pgbench's load, consumer.py on the topic and floor_latency on its own
    slot; pgoutbox's histograms (commit to receive, produce to ack, commit
    to ack) scraped before and after."""
    conn = db()
    kpid = kafka_pid()
    rows = []
    systems = latency_systems(args)
    if args.peer == "debezium":
        create_publication(conn, DBZ_PUBLICATION)
    for system, vname, xargs, rates, rnd, warm_secs, warm_rate in systems:
        slot = "bench_lat"
        create_slot(conn, slot)
        vtag = re.sub(r"\W+", "_", "%s_%s" % (system, vname))
        if args.interleave and system == "pgoutbox":
            vtag += "_%d_r%d" % (rates[0], rnd)
        label = vname if system == "pgoutbox" else "Debezium " + vname
        if args.interleave and args.variant_rounds > 1 and system == "pgoutbox":
            label += " (round %d)" % rnd
        # start to first event: one event written as the process starts
        agg0 = "lat_%s_start_%s" % (vtag, RUN)
        create_topic("outbox.event." + agg0)
        dz = mport = None
        t0 = time.monotonic()
        if system == "pgoutbox":
            mport = free_port()
            cmd = [args.pgoutbox, "-d", PG, "-b", BROKERS, "--slot", slot,
                   "--metrics", "127.0.0.1:%d" % mport] + args.x + xargs
            lf = open(os.path.join(out, "pgoutbox-latency-%s.log" % vtag), "w")
            p = subprocess.Popen(cmd, stderr=lf)
            pid = p.pid
        else:
            wd = os.path.join(out, "debezium-latency-%s" % vtag)
            shutil.rmtree(wd, ignore_errors=True)
            dz = debezium.Connect(args.debezium_libs, wd, pg_params(), BROKERS, slot,
                                  DBZ_PUBLICATION, "bench_dbz", config=vname)
            dz.start()
            t0 = dz.t_start
            pid = dz.pid
        try:
            q(conn, "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) "
                    "VALUES (gen_random_uuid(), %s, 'warmup', 'Warmup', '{}')", (agg0,))
            waited = wait_in_kafka("outbox.event." + agg0, 1, 180)
            if waited is None:
                raise RuntimeError("%s: the first event did not reach Kafka within 180 s%s"
                                   % (label, (":\n" + dz.log_tail()) if dz else ""))
            start_to_first = time.monotonic() - t0
            ps = Sampler(pid)
            wpid = slot_pid(conn, slot)
            if not wpid:
                raise RuntimeError("%s did not start streaming" % label)
            log("latency %s: first event in Kafka %.2f s after the start" % (label, start_to_first))
            if warm_secs:
                # Not measured: a JVM compiles its hot paths during its first
                # seconds of load; a peer in production has long done so.
                # pgoutbox gets the same, for symmetry.
                log("latency %s: warm-up load, %d/s for %d s (not measured)" % (label, warm_rate, warm_secs))
                warm_load(out, {None: "lat_%s_warm_%s" % (vtag, RUN)}, warm_rate, warm_secs, label)
            for rate in rates:
                agg = "lat_%s_%d_%s" % (vtag, rate, RUN)
                topic = "outbox.event." + agg
                create_topic(topic)
                # warm the producer's metadata for the new topic (not measured)
                q(conn, "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) "
                        "VALUES (gen_random_uuid(), %s, 'warmup', 'Warmup', '{}')", (agg,))
                if wait_in_kafka(topic, 1, 60) is None:
                    raise RuntimeError("%s: the warm-up event did not reach Kafka" % label)
                time.sleep(0.5)
                c, ef, rf = start_consumer(out, topic)
                fl = LatencyFloor(args, out, conn, "%s_%d" % (vtag, rate)) if args.floor else None
                cpu0, w0, k0 = proc_cpu(pid), proc_cpu(wpid), proc_cpu(kpid)
                h0 = scrape_histograms(mport) if mport else None
                log("latency %s: %d/s for %d s" % (label, rate, args.secs))
                lags = LagSampler(slot)
                n, tps, pglat, lag = pgbench(out, agg, "outbox", agg, rate, args.secs)
                lagres = lags.finish()
                st = finish_consumer(c, ef, rf, n)  # the consumer skips the warm-up event
                flres = fl.finish() if fl else {}
                ack = wait_breakdown([mport], [h0], n) if mport else {}
                cpu1, w1, k1 = proc_cpu(pid), proc_cpu(wpid), proc_cpu(kpid)
                rss, hwm = proc_mem(pid)
                rec = {"system": system, "variant": vname if system == "pgoutbox" else label,
                       "round": rnd, "xprops": (xargs or [])[1::2], "rate": rate, "secs": args.secs,
                       "events": n, "tps": tps,
                       "pgbench_latency_ms": pglat, "pgbench_lag_ms": lag,
                       "cpu_s": cpu1 - cpu0, "walsender_cpu_s": w1 - w0,
                       "broker_cpu_s": k1 - k0, "rss_kb": rss, "hwm_kb": hwm}
                rec.update(lagres)
                rec.update(ack)
                rec.update(flres)
                rec.update(stamp_offset(conn, "outbox", agg))
                rec.update({k: st[k] for k in ("received", "p50_ms", "p90_ms", "p99_ms", "p999_ms",
                                               "max_ms", "mean_ms", "consumer_cpu_s",
                                               "kafka_ts_p50_ms", "kafka_ts_p99_ms")})
                for k in ("p50", "p99", "p999"):
                    fv = rec.get("floor_%s_ms" % k)
                    rec["floor_ratio_" + k] = rec[k + "_ms"] / fv if fv and rec[k + "_ms"] else None
                log("latency %s @%d/s: achieved %.0f/s, p50 %.1f p99 %.1f p99.9 %.1f max %.1f ms; "
                    "floor p50 %.2f p99 %.2f p99.9 %.2f ms (%s txns); stamp %.3f ms before commit (p50); "
                    "%d/%d received, RSS %d kB; CPU s: %s %.2f walsender %.2f broker %.2f consumer %.2f%s"
                    % (label, rate, tps, st["p50_ms"], st["p99_ms"], st["p999_ms"], st["max_ms"],
                       rec.get("floor_p50_ms") or -1, rec.get("floor_p99_ms") or -1,
                       rec.get("floor_p999_ms") or -1, rec.get("floor_count", "-"),
                       rec["stamp_offset_p50_ms"] or -1, st["received"], n, rss, system,
                       cpu1 - cpu0, w1 - w0, k1 - k0, st["consumer_cpu_s"],
                       "; pgoutbox's histograms p50/p99 ms: commit-to-receive %s, produce-to-ack %s, "
                       "commit-to-ack %s" % tuple(
                           "%.2f/%.2f" % (ack.get(k + "_p50_ms") or -1, ack.get(k + "_p99_ms") or -1)
                           for k in ("recv", "pta", "ack"))
                       if ack else ""))
                rows.append(rec)
                res["latency"] = rows
                save(out, res)
            _, maxrss = proc_mem(pid)  # VmHWM just before stopping
            maxrss = max(maxrss or 0, ps.hwm)
            ps.finish()
        finally:
            if dz:
                rc, cpu, _ = dz.stop()
            else:
                p.send_signal(signal.SIGTERM)
                rc, cpu, _ = wait_measured(p, 60)
                lf.close()
        res.setdefault("latency_runs", []).append(
            {"system": system, "variant": vname if system == "pgoutbox" else label, "round": rnd,
             "rates": rates, "exit": rc, "cpu_s": cpu, "maxrss_kb": maxrss,
             "start_to_first_s": start_to_first})
        drop_slot(conn, slot)
        q(conn, "TRUNCATE outbox")
        save(out, res)
    conn.close()


def table_stats(conn, table):
    q(conn, "SELECT pg_stat_clear_snapshot()")
    r = q(conn, "SELECT coalesce(seq_scan,0), coalesce(seq_tup_read,0), coalesce(idx_scan,0), "
                "coalesce(idx_tup_fetch,0), n_tup_ins, n_tup_upd, n_tup_hot_upd "
                "FROM pg_stat_user_tables WHERE relid = %s::regclass", (table,))[0]
    return dict(zip(("seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch", "n_tup_ins",
                     "n_tup_upd", "n_tup_hot_upd"), map(int, r)))


def scen_polling(args, out, res):
    conn = db()
    kpid = kafka_pid()
    rows = []
    for interval in args.poll_intervals:
        for rate in args.poll_rates:
            iname = "%dms" % round(interval * 1000)
            agg = "poll_%s_%d_%s" % (iname, rate, RUN)
            topic = "outbox.event." + agg
            create_topic(topic)
            q(conn, "TRUNCATE outbox_poll RESTART IDENTITY")
            time.sleep(1.1)  # let the stats of earlier sessions arrive
            s0 = table_stats(conn, "outbox_poll")
            c, ef, rf = start_consumer(out, topic)
            relay = subprocess.Popen([PY, os.path.join(HERE, "polling_relay.py"), "--dsn", PG,
                                      "--brokers", BROKERS, "--interval", str(interval)],
                                     stdout=subprocess.PIPE, text=True,
                                     stderr=open(os.path.join(out, "relay-%s.log" % agg), "w"))
            bpid = int(relay.stdout.readline().split()[1])
            # warm the relay's producer (id, metadata of the new topic): not measured
            q(conn, "INSERT INTO outbox_poll (id, aggregatetype, aggregateid, type, payload) "
                    "VALUES (gen_random_uuid(), %s, 'warmup', 'Warmup', '{}')", (agg,))
            deadline = time.monotonic() + 30
            while q1(conn, "SELECT count(*) FROM outbox_poll WHERE sent_at IS NULL") and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            b0, k0 = proc_cpu(bpid), proc_cpu(kpid)
            log("polling %s: %d/s for %d s" % (iname, rate, args.secs))
            n, tps, pglat, lag = pgbench(out, agg, "outbox_poll", agg, rate, args.secs)
            st = finish_consumer(c, ef, rf, n)
            deadline = time.monotonic() + 60
            while q1(conn, "SELECT count(*) FROM outbox_poll WHERE sent_at IS NULL") and \
                    time.monotonic() < deadline:
                time.sleep(0.1)
            b1, k1 = proc_cpu(bpid), proc_cpu(kpid)
            relay.send_signal(signal.SIGTERM)
            rc, rcpu, _ = wait_measured(relay)
            time.sleep(1.1)
            s1 = table_stats(conn, "outbox_poll")
            d = {k: s1[k] - s0[k] for k in s0}
            rec = {"interval_ms": round(interval * 1000), "rate": rate, "secs": args.secs,
                   "events": n, "tps": tps, "pgbench_latency_ms": pglat, "pgbench_lag_ms": lag,
                   "relay_cpu_s": rcpu, "backend_cpu_s": b1 - b0,
                   "broker_cpu_s": k1 - k0, "table": d}
            rec.update({k: st[k] for k in ("received", "p50_ms", "p90_ms", "p99_ms", "p999_ms",
                                           "max_ms", "mean_ms", "consumer_cpu_s")})
            log("polling %s @%d/s: achieved %.0f/s, p50 %.1f p99 %.1f max %.1f ms, %d/%d received; "
                "relay %.2f s CPU, backend %.2f s CPU, %d rows read by index, %d updated"
                % (iname, rate, tps, st["p50_ms"], st["p99_ms"], st["max_ms"], st["received"], n,
                   rcpu, b1 - b0, d["idx_tup_fetch"] + d["seq_tup_read"], d["n_tup_upd"]))
            rows.append(rec)
            res["polling"] = rows
            save(out, res)
    conn.close()


# ---------------------------------------------------------------- sources

# Three databases of the stack's cluster, each with its own outbox,
# publication and slots: one pgoutbox with a [source] section for each
# ("one") against one single-source pgoutbox per database ("three").
SRC_DBS = ("bench_src1", "bench_src2", "bench_src3")
SRC_VARIANTS = ("one", "three")


def setup_sources(conn):
    """The databases of the sources scenario, each set up as the stack's
    own (outbox table, publication pgoutbox, payload bodies)."""
    for d in SRC_DBS:
        if not q1(conn, "SELECT 1 FROM pg_database WHERE datname = %s", (d,)):
            q(conn, "CREATE DATABASE %s" % d)
        c = db(dsn_of(d))
        setup_db(c, dsn_of(d))
        c.close()


def start_sources(args, out, variant, slots, tag, endpos=None, metrics=False):
    """Start the variant on slots ({database: slot}): one pgoutbox whose -c
    file has a [source sN] section per database, or one pgoutbox per
    database, all at once. Returns [(Popen, log file, metrics port or None,
    {source label: database})]."""
    procs = []
    if variant == "one":
        conf = os.path.join(out, "sources-%s.conf" % tag)
        port = free_port() if metrics else None
        lines = ["brokers = %s" % BROKERS, "log_level = log"]
        if port:
            lines.append("metrics = 127.0.0.1:%d" % port)
        for i, d in enumerate(SRC_DBS):
            lines += ["", "[source s%d]" % (i + 1), "conninfo = %s" % dsn_of(d), "slot = %s" % slots[d]]
            if endpos:
                lines.append("endpos = %s" % endpos)
        with open(conf, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        lf = open(os.path.join(out, "pgoutbox-sources-%s.log" % tag), "w")
        p = subprocess.Popen([args.pgoutbox, "-c", conf] + args.x, stderr=lf)
        procs.append((p, lf, port, {"s%d" % (i + 1): d for i, d in enumerate(SRC_DBS)}))
        return procs
    for i, d in enumerate(SRC_DBS):
        port = free_port() if metrics else None
        cmd = [args.pgoutbox, "-d", dsn_of(d), "-b", BROKERS, "--slot", slots[d], "--log-level", "log"]
        if endpos:
            cmd += ["--endpos", endpos]
        if port:
            cmd += ["--metrics", "127.0.0.1:%d" % port]
        lf = open(os.path.join(out, "pgoutbox-sources-%s-%d.log" % (tag, i + 1)), "w")
        procs.append((subprocess.Popen(cmd + args.x, stderr=lf), lf, port, {"default": d}))
    return procs


def stop_sources(procs):
    """SIGTERM every process of a variant; [(exit code, CPU s)]."""
    for p, _, _, _ in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    res = []
    for p, lf, _, _ in procs:
        rc, cpu, _ = wait_measured(p, 60)
        lf.close()
        res.append((rc, cpu))
    return res


def drain_sources(args, out, conn, variant, slots, endpos, tag, kpid):
    """The variant drains the three slots to endpos (every slot confirmed
    there): wall clock from the first start to the last exit, CPU (wait4)
    and peak RSS (VmHWM, sampled) of each process, their walsenders' CPU."""
    k0 = proc_cpu(kpid)
    t0 = time.monotonic()
    procs = start_sources(args, out, variant, slots, tag, endpos=endpos)
    samplers = [Sampler(p.pid) for p, _, _, _ in procs]
    pids = [p.pid for p, _, _, _ in procs]
    wss = [Sampler(w) for w in (slot_pid(conn, s_, clients=pids) for s_ in slots.values()) if w]
    done = [wait_measured(p) for p, _, _, _ in procs]
    wall = time.monotonic() - t0
    for _, lf, _, _ in procs:
        lf.close()
    ws_cpu = sum(w.finish()[0] for w in wss) if len(wss) == len(slots) else None
    hwms = [sm.finish()[1] for sm in samplers]
    k1 = proc_cpu(kpid)
    bad = [(p_[1].name, rc) for p_, (rc, _, _) in zip(procs, done) if rc != 0]
    if bad:
        raise RuntimeError("sources %s: pgoutbox exited %s" % (variant, ", ".join("%d (%s)" % (rc, n_) for n_, rc in bad)))
    confirmed = all(q1(conn, "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots WHERE slot_name = %s",
                       (endpos, s_)) for s_ in slots.values())
    return {"s": wall, "cpu_s": sum(x[1] for x in done), "cpu_each_s": [x[1] for x in done],
            "maxrss_kb": sum(hwms), "maxrss_each_kb": hwms, "walsender_cpu_s": ws_cpu,
            "broker_cpu_s": k1 - k0, "confirmed": bool(confirmed)}


def run_threads(fns):
    """Run the callables at once; their results in order (the first error raised)."""
    res = [None] * len(fns)
    err = []

    def one(i, fn):
        try:
            res[i] = fn()
        except Exception as e:  # re-raised below, in the caller's thread
            err.append(e)
    ts = [threading.Thread(target=one, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if err:
        raise err[0]
    return res


def sources_drain(args, out, conn, conns, kpid):
    """(a) The same backlog of n single-event transactions in each database
    (written at once, so the three are interleaved in the WAL), behind
    fresh slots for every variant and round, all created before it; per
    round both variants drain it, the order alternating."""
    n, rounds = args.src_events, args.src_rounds
    if rounds * len(SRC_VARIANTS) * len(SRC_DBS) > MAX_SLOTS:
        raise RuntimeError("sources: %d rounds need more than %d slots at once" % (rounds, MAX_SLOTS))
    aggs = {d: "srcdrain_%d_%s" % (i + 1, RUN) for i, d in enumerate(SRC_DBS)}
    topics = {d: "outbox.event." + a for d, a in aggs.items()}
    for t in topics.values():
        create_topic(t)
    slots = [{v: {d: "bench_src%s%d_%d" % (v, r + 1, i + 1) for i, d in enumerate(SRC_DBS)}
              for v in SRC_VARIANTS} for r in range(rounds)]
    for sl in slots:
        for v in SRC_VARIANTS:
            for d, s_ in sl[v].items():
                create_slot(conns[d], s_)
    log("sources drain: writing %d events into each of %s (%d round(s))" % (n, ", ".join(SRC_DBS), rounds))
    t0 = time.monotonic()
    lsn0 = q1(conn, "SELECT pg_current_wal_insert_lsn()")
    run_threads([lambda d=d: write_events(conns[d], aggs[d], n, 1, "200B") for d in SRC_DBS])
    t_write = time.monotonic() - t0
    endpos = q1(conn, "SELECT pg_current_wal_insert_lsn()")
    runs = []
    for r, sl in enumerate(slots):
        order = list(SRC_VARIANTS if r % 2 == 0 else SRC_VARIANTS[::-1])
        run = {"order": order}
        for v in order:
            c0 = {d: topic_count(t) for d, t in topics.items()}
            log("sources drain, round %d: %s to %s" % (r + 1, v, endpos))
            x = drain_sources(args, out, conn, v, sl[v], endpos, "drain-%s-%d" % (v, r + 1), kpid)
            x["in_kafka"] = {d: topic_count(t) - c0[d] for d, t in topics.items()}
            x["eps"] = len(SRC_DBS) * n / x["s"]
            run[v] = x
            log("sources drain, round %d, %s: %.0f events/s, CPU %.2f s, peak RSS %.1f MB (%s), "
                "walsenders %.2f s CPU, in Kafka %s" % (
                    r + 1, v, x["eps"], x["cpu_s"], x["maxrss_kb"] / 1024,
                    " + ".join("%.1f" % (k / 1024) for k in x["maxrss_each_kb"]),
                    x["walsender_cpu_s"] or -1, "/".join(str(c) for c in x["in_kafka"].values())))
            for d, s_ in sl[v].items():
                drop_slot(conns[d], s_)
        run["eps_ratio"] = run["one"]["eps"] / run["three"]["eps"]
        runs.append(run)
    rec = {"events_per_db": n, "databases": list(SRC_DBS), "write_s": t_write, "endpos": endpos,
           "rounds": rounds, "runs": runs,
           "wal_bytes": float(q1(conn, "SELECT pg_wal_lsn_diff(%s, %s)", (endpos, lsn0)))}
    for v in SRC_VARIANTS:
        xs = [x[v] for x in runs]
        agg = {k: median(y[k] for y in xs) for k in ("s", "cpu_s", "maxrss_kb", "walsender_cpu_s", "broker_cpu_s")}
        agg["eps"] = len(SRC_DBS) * n / agg["s"]
        agg["eps_min"] = min(y["eps"] for y in xs)
        agg["eps_max"] = max(y["eps"] for y in xs)
        agg["maxrss_max_kb"] = max(y["maxrss_kb"] for y in xs)
        agg["in_kafka"] = min(min(y["in_kafka"].values()) for y in xs)
        agg["confirmed"] = all(y["confirmed"] for y in xs)
        rec[v] = agg
    rec["eps_ratio"] = median(x["eps_ratio"] for x in runs)
    rec["eps_ratio_min"] = min(x["eps_ratio"] for x in runs)
    rec["eps_ratio_max"] = max(x["eps_ratio"] for x in runs)
    log("sources drain: one process %.0f events/s, three %.0f (ratio %.2f, %.2f-%.2f); CPU %.2f vs %.2f s; "
        "peak RSS %.1f vs %.1f MB" % (rec["one"]["eps"], rec["three"]["eps"], rec["eps_ratio"],
                                      rec["eps_ratio_min"], rec["eps_ratio_max"], rec["one"]["cpu_s"],
                                      rec["three"]["cpu_s"], rec["one"]["maxrss_kb"] / 1024,
                                      rec["three"]["maxrss_kb"] / 1024))
    for d in SRC_DBS:
        q(conns[d], "TRUNCATE outbox")
    q(conn, "CHECKPOINT")
    return rec


def sources_latency(args, out, res, conn, conns, kpid):
    """(b) pgbench at each rate on all three databases at once; per variant
    (the order alternating over rounds) fresh slots and processes that run
    through all the rates; a consumer per database's topic; pgoutbox's
    histograms per source."""
    rows, procs_rec = [], []
    for rnd in range(args.src_lat_rounds):
        for v in (SRC_VARIANTS if rnd % 2 == 0 else SRC_VARIANTS[::-1]):
            vtag = "%s_r%d" % (v, rnd + 1)
            slots = {d: "bench_srclat_%d" % (i + 1) for i, d in enumerate(SRC_DBS)}
            for d, s_ in slots.items():
                create_slot(conns[d], s_)
            t0 = time.monotonic()
            procs = start_sources(args, out, v, slots, "lat-" + vtag, metrics=True)
            try:
                aggs0 = {d: "srclat_%s_start_%d_%s" % (vtag, i + 1, RUN) for i, d in enumerate(SRC_DBS)}
                for d, a in aggs0.items():
                    create_topic("outbox.event." + a)
                    q(conns[d], "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) "
                                "VALUES (gen_random_uuid(), %s, 'warmup', 'Warmup', '{}')", (a,))
                for d, a in aggs0.items():
                    if wait_in_kafka("outbox.event." + a, 1, 180) is None:
                        raise RuntimeError("sources %s: the first event of %s did not reach Kafka" % (v, d))
                start_to_first = time.monotonic() - t0
                samplers = [Sampler(p.pid) for p, _, _, _ in procs]
                wpids = [slot_pid(conn, s_) for s_ in slots.values()]
                if not all(wpids):
                    raise RuntimeError("sources %s did not start streaming" % v)
                ports = [pt for _, _, pt, _ in procs]
                if args.warm_secs:
                    # Not measured, as in the latency scenario: without it the
                    # variant that runs first after the drain measured the
                    # machine settling (its p99 2-7x the second's, whichever
                    # variant it was).
                    log("sources latency %s: warm-up load, %d/s on each database for %d s (not measured)"
                        % (vtag, max(args.src_rates), args.warm_secs))
                    warm_load(out, {dsn_of(d): "srclat_%s_warm_%d_%s" % (vtag, i + 1, RUN)
                                    for i, d in enumerate(SRC_DBS)},
                              max(args.src_rates), args.warm_secs, "sources " + v)
                for rate in args.src_rates:
                    aggs = {d: "srclat_%s_%d_%d_%s" % (vtag, rate, i + 1, RUN) for i, d in enumerate(SRC_DBS)}
                    for d, a in aggs.items():
                        create_topic("outbox.event." + a)
                        q(conns[d], "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) "
                                    "VALUES (gen_random_uuid(), %s, 'warmup', 'Warmup', '{}')", (a,))
                    for d, a in aggs.items():
                        if wait_in_kafka("outbox.event." + a, 1, 60) is None:
                            raise RuntimeError("sources %s: the warm-up event of %s did not reach Kafka" % (v, d))
                    time.sleep(0.5)
                    cons = {d: start_consumer(out, "outbox.event." + a, raw=True) for d, a in aggs.items()}
                    h0s = [scrape_histograms(pt) for pt in ports]
                    cpu0 = [proc_cpu(p.pid) for p, _, _, _ in procs]
                    w0 = [proc_cpu(w) for w in wpids]
                    k0 = proc_cpu(kpid)
                    log("sources latency %s: %d/s on each of %d databases for %d s"
                        % (vtag, rate, len(SRC_DBS), args.secs))
                    loads = run_threads([lambda d=d, a=a: pgbench(out, a, "outbox", a, rate, args.secs, dsn_of(d))
                                         for d, a in aggs.items()])
                    sts = {d: finish_consumer(*cons[d], loads[i][0]) for i, d in enumerate(SRC_DBS)}
                    total = sum(x[0] for x in loads)
                    wait_breakdown(ports, h0s, total)
                    h1s = [scrape_histograms(pt) for pt in ports]
                    cpu1 = [proc_cpu(p.pid) for p, _, _, _ in procs]
                    w1 = [proc_cpu(w) for w in wpids]
                    k1 = proc_cpu(kpid)
                    mems = [proc_mem(p.pid) for p, _, _, _ in procs]
                    per_db = []
                    for i, d in enumerate(SRC_DBS):
                        # the process and source label that carried database d
                        k, src = next((k, s_) for k, (_, _, _, m) in enumerate(procs) for s_, dd in m.items() if dd == d)
                        x = {"database": d, "events": loads[i][0], "tps": loads[i][1],
                             "pgbench_latency_ms": loads[i][2], "pgbench_lag_ms": loads[i][3]}
                        x.update({kk: sts[d][kk] for kk in ("received", "p50_ms", "p90_ms", "p99_ms",
                                                              "p999_ms", "max_ms", "mean_ms", "consumer_cpu_s")})
                        x.update(breakdown([h0s[k]], [h1s[k]], {src}))
                        x.update(stamp_offset(conns[d], "outbox", aggs[d]))
                        per_db.append(x)
                    lat = []
                    for d in SRC_DBS:
                        with open(sts[d]["raw_file"]) as fh:
                            lat.extend(int(line) for line in fh if line.strip())
                    allq = quantiles_ms(lat)
                    rec = {"variant": v, "round": rnd + 1, "rate": rate, "secs": args.secs,
                           "events": total, "tps": sum(x[1] for x in loads), "received": allq["count"],
                           "p50_ms": allq["p50_ms"], "p99_ms": allq["p99_ms"], "p999_ms": allq["p999_ms"],
                           "max_ms": allq["max_ms"], "per_db": per_db,
                           "cpu_s": sum(b - a for a, b in zip(cpu0, cpu1)),
                           "walsender_cpu_s": sum(b - a for a, b in zip(w0, w1)), "broker_cpu_s": k1 - k0,
                           "consumer_cpu_s": sum(x["consumer_cpu_s"] for x in per_db),
                           "rss_kb": sum(m[0] or 0 for m in mems), "hwm_kb": sum(m[1] or 0 for m in mems)}
                    rec.update(breakdown(h0s, h1s))
                    rows.append(rec)
                    log("sources latency %s @%d/s each: achieved %.0f/s in all, p50 %.1f p99 %.1f p99.9 %.1f ms "
                        "(p99 per database %s), %d/%d received; commit-to-receive p99 %.2f, produce-to-ack "
                        "p99 %.2f ms; CPU %.2f s, RSS %.1f MB" % (
                            vtag, rate, rec["tps"], rec["p50_ms"], rec["p99_ms"], rec["p999_ms"],
                            "/".join("%.1f" % x["p99_ms"] for x in per_db), rec["received"], total,
                            rec.get("recv_p99_ms") or -1, rec.get("pta_p99_ms") or -1, rec["cpu_s"],
                            rec["rss_kb"] / 1024))
                    res["sources"]["latency"] = rows
                    save(out, res)
                hwms = [max(proc_mem(p.pid)[1] or 0, sm.hwm) for (p, _, _, _), sm in zip(procs, samplers)]
                for sm in samplers:
                    sm.finish()
            finally:
                stopped = stop_sources(procs)
            procs_rec.append({"variant": v, "round": rnd + 1, "exit": [x[0] for x in stopped],
                              "cpu_s": sum(x[1] for x in stopped), "maxrss_kb": sum(hwms),
                              "maxrss_each_kb": hwms, "start_to_first_s": start_to_first})
            res["sources"]["latency_runs"] = procs_rec
            for d, s_ in slots.items():
                drop_slot(conns[d], s_)
                q(conns[d], "TRUNCATE outbox")
            save(out, res)


def scen_sources(args, out, res):
    """One pgoutbox with three sources against three single-source ones:
    sources_drain() and sources_latency()."""
    conn = db()
    setup_sources(conn)
    conns = {d: db(dsn_of(d)) for d in SRC_DBS}
    kpid = kafka_pid()
    res["sources"] = {"databases": list(SRC_DBS)}
    res["sources"]["drain"] = sources_drain(args, out, conn, conns, kpid)
    save(out, res)
    sources_latency(args, out, res, conn, conns, kpid)
    for c in conns.values():
        c.close()
    conn.close()


# ---------------------------------------------------------------- profile

def scen_profile(args, out, res):
    if not args.prof_bin:
        log("profile: no --prof-bin, skipped")
        return
    conn = db()
    n = args.prof_events
    agg = "prof_" + RUN
    topic = "outbox.event." + agg
    create_topic(topic)
    slot = "bench_prof"
    create_slot(conn, slot)
    endpos = write_events(conn, agg, n, 1, "200B")
    pdir = os.path.join(out, "callgrind")
    shutil.rmtree(pdir, ignore_errors=True)
    os.makedirs(pdir)
    cmd = ["valgrind", "--tool=callgrind", "--separate-threads=yes",
           "--callgrind-out-file=%s/callgrind.out" % pdir,
           args.prof_bin, "-d", PG, "-b", BROKERS, "--slot", slot, "--endpos", endpos] + args.x
    log("profile: callgrind, %d single-event transactions" % n)
    with open(os.path.join(pdir, "valgrind.log"), "w") as lf:
        rc, wall, cpu, rss = run_measured(cmd, stderr=lf)
    drop_slot(conn, slot)
    q(conn, "TRUNCATE outbox")
    prof = {"events": n, "exit": rc, "wall_s": wall, "threads": []}
    for fn in sorted(os.listdir(pdir)):
        if not fn.startswith("callgrind.out"):
            continue
        path = os.path.join(pdir, fn)
        ann = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=99", path],
                             capture_output=True, text=True).stdout
        with open(path + ".txt", "w") as f:
            f.write(ann)
        inc = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=99", path],
                             capture_output=True, text=True).stdout
        with open(path + ".incl.txt", "w") as f:
            f.write(inc)
        m = re.search(r"^\s*([\d,]+)\s+\(100.0%\)\s+PROGRAM TOTALS", ann, re.M) or \
            re.search(r"^\s*([\d,]+)\s+PROGRAM TOTALS", ann, re.M)
        total = int(m.group(1).replace(",", "")) if m else None
        prof["threads"].append({"file": fn, "ir": total, "ir_per_event": total / n if total else None})
    res["profile"] = prof
    save(out, res)
    conn.close()


# ------------------------------------------------------------------- main

RESULTS = None  # the whole results: a scenario writing a part of it saves all


def save(out, res):
    with open(os.path.join(out, "results.json.tmp"), "w") as f:
        json.dump(RESULTS if RESULTS is not None else res, f, indent=1)
    os.replace(os.path.join(out, "results.json.tmp"), os.path.join(out, "results.json"))


EOS = ("exactly-once", ["--delivery", "exactly-once"])
EOS_DRAIN_TARGET = 0.8        # x at-least-once's drain throughput
EOS_P99_PLUS_MS = 10.0        # p99 within at-least-once's p99 + this, at EOS_P99_RATE
EOS_P99_RATE = 2000


def scen_eos(args, out, res):
    """delivery = exactly-once beside at-least-once (pgoutbox's defaults), as
    alternating variants of the drain and latency scenarios: every drain
    round reads its own slot created at the same LSN, each (variant, rate,
    round) of the latency runs is a process of its own on a fresh slot, the
    order rotating (latency_systems()).  consumer.py reads with librdkafka's
    default isolation.level, read_committed: an exactly-once event counts
    when its Kafka transaction committed.  Results in res["eos"], with the
    two targets judged in res["eos"]["targets"]."""
    a = copy.copy(args)
    a.variants = [("defaults", [], a.eos_rates), (EOS[0], EOS[1], a.eos_rates)]
    a.lat_rates = a.eos_rates
    a.interleave = True
    a.variant_rounds = a.eos_rounds
    a.drain_variants = {"pgo1": EOS}
    a.sizes = "200B"
    a.repeat = a.eos_rounds
    a.peer = "none"
    a.floor = False
    sub = res.setdefault("eos", {})
    sub["meta"] = {"rates": a.eos_rates, "rounds": a.eos_rounds, "drain_events": a.drain_events,
                   "drain_big": a.drain_big}
    scen_drain(a, out, sub)
    scen_latency(a, out, sub)
    t = {"drain": [], "latency": None}
    for x in sub.get("drain") or []:
        v = (x.get("variants") or {}).get(EOS[0])
        if v:
            t["drain"].append({"workload": x["workload"], "size": x["size"],
                               "alo_eps": x["pgoutbox_eps"], "eos_eps": v["eps"],
                               "ratio": v["eps_vs_defaults"],
                               "ok": v["eps_vs_defaults"] >= EOS_DRAIN_TARGET})
    for x in sub.get("latency") or []:
        if not report.clean_run(x):
            log("eos: %s round %s @%d/s left out: the consumer received %d messages of %d produced"
                % (x["variant"], x.get("round"), x["rate"], x["received"], x["events"]))
    t["latency"] = report.eos_p99_target(sub, EOS_P99_RATE)
    if t["latency"]:
        t["latency"]["ok"] = t["latency"]["diff_ms"] <= EOS_P99_PLUS_MS
    sub["targets"] = t
    for d in t["drain"]:
        log("eos: drain %s, %s: exactly-once %.0f/s, at-least-once %.0f/s: %.2fx (target >= %.1fx: %s)"
            % (d["workload"], d["size"], d["eos_eps"], d["alo_eps"], d["ratio"], EOS_DRAIN_TARGET,
               "met" if d["ok"] else "NOT met"))
    if t["latency"]:
        L = t["latency"]
        log("eos: p99 at %d/s: exactly-once %.1f ms, at-least-once %.1f ms: %+.1f ms (target <= +%.0f ms: %s)"
            % (L["rate"], L["eos_p99_ms"], L["alo_p99_ms"], L["diff_ms"], EOS_P99_PLUS_MS,
               "met" if L["ok"] else "NOT met"))
    save(out, res)


def scen_compat(args, out, res):
    """peer/compat.py's comparison, in this run's stack and results."""
    if args.peer != "debezium":
        log("compat: needs --peer debezium, skipped")
        return
    import compat  # scripts/bench/peer/compat.py
    r = compat.run(compat.Options(pgoutbox=args.pgoutbox, libs=args.debezium_libs,
                                  out=os.path.join(out, "compat"), x=args.x, proto=args.proto,
                                  partitions=PARTITIONS, run=RUN))
    for line in compat.table(r):
        log("compat: " + line)
    res["compat"] = r
    save(out, res)
    if r["unexpected"]:
        log("compat: %d unexpected difference(s)" % len(r["unexpected"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--pgoutbox", required=True)
    ap.add_argument("--floor-dir", required=True,
                    help="build directory of scripts/bench/floor (floor_drain, floor_latency)")
    ap.add_argument("--prof-bin")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scenarios", default="drain,latency,sources,polling,eos,compat")
    ap.add_argument("--eos-rates", help="eos scenario: rates (default 500,2000,10000; --quick 2000)")
    ap.add_argument("--eos-rounds", type=int, help="eos scenario: rounds of each variant (default 3, "
                    "--quick 1)")
    ap.add_argument("-X", dest="xprops", action="append", default=[],
                    help="librdkafka property for pgoutbox in every scenario")
    ap.add_argument("--meta", help="JSON with machine/versions from run.sh")
    ap.add_argument("--peer", choices=("none", "debezium"), default="none")
    ap.add_argument("--debezium-libs", help="jars of scripts/bench/peer/resolve.sh")
    ap.add_argument("--peer-configs", help="Debezium configurations for the drain (tuned,defaults)")
    ap.add_argument("--peer-workloads", help="drain workloads with Debezium, e.g. t1_200b,t1_4kb")
    ap.add_argument("--no-floor", dest="floor", action="store_false",
                    help="no floor_latency during the latency runs")
    ap.add_argument("--drain-events", dest="o_drain_events", type=int, help="override N (per-txn workloads)")
    ap.add_argument("--drain-big", dest="o_drain_big", type=int, help="override N (the big transaction)")
    ap.add_argument("--secs", dest="o_secs", type=int, help="override seconds per rate")
    ap.add_argument("--warm-secs", dest="o_warm_secs", type=int,
                    help="override seconds of unmeasured load before a system's rates (0: none)")
    ap.add_argument("--rates", dest="o_rates", help="override rates, e.g. 2000,10000")
    ap.add_argument("--sizes", default="200B,4KB")
    ap.add_argument("--workloads", default="t1,t10,big")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--repeat", type=int, help="drain rounds per workload (default 5, --quick 1)")
    ap.add_argument("--variants", dest="o_variants", help="pgoutbox -X property sets for the latency scenario (and the "
                    "drain, unless --drain-variants), alternating: 'linger.ms=5;linger.ms=0,PROP=V'; "
                    "'defaults' is the set without extra properties")
    ap.add_argument("--drain-variants", help="-X property sets for the drain (as --variants; "
                    "'defaults': only pgoutbox's defaults)")
    ap.add_argument("--variant-rounds", type=int, help="rounds of the alternating variants (default 1, "
                    "2 in a full run)")
    ap.add_argument("--variant-warm-secs", type=int, help="seconds of unmeasured load at its own rate "
                    "before each variant's run (default 2, --quick 1)")
    ap.add_argument("--sources-events", type=int, help="sources scenario: events per database in the "
                    "drain (default 100000, --quick 10000)")
    ap.add_argument("--sources-rounds", type=int, help="sources scenario: drain rounds (default 4, --quick 2)")
    ap.add_argument("--sources-rates", help="sources scenario: rates per database (default 500,2000, "
                    "--quick 500)")
    ap.add_argument("--sources-latency-rounds", type=int, help="sources scenario: latency rounds "
                    "(default 2, --quick 1)")
    args = ap.parse_args()
    args.x = sum((["-X", x] for x in args.xprops), [])
    args.proto = 3
    args.floor_drain = os.path.join(args.floor_dir, "floor_drain")
    args.floor_latency = os.path.join(args.floor_dir, "floor_latency")
    for b in (args.floor_drain, args.floor_latency):
        if not os.access(b, os.X_OK):
            ap.error("%s not found: build scripts/bench/floor (meson -Dbench=true)" % b)
    if args.peer == "debezium" and not args.debezium_libs:
        ap.error("--peer debezium needs --debezium-libs")
    if args.quick:
        args.drain_events, args.drain_big, args.secs, args.warm_secs = 20000, 20000, 5, 3
        args.lat_rates = [500, 2000, 10000]
        args.variants = [("defaults", [], [500, 2000, 10000])]
        args.src_events, args.src_rounds, args.src_rates, args.src_lat_rounds = 10000, 2, [500], 1
        args.peer_latency = [("tuned", [500, 2000, 10000]), ("defaults", [2000])]
        args.poll_intervals, args.poll_rates = [0.1, 1.0], [2000]
        peer_workloads = "t1_200b"
    else:
        args.drain_events, args.drain_big, args.secs, args.warm_secs = 200000, 1000000, 30, 10
        args.lat_rates = [500, 1000, 2000, 5000, 10000]
        args.src_events, args.src_rounds, args.src_rates, args.src_lat_rounds = 100000, 4, [500, 2000], 2
        args.variants = [("defaults", [], [500, 1000, 2000, 5000, 10000]),
                         ("linger.ms=1", ["-X", "linger.ms=1"], [2000, 10000])]
        args.peer_latency = [("tuned", [500, 2000, 10000]), ("defaults", [500, 2000, 10000])]
        args.poll_intervals, args.poll_rates = [0.1, 1.0], [1000, 2000, 5000, 10000]
        peer_workloads = "t1_200b,t1_4kb"
    args.peer_configs = (args.peer_configs or "tuned,defaults").split(",")
    args.peer_workloads = (args.peer_workloads or peer_workloads).split(",")
    args.prof_events = 20000
    if args.repeat is None:
        args.repeat = 1 if args.quick else 5
    for k in ("drain_events", "drain_big", "secs", "warm_secs"):
        if getattr(args, "o_" + k) is not None:
            setattr(args, k, getattr(args, "o_" + k))
    if args.o_rates:
        rates = [int(x) for x in args.o_rates.split(",")]
        args.lat_rates = rates
        args.variants = [(v[0], v[1], [r for r in rates if r in v[2]] or rates) for v in args.variants[:1]]
        args.peer_latency = [(v[0], [r for r in rates if r in v[1]] or rates) for v in args.peer_latency]
        args.poll_rates = rates
    try:
        variants = parse_variants(args.o_variants) if args.o_variants else None
        drain_variants = parse_variants(args.drain_variants) if args.drain_variants else variants
    except ValueError as e:
        ap.error("--variants: %s" % e)
    args.interleave = False
    if variants:
        args.variants = [(name, xargs, args.lat_rates) for name, xargs in variants]
        args.interleave = len(variants) > 1
    # the drain's pgoutbox reader has the defaults; each other set is a reader of its own
    args.drain_variants = {"pgo%d" % (i + 1): v for i, v in
                           enumerate(v for v in drain_variants or [] if v[0] != "defaults")}
    if args.variant_rounds is None:
        args.variant_rounds = 1 if args.quick else 2
    if args.variant_warm_secs is None:
        args.variant_warm_secs = 1 if args.quick else 2
    for k, o in (("src_events", "sources_events"), ("src_rounds", "sources_rounds"),
                 ("src_lat_rounds", "sources_latency_rounds")):
        if getattr(args, o) is not None:
            setattr(args, k, getattr(args, o))
    if args.sources_rates:
        args.src_rates = [int(x) for x in args.sources_rates.split(",")]
    args.eos_rates = [int(x) for x in args.eos_rates.split(",")] if args.eos_rates else (
        [EOS_P99_RATE] if args.quick else [500, EOS_P99_RATE, 10000])
    if args.eos_rounds is None:
        args.eos_rounds = 1 if args.quick else 3
    os.makedirs(args.out, exist_ok=True)
    global RESULTS
    res = RESULTS = {}
    if args.meta:
        with open(args.meta) as f:
            res["meta"] = json.load(f)
    res.setdefault("meta", {})
    res["meta"].update({"quick": args.quick, "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                        "drain_events": args.drain_events, "drain_big": args.drain_big,
                        "drain_rounds": args.repeat,
                        "secs": args.secs, "warm_secs": args.warm_secs,
                        "pgoutbox_x": args.xprops, "proto": args.proto,
                        "variants": [{"name": v[0], "xprops": v[1][1::2], "rates": v[2]} for v in args.variants],
                        "variants_interleaved": args.interleave, "variant_rounds": args.variant_rounds,
                        "variant_warm_secs": args.variant_warm_secs,
                        "drain_variants": [{"name": v[0], "xprops": v[1][1::2]}
                                           for v in args.drain_variants.values()],
                        "sources": {"databases": list(SRC_DBS), "events_per_db": args.src_events,
                                    "drain_rounds": args.src_rounds, "rates": args.src_rates,
                                    "latency_rounds": args.src_lat_rounds},
                        "peer": args.peer, "floor": args.floor})
    if args.peer == "debezium":
        res["meta"]["debezium"] = debezium.jar_version(args.debezium_libs, "debezium-connector-postgres")
        res["meta"]["kafka_connect"] = debezium.jar_version(args.debezium_libs, "connect-runtime")
        res["meta"]["debezium_configs"] = {k: v for k, v in debezium.CONFIGS.items()}
        res["meta"]["debezium_jvm"] = " ".join(debezium.JVM_OPTS)
        res["meta"]["java"] = subprocess.run(["java", "-version"], capture_output=True,
                                             text=True).stderr.splitlines()[0]
    conn = db()
    res["meta"]["postgresql"] = q1(conn, "SHOW server_version")
    conn.close()
    setup_db(db())
    save(args.out, res)
    for s in args.scenarios.split(","):
        t0 = time.monotonic()
        {"drain": scen_drain, "latency": scen_latency, "sources": scen_sources,
         "polling": scen_polling, "compat": scen_compat, "eos": scen_eos,
         "profile": scen_profile}[s](args, args.out, res)
        res["meta"]["%s_s" % s] = time.monotonic() - t0
        save(args.out, res)
    res["meta"]["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    save(args.out, res)
    return 3 if res.get("compat", {}).get("unexpected") else 0


if __name__ == "__main__":
    sys.exit(main())
