#!/usr/bin/env bash
# demo.sh — the main job on a fresh machine, in one command: install what is
# missing, build pgoutbox, start a throwaway PostgreSQL + Kafka, set up the
# slot, run pgoutbox, write a few outbox events and show them arriving in Kafka.
# Everything runs in a temporary state directory and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
if [ ! -d build ]; then meson setup build >/dev/null; fi
meson compile -C build >/dev/null
echo "built build/cdc/pgoutbox"

state=$(mktemp -d "${TMPDIR:-/tmp}/pgoutbox-demo.XXXXXX")
pid=""
cleanup() {
	if [ -n "$pid" ]; then
		kill -TERM "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	scripts/stack.sh stop --state "$state" --clean >/dev/null 2>&1 || true
}
trap cleanup EXIT
scripts/stack.sh start --state "$state"
# shellcheck disable=SC1091
. "$state/env"

scripts/setup-slot.sh -d "$PGOUTBOX_PG" --create-table

build/cdc/pgoutbox -d "$PGOUTBOX_PG" -b "$PGOUTBOX_BROKERS" &
pid=$!

echo "writing 3 orders and their outbox events in one transaction each..."
for i in 1 2 3; do
	psql -X -q -d "$PGOUTBOX_PG" -v ON_ERROR_STOP=1 -c "
	  BEGIN;
	  INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
	  VALUES (gen_random_uuid(), 'order', 'order-$i', 'OrderCreated',
	          jsonb_build_object('order', $i, 'total', $i * 10));
	  COMMIT;"
done
echo "one rolled-back transaction (must never reach Kafka)..."
psql -X -q -d "$PGOUTBOX_PG" -c "BEGIN; INSERT INTO outbox VALUES (gen_random_uuid(), 'order', 'ghost', 'OrderCreated', '{}'); ROLLBACK;"

target=$(psql -X -At -d "$PGOUTBOX_PG" -c "SELECT pg_current_wal_lsn()")
echo "waiting until the slot confirms $target (i.e. Kafka acknowledged every event)..."
for _ in $(seq 300); do
	done_=$(psql -X -At -d "$PGOUTBOX_PG" -c "SELECT confirmed_flush_lsn >= '$target' FROM pg_replication_slots WHERE slot_name = 'pgoutbox'")
	[ "$done_" = t ] && break
	sleep 0.1
done
[ "$done_" = t ] || { echo "slot did not confirm $target in 30 s" >&2; exit 1; }

echo "reading topic outbox.event.order back with kcat:"
timeout 30 kcat -C -b "$PGOUTBOX_BROKERS" -t outbox.event.order -o beginning -c 3 -q \
	-f 'partition=%p key=%k headers=%h timestamp=%T value=%s\n'
