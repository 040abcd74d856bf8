#!/usr/bin/env bash
# stack.sh — a throwaway local PostgreSQL (13 to 18; Debian's 15 by default),
# optionally with a physical streaming standby, and a single-node (KRaft)
# Kafka for pgoutbox's tests and quickstart.
#
# Everything lives in one state directory (data, logs, sockets, pid files) and
# listens on free ports on 127.0.0.1 only; nothing system-wide is touched, so
# several stacks can run side by side in different state directories. Every
# PostgreSQL server runs as the unprivileged postgres user when we are root.
#
#   scripts/stack.sh start [--state DIR] [--pg N] [--standby] [--pg-only]
#                          [--pg-tls] [--kafka-tls] [--wal-level logical|replica]
#   scripts/stack.sh stop  [--state DIR] [--clean]
#   scripts/stack.sh env   [--state DIR]
#   scripts/stack.sh kafka-stop  [--state DIR] [--signal KILL|TERM]
#   scripts/stack.sh kafka-start [--state DIR]
#   scripts/stack.sh restart-pg  [--state DIR] [--mode fast|immediate] [--standby]
#   scripts/stack.sh kill-primary [--state DIR]
#   scripts/stack.sh kill-standby [--state DIR]
#   scripts/stack.sh promote     [--state DIR]
#
# `start` prints shell-sourceable KEY=VALUE lines (also kept in DIR/env) on
# stdout; progress and errors go to stderr, so `eval "$(scripts/stack.sh start)"`
# works. Needs the packages and Kafka jars of scripts/install-deps.sh, and for
# --pg N (N other than 15) the server of `scripts/install-deps.sh --pg N`.
# Debian's PostgreSQL 15 psql and pg_isready are the clients of every server.
#
# --pg-tls and --kafka-tls each make a throwaway CA and a server certificate
# for localhost/127.0.0.1 with openssl (kept for the life of DIR). Kafka then
# listens, beside PLAINTEXT (clients' default and inter-broker) and CONTROLLER,
# on an SSL and a SASL_SSL listener (SCRAM-SHA-256 and SCRAM-SHA-512); the
# SCRAM user is created when the storage is formatted, with or without
# --kafka-tls, so that any start of DIR can turn the TLS listeners on or off.
#
# --standby makes a physical streaming standby of the primary in DIR/standby:
# a physical slot on the primary, an online base backup taken with the SQL
# functions (pg_backup_start/stop, or pg_start/stop_backup on 13 and 14: the
# npm servers have no pg_basebackup, and Debian's 15 refuses newer servers),
# primary_conninfo, primary_slot_name, hot_standby_feedback and, from 17 on,
# sync_replication_slots (failover logical slots are synchronised to it) with
# the primary's synchronized_standby_slots naming the standby's slot. It is
# made afresh at every (re)start of the stack.
set -euo pipefail

readonly KAFKA_VERSION=3.9.1
readonly KAFKA_READY_TIMEOUT=90 # seconds
readonly KAFKA_STOP_TIMEOUT=30  # seconds before SIGKILL
readonly PG_START_TIMEOUT=60    # seconds
readonly PORT_ATTEMPTS=3        # a picked port may be taken before we bind it
readonly KAFKA_SASL_USER=pgoutbox
# Protects only the throwaway key in DIR/kafka/tls/server.p12, which is
# beside it in DIR/kafka/server.properties anyway.
readonly KAFKA_KEYSTORE_PASSWORD=pgoutbox-stack

# Debian's PostgreSQL 15: the server of --pg 15 (the default) and, for every
# server, the clients (psql, pg_isready).
DEBIAN_PGBIN=${PGOUTBOX_PGBIN:-/usr/lib/postgresql/15/bin}
CLIENT_BIN=$DEBIAN_PGBIN
CACHE=${PGOUTBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgoutbox}
# Where scripts/install-deps.sh --pg N puts the other servers (same rule).
if [[ -n ${PGOUTBOX_PG_CACHE:-} ]]; then
	PG_CACHE=$PGOUTBOX_PG_CACHE
elif [[ $(id -u) -eq 0 ]]; then
	PG_CACHE=/var/cache/pgoutbox
else
	PG_CACHE=$CACHE
fi
KAFKA_LIBS=$CACHE/kafka-$KAFKA_VERSION/libs
PYTHON=/usr/bin/python3
[[ -x $PYTHON ]] || PYTHON=python3
readonly DEBIAN_PGBIN CLIENT_BIN CACHE PG_CACHE KAFKA_LIBS PYTHON
readonly PG_MAJORS=(13 14 15 16 17 18)
# The standby's physical slot on the primary (and its application_name).
readonly STANDBY_SLOT=pgoutbox_standby

# The server of the stack's major (pg_select): its bin and lib directories.
PG_MAJOR='' PGBIN='' PGLIB=''

usage() {
	cat <<'EOF'
usage: scripts/stack.sh start [--state DIR] [--pg N] [--standby] [--pg-only]
                             [--pg-tls] [--kafka-tls] [--wal-level logical|replica]
       scripts/stack.sh stop  [--state DIR] [--clean]
       scripts/stack.sh env   [--state DIR]
       scripts/stack.sh kafka-stop  [--state DIR] [--signal KILL|TERM]
       scripts/stack.sh kafka-start [--state DIR]
       scripts/stack.sh restart-pg  [--state DIR] [--mode fast|immediate] [--standby]
       scripts/stack.sh kill-primary [--state DIR]
       scripts/stack.sh kill-standby [--state DIR]
       scripts/stack.sh promote     [--state DIR]

  start  initialise (first time) and start PostgreSQL and Kafka from DIR, then
         print their environment (kept in DIR/env, shell-sourceable). If the
         stack in DIR already runs with the same options, only print it.
         --pg N             PostgreSQL major N: 13, 14, 16, 17 or 18 from
                            scripts/install-deps.sh --pg N, or 15 (Debian's,
                            the default). A DIR keeps the major it was made
                            with. The env gets PGOUTBOX_PG_VERSION (the
                            major), PGOUTBOX_PG_SERVER_VERSION, PGOUTBOX_PG_BINDIR
                            (initdb, pg_ctl, postgres) and PGOUTBOX_PG_DATA
         --standby          also a physical streaming standby of the primary
                            (made afresh from an online base backup), with a
                            physical slot pgoutbox_standby on the primary,
                            hot_standby_feedback and, from 17 on,
                            sync_replication_slots on the standby and
                            synchronized_standby_slots on the primary. The env
                            gets PGOUTBOX_STANDBY_PG (conninfo),
                            PGOUTBOX_STANDBY_PORT, PGOUTBOX_STANDBY_DATA,
                            PGOUTBOX_STANDBY_LOG and PGOUTBOX_STANDBY_SLOT
         --pg-only          PostgreSQL only, no Kafka
         --pg-tls           PostgreSQL with TLS on: a throwaway CA and a server
                            certificate for localhost/127.0.0.1 in DIR/pg/tls;
                            the env gets PGOUTBOX_PG_CA (for sslrootcert)
         --kafka-tls        Kafka also listens with TLS: an SSL listener and a
                            SASL_SSL one (SCRAM-SHA-256/512, user pgoutbox),
                            with a throwaway CA and server certificate for
                            localhost/127.0.0.1 in DIR/kafka/tls; the env gets
                            PGOUTBOX_KAFKA_SSL_BROKERS, PGOUTBOX_KAFKA_SASL_BROKERS,
                            PGOUTBOX_KAFKA_CA, PGOUTBOX_KAFKA_SASL_USER and
                            PGOUTBOX_KAFKA_SASL_PASSWORD (the env file is then
                            mode 0600). PLAINTEXT stays. DIRs whose Kafka was
                            formatted by a stack.sh older than this option
                            have no SCRAM user: start them afresh (stop --clean)
         --wal-level LEVEL  logical (default) or replica
  stop   stop what runs from DIR (exit 0 if nothing does). Keeps DIR's files
         unless --clean, which removes DIR.
  env    print DIR/env
  kafka-stop   stop only the Kafka broker of DIR, for fault tests: SIGKILL by
               default (a crash), or --signal TERM (a clean shutdown); waits
               until it has exited. Exit 0 if no broker runs.
  kafka-start  start the Kafka broker of DIR again (after kafka-stop), from the
               same data on the same ports (TLS listeners included), and wait
               until it is ready. Exit 0 if it already runs.
  restart-pg   pg_ctl restart the primary (--standby: the standby) with
               -m fast (default) or -m immediate (a crash), on the same port,
               and wait until it answers queries; also starts a stopped or
               killed one
  kill-primary stop the primary with pg_ctl stop -m immediate (a crash: no
               shutdown checkpoint); exit 0 if it does not run
  kill-standby the same for the standby
  promote      promote the standby (pg_ctl promote) and wait until it accepts
               writes; its conninfo (PGOUTBOX_STANDBY_PG) is then the primary's.
               The old primary is left as it is (stop or kill it first for a
               failover); the next `start` makes a new standby

DIR defaults to $PGOUTBOX_STATE, else ${TMPDIR:-/tmp}/pgoutbox-stack.
The broker's JVM heap is KAFKA_HEAP_OPTS (Kafka's own variable) at start and
kafka-start, else -Xms256m -Xmx512m (enough for the tests; the benchmarks
use Kafka's default of 1 GB).
EOF
}

