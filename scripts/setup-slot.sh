#!/usr/bin/env bash
# setup-slot.sh — prepare a PostgreSQL database for pgoutbox: check the server
# settings and privileges pgoutbox needs, then create the publication
# (FOR TABLE <table> WITH (publish = 'insert')) and the logical replication
# slot (plugin pgoutput). --create-table also creates the default outbox table;
# --create-emit-function installs outbox_emit() (scripts/outbox_emit.sql) for the
# table-less outbox; --create-role NAME makes a least-privilege role for
# pgoutbox (LOGIN REPLICATION, SELECT on the table, nothing else); --drop
# removes slot and publication (never the table, never a role).
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
                             [--create-role NAME] [--drop]

Prepare a PostgreSQL database for pgoutbox: check wal_level, free replication
slots and WAL senders, the role's REPLICATION attribute and its SELECT
privilege on the table, then create the publication (publish = 'insert') and
the logical replication slot (plugin pgoutput). Running it again changes
nothing.

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
  --drop                  drop the slot and the publication instead (never the table)
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
create_table=0 drop=0 create_emit=0 create_role=''

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
	--drop) drop=1 ;;
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
[[ -z $create_role || $create_role =~ ^[a-z_][a-z0-9_]{0,62}$ ]] ||
	usage_error "invalid role name '$create_role': use 1 to 63 lower-case letters, digits and underscores"
emit_sql=$(dirname "${BASH_SOURCE[0]}")/outbox_emit.sql
[[ $create_emit == 0 || -r $emit_sql ]] || usage_error "--create-emit-function: cannot read $emit_sql"
[[ -n $table_arg ]] || usage_error "--table must not be empty"
[[ $slot =~ ^[a-z0-9_]{1,63}$ ]] ||
	usage_error "invalid slot name '$slot': use 1 to 63 lower-case letters, digits and underscores"
[[ -n $publication && ${#publication} -le 63 ]] ||
	usage_error "invalid publication name '$publication': use 1 to 63 characters"

command -v "$PSQL" >/dev/null 2>&1 ||
	{
		err "psql not found"
		hint "install the PostgreSQL client (Debian: postgresql-client-15), or set PSQL"
		exit 1
	}

# ---------------------------------------------------------- secrets & psql

# Split the conninfo into what may be shown (masked, with any password
# replaced by "...") and the secrets to scrub from anything we pass on: the
# password values, and in keyword/value form any text that does not parse
# (it may be part of a password with a stray space).
masked='' secrets=()
mask_conninfo() {
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
mask_conninfo

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
SELECT 1;
SQL
) || rc=$?
if [[ $rc -ne 0 ]]; then
	fail_sql "could not connect to the server ($(printf '%s' "$masked" | scrub))" \
		"check -d (host, port, dbname, user, password) and that the server is running"
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
    SELECT puballtables, pubinsert FROM pg_publication WHERE pubname = :'pub'
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
       EXISTS (SELECT 1 FROM pg_publication_tables
                WHERE pubname = :'pub' AND schemaname = :'schema' AND tablename = :'table');
SQL
)

load_facts() {
	local out rc=0
	out=$(run_sql <<<"$facts_sql") || rc=$?
	[[ $rc -eq 0 ]] || fail_sql "could not read the server's settings"
	IFS=$'\x1f' read -r qtable qpub qschema role db wal_level max_slots used_slots max_senders used_senders \
		can_replicate schema_exists relkind can_select slot_exists slot_type slot_plugin \
		slot_db slot_active slot_pid slot_client pub_exists pub_insert pub_has_table <<<"$out"
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
if [[ $pub_exists == t ]]; then
	msg "publication $qpub already exists and publishes inserts into $qtable"
else
	run_sql >/dev/null <<'SQL' ||
SELECT format('CREATE PUBLICATION %I FOR TABLE %I.%I WITH (publish = %L)',
              :'pub', :'schema', :'table', 'insert') \gexec
SQL
		fail_sql "could not create publication $qpub" \
			"the role needs CREATE on the database and must own table $qtable"
	msg "created publication $qpub for table $qtable (publish = 'insert')"
fi

if [[ $slot_exists == t ]]; then
	msg "replication slot $slot already exists (logical, plugin pgoutput)"
else
	lsn=$(run_sql <<<"SELECT lsn FROM pg_create_logical_replication_slot(:'slot', 'pgoutput');") ||
		fail_sql "could not create replication slot $slot"
	msg "created logical replication slot $slot (plugin pgoutput) at $lsn"
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

msg "ready: run pgoutbox with --slot $slot --publication $(printf %q "$publication")"
