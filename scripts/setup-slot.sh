#!/usr/bin/env bash
# setup-slot.sh — prepare a PostgreSQL database (13 or later) for pgoutbox:
# check the server settings and privileges pgoutbox needs, then create the
# publication (FOR TABLE <table> WITH (publish = 'insert',
# publish_via_partition_root = true)) and the logical replication slot (plugin
# pgoutput). --failover (PostgreSQL 17+) makes it a failover slot, which the
# standbys synchronise, after checking what failover needs on the primary and,
# with --standby CONNINFO, on the standby. --create-table also creates the default outbox table;
# --create-emit-function installs outbox_emit() (scripts/outbox_emit.sql) for the
# table-less outbox; --create-role NAME makes a least-privilege role for
# pgoutbox (LOGIN REPLICATION, SELECT on the table, nothing else); --drop
# removes slot and publication (never the table, never a role); --recreate
# drops an invalidated (lost) slot and leaves its creation to `pgoutbox
# --backfill`, which creates it together with a backfill of the rows in its
# snapshot.
#
# Idempotent: a second run changes nothing and exits 0. Every failed check says
# what to change and makes the script exit 1. The connection string is never
# printed as given (it may hold a password).
set -euo pipefail

PSQL=${PSQL:-psql}

usage() {
	cat <<'EOF'
usage: scripts/setup-slot.sh -d CONNINFO [--table public.outbox] [--publication pgoutbox]
                             [--slot pgoutbox] [--create-table] [--create-emit-function]
                             [--create-role NAME] [--failover [--standby CONNINFO]] [--drop]
                             [--recreate]
                             [--all-databases | --databases A,B,...]

Prepare a PostgreSQL database (13 or later) for pgoutbox: check wal_level, free
replication slots and WAL senders, the role's REPLICATION attribute and its
SELECT privilege on the table, then create the publication (publish =
'insert', publish_via_partition_root = true) and the logical replication slot
(plugin pgoutput). Running it again changes nothing.

  -d, --dbname CONNINFO   libpq connection string or URI (PG* variables apply)
  --table [SCHEMA.]TABLE  the outbox table (default public.outbox; unquoted
                          names fold to lower case, as in SQL)
  --publication NAME      publication to create or check (default pgoutbox)
  --slot NAME             logical replication slot to create or check
                          (default pgoutbox)
  --create-table          create the default outbox table (and its schema) if missing
  --create-emit-function  install outbox_emit(aggregatetype, aggregateid, type,
                          payload [, headers [, prefix]]) from outbox_emit.sql,
                          for events sent as logical messages (messages_prefix)
  --create-role NAME      create (or complete) a least-privilege role for pgoutbox:
                          LOGIN REPLICATION, USAGE on the table's schema and
                          SELECT on the table; no password is set (add one with
                          ALTER ROLE NAME PASSWORD '...', or use certificates)
  --failover              (PostgreSQL 17+) create the slot as a failover slot, which
                          standbys with sync_replication_slots = on keep in step, so
                          that pgoutbox can go on from a promoted standby; checks
                          that synchronized_standby_slots on the primary names the
                          physical slot of a streaming standby
  --standby CONNINFO      with --failover: also check that standby (sync_replication_slots,
                          hot_standby_feedback, primary_slot_name, wal_level) and wait
                          (PGOUTBOX_SYNC_TIMEOUT seconds, default 60) until the slot
                          shows up there as synced
  --drop                  drop the slot and the publication instead (never the table)
  --recreate              the slot was invalidated (wal_status = lost): drop it and
                          create nothing, then run pgoutbox --backfill [--since ...],
                          which creates the slot and publishes the outbox rows read in
                          its snapshot (the events the lost slot never delivered)
  --all-databases         do all of the above in every database of the cluster that
                          accepts connections (not templates, not "postgres") and has
                          the table (or, with --create-table, in every one); each
                          gets its own slot, SLOT_<database>; prints the [source]
                          sections of a pgoutbox configuration for them
  --databases A,B,...     the same for the databases listed
  -h, --help              show this help

Exit status: 0 done (or nothing to do), 1 a check failed or bad usage.
EOF
}

msg() { printf 'setup-slot: %s\n' "$*"; }
err() { printf 'setup-slot: error: %s\n' "$*" >&2; }
hint() { printf 'setup-slot: hint: %s\n' "$*" >&2; }

usage_error() {
	err "$1"
	usage >&2
	exit 1
}

# --------------------------------------------------------------- arguments

conninfo='' table_arg=public.outbox publication=pgoutbox slot=pgoutbox
create_table=0 drop=0 create_emit=0 create_role='' failover=0 standby='' recreate=0
all_databases=0 databases=''
orig_args=("$@")

need_value() { # need_value OPTION ARGC
	[[ $2 -ge 2 ]] || usage_error "option $1 needs a value"
}

