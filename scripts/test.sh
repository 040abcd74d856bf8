#!/usr/bin/env bash
# test.sh — the one command that runs all of pgoutbox's tests (.ci/run calls it).
#
#   scripts/test.sh [PYTEST ARGS...]        e.g. scripts/test.sh -k cli
#
# Installs what is missing (scripts/install-deps.sh, with the PostgreSQL
# servers of the matrix below); builds build/ and, with AddressSanitizer +
# UBSan, build-asan/, both with warnings as errors; runs the C unit tests
# under the sanitizers and under valgrind; fuzzes the decoder for 60 s
# (libFuzzer, clang, build-fuzz/); then starts a throwaway PostgreSQL 15
# (Debian's) + Kafka (scripts/stack.sh, Kafka with TLS and SASL/SCRAM
# listeners too) in a fresh state directory and runs the whole end-to-end
# suite (pytest tests/e2e) against the sanitizer build of pgoutbox.
#
# Then the version matrix: for each other PostgreSQL major, one after the
# other, a fresh stack of that server (with a physical standby from 17 on,
# for setup-slot.sh --failover and --check; the failover and standby
# decoding tests make primary + standby pairs of their own) and the tests marked core
# (pytest -m core: delivery, the protocol mix, kill -9, the idle-WAL bound,
# --check, setup-slot.sh, and what is particular to a version, e.g. the
# failover tests on 17+); on the newest major also those marked server
# (-m "core or server": what the server does beyond the core). The markers
# are in tests/e2e (conftest.py says what each means); unmarked tests are
# about pgoutbox alone (CLI, configuration, metrics, Kafka TLS, ...) and run
# on 15 only. PGOUTBOX_PG_MATRIX="13 14 16 17 18" (the default) chooses the
# majors; empty skips the matrix.
#
# Extra arguments go to pytest, in every run (a matrix run that selects no
# test is not a failure). Prints the time of each step; exits non-zero on
# the first failure, after printing the tail of the servers' logs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
readonly repo
# Debian's python3: it has pytest, psycopg2 and confluent_kafka (a python3 found
# first on PATH, e.g. pyenv's, may not).
readonly PYTHON=/usr/bin/python3
readonly VALGRIND='valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite -q'
# The majors beside Debian's 15; the newest runs the server tests too.
read -r -a PG_MATRIX <<<"${PGOUTBOX_PG_MATRIX-13 14 16 17 18}"
readonly PG_MATRIX
PG_NEWEST=''
for v in "${PG_MATRIX[@]+"${PG_MATRIX[@]}"}"; do
	[[ $v =~ ^[0-9]+$ ]] || {
		printf 'scripts/test.sh: PGOUTBOX_PG_MATRIX holds "%s", not a major version\n' "$v" >&2
		exit 1
	}
	[[ -n $PG_NEWEST ]] && ((v <= PG_NEWEST)) || PG_NEWEST=$v
done
readonly PG_NEWEST

now_ms() { date +%s%3N; }
fmt_ms() { printf '%d.%ds' $(($1 / 1000)) $((($1 % 1000) / 100)); }

t0=$(now_ms)
timings=()
current='' current_t0=0
state=''
show_logs=1 # print the servers' logs if a step fails

# step NAME COMMAND... — run one step, timed.
step() {
	current=$1
	shift
	printf '\n==> %s\n' "$current"
	current_t0=$(now_ms)
	"$@"
	local d=$(($(now_ms) - current_t0))
	timings+=("$(printf '  %-48s %8s' "$current" "$(fmt_ms "$d")")")
	printf '==> %s: ok (%s)\n' "$current" "$(fmt_ms "$d")"
	current=''
}

print_log_tail() { # print_log_tail FILE [LINES]
	local n=${2:-50}
	[[ -r $1 ]] || return 0
	printf '\n--- last %d lines of %s\n' "$n" "$1"
	tail -n "$n" "$1" || true
}

