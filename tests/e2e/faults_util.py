"""Helpers of the fault tests (test_faults.py): a writer thread that keeps
committing small outbox transactions (and rolling some back) across
connection losses, a TCP proxy that can black-hole either direction, the
stack's processes (Kafka's pid, scripts/stack.sh kafka-stop / kafka-start /
restart-pg), and the delivery checks every fault test ends with.

As in util.py, waiting is polling a condition against a deadline; sleeps only
pace the load or hold an outage for its duration.
"""

import json
import os
import random
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psycopg2
from confluent_kafka import KafkaError, KafkaException

import util

REPO = Path(__file__).resolve().parents[2]
STACK_SH = REPO / "scripts" / "stack.sh"
PLAIN_BIN = Path(os.environ.get("PGOUTBOX_PLAIN_BIN", str(REPO / "build" / "cdc" / "pgoutbox")))

# PGOUTBOX_SOAK=1 runs the long variants (issue 4's numbers).
SOAK = os.environ.get("PGOUTBOX_SOAK", "") not in ("", "0")


# ---------------------------------------------------------------------------
# LSNs
# ---------------------------------------------------------------------------

def lsn(text):
    """'16/B374D848' -> int; None stays None."""
    if text is None:
        return None
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_text(value):
    return "%X/%X" % (value >> 32, value & 0xFFFFFFFF)


