#!/usr/bin/env bash
#
# resolve.sh — resolve Kafka Connect and the Debezium PostgreSQL connector
# (scripts/bench/peer/pom.xml) from Maven Central into a cache outside the
# repository, and print the directory of the jars:
#
#     ${PGOUTBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgoutbox}/debezium-<version>-connect-<version>/libs
#
#   scripts/bench/peer/resolve.sh
#
# Idempotent: quick when the cache is complete. The jars go to a temporary
# directory renamed into place once complete (marker file included), so an
# interrupted run never leaves a half-filled cache; a lock serialises
# concurrent runs. Needs mvn and java (scripts/install-deps.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pom=$here/pom.xml
cache=${PGOUTBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgoutbox}
readonly here pom cache

die() {
	printf 'resolve.sh: error: %s\n' "$*" >&2
	exit 1
}

prop() { sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" "$pom" | head -n 1; }
kafka_version=$(prop kafka.version)
debezium_version=$(prop debezium.version)
[[ -n $kafka_version && -n $debezium_version ]] || die "could not read the versions from $pom"
dest=$cache/debezium-$debezium_version-connect-$kafka_version
marker=$dest/.complete

if [[ ! -f $marker ]]; then
	command -v mvn >/dev/null 2>&1 || die "mvn not found: run scripts/install-deps.sh"
	mkdir -p "$cache" || die "could not create cache directory $cache"
	exec 9>"$cache/.lock-debezium"
	flock 9
	if [[ ! -f $marker ]]; then
		printf 'resolve.sh: resolving Debezium %s and Kafka Connect %s from Maven Central into %s\n' \
			"$debezium_version" "$kafka_version" "$dest" >&2
		tmp=$(mktemp -d "$cache/.debezium.XXXXXX")
		# shellcheck disable=SC2064 # expand $tmp now
		trap "rm -rf -- '$tmp'" EXIT
		if ! mvn -B -q -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
			-DoutputDirectory="$tmp/libs" >"$tmp/mvn.log" 2>&1; then
			tail -n 40 "$tmp/mvn.log" >&2
			die "could not resolve the Debezium jars with Maven (its output is above)"
		fi
		for jar in "connect-runtime-$kafka_version.jar" "debezium-connector-postgres-$debezium_version.jar"; do
			[[ -f $tmp/libs/$jar ]] || die "Maven finished but $jar is missing"
		done
		printf 'debezium %s connect %s resolved %s\n' "$debezium_version" "$kafka_version" \
			"$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$tmp/.complete"
		rm -rf -- "$dest"
		mv -T -- "$tmp" "$dest"
		trap - EXIT
	fi
	exec 9>&-
fi
printf '%s\n' "$dest/libs"
