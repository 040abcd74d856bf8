#!/usr/bin/env bash
# install-deps.sh — install everything pgoutbox's build, tests and quickstart need.
#
# Installs the Debian packages that are missing (nothing else), then resolves the
# jars of a single-node Kafka broker from Maven Central into a cache outside the
# repository:
#     ${PGOUTBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgoutbox}/kafka-<version>/libs
# Idempotent and quick (well under 2 s) when everything is already there.
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

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${PGOUTBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgoutbox}
readonly repo_root cache

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

install_packages
install_kafka
info "all dependencies present"
