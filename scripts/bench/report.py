#!/usr/bin/python3
"""report.py — results.json of scripts/bench/bench.py → markdown + PNG plot.

    report.py --results R.json --md OUT.md --img-dir DIR [--note TEXT]
              [--docs docs/benchmarks.md --docs-img-dir docs/img]

--docs splices the generated sections into the file between the markers
below (appending them at the end the first time), leaving every other
section of the file as it is; the plot is copied to --docs-img-dir.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

BEGIN = "<!-- BEGIN scripts/bench/run.sh (generated: edit run.sh/report.py, not this part) -->"
END = "<!-- END scripts/bench/run.sh -->"
PLOT = "latency-percentiles.png"

TARGET_DRAIN = 0.9
TARGET_P99 = {2000: 10.0, 10000: 25.0}
TARGET_POLL_FACTOR = 50.0
TARGET_RSS_KB = 16 * 1024


def f(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) >= 1000:
        return "{:,.0f}".format(v)
    return "{:,.{}f}".format(v, nd)


def fi(v):
    return "–" if v is None else "{:,.0f}".format(v)


def per_m(cpu, n):
    return None if cpu is None or not n else cpu / n * 1e6


def mb(kb):
    return None if kb is None else kb / 1024.0


def yes(b):
    return "**met**" if b else "**missed**"


def plot(r, img_dir):
    lat = [x for x in r.get("latency", []) if x["variant"].endswith("(default)")]
    poll = r.get("polling", [])
    if not lat and not poll:
        return None
    rates = sorted({x["rate"] for x in lat} | {x["rate"] for x in poll})
    data = os.path.join(img_dir, "latency.dat")
    allat = r.get("latency", [])
    series = [("pgoutbox (linger.ms=5, default)", lambda rate: next((x for x in lat if x["rate"] == rate), None), False)]
    for v in sorted({x["variant"] for x in allat} - {x["variant"] for x in lat}):
        series.append(("pgoutbox " + v, lambda rate, v=v: next(
            (x for x in allat if x["rate"] == rate and x["variant"] == v), None), True))
    for iv in sorted({x["interval_ms"] for x in poll}):
        series.append(("polling %d ms" % iv,
                       lambda rate, iv=iv: next((x for x in poll if x["rate"] == rate and
                                                 x["interval_ms"] == iv), None), False))
    with open(data, "w") as fh:
        fh.write("# rate " + " ".join("%s_p50 %s_p99 %s_p999" % ((s[0].replace(" ", "_"),) * 3)
                                      for s in series) + "\n")
        for rate in rates:
            cols = [str(rate)]
            for _, get, _ in series:
                x = get(rate)
                for k in ("p50_ms", "p99_ms", "p999_ms"):
                    cols.append("%.3f" % max(x[k], 0.1) if x and x[k] is not None else "?")
            fh.write(" ".join(cols) + "\n")
    png = os.path.join(img_dir, PLOT)
    colors = ["#1b7837", "#66a61e", "#a6761d", "#d95f02", "#7570b3", "#e7298a"]
    plots = []
    for i, (name, _, only_p99) in enumerate(series):
        c = colors[i % len(colors)]
        base = 2 + 3 * i
        if only_p99:
            plots.append("'%s' using 1:%d with linespoints lw 2 pt 5 dt 2 lc rgb '%s' title '%s p99'"
                         % (data, base + 1, c, name))
            continue
        plots.append("'%s' using 1:%d with linespoints lw 2 pt 7 dt 1 lc rgb '%s' title '%s p50'"
                     % (data, base, c, name))
        plots.append("'%s' using 1:%d with linespoints lw 2 pt 5 dt 2 lc rgb '%s' title '%s p99'"
                     % (data, base + 1, c, name))
        plots.append("'%s' using 1:%d with linespoints lw 1 pt 4 dt 3 lc rgb '%s' title '%s p99.9'"
                     % (data, base + 2, c, name))
    m = r["meta"]
    script = """