on_exit() {
	local rc=$?
	set +e
	if [[ -n $current ]]; then
		timings+=("$(printf '  %-48s %8s  FAILED' "$current" "$(fmt_ms $(($(now_ms) - current_t0)))")")
		printf '\n==> %s: FAILED (exit %d)\n' "$current" "$rc"
	fi
	if [[ -n $state ]]; then
		if ((rc != 0 && show_logs)); then
			print_log_tail "$state/pg/postgresql.log"
			if [[ -r $state/kafka/server.log ]]; then
				printf '\n--- last warnings and errors in %s\n' "$state/kafka/server.log"
				grep -E '^\[[^]]*\] (WARN|ERROR|FATAL) ' "$state/kafka/server.log" | tail -n 30
				print_log_tail "$state/kafka/server.log" 20
			fi
		fi
		if ((rc != 0 && show_logs)); then
			"$repo/scripts/stack.sh" stop --state "$state"
			printf '\ntest stack state (logs, data) kept in %s\n' "$state"
		else
			"$repo/scripts/stack.sh" stop --state "$state" --clean
		fi
	fi
	printf '\ntimings:\n'
	local t
	for t in "${timings[@]}"; do printf '%s\n' "$t"; done
	printf '  %-48s %8s\n' total "$(fmt_ms $(($(now_ms) - t0)))"
	if ((rc == 0)); then
		printf 'scripts/test.sh: all tests passed\n'
	else
		printf 'scripts/test.sh: FAILED (exit %d)\n' "$rc" >&2
	fi
	exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# meson_setup DIR OPTIONS... — configure DIR, or reconfigure it if it was
# configured before. A directory left by a setup that failed (no coredata) is
# started afresh.
meson_setup() {
	local dir=$1
	shift
	if [[ -f $dir/meson-private/coredata.dat ]]; then
		meson setup --reconfigure "$dir" "$@"
	else
		rm -rf -- "$dir"
		meson setup "$dir" "$@"
	fi
}

build_plain() {
	meson_setup build --werror
	meson compile -C build
}

build_asan() {
	meson_setup build-asan --werror -Db_sanitize=address,undefined -Db_lundef=false
	meson compile -C build-asan
}

# The libFuzzer target of decoder/ (tests/fuzz) for 60 s, with ASan + UBSan,
# seeded from a copy of tests/fuzz/corpus so that the repository is not
# modified. Any crash, leak, sanitizer report or timeout fails the step; the
# work directory (log, crashing input) is then kept.
fuzz_decoder() {
	CC=clang meson_setup build-fuzz --werror -Dfuzzing=true -Db_lundef=false
	meson compile -C build-fuzz fuzz_decoder
	local work rc=0
	work=$(mktemp -d "${TMPDIR:-/tmp}/pgoutbox-fuzz.XXXXXX")
	cp -R tests/fuzz/corpus "$work/corpus"
	build-fuzz/tests/fuzz/fuzz_decoder -max_total_time=60 -timeout=20 -print_final_stats=1 \
		-artifact_prefix="$work/" "$work/corpus" >"$work/fuzz.log" 2>&1 || rc=$?
	if ((rc == 0)) && grep -qE '^==[0-9]+==ERROR|runtime error:|^SUMMARY: ' "$work/fuzz.log"; then
		rc=1
	fi
	if ((rc != 0)); then
		tail -n 60 "$work/fuzz.log"
		printf 'fuzz_decoder failed (exit %d): log and crashing input kept in %s\n' "$rc" "$work" >&2
		return 1
	fi
	grep -E '^(Done|stat::)' "$work/fuzz.log" || true
	rm -rf -- "$work"
}

# start_stack [STACK.SH START OPTIONS...] — a fresh stack in a new state
# directory, its variables exported (and those of an earlier one dropped).
start_stack() {
	state=$(mktemp -d "${TMPDIR:-/tmp}/pgoutbox-test.XXXXXX")
	unset PGOUTBOX_STANDBY_PG PGOUTBOX_STANDBY_PORT PGOUTBOX_STANDBY_DATA PGOUTBOX_STANDBY_LOG \
		PGOUTBOX_STANDBY_SLOT PGOUTBOX_PG_CA PGOUTBOX_KAFKA_SSL_BROKERS PGOUTBOX_KAFKA_SASL_BROKERS \
		PGOUTBOX_KAFKA_CA PGOUTBOX_KAFKA_SASL_USER PGOUTBOX_KAFKA_SASL_PASSWORD
	scripts/stack.sh start "$@" --state "$state"
	set -a
	# shellcheck source=/dev/null
	. "$state/env"
	set +a
}

stop_stack() {
	scripts/stack.sh stop --state "$state" --clean
	state=''
}

# e2e_tests [PYTEST ARGS...] — the suite against the stack in $state;
# PYTEST_MATRIX_RUN=1: a run of the matrix, where no selected test is fine.
e2e_tests() {
	export PGOUTBOX_BIN=$repo/build-asan/cdc/pgoutbox
	export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
	export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
	local rc=0
	"$PYTHON" -m pytest -v --durations=25 tests/e2e "$@" || rc=$?
	if ((rc == 5)); then
		if [[ ${PYTEST_MATRIX_RUN:-0} == 1 ]]; then
			printf 'scripts/test.sh: no test of this run matches %s\n' "$*"
			return 0
		fi
		show_logs=0
		printf 'scripts/test.sh: pytest ran no test (exit 5): check the arguments %s\n' "$*" >&2
	fi
	return "$rc"
}

# The markers of the matrix run on MAJOR: core; on the newest also server.
matrix_marks() {
	if [[ $1 == "$PG_NEWEST" ]]; then printf 'core or server\n'; else printf 'core\n'; fi
}

# selects_tests MARKS [PYTEST ARGS...] — whether pytest -m MARKS with the
# user's arguments selects any test (collection only: no stack needed). An
# error other than "no test" counts as yes, for the run itself to report.
selects_tests() {
	local marks=$1 rc=0
	shift
	"$PYTHON" -m pytest -q --collect-only -m "$marks" tests/e2e "$@" >/dev/null 2>&1 || rc=$?
	((rc != 5))
}

# matrix_tests MAJOR [PYTEST ARGS...] — the matrix tests against a stack of
# PostgreSQL MAJOR.
matrix_tests() {
	local major=$1
	shift
	PYTEST_MATRIX_RUN=1 e2e_tests -m "$(matrix_marks "$major")" "$@"
}

deps=()
for v in "${PG_MATRIX[@]+"${PG_MATRIX[@]}"}"; do
	deps+=(--pg "$v")
done
step "install dependencies" scripts/install-deps.sh "${deps[@]+"${deps[@]}"}"
step "build (build/)" build_plain
step "build with ASan+UBSan (build-asan/)" build_asan
step "unit tests, ASan+UBSan" meson test -C build-asan --print-errorlogs
step "unit tests, valgrind" meson test -C build --print-errorlogs --suite unit --wrapper="$VALGRIND"
step "fuzz decoder (60 s)" fuzz_decoder
# --kafka-tls: SSL and SASL_SSL listeners beside PLAINTEXT, for test_kafka_tls.py.
step "start PostgreSQL 15 + Kafka" start_stack --kafka-tls
step "end-to-end tests, PostgreSQL 15 (all)" e2e_tests "$@"
step "stop PostgreSQL 15 + Kafka" stop_stack
for v in "${PG_MATRIX[@]+"${PG_MATRIX[@]}"}"; do
	marks=$(matrix_marks "$v")
	if (($# > 0)) && ! selects_tests "$marks" "$@"; then
		printf '\n==> PostgreSQL %s: no test marked %s matches %s; skipped\n' "$v" "$marks" "$*"
		continue
	fi
	opts=(--pg "$v")
	((v < 17)) || opts+=(--standby)
	step "start PostgreSQL $v${opts[2]:+ + standby} + Kafka" start_stack "${opts[@]}"
	step "end-to-end tests, PostgreSQL $v (-m $marks)" matrix_tests "$v" "$@"
	step "stop PostgreSQL $v + Kafka" stop_stack
done