while [[ $# -gt 0 ]]; do
	case $1 in
	-d | --dbname)
		need_value "$1" $#
		conninfo=$2
		shift
		;;
	--dbname=*) conninfo=${1#*=} ;;
	-d?*) conninfo=${1#-d} ;;
	--table)
		need_value "$1" $#
		table_arg=$2
		shift
		;;
	--table=*) table_arg=${1#*=} ;;
	--publication)
		need_value "$1" $#
		publication=$2
		shift
		;;
	--publication=*) publication=${1#*=} ;;
	--slot)
		need_value "$1" $#
		slot=$2
		shift
		;;
	--slot=*) slot=${1#*=} ;;
	--create-table) create_table=1 ;;
	--create-emit-function) create_emit=1 ;;
	--create-role)
		need_value "$1" $#
		create_role=$2
		shift
		;;
	--create-role=*) create_role=${1#*=} ;;
	--failover) failover=1 ;;
	--standby)
		need_value "$1" $#
		standby=$2
		shift
		;;
	--standby=*) standby=${1#*=} ;;
	--drop) drop=1 ;;
	--recreate) recreate=1 ;;
	--all-databases) all_databases=1 ;;
	--databases)
		need_value "$1" $#
		databases=$2
		shift
		;;
	--databases=*) databases=${1#*=} ;;
	-h | --help)
		usage
		exit 0
		;;
	*) usage_error "unknown option '$1'" ;;
	esac
	shift
done

[[ -n $conninfo ]] || usage_error "missing -d CONNINFO"
[[ $drop == 0 || $create_table == 0 ]] || usage_error "--drop and --create-table cannot be combined"
[[ $drop == 0 || $create_emit == 0 ]] || usage_error "--drop and --create-emit-function cannot be combined"
[[ $drop == 0 || -z $create_role ]] || usage_error "--drop and --create-role cannot be combined"
[[ -z $standby || $failover == 1 ]] || usage_error "--standby goes with --failover"
[[ $recreate == 0 || $drop == 0 ]] || usage_error "--drop and --recreate cannot be combined"
[[ $recreate == 0 || $failover == 0 ]] ||
	usage_error "--recreate and --failover cannot be combined: pgoutbox --backfill creates a plain slot"
[[ -z $create_role || $create_role =~ ^[a-z_][a-z0-9_]{0,62}$ ]] ||
	usage_error "invalid role name '$create_role': use 1 to 63 lower-case letters, digits and underscores"
emit_sql=$(dirname "${BASH_SOURCE[0]}")/outbox_emit.sql
[[ $create_emit == 0 || -r $emit_sql ]] || usage_error "--create-emit-function: cannot read $emit_sql"
[[ -n $table_arg ]] || usage_error "--table must not be empty"
[[ $slot =~ ^[a-z0-9_]{1,63}$ ]] ||
	usage_error "invalid slot name '$slot': use 1 to 63 lower-case letters, digits and underscores"
