#!/usr/bin/env bash
#
# make-corpus.sh — turn the decoder's golden cases into fuzz seeds.
#
# For each tests/decoder/cases/<name> it writes tests/fuzz/corpus/<name>.raw
# (bare pgoutput messages), <name>.env (a keepalive, then each message
# wrapped in an XLogData envelope) and, for streaming cases, <name>.v4 (the
# raw records read as protocol version 4), in fuzz_decoder.c's input format:
# one config byte (proto_version - 1, bit 2 = envelope), then
# Uint16-length-prefixed records.
# To keep seeds small, records over 4 KB are dropped and runs of Insert
# messages are cut to their first three.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cases=$here/../decoder/cases
out=$here/corpus
mkdir -p "$out"
rm -f "$out"/*.raw "$out"/*.env "$out"/*.v4

for dir in "$cases"/*/; do
	[ -f "$dir/proto" ] || continue # cases/pgN/: the other majors' cases, not seeds (yet)
	name=$(basename "$dir")
	proto=$(cat "$dir/proto")
	modes="raw env"
	[ "$proto" -ge 2 ] && modes="$modes v4"
	for mode in $modes; do
		perl -e '
			my ($proto, $mode) = @ARGV[0, 1];
			my $env = $mode eq "env";
			$proto = 4 if $mode eq "v4";
			binmode STDIN; binmode STDOUT;
			local $/; my $in = <STDIN>;
			print pack("C", ($proto - 1) | ($env ? 4 : 0));
			# keepalive: end LSN, send time, reply requested
			print pack("n", 18), "k", pack("Q>2C", 0x1000000, 0, 1) if $env;
			my ($pos, $inserts) = (0, 0);
			while ($pos + 4 <= length $in) {
				my $n = unpack("N", substr($in, $pos, 4));
				my $msg = substr($in, $pos + 4, $n);
				$pos += 4 + $n;
				next if $n > 4096;
				$inserts = substr($msg, 0, 1) eq "I" ? $inserts + 1 : 0;
				next if $inserts > 3;
				# XLogData: start and end LSN, send time (values do not matter)
				$msg = "w" . pack("Q>3", 0x1000000, 0x1000000 + $n, 0) . $msg if $env;
				print pack("n", length $msg), $msg;
			}
		' "$proto" "$mode" \
			<"$dir/input" >"$out/$name.$mode"
	done
done
ls -l "$out"
