"""systemd integration: the notify protocol over a fake $NOTIFY_SOCKET
(READY=1 once streaming, STATUS=, WATCHDOG=1 at half of WATCHDOG_USEC,
STOPPING=1), and the unit file's promises."""

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

import util
from conftest import REPO, SHUTDOWN_TIMEOUT

UNIT = REPO / "scripts" / "pgoutbox.service"


class FakeNotify:
    """A datagram socket standing in for systemd's; collects (time, message)."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.messages = []

    def drain(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append((time.monotonic(), data.decode()))

    def lines(self):
        return [line for _, m in self.drain() for line in m.split("\n")]

    def close(self):
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    fake = FakeNotify(path)
    yield path, fake
    fake.close()


def test_notify_ready_watchdog_stopping(outbox_db, pgoutbox, notify_socket):
    db = outbox_db
    path, fake = notify_socket
    p = pgoutbox.start(*db.args(), env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    util.wait_for(lambda: "READY=1" in fake.lines() or p.poll() is not None, 30, "READY=1")
    assert p.poll() is None, p.describe()
    # READY only once the slot is being streamed from.
    assert util.slot_state(db.conn, db.slot)[1], "READY=1 before the slot was active"
    ready_msg = [m for _, m in fake.messages if "READY=1" in m][0]
    assert "STATUS=streaming from slot" in ready_msg, ready_msg

    # WATCHDOG=1 about every 200 ms (half of 400 ms).
    start = time.monotonic()
    util.wait_for(lambda: sum(1 for t, m in fake.drain() if m == "WATCHDOG=1" and t > start) >= 5,
                  10, "five WATCHDOG=1 pings")
    pings = [t for t, m in fake.messages if m == "WATCHDOG=1" and t > start]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < 0.4, "watchdog pings too far apart: %r" % gaps

    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)
    assert any(line == "STOPPING=1" for line in fake.lines()), fake.messages[-5:]
    assert [m for _, m in fake.messages].count("READY=1\nSTATUS=streaming from slot \"%s\""
                                               % db.slot) == 1


def test_notify_reloading_on_sighup(outbox_db, pgoutbox, notify_socket):
    """SIGHUP (the unit's ExecReload) is bracketed by RELOADING=1 with the
    monotonic clock and a READY=1 once the new configuration is in force."""
    db = outbox_db
    path, fake = notify_socket
    p = pgoutbox.start(*db.args(), env={"NOTIFY_SOCKET": path})
    util.wait_for(lambda: "READY=1" in fake.lines() or p.poll() is not None, 30, "READY=1")
    assert p.poll() is None, p.describe()
    assert not any(l.startswith("RELOADING=1") for l in fake.lines()), fake.messages
    before_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    p.signal(signal.SIGHUP)
    util.wait_for(lambda: "configuration reloaded" in p.stderr, 10, "the reload to be logged")
    util.wait_for(lambda: len([m for _, m in fake.drain() if m.startswith("RELOADING=1")]) == 1
                  and fake.messages[-1][1] == "READY=1", 10, "RELOADING=1 then READY=1")
    after_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    msgs = [m for _, m in fake.messages]
    i = next(i for i, m in enumerate(msgs) if m.startswith("RELOADING=1"))
    fields = dict(line.split("=", 1) for line in msgs[i].split("\n"))
    assert set(fields) == {"RELOADING", "MONOTONIC_USEC"}, msgs[i]
    assert before_us <= int(fields["MONOTONIC_USEC"]) <= after_us, (before_us, msgs[i], after_us)
    assert "READY=1" in msgs[i + 1:], msgs
    # Still streaming after the reload.
    util.commit_events(db.conn, [util.event(db.aggtype("reload"), "k", "T", {"n": 1})])
    util.wait_confirmed(db.conn, db.slot, db.wal_lsn(), 30, proc=p)
    p.terminate()
    p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)


def test_notify_status_while_not_streaming(pgoutbox, stack, notify_socket):
    path, fake = notify_socket
    dsn = "host=127.0.0.1 port=%d dbname=x connect_timeout=2" % util.free_port()
    p = pgoutbox.start("-d", dsn, "-b", stack.brokers, "--shutdown-timeout", "5",
                       env={"NOTIFY_SOCKET": path})
    util.wait_for(lambda: any(l.startswith("STATUS=not streaming: could not connect")
                              for l in fake.lines()), 30, "a STATUS= with the connection error")
    assert "READY=1" not in fake.lines(), "READY=1 without streaming"
    p.terminate()
    p.expect_exit(util.EXIT_OK, 20)


def test_notify_abstract_socket_and_foreign_watchdog(outbox_db, pgoutbox):
    db = outbox_db
    name = "pgoutbox-e2e-%s" % db.tag
    fake = FakeNotify("\0" + name)
    try:
        # WATCHDOG_PID names another process: no pings for us.
        p = pgoutbox.start(*db.args(), env={"NOTIFY_SOCKET": "@" + name,
                                            "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
        util.wait_for(lambda: "READY=1" in fake.lines(), 30, "READY=1 on the abstract socket")
        time.sleep(0.5)   # a window in which 100 ms pings would have come
        assert "WATCHDOG=1" not in fake.lines()
        p.terminate()
        p.expect_exit(util.EXIT_OK, SHUTDOWN_TIMEOUT + 10)
    finally:
        fake.close()


def test_without_notify_socket_nothing_changes(outbox_db, pgoutbox):
    db = outbox_db
    util.commit_events(db.conn, [util.event(db.aggtype("nosd"), "k", "T", {"n": 1})])
    endpos = db.wal_lsn()
    p = pgoutbox.run(*db.args(endpos=endpos), timeout=60, drop_env=("NOTIFY_SOCKET",),
                     env={"WATCHDOG_USEC": "100000"})
    assert p.returncode == util.EXIT_OK, p.describe()


def unit_settings():
    out = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_unit_file():
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert any("pgoutbox" in v and "-c" in v for v in s["ExecStart"])
    assert any("HUP" in v for v in s["ExecReload"])
    for key in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "ProtectHome",
                "PrivateDevices", "ProtectKernelTunables", "ProtectControlGroups",
                "RestrictAddressFamilies", "CapabilityBoundingSet", "SystemCallFilter",
                "WatchdogSec", "RestartPreventExitStatus"):
        assert key in s, "pgoutbox.service lacks %s=" % key
    assert s["ProtectSystem"] == ["strict"] and s["NoNewPrivileges"] == ["yes"]
    # Stopping may take shutdown_timeout (default 30 s): systemd must wait longer.
    assert int(re.match(r"\d+", s["TimeoutStopSec"][0]).group()) > 30
    analyze = shutil.which("systemd-analyze")
    if analyze:
        # The binary and man page need not be installed on the test machine;
        # any other complaint about the unit is a failure.
        r = subprocess.run([analyze, "verify", str(UNIT)], capture_output=True, text=True)
        problems = [l for l in r.stderr.splitlines() if "pgoutbox.service" in l
                    and "is not executable" not in l and "man pgoutbox(1)" not in l]
        assert not problems, r.stderr
