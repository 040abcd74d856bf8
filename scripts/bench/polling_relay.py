#!/usr/bin/python3
"""polling_relay.py — a straightforward polling outbox relay: the baseline
that pgoutbox is measured against in scripts/bench/run.sh.

Loop:
    BEGIN;
    SELECT ... FROM <table> WHERE sent_at IS NULL ORDER BY seq
        LIMIT <batch> FOR UPDATE SKIP LOCKED;
    produce each row, flush (wait for every ack);
    UPDATE <table> SET sent_at = now() WHERE seq = ANY(<the batch>);
    COMMIT;
    sleep <interval> unless the batch was full.

Producer settings as pgoutbox's defaults: enable.idempotence, acks=all,
partitioner=murmur2_random, linger.ms=5, max.in.flight=1, Nagle off. Topic outbox.event.<aggregatetype>,
key aggregateid, value payload (JSON text), headers id and type, like pgoutbox.
The Kafka timestamp is the row's commit time (pg_xact_commit_timestamp(xmin),
track_commit_timestamp is on in the bench stack) so that the bench consumer
measures commit-to-consumer latency for both relays in the same way.

The table (created by bench.py):
    seq bigserial PRIMARY KEY, id uuid, aggregatetype text, aggregateid text,
    type text, payload jsonb, sent_at timestamptz,
    plus a partial index on (seq) WHERE sent_at IS NULL.

Prints "backend_pid N" on stdout once connected. SIGTERM/SIGINT: finish the
current batch and exit 0.
"""
import argparse
import signal
import sys
import time

import psycopg2
from confluent_kafka import Producer

stop = False


def on_signal(signum, frame):
    global stop
    stop = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--table", default="outbox_poll")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    prod = Producer({
        "bootstrap.servers": args.brokers,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "max.in.flight.requests.per.connection": 1,
        "socket.nagle.disable": True,
        "client.id": "polling-relay",
    })
    failed = []

    def on_delivery(err, msg):
        if err is not None:
            failed.append(err)

    conn = psycopg2.connect(args.dsn)
    cur = conn.cursor()
    cur.execute("SELECT pg_backend_pid()")
    print("backend_pid %d" % cur.fetchone()[0], flush=True)
    conn.commit()

    select = (
        "SELECT seq, id::text, aggregatetype, aggregateid, type, payload::text, "
        "(extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000)::bigint "
        "FROM %s WHERE sent_at IS NULL ORDER BY seq LIMIT %%s FOR UPDATE SKIP LOCKED" % args.table)
    update = "UPDATE %s SET sent_at = now() WHERE seq = ANY(%%s)" % args.table
    sent = 0
    while not stop:
        cur.execute(select, (args.batch,))
        rows = cur.fetchall()
        for seq, eid, agg, key, typ, payload, ts in rows:
            while True:
                try:
                    prod.produce("outbox.event." + agg, key=key, value=payload,
                                 headers=[("id", eid), ("type", typ)],
                                 timestamp=ts or 0, on_delivery=on_delivery)
                    break
                except BufferError:
                    prod.poll(0.01)
        if rows:
            prod.flush()
        if failed:
            print("polling_relay: delivery failed: %s; retrying the batch" % failed[0],
                  file=sys.stderr)
            failed.clear()
            conn.rollback()
            time.sleep(args.interval)
            continue
        if rows:
            cur.execute(update, ([r[0] for r in rows],))
        conn.commit()
        sent += len(rows)
        if len(rows) < args.batch:
            time.sleep(args.interval)
    conn.close()
    print("sent %d" % sent, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
