#!/usr/bin/env bash
#
# run.sh — pgoutbox's end-to-end benchmarks in one command: build a release
# pgoutbox and the floor clients, resolve the peer (Debezium), start a
# throwaway PostgreSQL 15 + Kafka (scripts/stack.sh, own state directory,
# stopped and removed on exit), run the scenarios, write a markdown report
# and a latency plot.
#
#   scripts/bench/run.sh [--quick] [--profile] [--scenarios LIST] [--out DIR]
#                        [--docs FILE | --no-docs] [--peer debezium|none]
#                        [--no-floor] [-X PROP=VAL ...] [--variants SETS]
#                        [--drain-variants SETS] [--variant-rounds N]
#
#   --quick          smoke run of every scenario (20k events per drain, 5 s per
#                    rate, fewer rates and Debezium configurations): a few
#                    minutes. Does not touch docs/ unless --docs is given.
#   --profile        also run pgoutbox under valgrind --tool=callgrind for a
#                    20k-event drain (a release build with debug info); the
#                    annotated output lands in OUT/callgrind/
#   --scenarios L    comma list of drain,latency,sources,polling,eos,compat,
#                    profile (default drain,latency,sources,polling,eos,compat;
#                    --profile appends profile)
#   --out DIR        results, logs and raw files (default
#                    ${TMPDIR:-/tmp}/pgoutbox-bench/results-<date>)
#   --docs FILE      update FILE's benchmark sections (default for a full run:
#                    docs/benchmarks.md, plot into docs/img/, and the README's
#                    "compared with" table); --no-docs: don't
#   --peer P         debezium (default): also measure Kafka Connect + the
#                    Debezium PostgreSQL connector with the outbox event router
#                    (scripts/bench/peer/, jars resolved from Maven Central
#                    into the cache) and run the compat scenario; none: not
#   --no-floor       no floor_latency on its own slot during the latency runs
#                    (the floor's walsender decodes the same load a second time)
#   -X PROP=VAL      librdkafka property for pgoutbox in every scenario
#   --variants SETS  pgoutbox -X property sets to compare, ';' between sets,
#                    ',' between the properties of a set, 'defaults' for none:
#                    e.g. 'linger.ms=5;linger.ms=1;linger.ms=0'. The latency
#                    scenario runs each set at every rate, alternating rate by
#                    rate (a process per set, rate and round, the order
#                    rotating); the drain gets a pgoutbox reader per set
#                    beside the defaults' (unless --drain-variants); the
#                    report puts them side by side with the targets
#   --drain-variants SETS  the drain's sets instead ('defaults': none extra)
#   --variant-rounds N  rounds of the alternating variants (default 2; --quick 1)
#   --repeat N       drain rounds per workload (default 5; --quick 1): the
#                    ceiling target is judged on every round
#   --rates LIST     offered rates of the latency and polling runs instead of
#                    500,1000,2000,5000,10000 (e.g. 500,2000,10000: the rates
#                    the targets name)
#   --drain-events N, --drain-big N  events of the per-transaction drain
#                    workloads (default 200,000) and of the one big
#                    transaction (default 1,000,000)
#   --rev REV        build pgoutbox from git revision REV (exported with git
#                    archive into ${TMPDIR:-/tmp}/pgoutbox-bench/src-REV)
#                    instead of the working tree
#   --note TEXT      a remark for the report (e.g. what else ran on the machine)
#
# Scenarios (details in docs/benchmarks.md):
#   drain    N events pre-written behind one slot per reader, all created at
#            the same LSN; pg_recvlogical (to /dev/null), the floor client
#            scripts/bench/floor/floor_drain eager and napping (the best of
#            them is the ceiling), pgoutbox (into Kafka until the slot is
#            confirmed at the last commit, --endpos) and Debezium (tuned and
#            defaults, until every event is in Kafka) drain one each. 1 and 10
#            events per transaction and one big transaction; 200 B and 4 KB
#            payloads (Debezium: 1 event per transaction).
#   latency  pgbench -R at 500 to 10,000 inserts/s (one event per
#            transaction, synchronous_commit=on) through pgoutbox, then
#            Debezium tuned and at its defaults; an independent consumer
#            measures receive time - the commit-time stamp in the payload,
#            and floor_latency, on its own slot during the same load, the
#            floor: receive time of each Begin - its commit time.
#   polling  the same load and consumer against scripts/bench/polling_relay.py
#            (SELECT ... FOR UPDATE SKIP LOCKED / produce / flush / UPDATE) at
#            100 ms and 1 s intervals; relay and backend CPU, rows touched.
#   sources  3 databases, each with an outbox: one pgoutbox with three
#            [source] sections against three single-source pgoutbox
#            processes. Drain: the same backlog in each (100k events per
#            database, --quick 10k), fresh slots for every variant and
#            round, the order alternating: events/s, CPU, peak RSS (one
#            process vs the sum of three). Latency: pgbench on all three
#            at once (500 and 2,000/s each, --quick 500): p50/p99 per
#            database and overall.
#   eos      delivery = exactly-once against at-least-once, alternating:
#            the drain (200 B; 1 and 10 events per transaction, one big
#            one) and the latency runs at 500, 2,000 and 10,000/s (--quick:
#            2,000/s), 3 rounds each (--quick 1), read by a read_committed
#            consumer; targets: drain >= 0.8x at-least-once, p99 at 2,000/s
#            within at-least-once's p99 + 10 ms.
#   compat   scripts/bench/peer/compat.py: one workload through pgoutbox and
#            Debezium (StringConverter, JsonConverter), compared per event;
#            run.sh exits 3 (after the report) on an unexpected difference.
#
# Environment: BENCH_BUILD (build directory, default
# ${TMPDIR:-/tmp}/pgoutbox-bench/build; the floor clients are built from this
# working tree in BENCH_BUILD-floor), PGOUTBOX_CACHE (as scripts/stack.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$PWD
readonly repo
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
base=${TMPDIR:-/tmp}/pgoutbox-bench
build=${BENCH_BUILD:-$base/build}
readonly PY base

