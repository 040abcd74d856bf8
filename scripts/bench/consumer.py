#!/usr/bin/python3
"""consumer.py — the independent latency consumer of scripts/bench/run.sh.

Reads one topic (all partitions, from the beginning, no consumer group
coordination) and records, per message, receive time minus the stamp in its
payload: bench.py's pgbench script writes {"ts": <clock_timestamp() in
microseconds since the Unix epoch>, ...} in the INSERT of a one-statement
transaction, so the stamp is the commit time less the rest of that
statement and its commit (bench.py measures that offset from
pg_xact_commit_timestamp). The stamp is read from the value's bytes, so a
value that Kafka Connect's JsonConverter quoted as a JSON string
({\"ts\": ...}) works too; messages without a stamp (warm-up events) are
not counted. Everything runs on one machine, so both clocks are the same
clock.

Also kept, for the record: receive time minus the Kafka timestamp
(kafka_ts_* figures). pgoutbox and polling_relay.py set it to the commit
time, truncated to ms; Debezium sets it to its own processing time unless
the router's table.field.event.timestamp says otherwise.

    consumer.py --brokers B --topic T --expect-file F --out RESULT.json [--raw FILE]

--raw FILE also gets every latency, in microseconds, one a line (for
quantiles over several topics: the sources scenario pools three).

Prints "ready" on stdout once its fetchers are connected. Runs until the
expect file exists and holds a count that has been received, or until
--timeout seconds after the file appeared; then writes the statistics.
"""
import argparse
import json
import os
import re
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def percentile(sorted_vals, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(-(-q * len(sorted_vals) // 1)) - 1))
    return sorted_vals[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--expect-file", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds to wait for the expected count once known")
    ap.add_argument("--raw", help="write every latency (µs, one a line) to this file")
    args = ap.parse_args()

    c = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": "pgoutbox-bench-%d" % os.getpid(),  # required; never joined (assign)
        "enable.auto.commit": False,
        "fetch.wait.max.ms": int(os.environ.get("BENCH_FETCH_WAIT_MS", "10")),
        "fetch.min.bytes": 1,
        "socket.nagle.disable": True,
    })
    md = c.list_topics(args.topic, timeout=30)
    tmd = md.topics.get(args.topic)
    if tmd is None or tmd.error is not None or not tmd.partitions:
        print("consumer: topic %s not found" % args.topic, file=sys.stderr)
        return 1
    c.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in tmd.partitions])

    lat = []
    kts_lat = []  # receive time - Kafka timestamp
    ts_min = ts_max = None
    stamp = re.compile(rb'"ts\\?": ?(\d+)')

    # Per 100 ms of commit time: messages and their worst latency, to tell
    # a steady tail from a few stalls.
    series = {}

    def take(msgs):
        nonlocal ts_min, ts_max
        now = time.time() * 1000.0
        for m in msgs:
            if m is None or m.error():
                continue
            v = m.value()
            st = stamp.search(v, 0, 64) if v else None
            if st is None:
                continue
            ts = int(st.group(1)) / 1000.0  # ms
            lat.append(now - ts)
            kts_lat.append(now - m.timestamp()[1])
            b = series.setdefault(int(ts // 100), [0, 0.0])
            b[0] += 1
            b[1] = max(b[1], now - ts)
            ts_min = ts if ts_min is None or ts < ts_min else ts_min
            ts_max = ts if ts_max is None or ts > ts_max else ts_max

    def poll_once():
        # poll() returns as soon as a message is there (consume(n, timeout)
        # would wait for n messages or the whole timeout, adding up to the
        # timeout to every latency); then take what is already fetched.
        m = c.poll(0.05)
        if m is not None:
            take([m])
            take(c.consume(num_messages=1000, timeout=0))

    # Let the fetchers connect before the load starts.
    t_end = time.monotonic() + 1.5
    while time.monotonic() < t_end:
        poll_once()
    print("ready", flush=True)

    expect = None
    deadline = None
    while True:
        poll_once()
        if expect is None and os.path.exists(args.expect_file):
            with open(args.expect_file) as f:
                txt = f.read().strip()
            if txt:
                expect = int(txt)
                deadline = time.monotonic() + args.timeout
        if expect is not None and (len(lat) >= expect or time.monotonic() > deadline):
            break
    c.close()

    s = sorted(lat)
    k = sorted(kts_lat)
    res = {
        "topic": args.topic,
        "received": len(s),
        "expected": expect,
        "p50_ms": percentile(s, 0.50),
        "p90_ms": percentile(s, 0.90),
        "p99_ms": percentile(s, 0.99),
        "p999_ms": percentile(s, 0.999),
        "max_ms": s[-1] if s else None,
        "mean_ms": sum(s) / len(s) if s else None,
        "kafka_ts_p50_ms": percentile(k, 0.50),
        "kafka_ts_p99_ms": percentile(k, 0.99),
        "kafka_ts_p999_ms": percentile(k, 0.999),
        "first_ts_ms": ts_min,
        "last_ts_ms": ts_max,
        "series_100ms": [[b * 100, v[0], round(v[1], 1)] for b, v in sorted(series.items())],
    }
    if args.raw:
        with open(args.raw + ".tmp", "w") as f:
            f.writelines("%d\n" % round(v * 1000) for v in lat)
        os.replace(args.raw + ".tmp", args.raw)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