[[ -n $publication && ${#publication} -le 63 ]] ||
	usage_error "invalid publication name '$publication': use 1 to 63 characters"

[[ $all_databases == 0 || -z $databases ]] || usage_error "--all-databases and --databases cannot be combined"

# --all-databases / --databases: this script once per database, each with
# its own slot (slot names are cluster-wide), then the [source] sections
# that make one pgoutbox stream all of them.
if [[ $all_databases == 1 || -n $databases ]]; then
	case $conninfo in
	postgres://* | postgresql://*)
		usage_error "--all-databases and --databases need a keyword/value connection string (host=... user=...), not a URI" ;;
	esac
	command -v "$PSQL" >/dev/null 2>&1 || { err "psql not found"; exit 1; }
	if [[ -n $databases ]]; then
		IFS=, read -r -a dbs <<<"$databases"
	else
		mapfile -t dbs < <("$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 -d "$conninfo" -c \
			"SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate AND datname <> 'postgres' ORDER BY 1") ||
			{ err "could not list the cluster's databases"; exit 1; }
	fi
	[[ ${#dbs[@]} -gt 0 ]] || { err "no database to set up"; exit 1; }
	# The arguments of each run: ours without the database selection and -d/--slot.
	sub=()
	set -- "${orig_args[@]}"
	while [[ $# -gt 0 ]]; do
		case $1 in
		--all-databases) ;;
		--databases | -d | --dbname | --slot) shift ;;
		--databases=* | --dbname=* | -d?* | --slot=*) ;;
		*) sub+=("$1") ;;
		esac
		shift
	done
	sections=() rc=0 done_n=0
	for db in "${dbs[@]}"; do
		[[ -n $db ]] || continue
		dbslot=$(printf '%s_%s' "$slot" "$db" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9_\n' '_' | cut -c1-63)
		dbq=${db//\\/\\\\}
		dbq=${dbq//\'/\\\'}
		dbconn="$conninfo dbname='$dbq'"
		if [[ $create_table == 0 && $drop == 0 ]]; then
			# (psql interpolates :'t' in its input, not in -c)
			has=$("$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 -d "$dbconn" -v "t=$table_arg" \
				<<<"SELECT to_regclass(:'t') IS NOT NULL" 2>/dev/null) || has=f
			if [[ $has != t ]]; then
				msg "database $db: no table $table_arg, skipped (--create-table creates it)"
				continue
			fi
		fi
		msg "database $db: slot $dbslot"
		if ! "$0" -d "$dbconn" --slot "$dbslot" "${sub[@]}"; then
			rc=1
			continue
		fi
		done_n=$((done_n + 1))
		src=$(printf '%s' "$db" | tr -c 'A-Za-z0-9_\n-' '_')
		sections+=("[source $src]" "conninfo = <your conninfo> dbname=$db" "slot = $dbslot" "")
	done
	if [[ $drop == 0 && $done_n -gt 0 ]]; then
		msg "set up $done_n database(s); the sources for pgoutbox's configuration file:"
		printf '%s\n' "${sections[@]}"
	fi
	exit "$rc"
fi

# How long to wait for the standby to show a new failover slot as synced.
SYNC_TIMEOUT=${PGOUTBOX_SYNC_TIMEOUT:-60}
[[ $SYNC_TIMEOUT =~ ^[0-9]+$ ]] || usage_error "PGOUTBOX_SYNC_TIMEOUT must be a number of seconds"

command -v "$PSQL" >/dev/null 2>&1 ||
	{
		err "psql not found"
		hint "install the PostgreSQL client (Debian: postgresql-client-15), or set PSQL"
		exit 1
	}

# ---------------------------------------------------------- secrets & psql

# Split a conninfo into what may be shown (masked, with any password
# replaced by "...") and the secrets to scrub from anything we pass on: the
# password values, and in keyword/value form any text that does not parse
# (it may be part of a password with a stray space).
# mask_conninfo CONNINFO — sets masked; adds to secrets.
masked='' secrets=()
mask_conninfo() {
	local conninfo=$1
	masked=''
	if [[ $conninfo =~ ^postgres(ql)?:// ]]; then
		masked=$(printf '%s' "$conninfo" | sed -E \
			-e 's#^(postgres(ql)?://[^:@/]*):[^@]*@#\1:...@#' \
			-e 's/([?&]password=)[^&]*/\1.../g')
		if [[ $conninfo =~ ^postgres(ql)?://[^:@/]*:([^@]*)@ && -n ${BASH_REMATCH[2]} ]]; then
			secrets+=("${BASH_REMATCH[2]}")
		fi
		if [[ $conninfo =~ [?\&]password=([^\&]*) && -n ${BASH_REMATCH[1]} ]]; then
			secrets+=("${BASH_REMATCH[1]}")
		fi
		return 0
	fi
	if [[ $conninfo != *=* ]]; then # a plain database name, as psql -d takes it
		masked=$conninfo
		return 0
	fi
	local rest=$conninfo key val words
	local re="^[[:space:]]*([A-Za-z_]+)[[:space:]]*=[[:space:]]*('([^'\\\\]|\\\\.)*'|[^[:space:]']*)(.*)$"
	while [[ $rest =~ $re ]]; do
		key=${BASH_REMATCH[1]}
		val=${BASH_REMATCH[2]}
		rest=${BASH_REMATCH[4]}
		if [[ $key == password ]]; then
			val=${val#\'}
			val=${val%\'}
			[[ -n $val ]] && secrets+=("$val")
			val=...
		fi
		masked+="${masked:+ }$key=$val"
	done
	if [[ $rest =~ [^[:space:]] ]]; then
		read -r -a words <<<"$rest"
		secrets+=("${words[@]}")
		masked+="${masked:+ }..."
	fi
	return 0
}
standby_masked=''
if [[ -n $standby ]]; then
	mask_conninfo "$standby"
	standby_masked=$masked
fi
mask_conninfo "$conninfo"

scrub() { # stdin → stdout with every secret replaced by "..."
	local line s
	while IFS= read -r line || [[ -n $line ]]; do
		for s in "${secrets[@]+"${secrets[@]}"}"; do
			line=${line//"$s"/...}
		done
		printf '%s\n' "$line"
	done
}

errfile=$(mktemp)
trap 'rm -f -- "$errfile"' EXIT

# Values reach SQL only as psql variables (:'name' quotes them as literals,
# format('%I') quotes identifiers); never by string concatenation.
psql_vars=(-v "table_arg=$table_arg" -v "pub=$publication" -v "slot=$slot")

# run_sql — run the SQL script on stdin; unaligned tuples, fields split by \x1f.
# psql's stderr goes to $errfile; returns psql's exit status (2 = no connection).
run_sql() {
	"$PSQL" -X -w -q -A -t -F $'\x1f' -v ON_ERROR_STOP=1 -d "$conninfo" "${psql_vars[@]}" 2>"$errfile"
}

# run_sql_standby — the same on the --standby server.
run_sql_standby() {
	"$PSQL" -X -w -q -A -t -F $'\x1f' -v ON_ERROR_STOP=1 -d "$standby" "${psql_vars[@]}" 2>"$errfile"
}

# Print psql's error (scrubbed) after our own message, then exit 1.
fail_sql() {
	err "$1"
	sed -e 's/^psql: error: //' -e 's/^psql:[^ ]*: //' -e 's/^/  /' "$errfile" | scrub >&2
	shift
	local h
	for h in "$@"; do hint "$h"; done
	exit 1
}

# ----------------------------------------------------------------- connect

rc=0
parsed=$(run_sql <<'SQL'
SELECT current_setting('server_version_num'), current_setting('server_version');
SQL
) || rc=$?
if [[ $rc -ne 0 ]]; then
	fail_sql "could not connect to the server ($(printf '%s' "$masked" | scrub))" \
		"check -d (host, port, dbname, user, password) and that the server is running"
fi
IFS=$'\x1f' read -r version_num server_version <<<"$parsed"
# 13: publish_via_partition_root, pg_publication.pubviaroot.
if ((version_num < 130000)); then
	err "PostgreSQL $server_version is too old: pgoutbox needs PostgreSQL 13 or later"
	exit 1
fi
if [[ $failover == 1 ]] && ((version_num < 170000)); then
	err "--failover needs PostgreSQL 17 or later (failover slots, sync_replication_slots); this server is PostgreSQL $server_version"
	hint "run without --failover; after a failover to a standby of PostgreSQL 16 or older, the slot has to be created anew there and the events in between read again some other way"
	exit 1
fi

rc=0
parsed=$(run_sql <<'SQL'
SELECT CASE cardinality(p) WHEN 1 THEN 'public' WHEN 2 THEN p[1] END, p[cardinality(p)], cardinality(p)
  FROM parse_ident(:'table_arg') AS p;
SQL
) || rc=$?
if [[ $rc -ne 0 ]]; then
	fail_sql "invalid --table '$table_arg'" "use TABLE or SCHEMA.TABLE (double-quote names with upper case or special characters)"
fi
IFS=$'\x1f' read -r schema table nparts <<<"$parsed"
if [[ $nparts != 1 && $nparts != 2 ]]; then
	err "invalid --table '$table_arg': use TABLE or SCHEMA.TABLE"
	exit 1
fi
psql_vars+=(-v "schema=$schema" -v "table=$table")

# ------------------------------------------------------------------- facts

facts_sql=$(
	cat <<'SQL'
WITH t AS (
    SELECT c.oid, c.relkind
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = :'schema' AND c.relname = :'table'
), s AS (
    SELECT slot_type, plugin, database, active, active_pid
      FROM pg_replication_slots WHERE slot_name = :'slot'
), p AS (
    SELECT puballtables, pubinsert, pubviaroot FROM pg_publication WHERE pubname = :'pub'
)
SELECT format('%I.%I', :'schema', :'table'),
       format('%I', :'pub'),
       format('%I', :'schema'),
       current_user,
       current_database(),
       current_setting('wal_level'),
       current_setting('max_replication_slots'),
       (SELECT count(*) FROM pg_replication_slots),
       current_setting('max_wal_senders'),
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'),
       (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user),
       EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :'schema'),
       coalesce((SELECT relkind::text FROM t), ''),
       coalesce((SELECT has_table_privilege(oid, 'SELECT') FROM t), false),
       EXISTS (SELECT 1 FROM s),
       coalesce((SELECT slot_type FROM s), ''),
       coalesce((SELECT plugin::text FROM s), ''),
       coalesce((SELECT database::text FROM s), ''),
       coalesce((SELECT active FROM s), false),
       coalesce((SELECT active_pid::text FROM s), ''),
       coalesce((SELECT format('application_name %s, client %s', a.application_name,
                               coalesce(host(a.client_addr), 'local'))
                   FROM pg_stat_activity a JOIN s ON a.pid = s.active_pid), ''),
       EXISTS (SELECT 1 FROM p),
       coalesce((SELECT pubinsert FROM p), false),
       -- The table or, when partitioned, any of its partitions (which is
       -- what pg_publication_tables lists without publish_via_partition_root).
       EXISTS (SELECT 1 FROM pg_publication_tables pt
                 JOIN pg_namespace n ON n.nspname = pt.schemaname
                 JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
                 JOIN t ON c.oid = t.oid OR c.oid IN (SELECT relid FROM pg_partition_tree(t.oid))
                WHERE pt.pubname = :'pub'),
       coalesce((SELECT pubviaroot FROM p), false);
SQL
)

load_facts() {
	local out rc=0
	out=$(run_sql <<<"$facts_sql") || rc=$?
	[[ $rc -eq 0 ]] || fail_sql "could not read the server's settings"
	IFS=$'\x1f' read -r qtable qpub qschema role db wal_level max_slots used_slots max_senders used_senders \
		can_replicate schema_exists relkind can_select slot_exists slot_type slot_plugin \
		slot_db slot_active slot_pid slot_client pub_exists pub_insert pub_has_table pub_viaroot <<<"$out"
}

load_facts
msg "connected to database $db as role $role"

# -------------------------------------------------------------------- drop

if [[ $drop == 1 ]]; then
	if [[ $slot_exists == t ]]; then
		if [[ $slot_type != logical || $slot_plugin != pgoutput || $slot_db != "$db" ]]; then
			err "replication slot $slot is not a pgoutput slot of database $db (type $slot_type, plugin ${slot_plugin:-none}, database ${slot_db:-none}); not dropping it"
			hint "drop it by hand if it is really unused: SELECT pg_drop_replication_slot('$slot')"
			exit 1
		fi
		if [[ $slot_active == t ]]; then
			err "replication slot $slot is in use by server process ${slot_pid:-unknown}${slot_client:+ ($slot_client)}"
			hint "stop the client streaming from it (pgoutbox) first, then run this again"
			exit 1
		fi
		run_sql >/dev/null <<<"SELECT pg_drop_replication_slot(:'slot');" ||
			fail_sql "could not drop replication slot $slot" \
				"the role needs REPLICATION (or superuser) to drop a slot"
		msg "dropped replication slot $slot"
	else
		msg "replication slot $slot does not exist"
	fi
	if [[ $pub_exists == t ]]; then
		run_sql >/dev/null <<<"SELECT format('DROP PUBLICATION %I', :'pub') \\gexec" ||
			fail_sql "could not drop publication $qpub" "only the publication's owner (or a superuser) may drop it"
		msg "dropped publication $qpub"
	else
		msg "publication $qpub does not exist"
	fi
	msg "table $qtable was left as it is"
	exit 0
fi

# ---------------------------------------------------------------- recreate

# The lost slot goes; the new one is created by pgoutbox --backfill, in the
# same snapshot as the rows it publishes (a slot created here would start
# streaming at a position no backfill can meet exactly).
if [[ $recreate == 1 && $slot_exists == t ]]; then
	if [[ $slot_type != logical || $slot_plugin != pgoutput || $slot_db != "$db" ]]; then
		err "replication slot $slot is not a pgoutput slot of database $db (type $slot_type, plugin ${slot_plugin:-none}, database ${slot_db:-none}); not dropping it"
		exit 1
	fi
	if [[ $slot_active == t ]]; then
		err "replication slot $slot is in use by server process ${slot_pid:-unknown}${slot_client:+ ($slot_client)}"
		hint "stop the client streaming from it (pgoutbox) first, then run this again"
		exit 1
	fi
	wal_status=$(run_sql <<<"SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = :'slot';") ||
		fail_sql "could not read the state of replication slot $slot"
	if [[ $wal_status != lost ]]; then
		err "replication slot $slot is not invalidated (wal_status ${wal_status:-unknown}): --recreate replaces only a lost slot"
		hint "pgoutbox can still stream from it; to start over anyway, drop it (--drop, then run this again without it) and run pgoutbox --backfill"
		exit 1
	fi
	run_sql >/dev/null <<<"SELECT pg_drop_replication_slot(:'slot');" ||
		fail_sql "could not drop replication slot $slot" \
			"the role needs REPLICATION (or superuser) to drop a slot"
	msg "dropped the invalidated replication slot $slot"
	slot_exists=f
	used_slots=$((used_slots - 1))
fi

# ------------------------------------------------------------------ checks

problems=0
problem() { # problem MESSAGE HINT...
	err "$1"
	shift
	local h
	for h in "$@"; do hint "$h"; done
	problems=$((problems + 1))
}

if [[ $wal_level != logical ]]; then
	problem "wal_level is $wal_level; set wal_level = logical in postgresql.conf and restart PostgreSQL" \
		"logical decoding (and so pgoutbox) needs wal_level = logical"
fi

if [[ $can_replicate != t ]]; then
	problem "role $role may not replicate (it has neither REPLICATION nor superuser)" \
		"as a superuser: ALTER ROLE $role REPLICATION;"
fi

if [[ $slot_exists == t ]]; then
	if [[ $slot_type != logical ]]; then
		problem "replication slot $slot exists but is a $slot_type slot, not a logical one" \
			"choose another --slot, or drop it if unused: SELECT pg_drop_replication_slot('$slot')"
	elif [[ $slot_plugin != pgoutput ]]; then
		problem "replication slot $slot exists but uses plugin $slot_plugin, not pgoutput" \
			"choose another --slot, or drop it if unused: SELECT pg_drop_replication_slot('$slot')"
	elif [[ $slot_db != "$db" ]]; then
		problem "replication slot $slot exists but belongs to database $slot_db, not $db" \
			"connect to database $slot_db, or choose another --slot"
	fi
else
	if ((max_slots == 0 || used_slots >= max_slots)); then
		problem "no free replication slot: $used_slots of max_replication_slots = $max_slots are in use" \
			"raise max_replication_slots in postgresql.conf and restart PostgreSQL, or drop an unused slot (SELECT slot_name, active FROM pg_replication_slots)"
	fi
	if ((max_senders == 0 || used_senders >= max_senders)); then
		problem "no free WAL sender: $used_senders of max_wal_senders = $max_senders are in use" \
			"raise max_wal_senders in postgresql.conf and restart PostgreSQL"
	fi
fi

if [[ -z $relkind ]]; then
	if [[ $create_table == 0 ]]; then
		problem "table $qtable does not exist" \
			"create it, or run with --create-table to create the default outbox table, or name another with --table"
	fi
elif [[ $relkind != r && $relkind != p ]]; then
	problem "$qtable is not a table (relkind $relkind); only tables can be published" \
		"name the outbox table with --table"
elif [[ $can_select != t ]]; then
	problem "role $role may not read table $qtable" \
		"as the table's owner: GRANT SELECT ON $qtable TO $role;"
fi

if [[ $pub_exists == t ]]; then
	if [[ $pub_has_table != t ]]; then
		problem "publication $qpub exists but does not publish table $qtable" \
			"add the table: ALTER PUBLICATION $qpub ADD TABLE $qtable; or choose another --publication"
	elif [[ $pub_insert != t ]]; then
		problem "publication $qpub exists but does not publish inserts" \
			"ALTER PUBLICATION $qpub SET (publish = 'insert'); or choose another --publication"
	fi
	if [[ $pub_viaroot != t && $relkind == p ]]; then
		problem "publication $qpub publishes the partitioned table $qtable without publish_via_partition_root: its rows would stream under the partitions' names, which pgoutbox does not know" \
			"ALTER PUBLICATION $qpub SET (publish_via_partition_root = true); or choose another --publication"
	fi
fi

# ---------------------------------------------------------------- failover

# With --failover (17+): the slot must become (or be) a failover slot, the
# primary must hold logical walsenders back until its standbys have the WAL
# (synchronized_standby_slots: otherwise pgoutbox could publish transactions
# that a promoted standby never had), those standbys must stream, and, when
# we can see it (--standby), the standby must synchronise slots.
sync_names=()
if [[ $failover == 1 ]]; then
	rc=0
	out=$(run_sql <<'SQL'
SELECT coalesce((SELECT failover::text FROM pg_replication_slots WHERE slot_name = :'slot'), ''),
       current_setting('synchronized_standby_slots'),
       coalesce((SELECT string_agg(r.slot_name, ', ' ORDER BY r.slot_name)
                   FROM pg_replication_slots r JOIN pg_stat_replication a ON a.pid = r.active_pid
                  WHERE r.slot_type = 'physical'), '');
SQL
	) || rc=$?
	[[ $rc -eq 0 ]] || fail_sql "could not read the server's failover settings"
	IFS=$'\x1f' read -r slot_failover sync_setting streaming_slots <<<"$out"

	if [[ $slot_exists == t && $slot_type == logical && $slot_plugin == pgoutput &&
		$slot_db == "$db" && $slot_failover != true ]]; then
		problem "replication slot $slot exists but is not a failover slot: a promoted standby would not have it" \
			"stop pgoutbox, then, over a replication connection: psql \"<conninfo> replication=database\" -c 'ALTER_REPLICATION_SLOT $slot (FAILOVER true)'" \
			"or drop the slot and run this again (pgoutbox then starts at the new slot: the events in between are not sent)"
	fi

	if [[ -z $sync_setting ]]; then
		problem "synchronized_standby_slots is empty on this primary: pgoutbox could receive, and publish, transactions that no standby has yet; after a failover those events would have no transaction behind them" \
			"name the physical slot of every standby that may be promoted: ALTER SYSTEM SET synchronized_standby_slots = '${streaming_slots:-<standby slot>}'; SELECT pg_reload_conf();"
	else
		rc=0
		out=$(run_sql <<'SQL'
SELECT s.name, coalesce(r.slot_type, ''), coalesce(r.active, false),
       coalesce((SELECT format('%s from %s, %s', a.application_name,
                               coalesce(host(a.client_addr), 'local'), a.state)
                   FROM pg_stat_replication a WHERE a.pid = r.active_pid), '')
  FROM unnest(string_to_array(current_setting('synchronized_standby_slots'), ','))
       WITH ORDINALITY AS u(raw, i)
 CROSS JOIN LATERAL (SELECT btrim(u.raw, ' "') AS name) s
  LEFT JOIN pg_replication_slots r ON r.slot_name = s.name
 WHERE s.name <> ''
 ORDER BY u.i;
SQL
		) || rc=$?
		[[ $rc -eq 0 ]] || fail_sql "could not read the slots of synchronized_standby_slots"
		while IFS=$'\x1f' read -r name type active client; do
			[[ -n $name ]] || continue
			sync_names+=("$name")
			if [[ -z $type ]]; then
				problem "synchronized_standby_slots names slot $name, which does not exist: logical walsenders, pgoutbox's among them, wait for it" \
					"create it for the standby (SELECT pg_create_physical_replication_slot('$name');) and set primary_slot_name = '$name' there, or remove it from synchronized_standby_slots"
			elif [[ $type != physical ]]; then
				problem "synchronized_standby_slots names slot $name, which is a $type slot, not a standby's physical one" \
					"remove it from synchronized_standby_slots: ALTER SYSTEM SET synchronized_standby_slots = '...'; SELECT pg_reload_conf();"
			elif [[ $active != t || -z $client ]]; then
				problem "no standby streams from slot $name (named in synchronized_standby_slots): logical walsenders, pgoutbox's among them, wait until one does" \
					"start the standby (primary_slot_name = '$name'), or remove the slot from synchronized_standby_slots"
			else
				msg "standby slot $name: $client"
			fi
		done <<<"$out"
	fi

	if [[ -n $standby ]]; then
		rc=0
		out=$(run_sql_standby <<'SQL'
SELECT pg_is_in_recovery(), current_setting('server_version_num'),
       coalesce(current_setting('sync_replication_slots', true), ''),
       current_setting('hot_standby_feedback'), current_setting('primary_slot_name'),
       current_setting('wal_level');
SQL
		) || rc=$?
		[[ $rc -eq 0 ]] ||
			fail_sql "could not connect to the standby ($(printf '%s' "$standby_masked" | scrub))" \
				"check --standby (host, port, dbname, user, password) and that the standby is running"
		IFS=$'\x1f' read -r sb_recovery sb_version sb_sync sb_feedback sb_slot sb_wal <<<"$out"
		if [[ $sb_recovery != t ]]; then
			problem "the server of --standby is not a standby (it is not in recovery)" \
				"give the conninfo of a hot standby of this primary"
		elif ((sb_version / 10000 != version_num / 10000)); then
			problem "the server of --standby is PostgreSQL $((sb_version / 10000)), the primary $((version_num / 10000)): it cannot be a standby of this primary" \
				"give the conninfo of a hot standby of this primary"
		else
			if [[ $sb_sync != on ]]; then
				problem "sync_replication_slots is ${sb_sync:-off} on the standby: it does not synchronise failover slots" \
					"on the standby: ALTER SYSTEM SET sync_replication_slots = on; SELECT pg_reload_conf(); (its primary_conninfo must name a dbname)"
			fi
			if [[ $sb_feedback != on ]]; then
				problem "hot_standby_feedback is off on the standby: slot synchronisation needs it" \
					"on the standby: ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf();"
			fi
			if [[ $sb_wal != logical ]]; then
				problem "wal_level is $sb_wal on the standby: slot synchronisation needs logical there too" \
					"set wal_level = logical in the standby's postgresql.conf and restart it"
			fi
			if [[ -z $sb_slot ]]; then
				problem "primary_slot_name is not set on the standby: slot synchronisation needs a physical slot on the primary" \
					"on the standby: ALTER SYSTEM SET primary_slot_name = '<its physical slot>'; SELECT pg_reload_conf(); and name that slot in the primary's synchronized_standby_slots"
			elif [[ -n $sync_setting && " ${sync_names[*]} " != *" $sb_slot "* ]]; then
				problem "the standby streams from slot $sb_slot, which synchronized_standby_slots on the primary does not name: pgoutbox could get ahead of this standby" \
					"on the primary: ALTER SYSTEM SET synchronized_standby_slots = '$sync_setting, $sb_slot'; SELECT pg_reload_conf();"
			fi
		fi
	else
		msg "note: the standby's settings were not checked (give --standby CONNINFO): it needs sync_replication_slots = on, hot_standby_feedback = on, primary_slot_name naming a slot of synchronized_standby_slots, wal_level = logical and a dbname in primary_conninfo"
	fi
fi

if ((problems > 0)); then
	if ((problems == 1)); then
		err "1 check failed; nothing was changed"
	else
		err "$problems checks failed; nothing was changed"
	fi
	exit 1
fi

# ------------------------------------------------------------------ create

if [[ -z $relkind ]]; then
	if [[ $schema_exists != t ]]; then
		run_sql >/dev/null <<<"SELECT format('CREATE SCHEMA IF NOT EXISTS %I', :'schema') \\gexec" ||
			fail_sql "could not create schema $qschema" "the role needs CREATE on the database"
		msg "created schema $qschema"
	fi
	run_sql >/dev/null <<'SQL' || fail_sql "could not create table $qtable" "the role needs CREATE on the schema"
SELECT format('CREATE TABLE IF NOT EXISTS %I.%I (
    id            uuid PRIMARY KEY,
    aggregatetype text NOT NULL,
    aggregateid   text NOT NULL,
    type          text NOT NULL,
    payload       jsonb
)', :'schema', :'table') \gexec
SQL
	msg "created table $qtable"
else
	msg "table $qtable already exists"
fi

# The publication comes before the slot: pgoutput looks it up in the snapshot
# of the WAL it decodes, which starts at the slot's creation.
# publish_via_partition_root: a partitioned outbox table then streams under
# its own name (pgoutbox knows no partitions); a plain table is not affected.
if [[ $pub_exists == t ]]; then
	msg "publication $qpub already exists and publishes inserts into $qtable"
	if [[ $pub_viaroot != t ]]; then
		msg "note: publication $qpub has publish_via_partition_root = false; should $qtable become partitioned, set it: ALTER PUBLICATION $qpub SET (publish_via_partition_root = true)"
	fi
else
	run_sql >/dev/null <<'SQL' ||
SELECT format('CREATE PUBLICATION %I FOR TABLE %I.%I WITH (publish = %L, publish_via_partition_root = true)',
              :'pub', :'schema', :'table', 'insert') \gexec
SQL
		fail_sql "could not create publication $qpub" \
			"the role needs CREATE on the database and must own table $qtable"
	msg "created publication $qpub for table $qtable (publish = 'insert', publish_via_partition_root = true)"
fi

if [[ $recreate == 1 ]]; then
	if [[ $slot_exists == t ]]; then
		msg "replication slot $slot exists already; pgoutbox --backfill would refuse to create it"
	else
		msg "replication slot $slot is left to pgoutbox --backfill: it creates the slot and publishes the outbox rows read in the slot's snapshot, then streams"
		msg "next: pgoutbox --backfill --slot $slot [--since TIME] with the daemon's settings (--since: the cut-off pgoutbox printed when the slot was lost; without it every row is published)"
	fi
elif [[ $slot_exists == t ]]; then
	msg "replication slot $slot already exists (logical, plugin pgoutput$([[ $failover == 1 ]] && printf ', failover'))"
elif [[ $failover == 1 ]]; then
	# (name, plugin, temporary, two_phase, failover)
	lsn=$(run_sql <<<"SELECT lsn FROM pg_create_logical_replication_slot(:'slot', 'pgoutput', false, false, true);") ||
		fail_sql "could not create replication slot $slot"
	msg "created logical failover replication slot $slot (plugin pgoutput) at $lsn"
else
	lsn=$(run_sql <<<"SELECT lsn FROM pg_create_logical_replication_slot(:'slot', 'pgoutput');") ||
		fail_sql "could not create replication slot $slot"
	msg "created logical replication slot $slot (plugin pgoutput) at $lsn"
fi

# The standby shows the slot once its slot sync worker has copied it (the
# worker naps up to 30 s). A copy stays temporary, and would not survive a
# promotion, until the slot on the primary has moved past the standby's own
# horizon (catalog_xmin, restart_lsn): for a new slot, once pgoutbox has
# streamed from it and confirmed. Moving it here would skip events.
if [[ $failover == 1 && -n $standby ]]; then
	msg "waiting (up to ${SYNC_TIMEOUT}s) for the standby's copy of slot $slot"
	deadline=$((SECONDS + SYNC_TIMEOUT))
	until copy=$(run_sql_standby <<<"SELECT coalesce((SELECT CASE WHEN NOT synced THEN 'unsynced'
	                                                         WHEN temporary THEN 'temporary'
	                                                         ELSE 'synced' END
	                                        FROM pg_replication_slots WHERE slot_name = :'slot'), '')") &&
		[[ $copy == synced || $copy == temporary ]]; do
		if ((SECONDS >= deadline)); then
			err "the standby has no synchronised copy of slot $slot after ${SYNC_TIMEOUT}s (${copy:-no such slot there})"
			hint "look at the standby's log (slot sync worker): its primary_conninfo must name a dbname; then run this again"
			exit 1
		fi
		sleep 0.5 # polling; the worker's own pace is slower
	done
	if [[ $copy == synced ]]; then
		msg "slot $slot is synchronised on the standby"
	else
		msg "note: the standby's copy of slot $slot is still temporary: it becomes permanent once the slot here has moved on (pgoutbox has streamed from it and confirmed); a failover before that would not find the slot on the standby"
	fi
fi

if [[ $create_emit == 1 ]]; then
	run_sql >/dev/null <"$emit_sql" ||
		fail_sql "could not create function outbox_emit()" "the role needs CREATE on a schema in its search_path"
	msg "created or replaced function outbox_emit() (use with pgoutbox's messages_prefix)"
fi

if [[ -n $create_role ]]; then
	# Least privilege: what the walsender and pgoutbox's checks need, no more.
	# REPLICATION to stream, LOGIN to connect, SELECT on the outbox table (and
	# USAGE on its schema); never superuser, no password set here.
	psql_vars+=(-v "role=$create_role")
	run_sql >/dev/null <<'SQL' ||
SELECT format('CREATE ROLE %I LOGIN REPLICATION NOSUPERUSER', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN REPLICATION', :'role') \gexec
SELECT format('GRANT USAGE ON SCHEMA %I TO %I', :'schema', :'role') \gexec
SELECT format('GRANT SELECT ON %I.%I TO %I', :'schema', :'table', :'role') \gexec
SQL
		fail_sql "could not create or grant role $create_role" \
			"creating a REPLICATION role needs a superuser (or, from PostgreSQL 16, CREATEROLE with REPLICATION)"
	msg "role $create_role: LOGIN REPLICATION, SELECT on $qtable (set its password: ALTER ROLE $create_role PASSWORD '...')"
fi

if [[ $recreate == 1 ]]; then
	msg "ready: run pgoutbox --backfill with --slot $slot --publication $(printf %q "$publication")"
else
	msg "ready: run pgoutbox with --slot $slot --publication $(printf %q "$publication")"
fi
