"""The whole pgoutput protocol the server can send reaches pgoutbox and only
committed outbox inserts come out: a publication shared with a busy
non-outbox table (inserts, updates, deletes, truncates, replica identity
full), logical decoding messages (transactional and not, any prefix),
prepared transactions committed and rolled back, and a transaction larger
than logical_decoding_work_mem (spilled, never streamed: pgoutbox does not
ask for streaming)."""

import json
import re

import pytest

import util
from conftest import ENDPOS_TIMEOUT

pytestmark = pytest.mark.core


def test_full_protocol_mix_only_committed_outbox_inserts(outbox_db, pgoutbox, stack):
    db = outbox_db
    t = db.aggtype("proto")
    admin = util.connect(stack.dsn("postgres"), autocommit=True)
    with admin.cursor() as cur:
        cur.execute("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
        cur.execute("SELECT pg_reload_conf()")
    try:
        with db.conn.cursor() as cur:
            cur.execute("CREATE TABLE public.neighbour (id int PRIMARY KEY, v text)")
            cur.execute("ALTER TABLE public.neighbour REPLICA IDENTITY FULL")
            cur.execute("ALTER PUBLICATION pgoutbox ADD TABLE public.neighbour")
            cur.execute("ALTER PUBLICATION pgoutbox SET"
                        " (publish = 'insert, update, delete, truncate')")
        db.conn.commit()

        committed = []
        rolled_back = []
        cur = db.conn.cursor()
        # 1. Outbox inserts mixed with neighbour DML and messages in one transaction.
        cur.execute("INSERT INTO public.neighbour SELECT g, 'v' || g FROM generate_series(1, 50) g")
        committed += util.commit_events(db.conn, [util.event(t, "a", "E", {"n": 1})])
        cur.execute("SELECT pg_logical_emit_message(true, 'outbox', '{\"not\": \"configured\"}')")
        cur.execute("UPDATE public.neighbour SET v = 'x' WHERE id <= 25")
        cur.execute("DELETE FROM public.neighbour WHERE id > 40")
        committed += util.commit_events(db.conn, [util.event(t, "a", "E", {"n": 2}),
                                                  util.event(t, "b", "E", {"n": 3})])
        # 2. Non-transactional messages, outside any transaction.
        db.conn.autocommit = True
        cur.execute("SELECT pg_logical_emit_message(false, 'outbox', 'ignored')")
        cur.execute("SELECT pg_logical_emit_message(false, 'other', '\\x00ff'::bytea)")
        cur.execute("TRUNCATE public.neighbour")
        db.conn.autocommit = False
        # 3. Prepared transactions: one committed, one rolled back.
        twopc = db.connect(autocommit=True)
        with twopc.cursor() as c2:
            for gid, commit in (("pgo_commit_" + db.tag, True), ("pgo_rollback_" + db.tag, False)):
                rows = [util.event(t, "p", "Prepared", {"gid": gid, "i": i}) for i in range(3)]
                c2.execute("BEGIN")
                util.insert_events(c2, rows)
                c2.execute("PREPARE TRANSACTION %s", (gid,))
                c2.execute(("COMMIT PREPARED %s" if commit else "ROLLBACK PREPARED %s"), (gid,))
                (committed if commit else rolled_back).extend(r[0] for r in rows)
        # 4. A transaction far larger than logical_decoding_work_mem (64 kB).
        big = [util.event(t, "big%d" % (i % 4), "Big", {"i": i, "pad": "x" * 200})
               for i in range(3000)]
        util.insert_events(cur, big)
        cur.execute("INSERT INTO public.neighbour SELECT g, repeat('y', 300)"
                    " FROM generate_series(1, 2000) g")
        db.conn.commit()
        committed += [r[0] for r in big]
        # 5. A rolled-back transaction of the same size.
        gone = [util.event(t, "gone", "Big", {"i": i, "pad": "z" * 200}) for i in range(3000)]
        util.insert_events(cur, gone)
        db.conn.rollback()
        rolled_back += [r[0] for r in gone]
        cur.close()

        rows = db.rows()
        assert set(rows) == set(committed)
        endpos = db.wal_lsn()
        p = pgoutbox.start(*db.args(endpos=endpos))
        p.expect_exit(util.EXIT_OK, ENDPOS_TIMEOUT)
        assert db.confirmed_at_least(endpos), util.slot_state(db.conn, db.slot)
        # The highest protocol each server speaks: 13 has 1, 14 added 2
        # (messages), 15 3 (two-phase), 16 4 (parallel streaming).
        want = {13: 1, 14: 2, 15: 3}.get(stack.pg_version, 4)
        m = re.search(r"protocol (\d+)", p.stderr)
        assert m and int(m.group(1)) == want, "PostgreSQL %d speaks protocol %d:\n%s" % (
            stack.pg_version, want, p.describe())

        messages = db.kafka_messages()
        dups = util.check_delivery(messages, rows, forbidden_ids=rolled_back)
        assert dups == 0, "%d duplicate deliveries in a clean run" % dups
        by_key = util.first_deliveries_by_key(messages)
        checked = 0
        for (topic, key), ids in by_key.items():
            field = {b"a": "n", b"p": "i"}.get(key, "i" if key.startswith(b"big") else None)
            if field is None:
                continue
            nums = [json.loads(rows[i].payload)[field] for i in ids]
            assert nums == sorted(nums), "key %r out of commit order: %r" % (key, nums[:20])
            checked += len(nums)
        assert checked == len(rows) - 1, "order checked for %d of %d events" % (checked, len(rows))
    finally:
        # A prepared transaction left behind would block every later slot
        # creation on the cluster (it waits for a consistent point).
        leftover = db.connect(autocommit=True)
        with leftover.cursor() as cur:
            cur.execute("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE %s",
                        ("%_" + db.tag,))
            for (gid,) in cur.fetchall():
                cur.execute("ROLLBACK PREPARED %s", (gid,))
        with admin.cursor() as cur:
            cur.execute("ALTER SYSTEM RESET logical_decoding_work_mem")
            cur.execute("SELECT pg_reload_conf()")
        admin.close()