def slot_row(conn, slot):
    """(confirmed_flush_lsn int, restart_lsn int, active_pid, wal_status,
    pg_current_wal_lsn() int) of `slot`, or None if it is gone."""
    row = util.query_one(conn, "SELECT confirmed_flush_lsn::text, restart_lsn::text, active_pid,"
                               " wal_status, pg_current_wal_lsn()::text"
                               " FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    if row is None:
        return None
    return lsn(row[0]), lsn(row[1]), row[2], row[3], lsn(row[4])


def execute(conn, sql, params=None):
    """A statement without a result (CHECKPOINT, ALTER SYSTEM ...)."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
    if not conn.autocommit:
        conn.commit()


def confirmed(conn, slot):
    row = slot_row(conn, slot)
    assert row is not None, "replication slot %s vanished" % slot
    return row[0]


# ---------------------------------------------------------------------------
# Continuous load
# ---------------------------------------------------------------------------

class Txn:
    __slots__ = ("ids", "before", "after", "t")

    def __init__(self, ids, before, after, t):
        self.ids, self.before, self.after, self.t = ids, before, after, t


class Writer(threading.Thread):
    """Commits small transactions (1..max_rows events over `nkeys` keys and
    the given aggregate types) at an application-like pace; `rollback` of them
    are rolled back instead.  Every payload carries {"key", "seq"}: seq grows
    per key in commit order (one writer, one transaction at a time), which is
    what the per-key order check compares.

    A lost connection (PostgreSQL restarting) is not an error: the writer
    reconnects.  A COMMIT whose outcome is unknown is "in doubt"; what
    PostgreSQL has in the table decides.  For each committed transaction it
    records pg_current_wal_lsn() just before it started and just after its
    COMMIT (>= the commit's end LSN)."""

    def __init__(self, db, types, table="public.outbox", nkeys=8, max_rows=5, rollback=0.08,
                 pace=0.004, seed=1, reconnect_for=90):
        super().__init__(daemon=True)
        self.dsn = db.dsn
        self.table = table
        self.keys = [(types[i % len(types)], "k%d" % i) for i in range(nkeys)]
        self.seq = {k: 0 for k in self.keys}
        self.max_rows, self.rollback, self.pace = max_rows, rollback, pace
        self.reconnect_for = reconnect_for
        self.rng = random.Random(seed)
        self.txns = []
        self.rolled_back = set()
        self.in_doubt = set()
        self.events = 0             # events of transactions known to be committed
        self.connection_losses = 0
        self.error = None
        self._halt = threading.Event()
        self._pause = threading.Event()
        self.idle = threading.Event()   # set while paused between transactions

    # -- control --------------------------------------------------------------
    def stop(self, timeout=60):
        self._halt.set()
        self._pause.clear()
        self.join(timeout)
        assert not self.is_alive(), "writer thread did not stop"
        self.check()

    def pause(self, timeout=30):
        """Hold the writer between transactions; returns once it is idle."""
        self._pause.set()
        util.wait_for(lambda: self.idle.is_set() or self.error or not self.is_alive(), timeout,
                      "the writer to pause")
        self.check()

    def resume(self):
        self._pause.clear()

    def check(self):
        assert self.error is None, "writer failed: %r" % (self.error,)

    def wait_events(self, n, timeout=60):
        util.wait_for(lambda: self.events >= n or self.error, timeout,
                      "the writer to commit %d events" % n)
        self.check()

    def last_lsn(self):
        """pg_current_wal_lsn() after the newest committed transaction."""
        for t in reversed(self.txns):
            if t.after is not None:
                return t.after
        return None

    def txns_after(self, position):
        """Transactions that started at or after WAL position `position`."""
        return [t for t in self.txns if t.before is not None and t.before >= position]

    # -- the thread -----------------------------------------------------------
    def _rows(self):
        rows = []
        for _ in range(self.rng.randint(1, self.max_rows)):
            k = self.rng.choice(self.keys)
            self.seq[k] += 1
            rows.append(util.event(k[0], k[1], "Tick", {"key": k[1], "seq": self.seq[k],
                                                        "pad": "p" * self.rng.randint(0, 40)}))
        return rows

    def run(self):
        conn = None
        lost_since = None
        while not self._halt.is_set():
            if self._pause.is_set():
                self.idle.set()
                time.sleep(0.01)
                continue
            self.idle.clear()
            try:
                if conn is None:
                    conn = util.connect(self.dsn)
                before = lsn(util.current_wal_lsn(conn))
                rows = self._rows()
                ids = [r[0] for r in rows]
                with conn.cursor() as cur:
                    util.insert_events(cur, rows, self.table)
                if self.rng.random() < self.rollback:
                    self.rolled_back.update(ids)   # never committed, whatever happens next
                    conn.rollback()
                else:
                    try:
                        conn.commit()
                    except psycopg2.Error:
                        self.in_doubt.update(ids)
                        raise
                    self.events += len(ids)
                    txn = Txn(ids, before, None, time.monotonic())
                    self.txns.append(txn)
                    txn.after = lsn(util.current_wal_lsn(conn))
                lost_since = None
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
                # The server went away (restart): reconnect, within bounds.
                self.connection_losses += 1
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
                conn = None
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > self.reconnect_for:
                    self.error = e
                    return
                time.sleep(0.2)
                continue
            except Exception as e:  # surfaced by check()
                self.error = e
                return
            time.sleep(self.pace)
        if conn is not None:
            conn.close()


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------

RETRIABLE_READ_ERRORS = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                         KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TRANSPORT,
                         KafkaError._TIMED_OUT}


def kafka_messages(db, timeout=30):
    """db.kafka_messages(), retried while a topic pgoutbox just created has
    no leader yet (reading right after the first produce, or after a broker
    restart)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return db.kafka_messages()
        except KafkaException as e:
            if e.args[0].code() not in RETRIABLE_READ_ERRORS or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def kafka_ids(db):
    return {m.id for m in kafka_messages(db)}


def check_confirmed_means_acked(writer, confirmed_lsn, in_kafka, what):
    """Every transaction wholly at or before `confirmed_lsn` (its
    after-commit LSN <= it) has all its events in `in_kafka`.  Returns the
    number of transactions covered."""
    covered = [t for t in writer.txns if t.after is not None and t.after <= confirmed_lsn]
    missing = [i for t in covered for i in t.ids if i not in in_kafka]
    assert not missing, (
        "%s: the slot was confirmed at %s, past transactions whose events are not in Kafka: "
        "%d missing events, e.g. %r" % (what, lsn_text(confirmed_lsn), len(missing), missing[:5]))
    return len(covered)


def check_key_order(messages, rows):
    """Per key, the first deliveries carry strictly increasing seq (commit
    order); with check_delivery's exact id set this is commit order."""
    bad = []
    for (topic, key), ids in util.first_deliveries_by_key(messages).items():
        seqs = [json.loads(rows[i].payload)["seq"] for i in ids]
        if any(a >= b for a, b in zip(seqs, seqs[1:])):
            i = next(j for j, (a, b) in enumerate(zip(seqs, seqs[1:])) if a >= b)
            bad.append("%s/%r: seq %r at first deliveries #%d.." % (topic, key, seqs[i:i + 4], i))
    assert not bad, "per-key order broken among first deliveries: " + "; ".join(bad[:5])


def verify(db, writer=None, table="public.outbox", forbidden=()):
    """The independent consumer's verdict: every committed row of `table` is
    in Kafka (lost = 0), nothing rolled back is, each message matches its row,
    per-key commit order among first deliveries.  Returns (rows, messages,
    lost, duplicates)."""
    rows = util.fetch_rows(db.conn, table)
    messages = kafka_messages(db)
    forbidden = set(forbidden) | (writer.rolled_back if writer else set())
    assert not (forbidden & set(rows)), "a rolled-back transaction's row is in the table?"
    got = {m.id for m in messages}
    lost = sorted(set(rows) - got)
    assert not lost, "%d committed events never reached Kafka (of %d), e.g. %r" % (
        len(lost), len(rows), lost[:5])
    dups = util.check_delivery(messages, rows, forbidden_ids=forbidden)
    check_key_order(messages, rows)
    if writer is not None:
        unresolved = writer.in_doubt - set(rows)
        print("writer: %d committed transactions, %d rolled-back events, %d in doubt (%d of them "
              "not committed), %d connection losses"
              % (len(writer.txns), len(writer.rolled_back), len(writer.in_doubt), len(unresolved),
                 writer.connection_losses))
    return rows, messages, len(lost), dups


def report(scenario, rounds, events, lost, dups, recovery):
    """One row of docs/guarantees.md's table, in the session summary."""
    util.note("| %s | %s | %d | %d | %d | %s |" % (scenario, rounds, events, lost, dups, recovery))


def seconds(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return "%.1f s" % values[0]
    return "max %.1f s" % max(values)


def wait_caught_up(db, p, position, timeout, since=None):
    """Poll until the slot is confirmed at `position`; return the seconds
    since `since` (default: now)."""
    since = time.monotonic() if since is None else since
    util.wait_confirmed(db.conn, db.slot, lsn_text(position), timeout, proc=p)
    return time.monotonic() - since


# ---------------------------------------------------------------------------
# The stack's processes
# ---------------------------------------------------------------------------

def state_dir(stack):
    state = stack.env.get("PGOUTBOX_STATE")
    if not state or not os.path.isdir(state):
        raise AssertionError("fault tests need scripts/stack.sh's state directory "
                             "($PGOUTBOX_STATE) to reach Kafka's and PostgreSQL's processes")
    return Path(state)


def kafka_pid(stack):
    pid = int((state_dir(stack) / "kafka" / "pid").read_text().strip())
    os.kill(pid, 0)
    return pid


class FrozenKafka:
    """with FrozenKafka(stack): the broker is SIGSTOPped inside, SIGCONTed on
    the way out whatever happens."""

    def __init__(self, stack):
        self.pid = kafka_pid(stack)

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)
        util.wait_for(lambda: proc_state(self.pid) in ("T", "t"), 10, "Kafka to stop (SIGSTOP)")
        return self

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGCONT)
        return False


