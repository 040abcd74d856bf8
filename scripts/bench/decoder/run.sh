#!/usr/bin/env bash
#
# run.sh — the decoder benchmark in one command: capture the stream if it is
# not cached yet, build bench_decoder (release, -O2), run it, print a
# markdown table.
#
#   scripts/bench/decoder/run.sh [--callgrind] [BENCH_DECODER ARGS...]
#
#   --callgrind   also count the instructions per message of each mode under
#                 valgrind --tool=callgrind (one pass each, decode loop only)
#   ARGS          passed to bench_decoder before the file, e.g. -r 21 -w 3
#
# Environment:
#   PGOUTBOX_CACHE       cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/pgoutbox);
#                        the stream is $PGOUTBOX_CACHE/bench/outbox-inserts-200000.records
#   DECODER_BENCH_BUILD  build directory (default build-bench-decoder/ in the repository)
#   CC                   compiler for a new build directory (default: meson's choice, cc)
#
# See docs/benchmarks.md for figures and how to read them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
repo=$PWD
readonly repo
cache=${PGOUTBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgoutbox}
stream=$cache/bench/outbox-inserts-200000.records
build=${DECODER_BENCH_BUILD:-$repo/build-bench-decoder}
readonly cache stream build

callgrind=0
if [[ ${1:-} == --callgrind ]]; then
	callgrind=1
	shift
fi

info() { printf 'run.sh: %s\n' "$*" >&2; }

if [[ ! -s $stream ]]; then
	info "no stream at $stream: capturing it (about 10 s)"
	BENCH_TXNS=200000 scripts/bench/decoder/capture.sh "$stream" >&2
fi

# Release build, -O2 without -g; only the benchmark and the decoder are
# compiled.  (Not --buildtype=release: on a reconfigure it would win over
# -Doptimization=2 and build with -O3.)
opts=(-Ddebug=false -Doptimization=2 -Dbench=true --werror)
if [[ -f $build/meson-private/coredata.dat ]]; then
	opts+=(--reconfigure)
else
	rm -rf -- "$build"
	mkdir -p "$build"
fi
meson setup "$build" "${opts[@]}" >"$build/setup.log" 2>&1 ||
	{ cat "$build/setup.log" >&2; exit 1; }
meson compile -C "$build" bench_decoder >"$build/compile.log" 2>&1 ||
	{ cat "$build/compile.log" >&2; exit 1; }
bench=$build/scripts/bench/decoder/bench_decoder

# The compiler and flags as ninja ran them for the decoder.
cc_cmd=$(ninja -C "$build" -t commands scripts/bench/decoder/bench_decoder 2>/dev/null |
	grep -m1 'pgoutput\.c' || true)
cc_bin=${cc_cmd%% *}
flags=$(grep -oE ' -(O[0-9s]|g|std=[a-z0-9]+|f[a-z-]+(=[^ ]*)?|m[a-z0-9=-]+|D[A-Z_0-9]+(=[^ ]*)?)' \
	<<<"$cc_cmd" | grep -v -- '-fdiagnostics' | tr -d '\n' | sed 's/^ //')

printf '## Decoder benchmark\n\n'
printf -- '- machine: %s, %s logical CPUs, %s RAM\n' \
	"$(lscpu | sed -n 's/^Model name: *//p' | head -n1)" "$(nproc)" \
	"$(free -h | awk '/^Mem:/ {print $2}')"
printf -- '- compiler: %s; decoder flags: %s\n' "$("$cc_bin" --version | head -n1)" "$flags"
printf -- '- stream: captured from %s (%s)\n' \
	"$(sed -n 's/^server: *//p' "$stream.info" 2>/dev/null)" \
	"$(sed -n 's/^captured: *\([^ ]*\).*/\1/p' "$stream.info" 2>/dev/null)"
printf -- '- command: scripts/bench/decoder/run.sh%s\n\n' "$( (($#)) && printf ' %q' "$@")"
"$bench" "$@" "$stream"

if ((callgrind)); then
	command -v valgrind >/dev/null || { info "valgrind not found"; exit 1; }
	tmp=$(mktemp -d /tmp/pgoutbox-callgrind.XXXXXX)
	trap 'rm -rf "$tmp"' EXIT
	printf '\n| mode | instructions/message (callgrind) |\n|---|---:|\n'
	for mode in msg env; do
		fn=pass_message
		label='message only'
		if [[ $mode == env ]]; then
			fn=pass_envelope
			label='envelope + message'
		fi
		valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$mode" \
			--collect-atstart=no --toggle-collect="$fn*" \
			"$bench" -w 0 -r 1 -m "$mode" "$stream" >"$tmp/out.$mode" 2>"$tmp/err.$mode" ||
			{ cat "$tmp/err.$mode" >&2; exit 1; }
		ir=$(sed -n 's/^totals: *//p' "$tmp/cg.$mode" | awk '{print $1}')
		n=$(awk '$2 == "messages" {print $1; exit}' "$tmp/out.$mode")
		awk -v l="$label" -v ir="$ir" -v n="$n" \
			'BEGIN { printf "| %s | %.1f |\n", l, ir / n }'
	done
fi
