#!/usr/bin/env bash
# Interleaved A/B pairs of the cold connection: for each variant in turn, a
# fresh backend and `milagro server`, then bench/cmd/coldconn against it for
# DURATION; PAIRS times over. Prints one CSV row per measurement (the load
# tool's row: field 1 the variant, field 9 proxy CPU ms per connection,
# fields 10/11 client and server). It reuses the binaries and keys of a
# `KEEP=1 bash bench/run.sh` work folder, so that only the variant differs.
#
#   bash bench/cold-ab.sh WORK 'base=' 'batch=chrt -b 0' 'one=env GOMAXPROCS=1'
#
# A variant is NAME=PREFIX (the command both processes are started under,
# empty for none) or NAME=PREFIX@BINDIR to take milagro and coldconn from
# BINDIR instead (A/B of two builds: `go build -o DIR/ ./cmd/milagro
# ./bench/cmd/coldconn`).
set -euo pipefail

WORK=${1:?usage: cold-ab.sh WORK NAME=PREFIX[@BINDIR]...}
shift
(($# > 0)) || { echo "cold-ab.sh: name at least one variant" >&2; exit 2; }
PAIRS=${PAIRS:-3} DURATION=${DURATION:-5s} WORKERS=${WORKERS:-16} SIZE=${SIZE:-64}
H=127.0.0.1
SERVER_ID=spiffe://bench.example/ns/api/sa/server # as bench/run.sh issues it
for f in bin/backend bin/milagro bin/coldconn server-keys client-keys; do
	[[ -e $WORK/$f ]] || { echo "cold-ab.sh: $WORK/$f missing (a KEEP=1 run's work folder?)" >&2; exit 2; }
done
read -r PB PS PT <<<"$("$WORK/bin/loadgen" ports -n 3 | tr '\n' ' ')"

ready() { # ready URL: wait up to 5 s for it to answer
	local _
	for _ in $(seq 50); do
		curl -sf "$1" >/dev/null && return 0
		sleep 0.1
	done
	echo "cold-ab.sh: $1 never answered" >&2
	return 1
}

one() { # one NAME PREFIX BINDIR
	local name=$1 bin=$3 bp sp rc=0
	local -a pfx
	read -r -a pfx <<<"$2"
	"$WORK/bin/backend" -listen "$H:$PB" >/dev/null 2>&1 &
	bp=$!
	"${pfx[@]}" "$bin/milagro" server --listen "$H:$PS" --target "$H:$PB" --keys "$WORK/server-keys" \
		--allow-all --log-level warn --max-conns 30000 --status "$H:$PT" >"$WORK/ab-server-$name.log" 2>&1 &
	sp=$!
	ready "http://$H:$PT/readyz" &&
		"${pfx[@]}" "$bin/coldconn" -addr "$H:$PS" -keys "$WORK/client-keys" -server-id "$SERVER_ID" \
			-server-pids "$sp" -duration "$DURATION" -workers "$WORKERS" -size "$SIZE" -peer "$name" || rc=$?
	kill "$sp" "$bp" 2>/dev/null || true
	wait "$sp" "$bp" 2>/dev/null || true
	return "$rc"
}

for _ in $(seq "$PAIRS"); do
	for v in "$@"; do
		name=${v%%=*} rest=${v#*=} bin=$WORK/bin
		if [[ $rest == *@* ]]; then bin=${rest##*@} rest=${rest%@*}; fi
		one "$name" "$rest" "$bin"
	done
done