def proc_state(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def stack_sh(stack, *args, timeout=180):
    r = subprocess.run([str(STACK_SH)] + list(args) + ["--state", str(state_dir(stack))],
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, "scripts/stack.sh %s failed (%d):\n%s%s" % (
        " ".join(args), r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    return r


class StoppedKafka:
    """with StoppedKafka(stack): the broker is killed (SIGKILL by default)
    inside and restarted from the same state on the way out."""

    def __init__(self, stack, sig="KILL"):
        self.stack, self.sig = stack, sig
        self.restart_s = None

    def __enter__(self):
        stack_sh(self.stack, "kafka-stop", "--signal", self.sig)
        return self

    def __exit__(self, *exc):
        t = time.monotonic()
        stack_sh(self.stack, "kafka-start")
        self.restart_s = time.monotonic() - t
        return False


def pg_restart(stack, mode):
    """scripts/stack.sh restart-pg --mode MODE (fast | immediate): pg_ctl
    restart of the stack's own server (whatever its major), on the same
    port; returns once PostgreSQL answers queries again."""
    stack_sh(stack, "restart-pg", "--mode", mode)

    def ready():
        try:
            util.connect(stack.dsn("postgres")).close()
            return True
        except psycopg2.OperationalError:
            return False
    util.wait_for(ready, 60, "PostgreSQL to accept connections after restart", interval=0.1)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    """User + system CPU time of process pid so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_count(p, text):
    return p.stderr.count(text)


# ---------------------------------------------------------------------------
# A TCP proxy that can cut the network
# ---------------------------------------------------------------------------

class TcpProxy(threading.Thread):
    """Forwards 127.0.0.1:self.port to (host, port).  cut(c2s, s2c) stops
    forwarding in the given directions for every connection, existing and
    new, without closing any socket: bytes (and a FIN) sent into a cut
    direction are held, as a network partition holds packets that TCP keeps
    retransmitting, and flow again after heal() if both ends still exist.
    The endpoints see exactly what a black hole shows them: silence."""

    def __init__(self, host, port):
        super().__init__(daemon=True)
        self.target = (host, int(port))
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.c2s_open = True
        self.s2c_open = True
        self.pairs = []          # [client, server, buf to server, buf to client]
        self.accepted = 0
        self.error = None
        self._halt = threading.Event()

    def cut(self, c2s=True, s2c=True):
        self.c2s_open, self.s2c_open = not c2s, not s2c

    def heal(self):
        self.c2s_open = self.s2c_open = True

    def close(self):
        self._halt.set()
        self.join(10)
        for pair in self.pairs:
            self._close(pair)
        self.listener.close()

    @staticmethod
    def _close(pair):
        for s in pair[:2]:
            try:
                s.close()
            except OSError:
                pass

    def run(self):
        try:
            self._loop()
        except Exception as e:  # surfaced by the test
            self.error = e

    def _loop(self):
        while not self._halt.is_set():
            rl, wl = [self.listener], []
            for c, s, to_s, to_c in self.pairs:
                if self.c2s_open:
                    if len(to_s) < (1 << 20):
                        rl.append(c)
                    if to_s:
                        wl.append(s)
                if self.s2c_open:
                    if len(to_c) < (1 << 20):
                        rl.append(s)
                    if to_c:
                        wl.append(c)
            r, w, _ = select.select(rl, wl, [], 0.05)
            if self.listener in r:
                try:
                    c, _ = self.listener.accept()
                except BlockingIOError:
                    c = None
                if c is not None:
                    try:
                        s = socket.create_connection(self.target, timeout=5)
                    except OSError:
                        c.close()
                    else:
                        c.setblocking(False)
                        s.setblocking(False)
                        self.pairs.append([c, s, bytearray(), bytearray()])
                        self.accepted += 1
            dead = []
            for pair in self.pairs:
                c, s, to_s, to_c = pair
                try:
                    if c in r:
                        data = c.recv(65536)
                        if not data:
                            raise ConnectionResetError("client closed")
                        to_s += data
                    if s in r:
                        data = s.recv(65536)
                        if not data:
                            raise ConnectionResetError("server closed")
                        to_c += data
                    if s in w and to_s:
                        del to_s[:s.send(to_s)]
                    if c in w and to_c:
                        del to_c[:c.send(to_c)]
                except BlockingIOError:
                    pass
                except OSError:
                    dead.append(pair)
            for pair in dead:
                # Pass on what the closing side sent before its FIN, best effort.
                c, s, to_s, to_c = pair
                for sock, buf in ((s, to_s), (c, to_c)):
                    try:
                        if buf:
                            sock.send(buf)
                    except OSError:
                        pass
                self._close(pair)
                self.pairs.remove(pair)