info() { printf 'run.sh: %s\n' "$*" >&2; }
die() {
	printf 'run.sh: error: %s\n' "$*" >&2
	exit 1
}

quick=0 profile=0 scenarios='' out='' docs='' nodocs=0 note='' rev_arg='' peer=debezium floor=1
xprops=() variant_args=()
while [[ $# -gt 0 ]]; do
	case $1 in
	--quick) quick=1 ;;
	--profile) profile=1 ;;
	--scenarios)
		[[ $# -ge 2 ]] || die "--scenarios needs a value"
		scenarios=$2
		shift
		;;
	--out)
		[[ $# -ge 2 ]] || die "--out needs a value"
		out=$2
		shift
		;;
	--docs)
		[[ $# -ge 2 ]] || die "--docs needs a value"
		docs=$2
		shift
		;;
	--no-docs) nodocs=1 ;;
	--peer)
		[[ $# -ge 2 ]] || die "--peer needs a value"
		[[ $2 == debezium || $2 == none ]] || die "--peer: debezium or none"
		peer=$2
		shift
		;;
	--no-floor) floor=0 ;;
	--rev)
		[[ $# -ge 2 ]] || die "--rev needs a value"
		rev_arg=$2
		shift
		;;
	--note)
		[[ $# -ge 2 ]] || die "--note needs a value"
		note=$2
		shift
		;;
	-X)
		[[ $# -ge 2 ]] || die "-X needs a value"
		xprops+=(-X "$2")
		shift
		;;
	--variants | --drain-variants | --variant-rounds | --repeat | --rates | --drain-events | --drain-big)
		[[ $# -ge 2 ]] || die "$1 needs a value"
		variant_args+=("$1" "$2")
		shift
		;;
	-h | --help)
		sed -n '3,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
	shift
done
if [[ -z $scenarios ]]; then
	scenarios=drain,latency,sources,polling,eos
	[[ $peer == none ]] || scenarios+=,compat
fi
((profile)) && [[ ,$scenarios, != *,profile,* ]] && scenarios+=,profile
[[ -n $out ]] || out=$base/results-$(date +%Y%m%d-%H%M%S)
if ((nodocs)); then
	docs=''
elif [[ -z $docs ]] && ((!quick)); then
	docs=$repo/docs/benchmarks.md
fi

# ------------------------------------------------------------ dependencies
need=(pgbench pg_recvlogical gnuplot kcat java meson)
[[ ,$scenarios, == *,profile,* ]] && need+=(valgrind callgrind_annotate)
[[ $peer == debezium ]] && need+=(mvn)
missing=0
for c in "${need[@]}"; do command -v "$c" >/dev/null 2>&1 || missing=1; done
"$PY" -c 'import psycopg2, confluent_kafka' 2>/dev/null || missing=1
if ((missing)); then
	info "installing missing dependencies (scripts/install-deps.sh)"
	scripts/install-deps.sh >&2
fi
scripts/install-deps.sh >/dev/null # Kafka jars (quick when present)

# ------------------------------------------------------------------- build
mkdir -p "$base" "$out"
out=$(realpath "$out")
src=$repo
if [[ -n $rev_arg ]]; then
	full_rev=$(git -C "$repo" rev-parse --verify "$rev_arg^{commit}") || die "unknown revision $rev_arg"
	src=$base/src-${full_rev:0:12}
	if [[ ! -f $src/meson.build ]]; then
		rm -rf -- "$src.tmp"
		mkdir -p "$src.tmp"
		git -C "$repo" archive "$full_rev" | tar -x -C "$src.tmp"
		mv -T -- "$src.tmp" "$src"
	fi
	build=$build-${full_rev:0:12}
fi
# meson setup SRC DIR [OPTIONS...] [-- TARGETS...]: (re)configure DIR for
# SRC if needed, then build TARGETS (default: everything)
setup_build() {
	local s=$1 d=$2 opts=() targets=()
	shift 2
	while [[ $# -gt 0 && $1 != -- ]]; do
		opts+=("$1")
		shift
	done
	[[ $# -gt 0 ]] && shift && targets=("$@")
	if [[ ! -f $d/build.ninja ]]; then
		(cd "$s" && meson setup "$d" "${opts[@]}") >"$out/meson-setup-$(basename "$d").log" 2>&1 ||
			{ cat "$out/meson-setup-$(basename "$d").log" >&2; die "meson setup failed"; }
	fi
	meson compile -C "$d" "${targets[@]}" >"$out/meson-compile-$(basename "$d").log" 2>&1 ||
		{ tail -n 30 "$out/meson-compile-$(basename "$d").log" >&2; die "build failed"; }
}
setup_build "$src" "$build" --buildtype=release -- cdc/pgoutbox
bin=$build/cdc/pgoutbox
# The floors belong to the harness: built from this tree even with --rev.
floor_build=${BENCH_BUILD:-$base/build}-floor
setup_build "$repo" "$floor_build" --buildtype=release -Dbench=true -- \
	scripts/bench/floor/floor_drain scripts/bench/floor/floor_latency
peer_args=(--peer "$peer")
if [[ $peer == debezium ]]; then
	libs=$(scripts/bench/peer/resolve.sh) || die "could not resolve the Debezium jars"
	peer_args+=(--debezium-libs "$libs")
fi
((floor)) || peer_args+=(--no-floor)
prof_args=()
if [[ ,$scenarios, == *,profile,* ]]; then
	setup_build "$src" "$build-prof" --buildtype=release -Ddebug=true -- cdc/pgoutbox
	prof_args=(--prof-bin "$build-prof/cdc/pgoutbox")
fi

# ------------------------------------------------------------------- stack
state=$base/stack-$$
cleanup() {
	local rc=$?
	scripts/stack.sh stop --state "$state" --clean >/dev/null 2>&1 || true
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Kafka's own default heap (kafka-server-start.sh), not the tests' 512 MB:
# in that one G1 keeps eden at ~13 MB, and its young collections (~10 ms,
# 1.5-2 a second under exactly-once load) made the broker's pauses the p99.
export KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms1g -Xmx1g}
info "starting a throwaway PostgreSQL + Kafka in $state"
scripts/stack.sh start --state "$state" >"$out/stack.env" 2>"$out/stack.log" ||
	{ cat "$out/stack.log" >&2; die "stack did not start"; }
set -a
# shellcheck disable=SC1091
. "$state/env"
set +a

# ------------------------------------------------------ machine and versions
if [[ -n $rev_arg ]]; then
	rev=${full_rev:0:7}
else
	rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
	if [[ -n $(git -C "$repo" status --porcelain -- cdc decoder meson.build 2>/dev/null) ]]; then
		rev+=" (+ uncommitted changes in cdc/, decoder/ or meson.build)"
	fi
fi
kafka_jar=$(ls "${PGOUTBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgoutbox}"/kafka-*/libs/kafka_2.13-*.jar 2>/dev/null | head -n 1)
kafka_version=$(basename "${kafka_jar:-kafka_2.13-unknown.jar}" .jar)
kafka_version=${kafka_version#kafka_2.13-}
cmdline="scripts/bench/run.sh"
((quick)) && cmdline+=" --quick"
((profile)) && cmdline+=" --profile"
default_scenarios=drain,latency,sources,polling,eos
[[ $peer == none ]] || default_scenarios+=,compat
[[ $scenarios != "$default_scenarios" && $scenarios != "$default_scenarios,profile" ]] &&
	cmdline+=" --scenarios $scenarios"
[[ $peer == none ]] && cmdline+=" --peer none"
((floor)) || cmdline+=" --no-floor"
[[ -n $rev_arg ]] && cmdline+=" --rev $rev_arg"
for x in "${xprops[@]}"; do [[ $x == -X ]] || cmdline+=" -X $x"; done
for ((i = 0; i < ${#variant_args[@]}; i += 2)); do
	cmdline+=" ${variant_args[i]} '${variant_args[i + 1]}'"
done
BENCH_CMDLINE=$cmdline "$PY" - "$out/meta.json" <<EOF
import json, os, subprocess, sys
def sh(c):
    try:
        return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return ""
mem_kb = int([l for l in open("/proc/meminfo") if l.startswith("MemTotal:")][0].split()[1])
json.dump({
    "cpu": sh("lscpu | sed -n 's/^Model name: *//p' | head -n 1"),
    "cores": os.cpu_count(),
    "ram_gb": round(mem_kb / 1048576, 1),
    "kernel": sh("uname -r"),
    "os": sh(". /etc/os-release && echo \$PRETTY_NAME"),
    "librdkafka": sh("$PY -c 'import confluent_kafka; print(confluent_kafka.libversion()[0])'"),
    "kafka": "$kafka_version",
    "kafka_heap": os.environ.get("KAFKA_HEAP_OPTS", ""),
    "pgoutbox_version": sh("'$bin' --version"),
    "pgoutbox_rev": "$rev",
    "pgbench": sh("pgbench --version"),
    "command": os.environ["BENCH_CMDLINE"],
    "load_before": sh("cat /proc/loadavg"),
    "top_before": sh("top -b -n 1 -w 200 | sed -n '7,12p'"),
}, open(sys.argv[1], "w"), indent=1)
EOF

info "running scenarios $scenarios (results in $out)"
xb=()
for x in "${xprops[@]}"; do [[ $x == -X ]] || xb+=(-X "$x"); done
qa=()
((quick)) && qa=(--quick)
t_bench=$SECONDS
rc=0
"$PY" scripts/bench/bench.py --out "$out" --pgoutbox "$bin" --scenarios "$scenarios" \
	--floor-dir "$floor_build/scripts/bench/floor" "${peer_args[@]}" \
	--meta "$out/meta.json" "${qa[@]}" "${prof_args[@]}" "${xb[@]}" "${variant_args[@]}" || rc=$?
# 3: the compat scenario found an unexpected difference; report it all the same
[[ $rc -eq 0 || $rc -eq 3 ]] || die "bench.py failed (exit $rc; logs in $out)"
info "scenarios took $((SECONDS - t_bench)) s"

# ------------------------------------------------------------------ report
"$PY" - "$out/results.json" <<'EOF'
import json, subprocess, sys
r = json.load(open(sys.argv[1]))
r["meta"]["load_after"] = open("/proc/loadavg").read().strip()
json.dump(r, open(sys.argv[1], "w"), indent=1)
EOF
report=(--results "$out/results.json" --md "$out/benchmarks.md" --img-dir "$out" --note "$note")
if [[ -n $docs ]]; then
	report+=(--docs "$docs" --docs-img-dir "$(dirname "$docs")/img")
	# the project's own page also refreshes the README's "compared with" table
	[[ $docs -ef $repo/docs/benchmarks.md ]] && report+=(--readme "$repo/README.md")
fi
"$PY" scripts/bench/report.py "${report[@]}"
info "report: $out/benchmarks.md${docs:+, and $docs}"
if [[ $rc -eq 3 ]]; then
	info "error: pgoutbox's output differs from Debezium's unexpectedly (see Output compatibility in the report)"
	exit 3
fi