die() {
	printf 'stack.sh: error: %s\n' "$1" >&2
	shift
	local line
	for line in "$@"; do
		printf 'stack.sh: %s\n' "$line" >&2
	done
	exit 1
}

info() {
	printf 'stack.sh: %s\n' "$*" >&2
}

usage_error() {
	printf 'stack.sh: %s\n' "$1" >&2
	usage >&2
	exit 1
}

# Paths inside the state directory; set by set_state_dir.
STATE='' PGDIR='' PGDATA='' PGLOG='' PGTLS='' SBDIR='' SBDATA='' SBLOG=''
KDIR='' KLOG='' KTLS='' ENVFILE=''
PG_PORT='' SB_PORT='' KAFKA_PORT='' KAFKA_SSL_PORT='' KAFKA_SASL_PORT='' PG_TLS=0 KAFKA_TLS=0

set_state_dir() {
	local dir=$1
	[[ -n $dir ]] || die "empty state directory"
	[[ $dir == /* ]] || dir=$PWD/$dir
	dir=$(realpath -m -- "$dir")
	# The path ends up in postgresql.conf, server.properties (log.dirs is a
	# comma list), a JVM option and the env file: keep it plain.
	[[ $dir =~ ^[A-Za-z0-9._/+@-]+$ ]] ||
		die "state directory '$dir' contains spaces or special characters" \
			"use a path made of letters, digits and . _ / + @ -"
	# PostgreSQL's socket DIR/standby/.s.PGSQL.NNNNN must fit in sun_path (108 bytes).
	((${#dir} + 25 < 108)) ||
		die "state directory path is too long for PostgreSQL's Unix socket (${#dir} characters)" \
			"use a shorter --state (at most 82 characters)"
	STATE=$dir
	PGDIR=$STATE/pg
	PGDATA=$PGDIR/data
	PGLOG=$PGDIR/postgresql.log
	PGTLS=$PGDIR/tls
	SBDIR=$STATE/standby
	SBDATA=$SBDIR/data
	SBLOG=$SBDIR/postgresql.log
	KDIR=$STATE/kafka
	KLOG=$KDIR/server.log
	KTLS=$KDIR/tls
	ENVFILE=$STATE/env
}

# Serialise start/stop on one state directory. Daemons are started with fd 9
# closed so that they never inherit (and hold) the lock.
lock_state() {
	exec 9>"$STATE/.lock"
	flock -w 180 9 || die "another stack.sh has held $STATE/.lock for 3 minutes; giving up"
}

# ---------------------------------------------------------------- PostgreSQL

is_root() { [[ $(id -u) -eq 0 ]]; }

# pg_select MAJOR — use the server of PostgreSQL MAJOR: Debian's for 15, else
# the tree of scripts/install-deps.sh --pg MAJOR. Sets PG_MAJOR, PGBIN, PGLIB.
pg_select() {
	local major=$1
	[[ " ${PG_MAJORS[*]} " == *" $major "* ]] ||
		die "no PostgreSQL $major here: choose one of ${PG_MAJORS[*]}"
	PG_MAJOR=$major
	if [[ $major == 15 ]]; then
		PGBIN=$DEBIAN_PGBIN PGLIB=''
		[[ -x $PGBIN/initdb ]] || die "PostgreSQL 15 server binaries not found in $PGBIN" \
			"run scripts/install-deps.sh (or set PGOUTBOX_PGBIN)"
		return 0
	fi
	local tree=$PG_CACHE/pg-$major
	PGBIN=$tree/native/bin PGLIB=$tree/native/lib
	[[ -f $tree/.complete && -x $PGBIN/postgres && -x $PGBIN/initdb && -x $PGBIN/pg_ctl ]] ||
		die "PostgreSQL $major is not installed in $tree" \
			"run scripts/install-deps.sh --pg $major (or set PGOUTBOX_PG_CACHE to where it put it)"
}

# The major of the cluster in DIR, if there is one (its data directory's PG_VERSION).
pg_cluster_major() {
	[[ -f $PGDATA/PG_VERSION ]] || return 1
	local v
	v=$(<"$PGDATA/PG_VERSION")
	[[ $v =~ ^[0-9]+$ ]] || die "$PGDATA/PG_VERSION holds '$v', not a major version"
	printf '%s\n' "$v"
}

# For the commands that act on an existing cluster: select its server.
pg_select_cluster() {
	local major
	major=$(pg_cluster_major) ||
		die "no PostgreSQL cluster in $PGDATA" "start the stack first: scripts/stack.sh start --state $STATE"
	pg_select "$major"
}

# Run a PostgreSQL server tool as the postgres user when we are root
# (PostgreSQL refuses to run as root), from a directory it may enter, with
# the server tree's libraries first on the library path (its binaries find
# them through their RUNPATH too; this keeps them from Debian's anyway).
as_pg() {
	if [[ -n $PGLIB ]]; then
		as_pg_user env LD_LIBRARY_PATH="$PGLIB" "$@"
	else
		as_pg_user "$@"
	fi
}

# as_pg_user COMMAND... — any other command as postgres when we are root.
as_pg_user() {
	if is_root; then
		(cd "$PGDIR" && runuser -u postgres -- "$@")
	else
		"$@"
	fi
}

# server_running DATA — a postmaster runs from DATA.
server_running() {
	[[ -f $1/PG_VERSION ]] || return 1
	as_pg "$PGBIN/pg_ctl" status -D "$1" >/dev/null 2>&1
}

pg_running() { server_running "$PGDATA"; }
standby_running() { server_running "$SBDATA"; }

# The port in DATA/pgoutbox-stack.conf (written by stack.sh at each start).
conf_port() {
	sed -n 's/^port = \([0-9][0-9]*\)$/\1/p' "$1/pgoutbox-stack.conf" 2>/dev/null | tail -n 1
}

# psql_at PORT SQL — one query with Debian's psql, unaligned tuples only.
psql_at() {
	"$CLIENT_BIN/psql" -X -q -w -h 127.0.0.1 -p "$1" -U postgres -d postgres -v ON_ERROR_STOP=1 \
		-Atc "$2"
}

# pg_prepare_dir DIR — when root, give DIR (a directory for one server) to
# postgres and make sure postgres can reach it: add o+x to each directory
# above it that it cannot traverse.
pg_prepare_dir() {
	local dir=$1
	mkdir -p "$dir"
	is_root || return 0
	id postgres >/dev/null 2>&1 ||
		die "user postgres does not exist (PostgreSQL refuses to run as root)" \
			"install postgresql-15 (scripts/install-deps.sh), or run as a non-root user"
	chown -R postgres:postgres "$dir"
	chmod 700 "$dir"
	if ! runuser -u postgres -- test -x "$dir"; then
		local d=$STATE
		while [[ $d != / ]]; do
			if ! runuser -u postgres -- test -x "$d"; then
				[[ $d == "$STATE" || $d == "$STATE"/* ]] ||
					info "note: adding o+x to $d so that the postgres user can reach $dir"
				chmod o+x "$d"
			fi
			d=$(dirname "$d")
		done
		runuser -u postgres -- test -x "$dir" ||
			die "the postgres user cannot reach $dir" \
				"choose a --state directory under ${TMPDIR:-/tmp}"
	fi
	if [[ -n $PGLIB ]] && ! runuser -u postgres -- test -x "$PGBIN/postgres"; then
		die "the postgres user cannot run $PGBIN/postgres" \
			"install it where postgres can read it: scripts/install-deps.sh --pg $PG_MAJOR (see PGOUTBOX_PG_CACHE there)"
	fi
}

# Write stdin to a file in a PostgreSQL directory, owned by postgres when root.
pg_write_file() {
	cat >"$1"
	if is_root; then chown postgres:postgres "$1"; fi
}

pg_init() {
	[[ -f $PGDATA/PG_VERSION ]] && return 0
	rm -rf -- "$PGDATA" # leftover of an interrupted initdb
	info "initialising PostgreSQL $PG_MAJOR in $PGDATA"
	local quiet=()
	((PG_MAJOR < 14)) || quiet=(--no-instructions) # 14+
	if ! as_pg "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres --no-sync \
		-E UTF8 --locale=C "${quiet[@]}" >"$PGDIR/initdb.log" 2>&1; then
		cat "$PGDIR/initdb.log" >&2
		die "initdb failed (output above)"
	fi
	# The scram line for pgoutbox_pw comes before the trust lines: tests use
	# that role to check that passwords are never printed. The standby's
	# walreceiver connects as postgres (trust, replication).
	pg_write_file "$PGDATA/pg_hba.conf" <<'HBA'
# written by scripts/stack.sh: a throwaway test cluster, trust on loopback
# TYPE  DATABASE     USER         ADDRESS        METHOD
host    all          pgoutbox_pw  127.0.0.1/32   scram-sha-256
host    replication  pgoutbox_pw  127.0.0.1/32   scram-sha-256
local   all          all                         trust
host    all          all          127.0.0.1/32   trust
host    all          all          ::1/128        trust
local   replication  all                         trust
host    replication  all          127.0.0.1/32   trust
host    replication  all          ::1/128        trust
HBA
	printf "\n# settings of scripts/stack.sh\ninclude = 'pgoutbox-stack.conf'\n" >>"$PGDATA/postgresql.conf"
}

# tls_make DIR OPTION — a throwaway CA and a server certificate it signed, for
# CN=localhost with subjectAltName DNS:localhost,IP:127.0.0.1: DIR/ca.crt,
# DIR/ca.key, DIR/server.crt, DIR/server.key (openssl's output goes to
# openssl.log beside DIR). Made once; kept (with the CA) for the life of the
# state directory. OPTION names the option that needs it, for errors.
tls_make() {
	local dir=$1 option=$2
	if [[ -f $dir/ca.crt && -f $dir/server.crt && -f $dir/server.key ]]; then
		return 0
	fi
	command -v openssl >/dev/null 2>&1 || die "openssl not found (needed by $option)" \
		"run scripts/install-deps.sh"
	info "generating a throwaway CA and server certificate in $dir"
	rm -rf -- "$dir"
	mkdir -p "$dir"
	local log
	log=$(dirname "$dir")/openssl.log
	if ! {
		openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj '/CN=pgoutbox stack.sh test CA' \
			-keyout "$dir/ca.key" -out "$dir/ca.crt" &&
			openssl req -new -newkey rsa:2048 -nodes -subj '/CN=localhost' \
				-keyout "$dir/server.key" -out "$dir/server.csr" &&
			printf 'subjectAltName = DNS:localhost,IP:127.0.0.1\nbasicConstraints = CA:FALSE\nkeyUsage = digitalSignature,keyEncipherment\nextendedKeyUsage = serverAuth\n' \
				>"$dir/server.ext" &&
			openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
				-CAcreateserial -days 3650 -sha256 -extfile "$dir/server.ext" -out "$dir/server.crt"
	} >"$log" 2>&1; then
		cat "$log" >&2
		rm -rf -- "$dir"
		die "generating the TLS certificates with openssl failed (output above)"
	fi
	rm -f -- "$dir/server.csr" "$dir/server.ext" "$dir/ca.srl"
	chmod 600 "$dir/ca.key" "$dir/server.key"
	chmod 644 "$dir/ca.crt" "$dir/server.crt"
	chmod 755 "$dir"
}

# pg_tls_make — tls_make in DIR/pg/tls, owned by postgres when we are root.
pg_tls_make() {
	tls_make "$PGTLS" --pg-tls
	if is_root; then chown -R postgres:postgres "$PGTLS"; fi
}

# The settings every server of the stack has (primary and standby alike: a
# hot standby needs max_* at least the primary's), then TLS.
pg_common_conf() {
	cat <<CONF
listen_addresses = '127.0.0.1'
wal_level = $WAL_LEVEL
max_replication_slots = 32
max_wal_senders = 32
track_commit_timestamp = on
fsync = off
full_page_writes = off
synchronous_commit = on
wal_sender_timeout = 60s
max_prepared_transactions = 16
logging_collector = off
# the default from 14 on; 13 would store md5 hashes, which pg_hba.conf's
# scram-sha-256 line for pgoutbox_pw refuses
password_encryption = 'scram-sha-256'
CONF
	if [[ $PG_TLS == 1 ]]; then
		cat <<CONF
ssl = on
ssl_cert_file = '$PGTLS/server.crt'
ssl_key_file = '$PGTLS/server.key'
ssl_ca_file = '$PGTLS/ca.crt'
CONF
	else
		printf 'ssl = off\n'
	fi
}

# Failover slots (17+) need logical decoding on both sides.
slot_sync_on() { [[ $STANDBY == 1 && $WAL_LEVEL == logical ]] && ((PG_MAJOR >= 17)); }

# pg_write_conf PORT — the primary's settings this stack owns; rewritten at
# each start. With a standby from 17 on, logical walsenders wait for the
# standby's slot (synchronized_standby_slots): a failover slot then never
# gets ahead of what the standby has.
pg_write_conf() {
	{
		printf '# written by scripts/stack.sh at each start: the primary\n'
		printf "port = %s\nunix_socket_directories = '%s'\n" "$1" "$PGDIR"
		pg_common_conf
		if slot_sync_on; then
			printf "synchronized_standby_slots = '%s'\n" "$STANDBY_SLOT"
		fi
	} | pg_write_file "$PGDATA/pgoutbox-stack.conf"
}

# standby_write_conf PORT — the standby's settings (its copy of the primary's
# file is replaced). dbname in primary_conninfo is for the slot sync worker.
standby_write_conf() {
	{
		printf '# written by scripts/stack.sh at each start: a physical standby of %s\n' "$PGDATA"
		printf "port = %s\nunix_socket_directories = '%s'\n" "$1" "$SBDIR"
		pg_common_conf
		cat <<CONF
primary_conninfo = 'host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres application_name=$STANDBY_SLOT'
primary_slot_name = '$STANDBY_SLOT'
hot_standby = on
hot_standby_feedback = on
CONF
		if slot_sync_on; then
			printf 'sync_replication_slots = on\n'
		fi
	} | pg_write_file "$SBDATA/pgoutbox-stack.conf"
}

# server_start primary|standby — start that server on a free port (its
# configuration rewritten for the port) and wait until it answers queries;
# sets PG_PORT or SB_PORT.
server_start() {
	local role=$1 attempt port data log dir
	if [[ $role == primary ]]; then
		data=$PGDATA log=$PGLOG dir=$PGDIR
	else
		data=$SBDATA log=$SBLOG dir=$SBDIR
	fi
	for ((attempt = 1; attempt <= PORT_ATTEMPTS; attempt++)); do
		port=$(pick_ports 1)
		if [[ $role == primary ]]; then pg_write_conf "$port"; else standby_write_conf "$port"; fi
		info "starting PostgreSQL $PG_MAJOR ($role) on 127.0.0.1:$port (wal_level=$WAL_LEVEL)"
		local mark=0
		[[ -f $log ]] && mark=$(wc -l <"$log")
		if as_pg "$PGBIN/pg_ctl" start -D "$data" -l "$log" -w -t "$PG_START_TIMEOUT" \
			>"$dir/pg_ctl.log" 2>&1 9>&-; then
			if [[ $role == primary ]]; then PG_PORT=$port; else SB_PORT=$port; fi
			server_wait_ready "$port" "$log"
			return 0
		fi
		if tail -n +"$((mark + 1))" "$log" 2>/dev/null | grep -q 'could not bind'; then
			info "port $port was taken meanwhile; picking another"
			continue
		fi
		break
	done
	cat "$dir/pg_ctl.log" >&2 || true
	printf '%s\n' "--- last lines of $log:" >&2
	tail -n 30 "$log" >&2 || true
	die "PostgreSQL ($role) did not start (log above)"
}

# server_wait_ready PORT LOG — poll until the server answers a query (pg_ctl
# -w only waits for the postmaster; a hot standby answers read-only ones).
server_wait_ready() {
	local deadline=$((SECONDS + PG_START_TIMEOUT))
	until "$CLIENT_BIN/pg_isready" -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -t 1 &&
		psql_at "$1" 'SELECT 1' >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			tail -n 30 "$2" >&2 || true
			die "PostgreSQL on 127.0.0.1:$1 did not accept connections within ${PG_START_TIMEOUT}s (log above)"
		fi
		sleep 0.2
	done
}

# pg_start — the primary: initdb (first time), then start on a free port.
pg_start() {
	pg_prepare_dir "$PGDIR"
	pg_init
	[[ $PG_TLS != 1 ]] || pg_tls_make
	server_start primary
}

# standby_create — a new standby of the running primary in DIR/standby, from
# an online base backup made with the SQL backup functions; then start it
# and wait until the primary sees it streaming.
standby_create() {
	pg_prepare_dir "$SBDIR"
	rm -rf -- "$SBDATA"
	# The slot first: from its creation on it holds the WAL the standby will
	# need, from before the backup's checkpoint until the standby streams.
	psql_at "$PG_PORT" "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
	                     WHERE slot_name = '$STANDBY_SLOT'" >/dev/null ||
		die "could not drop the old physical slot $STANDBY_SLOT on the primary"
	psql_at "$PG_PORT" "SELECT 1 FROM pg_create_physical_replication_slot('$STANDBY_SLOT', true)" >/dev/null ||
		die "could not create the physical slot $STANDBY_SLOT on the primary"
	info "making a standby in $SBDATA from an online base backup of the primary"
	if ! as_pg_user "$PYTHON" - "$PG_PORT" "$PG_MAJOR" "$PGDATA" "$SBDATA" >"$SBDIR/basebackup.log" 2>&1 <<'PY'; then
# A base backup with the low-level API: the backup functions' session stays
# open while the data directory is copied; what PostgreSQL's documentation
# says to leave out is left out ("Backing Up the Data Directory").
import os, shutil, sys
import psycopg2

port, major, src, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
EMPTY_DIRS = {"pg_wal", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial",
              "pg_snapshots", "pg_stat_tmp", "pg_subtrans"}
SKIP_FILES = {"postmaster.pid", "postmaster.opts", "backup_label", "tablespace_map",
              "standby.signal", "recovery.signal", "pg_internal.init", "backup_manifest"}

conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
conn.autocommit = True
cur = conn.cursor()
if major >= 15:
    cur.execute("SELECT pg_backup_start('stack.sh standby', true)")
else:
    cur.execute("SELECT pg_start_backup('stack.sh standby', true, false)")
print("backup started at %s" % cur.fetchone()[0])

os.mkdir(dst, 0o700)
for root, dirs, files in os.walk(src):
    rel = os.path.relpath(root, src)
    out = dst if rel == "." else os.path.join(dst, rel)
    if rel != ".":
        os.makedirs(out, 0o700, exist_ok=True)
    if rel in EMPTY_DIRS:
        dirs[:] = []
        if rel == "pg_wal":
            os.makedirs(os.path.join(out, "archive_status"), 0o700, exist_ok=True)
        continue
    dirs[:] = [d for d in dirs if not d.startswith("pgsql_tmp")]
    for name in files:
        if name in SKIP_FILES or name.startswith("pgsql_tmp"):
            continue
        try:
            shutil.copy2(os.path.join(root, name), os.path.join(out, name), follow_symlinks=False)
        except FileNotFoundError:
            pass  # removed while we copied: the WAL replay recreates what matters

if major >= 15:
    cur.execute("SELECT lsn, labelfile, spcmapfile FROM pg_backup_stop(false)")
else:
    cur.execute("SELECT lsn, labelfile, spcmapfile FROM pg_stop_backup(false, false)")
lsn, label, spcmap = cur.fetchone()
with open(os.path.join(dst, "backup_label"), "w") as f:
    f.write(label)
if spcmap:
    with open(os.path.join(dst, "tablespace_map"), "w") as f:
        f.write(spcmap)
conn.close()
print("backup stopped at %s" % lsn)
PY
		cat "$SBDIR/basebackup.log" >&2
		die "the base backup for the standby failed (output above)"
	fi
	: | pg_write_file "$SBDATA/standby.signal"
	server_start standby
	# Streaming, not just started: the tests that follow rely on it.
	local deadline=$((SECONDS + PG_START_TIMEOUT)) state=''
	until [[ $state == streaming ]]; do
		state=$(psql_at "$PG_PORT" "SELECT state FROM pg_stat_replication
		                            WHERE application_name = '$STANDBY_SLOT'" 2>/dev/null) || state=''
		[[ $state == streaming ]] && break
		if ((SECONDS >= deadline)); then
			tail -n 30 "$SBLOG" >&2 || true
			die "the standby did not stream from the primary within ${PG_START_TIMEOUT}s (state '${state:-none}'; its log above)"
		fi
		sleep 0.2
	done
	info "standby on 127.0.0.1:$SB_PORT streams from the primary (slot $STANDBY_SLOT)"
}

# server_stop DATA NAME — stop the server of DATA (fast, then immediate).
server_stop() {
	local data=$1 name=$2
	server_running "$data" || return 0
	info "stopping PostgreSQL $name ($data)"
	if ! as_pg "$PGBIN/pg_ctl" stop -D "$data" -m fast -w -t 60 >/dev/null 2>&1; then
		info "fast shutdown did not finish in 60 s; using immediate shutdown"
		as_pg "$PGBIN/pg_ctl" stop -D "$data" -m immediate -w -t 30 >/dev/null 2>&1 || true
	fi
	if server_running "$data"; then
		info "warning: PostgreSQL in $data is still running"
		return 1
	fi
}

pg_stop() { server_stop "$PGDATA" primary; }
standby_stop() { server_stop "$SBDATA" standby; }

# server_kill DATA NAME — pg_ctl stop -m immediate: a crash, no shutdown
# checkpoint. Exit 0 if it does not run.
server_kill() {
	local data=$1 name=$2
	if ! server_running "$data"; then
		info "PostgreSQL $name in $data is not running"
		return 0
	fi
	info "killing PostgreSQL $name ($data) with an immediate shutdown"
	as_pg "$PGBIN/pg_ctl" stop -D "$data" -m immediate -w -t 30 >/dev/null 2>&1 ||
		die "pg_ctl stop -m immediate of $data failed"
}

# server_restart DATA LOG DIR MODE NAME — pg_ctl restart -m MODE on the same
# port (from its configuration), also after a stop or a kill; waits until it
# answers queries.
server_restart() {
	local data=$1 log=$2 dir=$3 mode=$4 name=$5 port
	port=$(conf_port "$data")
	[[ -n $port ]] || die "no port in $data/pgoutbox-stack.conf" "start the stack first: scripts/stack.sh start --state $STATE"
	info "restarting PostgreSQL $name on 127.0.0.1:$port (-m $mode)"
	local mark=0
	[[ -f $log ]] && mark=$(wc -l <"$log")
	if ! as_pg "$PGBIN/pg_ctl" restart -D "$data" -l "$log" -m "$mode" -w -t "$PG_START_TIMEOUT" \
		>"$dir/pg_ctl.log" 2>&1 9>&-; then
		cat "$dir/pg_ctl.log" >&2 || true
		tail -n +"$((mark + 1))" "$log" 2>/dev/null | tail -n 30 >&2 || true
		if tail -n +"$((mark + 1))" "$log" 2>/dev/null | grep -q 'could not bind'; then
			die "port $port is taken by another process: PostgreSQL $name cannot restart on it"
		fi
		die "pg_ctl restart of $data failed (log above)"
	fi
	server_wait_ready "$port" "$log"
}

# --------------------------------------------------------------------- Kafka

# The pid in DIR/kafka/pid, if it is alive and is our broker (not a reused pid).
kafka_pid() {
	local pid
	[[ -f $KDIR/pid ]] || return 1
	pid=$(<"$KDIR/pid")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	grep -qaF -- "$KDIR/server.properties" "/proc/$pid/cmdline" 2>/dev/null || return 1
	printf '%s\n' "$pid"
}

kafka_running() { kafka_pid >/dev/null; }

kafka_check_prereqs() {
	command -v java >/dev/null 2>&1 || die "java not found" "run scripts/install-deps.sh"
	command -v kcat >/dev/null 2>&1 || die "kcat not found" "run scripts/install-deps.sh"
	[[ -f $KAFKA_LIBS/../.complete && -f $KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar ]] ||
		die "Kafka $KAFKA_VERSION jars not found in $KAFKA_LIBS" "run scripts/install-deps.sh"
}

# kafka_write_config PORT CONTROLLER_PORT [SSL_PORT SASL_SSL_PORT] — with the
# last two, the SSL and SASL_SSL listeners are on (kafka_tls_make first).
kafka_write_config() {
	local tls_listeners='' tls=''
	if [[ $# -ge 4 ]]; then
		tls_listeners=",SSL://127.0.0.1:$3,SASL_SSL://127.0.0.1:$4"
		tls="
# --kafka-tls: server certificate for the SSL and SASL_SSL listeners, no
# client certificates; SCRAM users are in the metadata log (kafka_format).
ssl.keystore.type=PKCS12
ssl.keystore.location=$KTLS/server.p12
ssl.keystore.password=$KAFKA_KEYSTORE_PASSWORD
ssl.key.password=$KAFKA_KEYSTORE_PASSWORD
ssl.client.auth=none
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
	fi
	cat >"$KDIR/server.properties" <<EOF
# written by scripts/stack.sh at each start: single-node KRaft, combined mode
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$2
listeners=PLAINTEXT://127.0.0.1:$1,CONTROLLER://127.0.0.1:$2$tls_listeners
advertised.listeners=PLAINTEXT://127.0.0.1:$1$tls_listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL
log.dirs=$KDIR/data
num.partitions=3
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
min.insync.replicas=1
group.initial.rebalance.delay.ms=0$tls
EOF
}

kafka_write_log4j() {
	cat >"$KDIR/log4j.properties" <<EOF
# written by scripts/stack.sh: the broker logs to one file at INFO
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$KLOG
log4j.appender.file.Append=true
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
	cat >"$KDIR/tools-log4j.properties" <<'EOF'
# written by scripts/stack.sh: command-line tools warn on stderr only
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
}

# Format the metadata log once (the cluster id then stays with DIR), with the
# SCRAM-SHA-256 and SCRAM-SHA-512 credentials of KAFKA_SASL_USER and a random
# password kept in DIR/kafka/scram-password (mode 0600). They are made whether
# or not --kafka-tls is given, so that a later start with it finds them: the
# metadata log is never formatted again.
kafka_format() {
	[[ -f $KDIR/data/meta.properties ]] && return 0
	local cluster_id password
	# A Kafka Uuid: 16 random bytes, base64url without padding, not starting with '-'.
	cluster_id=$("$PYTHON" -c '
import base64, os
while True:
    s = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break')
	# [A-Za-z0-9_-] only: no ',' ']' '=' to break --add-scram's syntax.
	password=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(18))')
	(umask 077 && printf '%s\n' "$password" >"$KDIR/scram-password")
	info "formatting Kafka storage in $KDIR/data (cluster id $cluster_id, SCRAM user $KAFKA_SASL_USER)"
	if ! java -Xmx256m -Dlog4j.configuration="file:$KDIR/tools-log4j.properties" \
		-cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format --ignore-formatted \
		-t "$cluster_id" -c "$KDIR/server.properties" \
		--add-scram "SCRAM-SHA-256=[name=$KAFKA_SASL_USER,password=$password]" \
		--add-scram "SCRAM-SHA-512=[name=$KAFKA_SASL_USER,password=$password]" \
		>"$KDIR/format.log" 2>&1 9>&-; then
		cat "$KDIR/format.log" >&2
		die "formatting Kafka storage failed (output above)"
	fi
}

# Start the broker in its own session, detached from our stdio; the pid is
# written by the process itself just before it becomes the JVM.
kafka_launch() {
	rm -f -- "$KDIR/pid"
	local -a heap
	read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
	# shellcheck disable=SC2016 # $$ and "$@" are for the inner shell
	setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' kafka-launch "$KDIR/pid" \
		java "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
		-XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
		-Dlog4j.configuration="file:$KDIR/log4j.properties" -Dkafka.logs.dir="$KDIR" \
		-cp "$KAFKA_LIBS/*" kafka.Kafka "$KDIR/server.properties" \
		</dev/null >>"$KDIR/stdout.log" 2>&1 9>&- &
	local deadline=$((SECONDS + 10))
	until [[ -s $KDIR/pid ]]; do
		((SECONDS < deadline)) || die "Kafka launcher did not write $KDIR/pid"
		sleep 0.05
	done
}

kafka_fail() {
	printf '%s\n' "--- last lines of $KLOG:" >&2
	tail -n 40 "$KLOG" >&2 2>/dev/null || true
	if [[ -s $KDIR/stdout.log ]]; then
		printf '%s\n' "--- last lines of $KDIR/stdout.log:" >&2
		tail -n 20 "$KDIR/stdout.log" >&2 || true
	fi
	die "$@"
}

# kafka_tls_make — the broker's certificate (tls_make in DIR/kafka/tls) and a
# PKCS12 keystore of it with the CA's certificate, DIR/kafka/tls/server.p12.
kafka_tls_make() {
	tls_make "$KTLS" --kafka-tls
	[[ -f $KTLS/server.p12 ]] && return 0
	if ! openssl pkcs12 -export -in "$KTLS/server.crt" -inkey "$KTLS/server.key" \
		-certfile "$KTLS/ca.crt" -name localhost -passout "pass:$KAFKA_KEYSTORE_PASSWORD" \
		-out "$KTLS/server.p12.tmp" >>"$KDIR/openssl.log" 2>&1; then
		cat "$KDIR/openssl.log" >&2
		rm -f -- "$KTLS/server.p12.tmp"
		die "making the Kafka keystore with openssl failed (output above)"
	fi
	chmod 600 "$KTLS/server.p12.tmp"
	mv -f -- "$KTLS/server.p12.tmp" "$KTLS/server.p12"
}

# The SCRAM password kafka_format made. A storage formatted by an older
# stack.sh has none, and its metadata log cannot be formatted again.
kafka_sasl_password() {
	[[ -s $KDIR/scram-password ]] ||
		die "the Kafka storage in $KDIR/data has no SCRAM user (formatted by an older stack.sh)" \
			"--kafka-tls needs a fresh state directory: scripts/stack.sh stop --state $STATE --clean"
	printf '%s\n' "$(<"$KDIR/scram-password")"
}

# kafka_ready PORT [SSL_PORT SASL_SSL_PORT] — broker 1 is in the metadata read
# over PLAINTEXT and, with TLS ports, over SSL and SASL_SSL (SCRAM-SHA-512)
# with the stack's CA verifying the broker's certificate and host name: proof
# that certificate, keystore and credentials fit together. When not ready,
# KAFKA_NOT_READY names the listener that did not answer.
KAFKA_NOT_READY=''
kafka_ready() {
	KAFKA_NOT_READY="127.0.0.1:$1 (PLAINTEXT)"
	kcat -L -b "127.0.0.1:$1" -m 2 2>/dev/null | grep -q 'broker 1 at' || return 1
	[[ $# -ge 3 ]] || return 0
	KAFKA_NOT_READY="127.0.0.1:$2 (SSL)"
	kcat -L -b "127.0.0.1:$2" -m 2 -X security.protocol=ssl -X ssl.ca.location="$KTLS/ca.crt" \
		2>/dev/null | grep -q 'broker 1 at' || return 1
	KAFKA_NOT_READY="127.0.0.1:$3 (SASL_SSL)"
	# The password through a file, not in kcat's argv.
	kcat -L -b "127.0.0.1:$3" -m 2 -X security.protocol=sasl_ssl -X ssl.ca.location="$KTLS/ca.crt" \
		-X sasl.mechanisms=SCRAM-SHA-512 -X sasl.username="$KAFKA_SASL_USER" \
		-F <(printf 'sasl.password=%s\n' "$(kafka_sasl_password)") 2>/dev/null |
		grep -q 'broker 1 at' || return 1
	KAFKA_NOT_READY=''
}

# Start Kafka on free ports (four with --kafka-tls); sets KAFKA_PORT, and
# KAFKA_SSL_PORT and KAFKA_SASL_PORT with --kafka-tls. Polls until every
# listener lists broker 1 in the cluster metadata.
kafka_start() {
	local attempt ports port cport tls_ports=()
	mkdir -p "$KDIR"
	kafka_write_log4j
	[[ $KAFKA_TLS != 1 ]] || kafka_tls_make
	for ((attempt = 1; attempt <= PORT_ATTEMPTS; attempt++)); do
		if [[ $KAFKA_TLS == 1 ]]; then
			read -r port cport KAFKA_SSL_PORT KAFKA_SASL_PORT <<<"$(pick_ports 4)"
			tls_ports=("$KAFKA_SSL_PORT" "$KAFKA_SASL_PORT")
		else
			read -r port cport <<<"$(pick_ports 2)"
		fi
		kafka_write_config "$port" "$cport" "${tls_ports[@]}"
		kafka_format
		[[ $KAFKA_TLS != 1 ]] || kafka_sasl_password >/dev/null
		info "starting Kafka on 127.0.0.1:$port (controller 127.0.0.1:$cport${tls_ports[*]:+, SSL 127.0.0.1:${tls_ports[0]}, SASL_SSL 127.0.0.1:${tls_ports[1]}})"
		local mark=0
		[[ -f $KLOG ]] && mark=$(wc -l <"$KLOG")
		kafka_launch
		local deadline=$((SECONDS + KAFKA_READY_TIMEOUT))
		while :; do
			if kafka_ready "$port" "${tls_ports[@]}"; then
				KAFKA_PORT=$port
				return 0
			fi
			if ! kafka_running; then
				if tail -n +"$((mark + 1))" "$KLOG" 2>/dev/null | grep -q 'Address already in use'; then
					info "port $port, $cport${tls_ports[*]:+ or one of ${tls_ports[*]}} was taken meanwhile; picking others"
					continue 2
				fi
				kafka_fail "Kafka exited during startup (logs above)"
			fi
			((SECONDS < deadline)) ||
				kafka_fail "Kafka's listener $KAFKA_NOT_READY was not ready within ${KAFKA_READY_TIMEOUT}s (logs above)"
			sleep 0.5
		done
	done
	kafka_fail "Kafka could not bind free ports after $PORT_ATTEMPTS attempts"
}

kafka_stop() {
	local pid
	pid=$(kafka_pid) || {
		rm -f -- "$KDIR/pid"
		return 0
	}
	info "stopping Kafka (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	local deadline=$((SECONDS + KAFKA_STOP_TIMEOUT))
	while kill -0 "$pid" 2>/dev/null; do
		if ((SECONDS >= deadline)); then
			info "Kafka did not exit within ${KAFKA_STOP_TIMEOUT}s of SIGTERM; sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			deadline=$((SECONDS + 10))
			while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
			break
		fi
		sleep 0.2
	done
	rm -f -- "$KDIR/pid"
}

# The broker port and controller port of DIR's server.properties, then the SSL
# and SASL_SSL ports if it has them (--kafka-tls), space separated.
kafka_config_ports() {
	local listeners
	listeners=$(sed -n 's/^listeners=//p' "$KDIR/server.properties" 2>/dev/null | tail -n 1)
	[[ $listeners =~ ^PLAINTEXT://127\.0\.0\.1:([0-9]+),CONTROLLER://127\.0\.0\.1:([0-9]+)(,SSL://127\.0\.0\.1:([0-9]+),SASL_SSL://127\.0\.0\.1:([0-9]+))?$ ]] ||
		die "no Kafka listeners of stack.sh in $KDIR/server.properties" \
			"start the stack first: scripts/stack.sh start --state $STATE"
	printf '%s %s' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
	[[ -z ${BASH_REMATCH[3]} ]] || printf ' %s %s' "${BASH_REMATCH[4]}" "${BASH_REMATCH[5]}"
	printf '\n'
}

# kafka_kill SIGNAL — send SIGNAL (KILL or TERM) to the broker and wait until
# it has exited; a TERM that is not obeyed within KAFKA_STOP_TIMEOUT becomes a
# KILL. The broker may be frozen (SIGSTOP): SIGCONT lets it act on a TERM.
kafka_kill() {
	local sig=$1 pid
	pid=$(kafka_pid) || {
		info "no Kafka broker runs from $KDIR"
		rm -f -- "$KDIR/pid"
		return 0
	}
	info "stopping Kafka (pid $pid) with SIG$sig"
	kill "-$sig" "$pid" 2>/dev/null || true
	kill -CONT "$pid" 2>/dev/null || true
	local deadline=$((SECONDS + KAFKA_STOP_TIMEOUT))
	while kill -0 "$pid" 2>/dev/null; do
		if ((SECONDS >= deadline)); then
			[[ $sig != KILL ]] ||
				die "Kafka (pid $pid) did not exit within ${KAFKA_STOP_TIMEOUT}s of SIGKILL"
			info "Kafka did not exit within ${KAFKA_STOP_TIMEOUT}s of SIG$sig; sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			sig=KILL
			deadline=$((SECONDS + 10))
		fi
		sleep 0.1
	done
	rm -f -- "$KDIR/pid"
}

# Start the broker again from its data and configuration as they are (same
# ports: clients keep their bootstrap address) and poll until it is ready.
kafka_restart() {
	local ports port cport tls_ports
	ports=$(kafka_config_ports) # dies (exits) on a bad server.properties
	read -r -a ports <<<"$ports"
	port=${ports[0]} cport=${ports[1]} tls_ports=("${ports[@]:2}")
	if kafka_running; then
		info "Kafka already runs on 127.0.0.1:$port (pid $(kafka_pid))"
		return 0
	fi
	kafka_check_prereqs
	[[ ${#tls_ports[@]} -eq 0 ]] || kafka_sasl_password >/dev/null
	info "starting Kafka again on 127.0.0.1:$port (controller 127.0.0.1:$cport${tls_ports[*]:+, SSL 127.0.0.1:${tls_ports[0]}, SASL_SSL 127.0.0.1:${tls_ports[1]}})"
	local mark=0
	[[ -f $KLOG ]] && mark=$(wc -l <"$KLOG")
	kafka_launch
	local deadline=$((SECONDS + KAFKA_READY_TIMEOUT))
	until kafka_ready "$port" "${tls_ports[@]}"; do
		if ! kafka_running; then
			if tail -n +"$((mark + 1))" "$KLOG" 2>/dev/null | grep -q 'Address already in use'; then
				kafka_fail "port $port, $cport${tls_ports[*]:+ or one of ${tls_ports[*]}} is taken by another process: Kafka cannot restart on it"
			fi
			kafka_fail "Kafka exited during startup (logs above)"
		fi
		((SECONDS < deadline)) ||
			kafka_fail "Kafka's listener $KAFKA_NOT_READY was not ready within ${KAFKA_READY_TIMEOUT}s (logs above)"
		sleep 0.2
	done
	info "Kafka is ready on 127.0.0.1:$port"
}

# ------------------------------------------------------------------- helpers

# pick_ports N — print N distinct free TCP ports on 127.0.0.1, space separated.
# Each is bound (so certainly free right now) and all are held until all are chosen.
pick_ports() {
	"$PYTHON" - "$1" <<'EOF'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))
EOF
}

write_env() {
	local tmp=$ENVFILE.tmp server_version
	server_version=$(psql_at "$PG_PORT" 'SHOW server_version') ||
		die "could not read server_version from the primary"
	rm -f -- "$tmp"
	: >"$tmp"
	# With --kafka-tls it holds the SCRAM password.
	[[ $KAFKA_TLS != 1 ]] || chmod 600 "$tmp"
	{
		printf 'PGOUTBOX_STATE=%s\n' "$STATE"
		printf 'PGHOST=127.0.0.1\n'
		printf 'PGPORT=%s\n' "$PG_PORT"
		printf 'PGUSER=postgres\n'
		printf 'PGDATABASE=postgres\n'
		printf "PGOUTBOX_PG='host=127.0.0.1 port=%s user=postgres dbname=postgres'\n" "$PG_PORT"
		printf 'PGOUTBOX_PG_LOG=%s\n' "$PGLOG"
		printf 'PGOUTBOX_PG_VERSION=%s\n' "$PG_MAJOR"
		printf "PGOUTBOX_PG_SERVER_VERSION='%s'\n" "${server_version//\'/}"
		printf 'PGOUTBOX_PG_BINDIR=%s\n' "$PGBIN"
		printf 'PGOUTBOX_PG_DATA=%s\n' "$PGDATA"
		if [[ $PG_TLS == 1 ]]; then
			printf 'PGOUTBOX_PG_CA=%s\n' "$PGTLS/ca.crt"
		fi
		if [[ -n ${SB_PORT:-} ]]; then
			printf "PGOUTBOX_STANDBY_PG='host=127.0.0.1 port=%s user=postgres dbname=postgres'\n" "$SB_PORT"
			printf 'PGOUTBOX_STANDBY_PORT=%s\n' "$SB_PORT"
			printf 'PGOUTBOX_STANDBY_DATA=%s\n' "$SBDATA"
			printf 'PGOUTBOX_STANDBY_LOG=%s\n' "$SBLOG"
			printf 'PGOUTBOX_STANDBY_SLOT=%s\n' "$STANDBY_SLOT"
		fi
		if [[ -n ${KAFKA_PORT:-} ]]; then
			printf 'PGOUTBOX_BROKERS=127.0.0.1:%s\n' "$KAFKA_PORT"
			printf 'PGOUTBOX_KAFKA_LOG=%s\n' "$KLOG"
		fi
		if [[ -n ${KAFKA_SASL_PORT:-} ]]; then
			printf 'PGOUTBOX_KAFKA_SSL_BROKERS=127.0.0.1:%s\n' "$KAFKA_SSL_PORT"
			printf 'PGOUTBOX_KAFKA_SASL_BROKERS=127.0.0.1:%s\n' "$KAFKA_SASL_PORT"
			printf 'PGOUTBOX_KAFKA_CA=%s\n' "$KTLS/ca.crt"
			printf 'PGOUTBOX_KAFKA_SASL_USER=%s\n' "$KAFKA_SASL_USER"
			printf 'PGOUTBOX_KAFKA_SASL_PASSWORD=%s\n' "$(kafka_sasl_password)"
		fi
	} >>"$tmp"
	mv -f -- "$tmp" "$ENVFILE"
}

env_value() { # env_value KEY — from DIR/env
	sed -n "s/^$1=//p" "$ENVFILE" 2>/dev/null | tail -n 1
}

print_env() {
	cat "$ENVFILE"
	local pgport sbport brokers sasl_brokers
	pgport=$(env_value PGPORT)
	sbport=$(env_value PGOUTBOX_STANDBY_PORT)
	brokers=$(env_value PGOUTBOX_BROKERS)
	sasl_brokers=$(env_value PGOUTBOX_KAFKA_SASL_BROKERS)
	printf '# PostgreSQL %s: psql -h 127.0.0.1 -p %s -U postgres postgres   (log %s)\n' \
		"$(env_value PGOUTBOX_PG_SERVER_VERSION | tr -d "'")" "$pgport" "$PGLOG"
	if [[ -n $sbport ]]; then
		printf '# standby: psql -h 127.0.0.1 -p %s -U postgres postgres   (log %s)\n' "$sbport" "$SBLOG"
	fi
	if [[ -n $brokers ]]; then
		printf '# Kafka: %s   e.g. kcat -L -b %s   (log %s)\n' "$brokers" "$brokers" "$KLOG"
	fi
	if [[ -n $sasl_brokers ]]; then
		printf '# Kafka SASL_SSL: kcat -L -b %s -X security.protocol=sasl_ssl -X ssl.ca.location=%s -X sasl.mechanisms=SCRAM-SHA-512 -X sasl.username=%s -X sasl.password=$PGOUTBOX_KAFKA_SASL_PASSWORD\n' \
			"$sasl_brokers" "$(env_value PGOUTBOX_KAFKA_CA)" "$(env_value PGOUTBOX_KAFKA_SASL_USER)"
	fi
	printf '# use: set -a; . %s; set +a      stop: scripts/stack.sh stop --state %s\n' "$ENVFILE" "$STATE"
}

# ------------------------------------------------------------------ commands

# Globals of start, set by main: WAL_LEVEL, STANDBY (0/1).
WAL_LEVEL=logical STANDBY=0

cmd_start() {
	local pg_only=$1 major=$2
	PG_TLS=$3 KAFKA_TLS=$4
	mkdir -p -- "$STATE" || die "could not create state directory $STATE"
	[[ -f $STATE/.pgoutbox-stack ]] || : >"$STATE/.pgoutbox-stack"
	lock_state

	pg_select "$major"
	local have
	if have=$(pg_cluster_major) && [[ $have != "$major" ]]; then
		die "the cluster in $PGDATA is PostgreSQL $have, not $major" \
			"start it with --pg $have, or remove it first: scripts/stack.sh stop --state $STATE --clean"
	fi
	[[ $pg_only == 1 ]] || kafka_check_prereqs
	# Refuse before stopping anything: a storage formatted without the SCRAM
	# user cannot get it from a start.
	if [[ $KAFKA_TLS == 1 && -f $KDIR/data/meta.properties ]]; then
		kafka_sasl_password >/dev/null
	fi

	local opts="pg_only=$pg_only wal_level=$WAL_LEVEL"
	[[ $major == 15 ]] || opts+=" pg=$major"
	[[ $STANDBY != 1 ]] || opts+=" standby=1"
	[[ $PG_TLS != 1 ]] || opts+=" pg_tls=1"
	[[ $KAFKA_TLS != 1 ]] || opts+=" kafka_tls=1"
	if pg_running; then
		if [[ -f $ENVFILE && -f $STATE/options && $(<"$STATE/options") == "$opts" ]] &&
			{ [[ $pg_only == 1 ]] || kafka_running; } &&
			{ [[ $STANDBY != 1 ]] || { standby_running && [[ -f $SBDATA/standby.signal ]]; }; }; then
			info "the stack in $STATE is already running"
			print_env
			return 0
		fi
		info "the stack in $STATE runs with other options or partly; restarting it"
	fi
	kafka_stop
	standby_stop || die "could not stop the standby running from $SBDATA"
	pg_stop || die "could not stop the PostgreSQL running from $PGDATA"

	rm -f -- "$ENVFILE" "$STATE/options"
	# Leave nothing running if any step below fails.
	trap 'start_failed' EXIT
	PG_PORT='' SB_PORT='' KAFKA_PORT='' KAFKA_SSL_PORT='' KAFKA_SASL_PORT=''
	pg_start
	if [[ $STANDBY == 1 ]]; then
		standby_create
	else
		# A standby left from an earlier start with --standby: its slot on
		# the primary would hold WAL for ever.
		[[ ! -d $SBDIR ]] || rm -rf -- "$SBDIR"
		psql_at "$PG_PORT" "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
		                     WHERE slot_name = '$STANDBY_SLOT' AND NOT active" >/dev/null ||
			die "could not drop the physical slot $STANDBY_SLOT of an old standby"
	fi
	[[ $pg_only == 1 ]] || kafka_start
	write_env
	printf '%s\n' "$opts" >"$STATE/options"
	trap - EXIT
	info "stack ready in $STATE"
	print_env
}

start_failed() {
	local rc=$?
	info "start failed; stopping what was started in $STATE"
	kafka_stop || true
	standby_stop || true
	pg_stop || true
	exit "$rc"
}

cmd_stop() {
	local clean=$1
	if [[ ! -d $STATE ]]; then
		info "nothing to stop: $STATE does not exist"
		return 0
	fi
	lock_state
	local rc=0
	kafka_stop || rc=1
	if pg_cluster_major >/dev/null 2>&1; then
		pg_select_cluster
		standby_stop || rc=1
		pg_stop || rc=1
	fi
	if ((rc != 0)); then
		die "some processes of $STATE could not be stopped"
	fi
	if [[ $clean == 1 ]]; then
		if [[ -f $STATE/.pgoutbox-stack ]]; then
			rm -rf -- "$STATE"
			info "removed $STATE"
		else
			info "warning: not removing $STATE: it is not a stack.sh state directory"
		fi
	fi
	return 0
}

cmd_kafka_stop() {
	local sig=$1
	[[ -d $KDIR ]] || die "no Kafka in $STATE" "start one with: scripts/stack.sh start --state $STATE"
	lock_state
	kafka_kill "$sig"
}

cmd_kafka_start() {
	[[ -f $KDIR/server.properties && -f $KDIR/data/meta.properties ]] ||
		die "no Kafka broker was set up in $STATE" "start the stack first: scripts/stack.sh start --state $STATE"
	lock_state
	kafka_restart
}

need_standby() {
	[[ -f $SBDATA/PG_VERSION ]] ||
		die "no standby in $STATE" "start the stack with one: scripts/stack.sh start --standby --state $STATE"
}

cmd_restart_pg() {
	local mode=$1 standby=$2
	[[ -d $STATE ]] || die "no stack in $STATE" "start one with: scripts/stack.sh start --state $STATE"
	lock_state
	pg_select_cluster
	if [[ $standby == 1 ]]; then
		need_standby
		server_restart "$SBDATA" "$SBLOG" "$SBDIR" "$mode" standby
	else
		server_restart "$PGDATA" "$PGLOG" "$PGDIR" "$mode" primary
	fi
}

cmd_kill() {
	local role=$1
	[[ -d $STATE ]] || die "no stack in $STATE" "start one with: scripts/stack.sh start --state $STATE"
	lock_state
	pg_select_cluster
	if [[ $role == standby ]]; then
		need_standby
		server_kill "$SBDATA" standby
	else
		server_kill "$PGDATA" primary
	fi
}

# Promote the standby and wait until it accepts writes (an xid can be assigned).
cmd_promote() {
	[[ -d $STATE ]] || die "no stack in $STATE" "start one with: scripts/stack.sh start --state $STATE"
	lock_state
	pg_select_cluster
	need_standby
	standby_running || die "the standby in $SBDATA is not running" \
		"start it again: scripts/stack.sh restart-pg --standby --state $STATE"
	local port
	port=$(conf_port "$SBDATA")
	if [[ -f $SBDATA/standby.signal ]]; then
		info "promoting the standby on 127.0.0.1:$port"
		as_pg "$PGBIN/pg_ctl" promote -D "$SBDATA" -w -t "$PG_START_TIMEOUT" >"$SBDIR/pg_ctl.log" 2>&1 || {
			cat "$SBDIR/pg_ctl.log" >&2
			tail -n 30 "$SBLOG" >&2 || true
			die "pg_ctl promote failed (log above)"
		}
	else
		info "the standby in $SBDATA was promoted already"
	fi
	local deadline=$((SECONDS + PG_START_TIMEOUT))
	until [[ $(psql_at "$port" 'SELECT pg_is_in_recovery()::text' 2>/dev/null) == false ]] &&
		psql_at "$port" 'SELECT pg_current_xact_id()' >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			tail -n 30 "$SBLOG" >&2 || true
			die "the promoted standby on 127.0.0.1:$port did not accept writes within ${PG_START_TIMEOUT}s (log above)"
		fi
		sleep 0.1
	done
	info "the standby on 127.0.0.1:$port is a primary now and accepts writes"
}

cmd_env() {
	[[ -f $ENVFILE ]] ||
		die "no stack environment in $STATE" "start one with: scripts/stack.sh start --state $STATE"
	cat "$ENVFILE"
}

main() {
	[[ $# -gt 0 ]] || usage_error "missing command"
	local cmd=$1
	shift
	case $cmd in
	start | stop | env | kafka-stop | kafka-start | restart-pg | kill-primary | kill-standby | promote) ;;
	-h | --help | help)
		usage
		exit 0
		;;
	*) usage_error "unknown command '$cmd'" ;;
	esac

	local state=${PGOUTBOX_STATE:-${TMPDIR:-/tmp}/pgoutbox-stack}
	local pg_only=0 pg_tls=0 kafka_tls=0 clean=0 signal=KILL major=15 mode=fast standby=0
	while [[ $# -gt 0 ]]; do
		case $1 in
		--state)
			[[ $# -ge 2 ]] || usage_error "--state needs a directory"
			state=$2
			shift
			;;
		--state=*) state=${1#--state=} ;;
		--pg-only) [[ $cmd == start ]] || usage_error "--pg-only is an option of start"; pg_only=1 ;;
		--pg-tls) [[ $cmd == start ]] || usage_error "--pg-tls is an option of start"; pg_tls=1 ;;
		--kafka-tls) [[ $cmd == start ]] || usage_error "--kafka-tls is an option of start"; kafka_tls=1 ;;
		--standby)
			[[ $cmd == start || $cmd == restart-pg ]] ||
				usage_error "--standby is an option of start and restart-pg"
			standby=1
			;;
		--pg | --pg=*)
			[[ $cmd == start ]] || usage_error "--pg is an option of start (the other commands use the cluster's own)"
			if [[ $1 == --pg ]]; then
				[[ $# -ge 2 ]] || usage_error "--pg needs a major version (${PG_MAJORS[*]})"
				major=$2
				shift
			else
				major=${1#--pg=}
			fi
			[[ " ${PG_MAJORS[*]} " == *" $major "* ]] ||
				usage_error "--pg must be one of ${PG_MAJORS[*]}, not '$major'"
			;;
		--wal-level | --wal-level=*)
			[[ $cmd == start ]] || usage_error "--wal-level is an option of start"
			if [[ $1 == --wal-level ]]; then
				[[ $# -ge 2 ]] || usage_error "--wal-level needs logical or replica"
				WAL_LEVEL=$2
				shift
			else
				WAL_LEVEL=${1#--wal-level=}
			fi
			[[ $WAL_LEVEL == logical || $WAL_LEVEL == replica ]] ||
				usage_error "--wal-level must be logical or replica, not '$WAL_LEVEL'"
			;;
		--mode | --mode=*)
			[[ $cmd == restart-pg ]] || usage_error "--mode is an option of restart-pg"
			if [[ $1 == --mode ]]; then
				[[ $# -ge 2 ]] || usage_error "--mode needs fast or immediate"
				mode=$2
				shift
			else
				mode=${1#--mode=}
			fi
			[[ $mode == fast || $mode == immediate ]] ||
				usage_error "--mode must be fast or immediate, not '$mode'"
			;;
		--clean) [[ $cmd == stop ]] || usage_error "--clean is an option of stop"; clean=1 ;;
		--signal | --signal=*)
			[[ $cmd == kafka-stop ]] || usage_error "--signal is an option of kafka-stop"
			if [[ $1 == --signal ]]; then
				[[ $# -ge 2 ]] || usage_error "--signal needs KILL or TERM"
				signal=$2
				shift
			else
				signal=${1#--signal=}
			fi
			signal=${signal^^}
			signal=${signal#SIG}
			[[ $signal == KILL || $signal == TERM ]] ||
				usage_error "--signal must be KILL or TERM, not '$signal'"
			;;
		-h | --help)
			usage
			exit 0
			;;
		*) usage_error "unknown option '$1'" ;;
		esac
		shift
	done

	[[ $pg_only == 0 || $kafka_tls == 0 ]] || usage_error "--kafka-tls and --pg-only exclude each other"

	set_state_dir "$state"
	case $cmd in
	start)
		STANDBY=$standby
		cmd_start "$pg_only" "$major" "$pg_tls" "$kafka_tls"
		;;
	stop) cmd_stop "$clean" ;;
	env) cmd_env ;;
	kafka-stop) cmd_kafka_stop "$signal" ;;
	kafka-start) cmd_kafka_start ;;
	restart-pg) cmd_restart_pg "$mode" "$standby" ;;
	kill-primary) cmd_kill primary ;;
	kill-standby) cmd_kill standby ;;
	promote) cmd_promote ;;
	esac
}

main "$@"
