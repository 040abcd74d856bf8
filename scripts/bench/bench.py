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
  compat    peer/compat.py: the same workload through pgoutbox and Debezium
            (StringConverter and JsonConverter), compared per event.
  profile   callgrind of pgoutbox draining 20k single-event transactions.
"""
import argparse
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

def db():
    c = psycopg2.connect(PG)
    c.autocommit = True
    return c


def q(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


def q1(conn, sql, args=None):
    r = q(conn, sql, args)
    return r[0][0] if r else None


def slot_pid(conn, slot, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = q1(conn, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        if pid:
            return pid
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


def setup_db(conn):
    subprocess.run([os.path.join(REPO, "scripts", "setup-slot.sh"), "-d", PG, "--create-table",
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
        wpid = slot_pid(conn, slot)
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
        wpid = slot_pid(conn, slot)
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


def drain_pgoutbox(args, out, conn, slot, endpos, tag, kpid, topic):
    """pgoutbox drains slot into Kafka until the slot is confirmed at endpos."""
    cmd = [args.pgoutbox, "-d", PG, "-b", BROKERS, "--slot", slot, "--endpos", endpos,
           "--log-level", "log"] + args.x
    k0 = proc_cpu(kpid)
    watch = KafkaWatch(topic, 1)  # start to first event in Kafka
    with open(os.path.join(out, "pgoutbox-drain-%s.log" % tag), "w") as lf:
        watch.t0 = time.monotonic()
        p = subprocess.Popen(cmd, stderr=lf)
        t0 = time.monotonic()
        ps = Sampler(p.pid)
        wpid = slot_pid(conn, slot)
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


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


DBZ_PUBLICATION = "bench_dbz"
READER_NAMES = {"recv": "pg_recvlogical", "eager": "floor (eager)", "nap": "floor (napping)",
                "pgo": "pgoutbox"}


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
        readers = ["recv", "eager", "nap", "pgo"]
        if warm:
            readers = ["pgo"]
        elif args.peer == "debezium" and "%s_%s" % (wl, size.lower()) in args.peer_workloads:
            readers += ["dbz-" + c for c in args.peer_configs]
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
            run = {"order": order, "debezium": {}}
            for who in order:
                log("drain %s, %s, round %d: %s to %s" % (name, size, i + 1,
                    READER_NAMES.get(who, "Debezium " + who[4:]), endpos))
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
                else:
                    cfg = who[4:]
                    run["debezium"][cfg] = drain_debezium(args, out, conn, sl[who], n, topic,
                                                          rtag, cfg, kpid)
            if not warm:
                run["ceiling_s"] = min(run["floor_eager_s"], run["floor_nap_s"])
                run["ratio"] = run["recv_s"] / run["pgoutbox_s"]
                run["ceiling_ratio"] = run["ceiling_s"] / run["pgoutbox_s"]
                log("drain %s, %s, round %d: pg_recvlogical %.0f/s, floor eager %.0f/s, napping %.0f/s, "
                    "pgoutbox %.0f/s (%.2f of the ceiling, %.2f of pg_recvlogical), %d in Kafka%s"
                    % (name, size, i + 1, n / run["recv_s"], n / run["floor_eager_s"],
                       n / run["floor_nap_s"], n / run["pgoutbox_s"], run["ceiling_ratio"],
                       run["ratio"], run["in_kafka"],
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


def pgbench(out, name, table, agg, rate, secs):
    """Run pgbench at rate inserts/s (one row per transaction, sync commit);
    returns (processed, tps, pgbench's mean latency ms, schedule lag ms)."""
    script = os.path.join(out, "pgbench-%s.sql" % name)
    with open(script, "w") as f:
        f.write("\\set k random(1, 1000)\n")
        f.write("INSERT INTO %s (id, aggregatetype, aggregateid, type, payload) "
                "VALUES (gen_random_uuid(), '%s', :k, 'BenchEvent', %s);\n" % (table, agg, PAYLOAD_200))
    clients = 4 if rate <= 2000 else 8
    env = dict(os.environ, PGOPTIONS="-c synchronous_commit=on")
    cmd = ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-R", str(rate),
           "-T", str(secs), "-f", script, PG]
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