set terminal pngcairo size 960,680 font 'sans,10'
set output '%s'
set datafile missing '?'
set logscale xy
set xrange [%g:%g]
set xtics (%s)
set yrange [0.5:*]
set grid xtics ytics mytics
set key below maxrows 6 width -2
set bmargin 12
set xlabel 'offered load (events/s, pgbench -R, one event per transaction)'
set ylabel 'commit-to-consumer latency (ms, log scale)'
set title 'pgoutbox vs polling relay: latency percentiles%s'
plot %s
""" % (png, rates[0] * 0.8, rates[-1] * 1.25, ", ".join('"%s" %d' % ("{:,}".format(x), x) for x in rates),
       " (quick run)" if m.get("quick") else "", ", \\\n     ".join(plots))
    with open(os.path.join(img_dir, "latency.gp"), "w") as fh:
        fh.write(script)
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    return png


def render(r, img_rel, note):
    m = r["meta"]
    L = []
    add = L.append
    add(BEGIN)
    add("")
    add("## End-to-end runs: machine, versions, method")
    add("")
    add("Produced by `%s` on %s%s." % (m.get("command", "scripts/bench/run.sh"), m.get("started", "?"),
                                      " (**quick smoke run: small samples, not figures to quote**)"
                                      if m.get("quick") else ""))
    add("")
    add("| | |")
    add("|---|---|")
    add("| machine | %s, %s cores, %s GB RAM, %s (%s) |" % (m.get("cpu"), m.get("cores"), m.get("ram_gb"),
                                                       m.get("os"), m.get("kernel")))
    add("| PostgreSQL | %s (throwaway cluster of scripts/stack.sh: fsync=off, synchronous_commit=on, "
        "defaults otherwise) |" % m.get("postgresql"))
    add("| Kafka | %s, single node KRaft, 3 partitions per topic |" % m.get("kafka"))
    add("| librdkafka | %s (pgoutbox and the Python clients) |" % m.get("librdkafka"))
    add("| pgoutbox | %s, git %s, release build; extra -X: %s |" % (
        m.get("pgoutbox_version"), m.get("pgoutbox_rev"), ", ".join(m.get("pgoutbox_x") or []) or "none"))
    add("| load | load average before: %s; after: %s |" % (m.get("load_before"), m.get("load_after")))
    if note:
        add("| note | %s |" % note)
    add("")
    add("Everything (PostgreSQL, Kafka, pgoutbox, pgbench, the consumer) shares the same cores, so "
        "each figure includes the cost of the others competing for them.")
    add("")

    dr = r.get("drain")
    if dr:
        add("## Drain throughput")
        add("")
        add("Two slots are created, then N events are written (synchronous_commit=off, one PL/pgSQL "
            "loop committing every 1 or 10 rows, or a single INSERT … SELECT), so both slots hold "
            "the same transactions. `pg_recvlogical --start --endpos LSN -o proto_version=%d "
            "-o publication_names=pgoutbox -f /dev/null` drains slot A (walsender + pgoutput "
            "decoding, no Kafka: the ceiling); then `pgoutbox --endpos LSN` drains slot B into "
            "Kafka and exits once the slot is *confirmed* at LSN, i.e. after Kafka acknowledged "
            "every event (acks=all, idempotent). Both use pgoutput protocol %d. Times are wall "
            "clock from process start to exit (connection and, for pgoutbox, producer start-up "
            "included); the event count in Kafka is checked afterwards. Payload: JSON "
            "`{\"seq\": n, \"data\": \"<hex>\"}` of about 200 B or 4 KB (incompressible, so the "
            "4 KB ones are TOASTed). Each workload is written once behind %d pairs of slots and "
            "drained in %d rounds, pg_recvlogical and pgoutbox taking turns at going first; the "
            "table gives the medians (ratio: median of the rounds' ratios, with their range)."
            % (m.get("proto", 3), m.get("proto", 3), m.get("drain_rounds", 1), m.get("drain_rounds", 1)))
        add("")
        add("| workload | payload | events | WAL | pg_recvlogical (events/s) | pgoutbox (events/s) "
            "| ratio | range | target ≥ %.1f | in Kafka |" % TARGET_DRAIN)
        add("|---|---|---:|---:|---:|---:|---:|---|---|---:|")
        for x in dr:
            add("| %s | %s | %s | %s MB | %s | %s | %.2f | %s | %s | %s |" % (
                x["workload"], x["size"], fi(x["events"]), fi(x["wal_bytes"] / 1e6),
                fi(x["recv_eps"]), fi(x["pgoutbox_eps"]), x["ratio"],
                "%.2f–%.2f" % (x.get("ratio_min", x["ratio"]), x.get("ratio_max", x["ratio"])),
                "met" if x["ratio"] >= TARGET_DRAIN else "missed",
                fi(x["in_kafka"]) + ("" if x["in_kafka"] >= x["events"] else " (!)")))
        add("")

    lat = r.get("latency")
    if lat:
        add("## Latency")
        add("")
        add("pgbench offers a steady rate (`pgbench -n -M prepared -R RATE -T %d`, 4 clients up to "
            "2,000/s, 8 above; one INSERT of a ~200 B event per transaction, "
            "**synchronous_commit=on**) while pgoutbox streams. An independent consumer "
            "(scripts/bench/consumer.py, Python confluent_kafka, all partitions assigned, "
            "fetch.wait.max.ms=10, Nagle off) records receive time − Kafka timestamp for every message; "
            "pgoutbox sets the timestamp to the transaction's commit time in ms (truncated, so "
            "figures include 0–1 ms of rounding). Percentiles are nearest-rank over all messages "
            "of the run. \"achieved\" is pgbench's tps: on 2 cores pgbench, PostgreSQL, Kafka, "
            "pgoutbox and the consumer compete, so the highest rates may not be reached."
            % m.get("secs", 0))
        add("")
        add("| pgoutbox setting | offered (events/s) | achieved (events/s) | messages | p50 ms "
            "| p99 ms | p99.9 ms | max ms | commit-to-ack p50 / p99 / p99.9 ms "
            "| pgbench commit latency ms |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        for x in lat:
            ack = "%s / %s / %s" % (f(x.get("ack_p50_ms")), f(x.get("ack_p99_ms")),
                                    f(x.get("ack_p999_ms"))) if "ack_p50_ms" in x else "–"
            add("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                x["variant"], fi(x["rate"]), fi(x["tps"]), fi(x["received"]), f(x["p50_ms"]),
                f(x["p99_ms"]), f(x["p999_ms"]), f(x["max_ms"]), ack,
                f(x["pgbench_latency_ms"], 2)))
        add("")
        add("Commit-to-ack is pgoutbox's own view (`pgoutbox_commit_to_ack_seconds` on "
            "`--metrics`, scraped before and after each rate): from the commit time to Kafka's "
            "acknowledgement of the event, so it leaves out the consumer's fetch. Its buckets "
            "are 1, 2.5, 5, 10, 25, 50, 100, 250 ms ...: quantiles are interpolated inside a "
            "bucket, as Prometheus' histogram_quantile() does.")
        add("")
        if img_rel:
            add("![latency percentiles per offered rate, pgoutbox vs polling relay (log scale)](%s)"
                % img_rel)
            add("")

    poll = r.get("polling")
    if poll:
        add("## Polling baseline")
        add("")
        add("scripts/bench/polling_relay.py: one transaction per batch — `SELECT … FROM outbox_poll "
            "WHERE sent_at IS NULL ORDER BY seq LIMIT 1000 FOR UPDATE SKIP LOCKED`, produce "
            "every row, `flush()`, `UPDATE … SET sent_at = now() WHERE seq = ANY(…)`, COMMIT; it "
            "sleeps the interval after a batch that was not full. Same producer settings as "
            "pgoutbox (enable.idempotence, acks=all, murmur2_random, linger.ms=5, max.in.flight=1, Nagle off), same Kafka "
            "timestamp (the row's commit time, from track_commit_timestamp), same pgbench load "
            "into its own table (`outbox_poll`, with a partial index on unsent rows; pgoutbox is "
            "not running meanwhile) and the same consumer. Database load: CPU of the relay's "
            "backend and rows read/updated from pg_stat_user_tables, per million events; compare "
            "with the walsender's CPU under *Resources*.")
        add("")
        add("| interval | offered (events/s) | achieved | messages | p50 ms | p99 ms | p99.9 ms "
            "| max ms | relay CPU s/M | backend CPU s/M | rows read/event | rows updated/event |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for x in poll:
            t = x["table"]
            n = max(x["events"], 1)
            add("| %d ms | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.2f | %.2f |" % (
                x["interval_ms"], fi(x["rate"]), fi(x["tps"]), fi(x["received"]), f(x["p50_ms"]),
                f(x["p99_ms"]), f(x["p999_ms"]), f(x["max_ms"]),
                f(per_m(x["relay_cpu_s"], n)), f(per_m(x["backend_cpu_s"], n)),
                (t["seq_tup_read"] + t["idx_tup_fetch"]) / n, t["n_tup_upd"] / n))
        add("")

    if dr or lat:
        add("## Resources")
        add("")
        add("CPU seconds per million events from /proc/PID/stat deltas (10 ms ticks; the walsender "
            "is sampled every 50 ms until it exits, pgoutbox and pg_recvlogical are measured by "
            "wait4()); peak RSS = VmHWM, sampled every 50 ms. The broker's CPU during the steady "
            "load includes serving the bench consumer's fetches (fetch.wait.max.ms=10), and at "
            "low rates is dominated by its fixed per-request and background costs. The bench "
            "consumer (Python, measured by wait4()) is the instrument's own share of the cores.")
        add("")
        if dr:
            add("Drain (pgoutbox's run; pg_recvlogical's own walsender in the last column):")
            add("")
            add("| workload | payload | pgoutbox CPU s/M | pgoutbox peak RSS MB | walsender CPU s/M "
                "| broker CPU s/M | pg_recvlogical CPU s/M | its walsender CPU s/M |")
            add("|---|---|---:|---:|---:|---:|---:|---:|")
            for x in dr:
                n = x["events"]
                add("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    x["workload"], x["size"], f(per_m(x["pgoutbox_cpu_s"], n)),
                    f(mb(x["pgoutbox_maxrss_kb"])), f(per_m(x["walsender_cpu_s"], n)),
                    f(per_m(x["broker_cpu_s"], n)), f(per_m(x["recv_cpu_s"], n)),
                    f(per_m(x["recv_walsender_cpu_s"], n))))
            add("")
        if lat:
            add("Steady load (single-event transactions; pgoutbox runs through all rates of a setting):")
            add("")
            add("| pgoutbox setting | rate (events/s) | pgoutbox CPU s/M | walsender CPU s/M "
                "| broker CPU s/M | bench consumer CPU s/M | pgoutbox RSS MB "
                "| pgoutbox peak RSS so far MB |")
            add("|---|---:|---:|---:|---:|---:|---:|---:|")
            for x in lat:
                n = x["events"]
                add("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    x["variant"], fi(x["rate"]), f(per_m(x["pgoutbox_cpu_s"], n)),
                    f(per_m(x["walsender_cpu_s"], n)), f(per_m(x["broker_cpu_s"], n)),
                    f(per_m(x.get("consumer_cpu_s"), n)),  # absent in results before it was measured
                    f(mb(x["pgoutbox_rss_kb"])), f(mb(x["pgoutbox_hwm_kb"]))))
            add("")

    # targets
    add("## Targets")
    add("")
    add("| target | result | |")
    add("|---|---|---|")
    if dr:
        worst = min(dr, key=lambda x: x["ratio"])
        add("| drain ≥ %.1f × pg_recvlogical, every workload | worst %.2f (%s, %s); %d of %d "
            "workloads at or above | %s |" % (TARGET_DRAIN, worst["ratio"], worst["workload"],
                                              worst["size"], sum(x["ratio"] >= TARGET_DRAIN for x in dr),
                                              len(dr), yes(worst["ratio"] >= TARGET_DRAIN)))
    defaults = [x for x in (lat or []) if x["variant"].endswith("(default)")]
    for rate, lim in sorted(TARGET_P99.items()):
        rows = [x for x in (lat or []) if x["rate"] == rate]
        if not rows:
            continue
        best = min(rows, key=lambda x: x["p99_ms"])
        d = next((x for x in defaults if x["rate"] == rate), best)
        add("| p99 ≤ %g ms at %s events/s | %s ms with the defaults (achieved %s/s)%s | %s |" % (
            lim, fi(rate), f(d["p99_ms"]), fi(d["tps"]),
            "; %s ms with %s" % (f(best["p99_ms"]), best["variant"]) if best is not d else "",
            yes(d["p99_ms"] <= lim) if best is d else
            "%s (defaults), %s (%s)" % (yes(d["p99_ms"] <= lim), yes(best["p99_ms"] <= lim), best["variant"])))
    if poll and defaults:
        parts = []
        ok = True
        for x in defaults:
            p = next((y for y in poll if y["interval_ms"] == 1000 and y["rate"] == x["rate"]), None)
            if p:
                fac = p["p99_ms"] / max(x["p99_ms"], 0.001)
                ok = ok and fac >= TARGET_POLL_FACTOR
                parts.append("%s/s: %.0f×" % ("{:,}".format(x["rate"]), fac))
        if parts:
            add("| p99 ≥ %.0f× lower than the 1 s polling relay | %s | %s |"
                % (TARGET_POLL_FACTOR, "; ".join(parts), yes(ok)))
    runs = r.get("latency_runs") or []
    if runs:
        rss = max(x["pgoutbox_maxrss_kb"] for x in runs)
        # rates run in ascending order in one process per setting, so the
        # VmHWM after a rate is the peak up to and including that rate
        kept = [x for x in defaults if x["p99_ms"] is not None and x["p99_ms"] <= 100]
        upto = max(kept, key=lambda x: x["rate"]) if kept else None
        detail = ""
        if upto and upto["pgoutbox_hwm_kb"] < rss:
            detail = "; %.1f MB up to %s/s (the highest rate at which it kept up, p99 ≤ 100 ms)" % (
                upto["pgoutbox_hwm_kb"] / 1024, "{:,}".format(upto["rate"]))
        add("| peak RSS ≤ 16 MB in steady state | %.1f MB VmHWM over the whole steady-load run%s | %s |"
            % (rss / 1024, detail,
               yes(rss <= TARGET_RSS_KB) if not detail else "%s (all rates), %s (while keeping up)" % (
                   yes(rss <= TARGET_RSS_KB), yes(upto["pgoutbox_hwm_kb"] <= TARGET_RSS_KB))))
        add("| (drain, not steady state) | pgoutbox peak RSS %s MB while draining | – |" % (
            "–" if not dr else "%.0f–%.0f" % (min(x["pgoutbox_maxrss_kb"] for x in dr) / 1024,
                                               max(x["pgoutbox_maxrss_kb"] for x in dr) / 1024)))
    t1 = [x for x in (dr or []) if x["per_txn"] == 1]
    if t1 or defaults:
        parts = ["drain %s: pgoutbox %s s, walsender %s s, broker %s s" % (
            x["size"], f(per_m(x["pgoutbox_cpu_s"], x["events"])),
            f(per_m(x["walsender_cpu_s"], x["events"])),
            f(per_m(x["broker_cpu_s"], x["events"]))) for x in t1]
        parts += ["steady %s/s: pgoutbox %s s, walsender %s s" % (
            "{:,}".format(x["rate"]), f(per_m(x["pgoutbox_cpu_s"], x["events"])),
            f(per_m(x["walsender_cpu_s"], x["events"]))) for x in defaults]
        add("| CPU per million single-event transactions (reported) | %s | – |" % "; ".join(parts))
    add("")
    add(END)
    return "\n".join(L) + "\n"


def splice(path, section):
    """Replace our part of path (between the markers) with section, or append
    it; every other byte of the file stays as it is."""
    try:
        with open(path) as fh:
            cur = fh.read()
    except FileNotFoundError:
        cur = "# Benchmarks\n\n"
    if BEGIN in cur and END in cur:
        a = cur.index(BEGIN)
        b = cur.index(END) + len(END)
        if cur[b:b + 1] == "\n":
            b += 1
        new = cur[:a] + section + cur[b:]
    else:
        new = cur.rstrip("\n") + "\n\n" + section
    tmp = path + ".tmp-run-sh"
    with open(tmp, "w") as fh:
        fh.write(new)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--img-dir", required=True)
    ap.add_argument("--note", default="")
    ap.add_argument("--docs")
    ap.add_argument("--docs-img-dir")
    a = ap.parse_args()
    with open(a.results) as fh:
        r = json.load(fh)
    png = plot(r, a.img_dir)
    with open(a.md, "w") as fh:
        fh.write(render(r, PLOT if png else None, a.note))
    if a.docs:
        if png:
            os.makedirs(a.docs_img_dir, exist_ok=True)
            shutil.copyfile(png, os.path.join(a.docs_img_dir, PLOT))
        rel = os.path.relpath(os.path.join(a.docs_img_dir, PLOT), os.path.dirname(os.path.abspath(a.docs)))
        splice(a.docs, render(r, rel if png else None, a.note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
