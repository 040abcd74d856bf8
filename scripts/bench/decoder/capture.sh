#!/usr/bin/env bash
#
# capture.sh — capture the decoder benchmark's input stream from a real
# PostgreSQL: N single-insert transactions (default 200,000) into the default
# outbox table, each with a ~200-byte jsonb payload, as pgoutput sends them.
#
#   scripts/bench/decoder/capture.sh [OUTPUT]
#
# OUTPUT defaults to
#   ${PGOUTBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgoutbox}/bench/outbox-inserts-N.records
# (about 70 MB: keep it out of the repository).  Its format is that of the
# golden inputs in tests/decoder/cases/*/input: records of Uint32 big-endian
# length + one pgoutput message.  OUTPUT.info describes the capture.
#
# It starts a throwaway cluster with scripts/stack.sh --pg-only (temp dir,
# wal_level=logical, a free port on 127.0.0.1, fsync off) and reads
# the slot with pg_logical_slot_get_binary_changes(), in chunks so that psql
# never holds the whole stream.  The options are the daemon's for PostgreSQL
# 15 (proto_version 3, messages on, no streaming).  Every chunk is a new
# decoding session, so each starts with a Relation message, as a reconnect
# of the daemon would.
#
# Needs PostgreSQL server binaries (PGBIN, default PostgreSQL 15) and perl.
# Run as root (the cluster runs as user postgres via runuser) or as an
# unprivileged user.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
N=${BENCH_TXNS:-200000}
CHUNK=${BENCH_CHUNK:-150000} # rows per pg_logical_slot_get_binary_changes call
PROTO=3
cache=${PGOUTBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgoutbox}
out=${1:-$cache/bench/outbox-inserts-$N.records}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)

mkdir -p "$(dirname "$out")"
# The throwaway cluster comes from scripts/stack.sh (PostgreSQL only), like
# every other cluster of the project; synchronous_commit is set per session.
tmp=$(mktemp -d /tmp/pgoutbox-bench-capture.XXXXXX)
chmod 755 "$tmp"
cleanup() {
	"$repo/scripts/stack.sh" stop --state "$tmp/stack" --clean >/dev/null 2>&1 || true
	rm -rf "$tmp"
	rm -f "$out.partial"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
"$repo/scripts/stack.sh" start --pg-only --state "$tmp/stack" >/dev/null
set -a
# shellcheck source=/dev/null
. "$tmp/stack/env"
set +a

psql_pg() {
	PGOPTIONS='-c synchronous_commit=off' "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"
}

echo "capture.sh: $N single-insert transactions into a PostgreSQL $(
	"$PGBIN/postgres" --version | awk '{print $3}') cluster"
# One transaction per loop turn: COMMIT inside DO (PostgreSQL 11+).  The
# payload is deterministic and about 200 bytes long as jsonb text.
psql_pg <<SQL
CREATE TABLE public.outbox (
	id uuid PRIMARY KEY,
	aggregatetype text NOT NULL,
	aggregateid text NOT NULL,
	type text NOT NULL,
	payload jsonb
);
CREATE PUBLICATION pub FOR TABLE outbox;
SELECT 'slot' FROM pg_create_logical_replication_slot('bench', 'pgoutput') \g /dev/null
DO \$\$
BEGIN
	FOR i IN 1..$N LOOP
		INSERT INTO outbox VALUES (
			md5('bench-' || i)::uuid, 'order', 'order-' || i, 'OrderCreated',
			jsonb_build_object(
				'orderId', 'order-' || i,
				'customerId', 'customer-' || (i % 10007),
				'total', round((i % 100000) * 1.37, 2),
				'items', jsonb_build_array(
					jsonb_build_object('sku', 'SKU-' || (i % 97), 'qty', 1 + i % 5, 'price', 12.5),
					jsonb_build_object('sku', 'SKU-' || (i % 89), 'qty', 1, 'price', 7.25)),
				'createdAt', '2024-05-01T12:00:00Z'));
		COMMIT;
	END LOOP;
END
\$\$;
CHECKPOINT;
SQL

# Chunks end at transaction boundaries: a transaction's messages are all
# written when its commit record is decoded, and upto_nchanges is checked
# between WAL records.
: >"$out.partial"
total=0
while :; do
	psql_pg -At >"$tmp/chunk.hex" <<SQL
SELECT lpad(to_hex(length(data)), 8, '0') || encode(data, 'hex')
  FROM pg_logical_slot_get_binary_changes('bench', NULL, $CHUNK,
       'proto_version', '$PROTO', 'publication_names', 'pub', 'messages', 'true');
SQL
	rows=$(wc -l <"$tmp/chunk.hex")
	[ "$rows" -eq 0 ] && break
	perl -ne 'chomp; print pack("H*", $_)' <"$tmp/chunk.hex" >>"$out.partial"
	total=$((total + rows))
	echo "capture.sh: $total messages"
done

inserts=$(psql_pg -At -c 'SELECT count(*) FROM outbox')
payload=$(psql_pg -At -c 'SELECT round(avg(length(payload::text))) FROM outbox')
mv "$out.partial" "$out"
cat >"$out.info" <<INFO
stream:        $N single-insert transactions into public.outbox ($inserts rows)
payload:       jsonb, $payload bytes on average as text
messages:      $total ($(wc -c <"$out") bytes with 4-byte length prefixes)
server:        $("$PGBIN/postgres" --version)
options:       proto_version '$PROTO', publication_names 'pub', messages 'true'
chunk:         $CHUNK rows per pg_logical_slot_get_binary_changes call
captured:      $(date -u +%Y-%m-%dT%H:%M:%SZ) by scripts/bench/decoder/capture.sh
INFO
cat "$out.info"
echo "capture.sh: wrote $out"
