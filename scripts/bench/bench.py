#!/usr/bin/python3
"""bench.py — the scenarios of scripts/bench/run.sh (run that, not this).

Expects a running bench stack (PGOUTBOX_PG, PGOUTBOX_BROKERS, PGOUTBOX_STATE
in the environment) and a release build of pgoutbox. Writes OUT/results.json
(plus logs and raw per-run files in OUT/) for report.py.

Scenarios:
  drain     N events pre-written behind two slots; pg_recvlogical drains one
            (the ceiling), pgoutbox the other into Kafka (--endpos).
  latency   pgbench -R at steady rates, synchronous_commit=on; consumer.py
            measures commit-to-consumer latency; pgoutbox runs throughout.
  polling   the same load and consumer against polling_relay.py.
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
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

HERE = os.path.dirname(os.path.abspath(__file__))
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


# ------------------------------------------------------------------ drain

def drain_recvlogical(args, out, conn, slot, endpos, tag):
    """pg_recvlogical drains slot to endpos: walsender + pgoutput, no Kafka."""
    cmd = ["pg_recvlogical", "-d", PG, "--slot", slot, "--start", "--no-loop",
           "--endpos", endpos, "-o", "proto_version=%d" % args.proto,
           "-o", "publication_names=pgoutbox", "-f", "/dev/null"]
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


def drain_pgoutbox(args, out, conn, slot, endpos, tag, kpid):
    """pgoutbox drains slot into Kafka until the slot is confirmed at endpos."""
    cmd = [args.pgoutbox, "-d", PG, "-b", BROKERS, "--slot", slot, "--endpos", endpos,
           "--log-level", "log"] + args.x
    k0 = proc_cpu(kpid)
    with open(os.path.join(out, "pgoutbox-drain-%s.log" % tag), "w") as lf:
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
    if rc != 0:
        raise RuntimeError("pgoutbox exited %d (%s)" % (rc, lf.name))
    confirmed = q1(conn, "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots WHERE slot_name = %s",
                   (endpos, slot))
    return {"s": wall, "cpu_s": cpu, "maxrss_kb": rss, "walsender_cpu_s": ws_cpu,
            "broker_cpu_s": k1 - k0, "confirmed": bool(confirmed)}


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def scen_drain(args, out, res):
    """Each workload is written once behind 2 x repeat slots created at the
    same LSN; pg_recvlogical and pgoutbox then drain one slot each per
    round, taking turns at going first (the first reader of fresh WAL may
    pay for what the second finds cached), and the medians are reported."""
    conn = db()
    n_txn = args.drain_events
    n_big = args.drain_big
    workloads = [
        ("1 event/txn", 1, n_txn), ("10 events/txn", 10, n_txn), ("1 txn", 0, n_big),
    ]
    rows = []
    kpid = kafka_pid()
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
        tag = "%s_%s" % ({1: "t1", 10: "t10"}.get(per_txn, "big"), size.lower())
        if warm:
            tag = "warmup"
        agg = "drain_%s_%s" % (tag, RUN)
        topic = "outbox.event." + agg
        log("drain %s, %s: writing %d events (%d round(s))" % (name, size, n, rounds))
        create_topic(topic)
        slots = [("bench_a%d_%s" % (i, tag), "bench_b%d_%s" % (i, tag)) for i in range(rounds)]
        for sa, sb in slots:
            create_slot(conn, sa)
            create_slot(conn, sb)
        t0 = time.monotonic()
        endpos = write_events(conn, agg, n, per, size)
        t_write = time.monotonic() - t0
        wal = q1(conn, "SELECT pg_wal_lsn_diff(%s, confirmed_flush_lsn) FROM pg_replication_slots WHERE slot_name = %s",
                 (endpos, slots[0][0]))
        runs = []
        for i, (sa, sb) in enumerate(slots):
            rtag = "%s-%d" % (tag, i + 1)
            kafka0 = topic_count(topic)
            first_recv = i % 2 == 0
            for who in ("recv", "pgo") if first_recv else ("pgo", "recv"):
                log("drain %s, %s, round %d: %s to %s" % (name, size, i + 1,
                    "pg_recvlogical" if who == "recv" else "pgoutbox", endpos))
                if who == "recv":
                    r = drain_recvlogical(args, out, conn, sa, endpos, rtag)
                else:
                    p = drain_pgoutbox(args, out, conn, sb, endpos, rtag, kpid)
                    p["in_kafka"] = topic_count(topic) - kafka0
            run = {"first": "pg_recvlogical" if first_recv else "pgoutbox",
                   "recv_s": r["s"], "pgoutbox_s": p["s"], "ratio": r["s"] / p["s"],
                   "recv_cpu_s": r["cpu_s"], "recv_walsender_cpu_s": r["walsender_cpu_s"],
                   "pgoutbox_cpu_s": p["cpu_s"], "pgoutbox_maxrss_kb": p["maxrss_kb"],
                   "walsender_cpu_s": p["walsender_cpu_s"], "broker_cpu_s": p["broker_cpu_s"],
                   "confirmed": p["confirmed"], "in_kafka": p["in_kafka"]}
            runs.append(run)
            log("drain %s, %s, round %d (%s first): pg_recvlogical %.0f/s, pgoutbox %.0f/s (%.2f), %d in Kafka"
                % (name, size, i + 1, run["first"], n / run["recv_s"], n / run["pgoutbox_s"],
                   run["ratio"], run["in_kafka"]))
            drop_slot(conn, sa)
            drop_slot(conn, sb)
        rec = {"workload": name, "size": size, "events": n, "per_txn": per,
               "write_s": t_write, "wal_bytes": float(wal), "endpos": endpos, "runs": runs}
        for k in ("recv_s", "pgoutbox_s", "recv_cpu_s", "recv_walsender_cpu_s", "pgoutbox_cpu_s",
                  "pgoutbox_maxrss_kb", "walsender_cpu_s", "broker_cpu_s"):
            rec[k] = median(x[k] for x in runs)
        rec["ratio"] = median(x["ratio"] for x in runs)
        rec["ratio_min"] = min(x["ratio"] for x in runs)
        rec["ratio_max"] = max(x["ratio"] for x in runs)
        rec["recv_eps"] = n / rec["recv_s"]
        rec["pgoutbox_eps"] = n / rec["pgoutbox_s"]
        rec["confirmed"] = all(x["confirmed"] for x in runs)
        rec["in_kafka"] = min(x["in_kafka"] for x in runs)
        log("drain %s, %s: median ratio %.2f (%.2f-%.2f over %d rounds)"
            % (name, size, rec["ratio"], rec["ratio_min"], rec["ratio_max"], len(runs)))
        if not warm:
            rows.append(rec)
        q(conn, "TRUNCATE outbox")
        q(conn, "CHECKPOINT")
        res["drain"] = rows
        save(out, res)
    conn.close()


# --------------------------------------------------------- steady load

PAYLOAD_200 = '{"seq": 0, "data": "%s"}' % ("0123456789abcdef" * 11)[:172]


def pgbench(out, name, table, agg, rate, secs):
    """Run pgbench at rate inserts/s (one row per transaction, sync commit);
    returns (processed, tps, pgbench's mean latency ms, schedule lag ms)."""
    script = os.path.join(out, "pgbench-%s.sql" % name)
    with open(script, "w") as f:
        f.write("\\set k random(1, 1000)\n")
        f.write("INSERT INTO %s (id, aggregatetype, aggregateid, type, payload) "
                "VALUES (gen_random_uuid(), '%s', :k, 'BenchEvent', '%s');\n" % (table, agg, PAYLOAD_200))
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


def scen_latency(args, out, res):
    conn = db()
    kpid = kafka_pid()
    rows = []
    for vname, xargs, rates in args.variants:
        slot = "bench_lat"
        create_slot(conn, slot)
        mport = free_port()
        cmd = [args.pgoutbox, "-d", PG, "-b", BROKERS, "--slot", slot,
               "--metrics", "127.0.0.1:%d" % mport] + args.x + xargs
        lf = open(os.path.join(out, "pgoutbox-latency-%s.log" % re.sub(r"\W+", "_", vname)), "w")
        p = subprocess.Popen(cmd, stderr=lf)
        ps = Sampler(p.pid)
        wpid = slot_pid(conn, slot)
        if not wpid:
            raise RuntimeError("pgoutbox did not start streaming")
        time.sleep(1)
        for rate in rates:
            agg = "lat_%s_%d_%s" % (re.sub(r"\W+", "_", vname), rate, RUN)
            topic = "outbox.event." + agg
            create_topic(topic)
            # warm the producer's metadata for the new topic (not measured)
            q(conn, "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) "
                    "VALUES (gen_random_uuid(), %s, 'warmup', 'Warmup', '{}')", (agg,))
            time.sleep(1.0)
            c, ef, rf = start_consumer(out, topic)
            cpu0, w0, k0 = proc_cpu(p.pid), proc_cpu(wpid), proc_cpu(kpid)
            h0 = scrape_ack_histogram(mport)
            log("latency %s: %d/s for %d s" % (vname, rate, args.secs))
            lags = LagSampler(slot)
            n, tps, pglat, lag = pgbench(out, agg, "outbox", agg, rate, args.secs)
            lagres = lags.finish()
            st = finish_consumer(c, ef, rf, n)  # the consumer skips the warm-up event
            # The consumer may see the last events before pgoutbox has served
            # their delivery reports: wait (bounded) until all are counted.
            deadline = time.monotonic() + 10
            while True:
                ack = histogram_quantiles(h0, scrape_ack_histogram(mport))
                if ack["ack_events"] >= n or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            cpu1, w1, k1 = proc_cpu(p.pid), proc_cpu(wpid), proc_cpu(kpid)
            rss, hwm = proc_mem(p.pid)
            rec = {"variant": vname, "rate": rate, "secs": args.secs, "events": n, "tps": tps,
                   "pgbench_latency_ms": pglat, "pgbench_lag_ms": lag,
                   "pgoutbox_cpu_s": cpu1 - cpu0, "walsender_cpu_s": w1 - w0,
                   "broker_cpu_s": k1 - k0, "pgoutbox_rss_kb": rss, "pgoutbox_hwm_kb": hwm}
            rec.update(lagres)
            rec.update(ack)
            rec.update({k: st[k] for k in ("received", "p50_ms", "p90_ms", "p99_ms", "p999_ms",
                                           "max_ms", "mean_ms", "consumer_cpu_s")})
            log("latency %s @%d/s: achieved %.0f/s, p50 %.1f p99 %.1f p99.9 %.1f max %.1f ms, "
                "commit-to-ack p50 %.1f p99 %.1f p99.9 %.1f ms (%d events), "
                "%d/%d received, RSS %d kB; WAL unsent max %.0f kB, sent-unconfirmed max %.0f kB; "
                "CPU s: pgoutbox %.2f walsender %.2f broker %.2f consumer %.2f"
                % (vname, rate, tps, st["p50_ms"], st["p99_ms"], st["p999_ms"], st["max_ms"],
                   ack["ack_p50_ms"] or -1, ack["ack_p99_ms"] or -1, ack["ack_p999_ms"] or -1,
                   ack["ack_events"],
                   st["received"], n, rss, lagres["unsent_kb_max"], lagres["unconfirmed_kb_max"],
                   cpu1 - cpu0, w1 - w0, k1 - k0, st["consumer_cpu_s"]))
            rows.append(rec)
            res["latency"] = rows
            save(out, res)
        _, maxrss = proc_mem(p.pid)  # VmHWM just before stopping
        maxrss = max(maxrss or 0, ps.hwm)
        p.send_signal(signal.SIGTERM)
        rc, cpu, _ = wait_measured(p)
        ps.finish()
        lf.close()
        res.setdefault("latency_runs", []).append(
            {"variant": vname, "exit": rc, "pgoutbox_cpu_s": cpu, "pgoutbox_maxrss_kb": maxrss})
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--pgoutbox", required=True)
    ap.add_argument("--prof-bin")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scenarios", default="drain,latency,polling")
    ap.add_argument("-X", dest="xprops", action="append", default=[],
                    help="librdkafka property for pgoutbox in every scenario")
    ap.add_argument("--meta", help="JSON with machine/versions from run.sh")
    ap.add_argument("--drain-events", dest="o_drain_events", type=int, help="override N (per-txn workloads)")
    ap.add_argument("--drain-big", dest="o_drain_big", type=int, help="override N (the big transaction)")
    ap.add_argument("--secs", dest="o_secs", type=int, help="override seconds per rate")
    ap.add_argument("--rates", dest="o_rates", help="override rates, e.g. 2000,10000")
    ap.add_argument("--sizes", default="200B,4KB")
    ap.add_argument("--workloads", default="t1,t10,big")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--repeat", type=int, help="drain rounds per workload (default 3, --quick 1)")
    args = ap.parse_args()
    args.x = sum((["-X", x] for x in args.xprops), [])
    args.proto = 3
    if args.quick:
        args.drain_events, args.drain_big, args.secs = 20000, 20000, 5
        args.variants = [("linger.ms=5 (default)", [], [1000, 2000, 5000, 10000])]
        args.poll_intervals, args.poll_rates = [0.1, 1.0], [1000, 10000]
    else:
        args.drain_events, args.drain_big, args.secs = 200000, 1000000, 30
        args.variants = [("linger.ms=5 (default)", [], [1000, 2000, 5000, 10000]),
                         # the producer settings before the tuning, for comparison
                         ("max.in.flight=5, Nagle on (before)",
                          ["-X", "max.in.flight.requests.per.connection=5",
                           "-X", "socket.nagle.disable=false"], [2000, 10000]),
                         ("linger.ms=1", ["-X", "linger.ms=1"], [2000, 10000])]
        args.poll_intervals, args.poll_rates = [0.1, 1.0], [1000, 2000, 5000, 10000]
    args.prof_events = 20000
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    for k in ("drain_events", "drain_big", "secs"):
        if getattr(args, "o_" + k) is not None:
            setattr(args, k, getattr(args, "o_" + k))
    if args.o_rates:
        rates = [int(x) for x in args.o_rates.split(",")]
        args.variants = [(v[0], v[1], [r for r in rates if r in v[2]] or rates) for v in args.variants[:1]]
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
                        "secs": args.secs, "pgoutbox_x": args.xprops, "proto": args.proto})
    conn = db()
    res["meta"]["postgresql"] = q1(conn, "SHOW server_version")
    conn.close()
    setup_db(db())
    save(args.out, res)
    for s in args.scenarios.split(","):
        t0 = time.monotonic()
        {"drain": scen_drain, "latency": scen_latency, "polling": scen_polling,
         "profile": scen_profile}[s](args, args.out, res)
        res["meta"]["%s_s" % s] = time.monotonic() - t0
        save(args.out, res)
    res["meta"]["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    save(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
