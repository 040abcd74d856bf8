"""The daemon is valgrind-clean on a real stream: no invalid reads or writes,
no uninitialised values, no definite leaks.

The ASan+UBSan build covers every other test; this one runs the plain build
(build/cdc/pgoutbox, or PGOUTBOX_PLAIN_BIN) under memcheck once, through
connect, decode, produce, acknowledge, confirm and a clean exit.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

import util
from conftest import REPO

VALGRIND_ERROR = 99


@pytest.fixture
def plain_bin():
    binary = Path(os.environ.get("PGOUTBOX_PLAIN_BIN") or REPO / "build" / "cdc" / "pgoutbox")
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail("plain pgoutbox build not found at %s (meson setup build)" % binary)
    if shutil.which("valgrind") is None:
        pytest.fail("valgrind is not installed: run scripts/install-deps.sh")
    return binary


def test_stream_under_valgrind(outbox_db, pgoutbox, plain_bin, tmp_path):
    db = outbox_db
    rows = []
    for t in range(50):
        rows.append(util.event(db.aggtype("vg"), "key-%d" % (t % 7), "Created",
                               {"t": t, "text": "ü日本" * t}))
    for i in range(0, len(rows), 5):
        util.commit_events(db.conn, rows[i:i + 5])
    util.commit_events(db.conn, [util.event(db.aggtype("vg"), "null", "Deleted", None)])
    end = db.wal_lsn()
    committed = db.rows()

    p = util.PgoutboxProcess(
        "valgrind",
        ["--error-exitcode=%d" % VALGRIND_ERROR, "--leak-check=full",
         "--errors-for-leak-kinds=definite", "--track-origins=yes", "-q",
         str(plain_bin)] + db.args(endpos=end),
        tmp_path, "valgrind", pgoutbox.env())
    pgoutbox.runs.append(p)
    rc = p.wait(180)
    assert rc != VALGRIND_ERROR, "valgrind found errors:\n" + p.describe()
    assert rc == util.EXIT_OK, p.describe()
    report = [l for l in p.stderr.splitlines() if re.match(r"==\d+== ", l)]
    assert not report, "valgrind printed a report:\n" + "\n".join(report[:80])
    assert db.confirmed_at_least(end)
    util.check_delivery(db.kafka_messages(), committed)