def start_consumer(out, topic):
    ef = os.path.join(out, "expect-%s" % topic)
    rf = os.path.join(out, "latency-%s.json" % topic)
    for f in (ef, rf):
        if os.path.exists(f):
            os.unlink(f)
    p = subprocess.Popen([PY, os.path.join(HERE, "consumer.py"), "--brokers", BROKERS,
                          "--topic", topic, "--expect-file", ef, "--out", rf],
                         stdout=subprocess.PIPE, text=True)
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


def scrape_ack_histogram(port):
    """pgoutbox's pgoutbox_commit_to_ack_seconds buckets: {le: cumulative count}."""
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()
    h = {}
    for m in re.finditer(r'^pgoutbox_commit_to_ack_seconds_bucket\{le="([^"]+)"\} (\d+)$', body, re.M):
        h[float("inf") if m.group(1) == "+Inf" else float(m.group(1))] = int(m.group(2))
    if not h:
        raise RuntimeError("no pgoutbox_commit_to_ack_seconds in pgoutbox's /metrics")
    return h


def histogram_quantiles(h0, h1, qs=(0.5, 0.99, 0.999)):
    """Quantiles (ms) of the events counted between two scrapes, interpolated
    linearly inside a bucket as Prometheus' histogram_quantile() does; also
    the upper bound of the bucket each falls in."""
    les = sorted(h1)
    cum = [h1[le] - h0.get(le, 0) for le in les]
    total = cum[-1]
    res = {"ack_events": total}
    for qq in qs:
        key = "ack_p%s" % ("%g" % (qq * 100)).replace(".", "")
        if total == 0:
            res[key + "_ms"] = res[key + "_le_ms"] = None
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


