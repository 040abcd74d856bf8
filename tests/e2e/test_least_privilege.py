"""pgoutbox runs as a least-privilege role made by scripts/setup-slot.sh
--create-role: LOGIN REPLICATION and SELECT on the outbox table, not a
superuser.  --check passes as that role and pgoutbox streams as it."""

import subprocess

import pytest

import util
from conftest import ENDPOS_TIMEOUT, SETUP_SLOT_SH

pytestmark = pytest.mark.core


def test_streams_as_least_privilege_role(outbox_db, pgoutbox, stack):
    db = outbox_db
    role = "pgoutbox_lp_" + db.tag
    setup = subprocess.run([str(SETUP_SLOT_SH), "-d", db.dsn, "--slot", db.slot,
                            "--create-role", role], capture_output=True, text=True, timeout=60)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    again = subprocess.run([str(SETUP_SLOT_SH), "-d", db.dsn, "--slot", db.slot,
                            "--create-role", role], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, "not idempotent:\n" + again.stdout + again.stderr
    try:
        su, repl, login = util.query_one(
            db.conn, "SELECT rolsuper, rolreplication, rolcanlogin FROM pg_roles"
                     " WHERE rolname = %s", (role,))
        db.conn.commit()
        assert (su, repl, login) == (False, True, True)

        dsn = stack.dsn(db.name, user=role)
        check = pgoutbox.run(*db.args("--check", dsn=dsn), timeout=60)
        assert check.returncode == 0, "--check as %s:\n%s" % (role, check.describe() + check.stdout)

        t = db.aggtype("lp")
        for i in range(5):
            util.commit_events(db.conn, [util.event(t, "k%d" % (i % 2), "Made", {"i": i})])
        rows = db.rows()
        endpos = db.wal_lsn()
        p = pgoutbox.start(*db.args(endpos=endpos, dsn=dsn))
        p.expect_exit(util.EXIT_OK, ENDPOS_TIMEOUT)
        assert db.confirmed_at_least(endpos)
        util.check_delivery(db.kafka_messages(), rows)
    finally:
        with db.conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                        (role,))
        db.conn.commit()
        admin = db.connect(autocommit=True)
        with admin.cursor() as cur:
            cur.execute('DROP OWNED BY "%s"' % role)
            cur.execute('DROP ROLE IF EXISTS "%s"' % role)