def scen_latency(args, out, res):
    """Per system (pgoutbox in each variant, then Debezium in each
    configuration), one process streams through all its rates; per rate a
    fresh topic, a warm-up event waited for in Kafka, then pgbench's load,
    consumer.py on the topic and floor_latency on its own slot."""
    conn = db()
    kpid = kafka_pid()
    rows = []
    systems = [("pgoutbox", vname, xargs, rates) for vname, xargs, rates in args.variants]
    if args.peer == "debezium":
        create_publication(conn, DBZ_PUBLICATION)
        systems += [("debezium", cfg, None, rates) for cfg, rates in args.peer_latency]
    for system, vname, xargs, rates in systems:
        slot = "bench_lat"
        create_slot(conn, slot)
        vtag = re.sub(r"\W+", "_", "%s_%s" % (system, vname))
        label = vname if system == "pgoutbox" else "Debezium " + vname
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
            if args.warm_secs:
                # Not measured: a JVM compiles its hot paths during its first
                # seconds of load; a peer in production has long done so.
                # pgoutbox gets the same, for symmetry.
                aggw = "lat_%s_warm_%s" % (vtag, RUN)
                create_topic("outbox.event." + aggw)
                log("latency %s: warm-up load, 2000/s for %d s (not measured)" % (label, args.warm_secs))
                nw = pgbench(out, aggw, "outbox", aggw, 2000, args.warm_secs)[0]
                if wait_in_kafka("outbox.event." + aggw, nw, 120) is None:
                    raise RuntimeError("%s did not deliver the warm-up load" % label)
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
                h0 = scrape_ack_histogram(mport) if mport else None
                log("latency %s: %d/s for %d s" % (label, rate, args.secs))
                lags = LagSampler(slot)
                n, tps, pglat, lag = pgbench(out, agg, "outbox", agg, rate, args.secs)
                lagres = lags.finish()
                st = finish_consumer(c, ef, rf, n)  # the consumer skips the warm-up event
                flres = fl.finish() if fl else {}
                ack = {}
                if mport:
                    # The consumer may see the last events before pgoutbox has
                    # served their delivery reports: wait (bounded) until all are counted.
                    deadline = time.monotonic() + 10
                    while True:
                        ack = histogram_quantiles(h0, scrape_ack_histogram(mport))
                        if ack["ack_events"] >= n or time.monotonic() > deadline:
                            break
                        time.sleep(0.05)
                cpu1, w1, k1 = proc_cpu(pid), proc_cpu(wpid), proc_cpu(kpid)
                rss, hwm = proc_mem(pid)
                rec = {"system": system, "variant": label, "rate": rate, "secs": args.secs,
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
                       "; commit-to-ack p50 %.1f p99 %.1f ms" % (ack["ack_p50_ms"] or -1,
                                                                 ack["ack_p99_ms"] or -1)
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
            {"system": system, "variant": label, "exit": rc, "cpu_s": cpu, "maxrss_kb": maxrss,
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

def save(out, res):
    with open(os.path.join(out, "results.json.tmp"), "w") as f:
        json.dump(res, f, indent=1)
    os.replace(os.path.join(out, "results.json.tmp"), os.path.join(out, "results.json"))


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
    ap.add_argument("--scenarios", default="drain,latency,polling,compat")
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
    ap.add_argument("--repeat", type=int, help="drain rounds per workload (default 3, --quick 1)")
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
        args.variants = [("defaults", [], [500, 2000, 10000])]
        args.peer_latency = [("tuned", [500, 2000, 10000]), ("defaults", [2000])]
        args.poll_intervals, args.poll_rates = [0.1, 1.0], [2000]
        peer_workloads = "t1_200b"
    else:
        args.drain_events, args.drain_big, args.secs, args.warm_secs = 200000, 1000000, 30, 10
        args.variants = [("defaults", [], [500, 1000, 2000, 5000, 10000]),
                         ("linger.ms=1", ["-X", "linger.ms=1"], [2000, 10000])]
        args.peer_latency = [("tuned", [500, 2000, 10000]), ("defaults", [500, 2000, 10000])]
        args.poll_intervals, args.poll_rates = [0.1, 1.0], [1000, 2000, 5000, 10000]
        peer_workloads = "t1_200b,t1_4kb"
    args.peer_configs = (args.peer_configs or "tuned,defaults").split(",")
    args.peer_workloads = (args.peer_workloads or peer_workloads).split(",")
    args.prof_events = 20000
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    for k in ("drain_events", "drain_big", "secs", "warm_secs"):
        if getattr(args, "o_" + k) is not None:
            setattr(args, k, getattr(args, "o_" + k))
    if args.o_rates:
        rates = [int(x) for x in args.o_rates.split(",")]
        args.variants = [(v[0], v[1], [r for r in rates if r in v[2]] or rates) for v in args.variants[:1]]
        args.peer_latency = [(v[0], [r for r in rates if r in v[1]] or rates) for v in args.peer_latency]
        args.poll_rates = rates
    os.makedirs(args.out, exist_ok=True)
    res = {}
    if args.meta:
        with open(args.meta) as f:
            res["meta"] = json.load(f)
    res.setdefault("meta", {})
    res["meta"].update({"quick": args.quick, "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                        "drain_events": args.drain_events, "drain_big": args.drain_big,
                        "drain_rounds": args.repeat,
                        "secs": args.secs, "warm_secs": args.warm_secs,
                        "pgoutbox_x": args.xprops, "proto": args.proto,
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
        {"drain": scen_drain, "latency": scen_latency, "polling": scen_polling,
         "compat": scen_compat, "profile": scen_profile}[s](args, args.out, res)
        res["meta"]["%s_s" % s] = time.monotonic() - t0
        save(args.out, res)
    res["meta"]["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    save(args.out, res)
    return 3 if res.get("compat", {}).get("unexpected") else 0


if __name__ == "__main__":
    sys.exit(main())
