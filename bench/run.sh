#!/usr/bin/env bash
# Whole-process benchmark: milagro against other proxies, side by side, in
# one run, on loopback. See bench/README.md for what it measures and the
# knobs; `QUICK=1 bash bench/run.sh` is a ~1 minute smoke run.
set -euo pipefail

T0=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
	ROUNDS=${ROUNDS:-1} BULK_MB=${BULK_MB:-128} DURATION=${DURATION:-1s} PINGS=${PINGS:-500}
	IDLE_CONNS=${IDLE_CONNS:-1000} FLOOR_BENCHTIME=${FLOOR_BENCHTIME:-30x}
	WAIT_LOAD=${WAIT_LOAD:-0}
fi
ROUNDS=${ROUNDS:-5}                  # rounds; every peer is measured once per round
BULK_MB=${BULK_MB:-1024}             # MiB sent one way per bulk measurement
DURATION=${DURATION:-5s}             # length of each new-connection measurement
WORKERS=${WORKERS:-16}               # concurrent workers making new connections
SIZE=${SIZE:-64}                     # request/response and ping size, bytes
PINGS=${PINGS:-5000}                 # ping-pong round trips per latency measurement
IDLE_CONNS=${IDLE_CONNS:-10000}      # idle connections held for the RSS figure
IDLE_PEERS=${IDLE_PEERS:-"go-relay go-mtls milagro"}
PEERS=${PEERS:-"none go-relay stunnel-psk spiped go-mtls milagro milagro-cold"}
PERMIT=${PERMIT:-0}                  # 1: the client fetches time permits, the server requires them
FLOOR_BENCHTIME=${FLOOR_BENCHTIME:-1s}
FLOOR_COUNT=${FLOOR_COUNT:-0}          # rounds of the floors alone after the last round (every round that measures milagro-cold measures them too)
WAIT_LOAD=${WAIT_LOAD:-600}          # wait up to this many seconds for the load average to fall
LOAD_MAX=${LOAD_MAX:-1.5}
PROFILE=${PROFILE:-0}                # 1: perf profile of both milagro sidecars under one bulk transfer, and of the server and coldconn under cold connections
KEEP=${KEEP:-0}                      # 1: keep the work folder (logs, keys, configs)
RTT_MS=${RTT_MS:-0}                  # >0: also time single new connections over this round trip (bench/cmd/delayline)
RTT_PEERS=${RTT_PEERS:-"go-relay go-mtls milagro milagro-cold"}
GO_PROXY_ENV=${GO_PROXY_ENV:-}       # extra environment of the Go proxies (milagro, go-relay, go-mtls, and coldconn as the cold client), e.g. "GOMAXPROCS=1 GOGC=400"
read -r -a GO_ENV <<<"$GO_PROXY_ENV" # the same as words, for env "${GO_ENV[@]}"

OUT=$ROOT/bench/out
mkdir -p "$OUT"
STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)
umask 077
WORK=$(mktemp -d /tmp/milagro-bench.XXXXXX)
BIN=$WORK/bin
mkdir -p "$BIN"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
load1() { cut -d' ' -f1 /proc/loadavg; }

# ---- processes: every one we start is recorded and ended on exit --------
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	if [[ $KEEP == 1 ]]; then log "work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
# start NAME CMD...: run CMD in the background, logging to $WORK/NAME.log;
# sets STARTED to its pid.
start() {
	local name=$1
	shift
	"$@" >"$WORK/$name.log" 2>&1 &
	STARTED=$!
	PIDS+=("$STARTED")
}
# stop [-SIGNAL] PID...: signal (TERM by default), wait, forget.
stop() {
	local sig=-TERM p q keep=()
	if [[ ${1:-} == -* ]]; then sig=$1; shift; fi
	for p in "$@"; do kill "$sig" "$p" 2>/dev/null || true; done
	for p in "$@"; do wait "$p" 2>/dev/null || true; done
	for q in "${PIDS[@]}"; do [[ " $* " == *" $q "* ]] || keep+=("$q"); done
	PIDS=("${keep[@]}")
}

# ---- tools ------------------------------------------------------------------
# Installs only what is missing; a peer whose tool cannot be had is skipped.
need_pkg() { # need_pkg COMMAND PACKAGE
	command -v "$1" >/dev/null 2>&1 && return 0
	log "installing $2"
	if [[ ${APT_UPDATED:-0} == 0 ]]; then
		apt-get update >"$WORK/apt-update.log" 2>&1 || true
		APT_UPDATED=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >"$WORK/apt-$2.log" 2>&1 || true
	command -v "$1" >/dev/null 2>&1
}
SKIPPED=()
skip_peer() {
	SKIPPED+=("$1: $2")
	log "NOTE: skipping $1: $2"
	local p out=()
	for p in $PEERS; do [[ $p == "$1" ]] || out+=("$p"); done
	PEERS="${out[*]}"
}
if [[ " $PEERS " == *" stunnel-psk "* ]] && ! need_pkg stunnel stunnel4; then
	skip_peer stunnel-psk "stunnel4 is not installed and apt-get install stunnel4 failed (see $WORK/apt-stunnel4.log)"
fi
if [[ " $PEERS " == *" spiped "* ]] && ! need_pkg spiped spiped; then
	skip_peer spiped "spiped is not installed and apt-get install spiped failed"
fi
if [[ $PROFILE == 1 ]] && ! command -v perf >/dev/null 2>&1; then
	need_pkg perf linux-perf || { log "NOTE: perf unavailable; no profile"; PROFILE=0; }
fi

log "building milagro and the bench tools"
go build -o "$BIN/milagro" ./cmd/milagro
go build -o "$BIN/" ./bench/cmd/...
LG=$BIN/loadgen

# Idle connections need file descriptors in every process of the path.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [[ $NOFILE != unlimited ]] && ((IDLE_CONNS + 500 > NOFILE)); then
	log "NOTE: ulimit -n is $NOFILE: holding $((NOFILE - 500)) idle connections instead of $IDLE_CONNS"
	IDLE_CONNS=$((NOFILE - 500))
fi

# ---- wait for a quiet machine --------------------------------------------------
LOAD_START=$(load1)
if [[ $WAIT_LOAD != 0 ]]; then
	waited=0
	while awk -v l="$(load1)" -v m="$LOAD_MAX" 'BEGIN{exit !(l >= m)}'; do
		if ((waited >= WAIT_LOAD)); then
			log "NOTE: load average still $(load1) after ${waited}s; measuring anyway"
			break
		fi
		((waited == 0)) && log "load average $(load1) ≥ $LOAD_MAX: waiting (up to ${WAIT_LOAD}s)"
		sleep 10
		waited=$((waited + 10))
	done
	LOAD_START=$(load1)
fi
log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---- peers ------------------------------------------------------------------------
read -r P_BACKEND P_RELAY_C P_RELAY_S P_ST_C P_ST_S P_SP_C P_SP_S P_TLS_C P_TLS_S \
	P_MI_C P_MI_S P_DTA1 P_DTA2 P_DTA3 < <("$LG" ports -n 14)
H=127.0.0.1
BACKEND=$H:$P_BACKEND
declare -A ADDR CPIDS SPIDS

start backend "$BIN/backend" -listen "$BACKEND"
"$LG" wait -addr "$BACKEND"
ADDR[none]=$BACKEND CPIDS[none]="" SPIDS[none]=""

# client_cmd PEER LISTEN TARGET sets CMD to the command of PEER's client
# side (go-relay, go-mtls, milagro), listening on LISTEN, relaying to TARGET.
client_cmd() {
	case $1 in
	go-relay) CMD=(env "${GO_ENV[@]}" "$BIN/relay" -mode plain -listen "$2" -target "$3") ;;
	go-mtls) CMD=(env "${GO_ENV[@]}" "$BIN/relay" -mode tls-client -listen "$2" -target "$3" -certs "$WORK/certs") ;;
	milagro) CMD=(env "${GO_ENV[@]}" "$BIN/milagro" client --listen "$2" --target "$3" --keys "$WORK/client-keys"
		--verify-id "$SERVER_ID" --log-level warn --max-conns 30000 --max-streams-per-session "$MAX_STREAMS") ;;
	*) return 1 ;;
	esac
}

start_go_relay() {
	start relay-server env $GO_PROXY_ENV "$BIN/relay" -mode plain -listen "$H:$P_RELAY_S" -target "$BACKEND"
	SPIDS[go-relay]=$STARTED
	client_cmd go-relay "$H:$P_RELAY_C" "$H:$P_RELAY_S"
	start relay-client "${CMD[@]}"
	CPIDS[go-relay]=$STARTED ADDR[go-relay]=$H:$P_RELAY_C
}

start_go_mtls() {
	[[ -f $WORK/certs/ca.pem ]] || "$BIN/relay" -gencerts "$WORK/certs"
	start mtls-server env $GO_PROXY_ENV "$BIN/relay" -mode tls-server -listen "$H:$P_TLS_S" -target "$BACKEND" -certs "$WORK/certs"
	SPIDS[go-mtls]=$STARTED
	client_cmd go-mtls "$H:$P_TLS_C" "$H:$P_TLS_S"
	start mtls-client "${CMD[@]}"
	CPIDS[go-mtls]=$STARTED ADDR[go-mtls]=$H:$P_TLS_C
}

start_stunnel() {
	echo "bench:$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >"$WORK/psk.txt"
	local side
	for side in server client; do
		{
			echo "foreground = yes"
			echo "pid ="
			echo "debug = warning"
			echo "output = $WORK/stunnel-$side.out"
			echo "[bench]"
			if [[ $side == client ]]; then
				echo "client = yes"
				echo "accept = $H:$P_ST_C"
				echo "connect = $H:$P_ST_S"
				echo "PSKidentity = bench"
			else
				echo "accept = $H:$P_ST_S"
				echo "connect = $BACKEND"
			fi
			echo "PSKsecrets = $WORK/psk.txt"
			echo "sslVersionMin = TLSv1.3"
			echo "ciphersuites = TLS_AES_128_GCM_SHA256"
		} >"$WORK/stunnel-$side.conf"
	done
	start stunnel-server stunnel "$WORK/stunnel-server.conf"
	SPIDS[stunnel-psk]=$STARTED
	start stunnel-client stunnel "$WORK/stunnel-client.conf"
	CPIDS[stunnel-psk]=$STARTED ADDR[stunnel-psk]=$H:$P_ST_C
}

start_spiped() {
	head -c 32 /dev/urandom >"$WORK/spiped.key"
	start spiped-server spiped -d -F -n 0 -s "[$H]:$P_SP_S" -t "[$H]:$P_BACKEND" -k "$WORK/spiped.key"
	SPIDS[spiped]=$STARTED
	start spiped-client spiped -e -F -n 0 -s "[$H]:$P_SP_C" -t "[$H]:$P_SP_S" -k "$WORK/spiped.key"
	CPIDS[spiped]=$STARTED ADDR[spiped]=$H:$P_SP_C
}

CLIENT_ID=spiffe://bench.example/ns/load/sa/client
SERVER_ID=spiffe://bench.example/ns/api/sa/server
setup_milagro_keys() {
	local i tc ts
	tc=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
	ts=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
	printf '%s' "$tc" >"$WORK/client.token"
	printf '%s' "$ts" >"$WORK/server.token"
	cat >"$WORK/policy.yaml" <<-EOF
		requesters:
		  - name: load
		    token_sha256: "$(printf '%s' "$tc" | sha256sum | cut -d' ' -f1)"
		    identities: ["spiffe://bench.example/ns/load/**"]
		    kinds: [client, permit]
		  - name: api
		    token_sha256: "$(printf '%s' "$ts" | sha256sum | cut -d' ' -f1)"
		    identities: ["spiffe://bench.example/ns/api/**"]
		    kinds: [server, domain]
		    server: true
	EOF
	local ports=("$P_DTA1" "$P_DTA2" "$P_DTA3") args=() dpids=()
	for i in 1 2 3; do
		"$BIN/milagro" dta init --dir "$WORK/dta-$i" --id "dta-$i" --domain bench.example --insecure-plaintext-key >"$WORK/dta-init-$i.log" 2>&1
		args+=("$WORK/dta-$i=http://$H:${ports[i - 1]}")
		start "dta-$i" "$BIN/milagro" dta serve --dir "$WORK/dta-$i" --listen "$H:${ports[i - 1]}" \
			--policy "$WORK/policy.yaml" --insecure-http --log-level warn
		dpids+=("$STARTED")
	done
	"$BIN/milagro" domain build --out "$WORK/domain.json" "${args[@]}"
	local ckinds=client
	[[ $PERMIT == 1 ]] && ckinds=client,permit
	local try
	for try in $(seq 50); do
		if "$BIN/milagro" keys fetch --domain "$WORK/domain.json" --identity "$CLIENT_ID" --token-file "$WORK/client.token" \
			--out "$WORK/client-keys" --kinds "$ckinds" --log-level warn >"$WORK/fetch-client.log" 2>&1 &&
			"$BIN/milagro" keys fetch --domain "$WORK/domain.json" --identity "$SERVER_ID" --token-file "$WORK/server.token" \
				--out "$WORK/server-keys" --kinds server,domain --log-level warn >"$WORK/fetch-server.log" 2>&1; then
			break
		fi
		((try == 50)) && { cat "$WORK"/fetch-*.log >&2; echo "keys fetch failed" >&2; exit 1; }
		sleep 0.2
	done
	stop "${dpids[@]}" # the keys are fetched; the D-TAs take no part in the measurement
}

MAX_STREAMS=256 # the client's default; the idle-RSS run raises it (8 sessions × 256 < 10,000)
start_milagro() {
	local req=()
	[[ $PERMIT == 1 ]] && req=(--require-permit)
	start milagro-server env $GO_PROXY_ENV "$BIN/milagro" server --listen "$H:$P_MI_S" --target "$BACKEND" --keys "$WORK/server-keys" \
		--allow-all "${req[@]}" --log-level warn --max-conns 30000
	SPIDS[milagro]=$STARTED SPIDS[milagro-cold]=$STARTED
	client_cmd milagro "$H:$P_MI_C" "$H:$P_MI_S"
	start milagro-client "${CMD[@]}"
	CPIDS[milagro]=$STARTED ADDR[milagro]=$H:$P_MI_C
	CPIDS[milagro-cold]="" ADDR[milagro-cold]=$H:$P_MI_S
}

start_peer() {
	case $1 in
	none) ;;
	go-relay) start_go_relay ;;
	go-mtls) start_go_mtls ;;
	stunnel-psk) start_stunnel ;;
	spiped) start_spiped ;;
	milagro | milagro-cold) [[ -n ${CPIDS[milagro]:-} ]] || start_milagro ;;
	*) echo "unknown peer $1" >&2; exit 2 ;;
	esac
	local a=${ADDR[$1]}
	[[ $1 == milagro-cold ]] && a=${ADDR[milagro]} # through both sidecars: the server is up
	"$LG" wait -addr "$a" 2>"$WORK/wait-$1.log"
}
stop_peer() {
	local p=$1
	[[ $p == milagro-cold ]] && p=milagro
	# shellcheck disable=SC2086
	stop ${CPIDS[$p]} ${SPIDS[$p]}
	CPIDS[$p]="" SPIDS[$p]=""
}

if [[ " $PEERS " == *" milagro"* || " $IDLE_PEERS " == *" milagro "* ]]; then
	log "milagro: 3 D-TAs, keys fetch (permits: $PERMIT)"
	setup_milagro_keys
fi
for p in $PEERS; do
	log "starting $p"
	if ! start_peer "$p"; then
		skip_peer "$p" "did not pass traffic: $(tail -n1 "$WORK/wait-$p.log")"
	fi
done

# ---- the floor ----------------------------------------------------------------------
# The library floor is measured right before and right after each round's cold
# connections (lib_floor), and each round's cold figure is set against the
# mean of the two: on this shared host the machine's speed drifts by 10-30%
# within minutes (the pairing floor read 4.9 ms one day and 6.3 ms the next,
# and 1.95 then 2.64 ms within one hour), and a floor measured once per round,
# up to a minute away from the cold connections, once read 0.90× in a round:
# less than the floor, which no cold connection can cost. The same cold
# session in one process and the TLS reference are measured once at the end
# of every round (floor_round). Medians over the rounds, and FLOOR_COUNT more
# rounds of both alone if asked.
#   floor: BenchmarkFloor(Server|Client) in ./pairing, the bare curve
#     arithmetic of one handshake per side, and BenchmarkFloorEncode, the
#     six compressed point encodings it sends or hashes;
#   library floor: that and BenchmarkFloorDTLS in ./psk, pion's DTLS-PSK
#     handshake over UDP and yamux setup alone;
#   session: BenchmarkSessionSetup in ./psk, TCP, mpinkex, DTLS-PSK, yamux
#     and close, both sides, process CPU per session;
#   a reference: BenchmarkFloorTLS in ./bench/cmd/relay, go-mtls's TLS 1.3
#     mTLS handshake in one process, set against go-mtls's new connection.
go test -c -o "$BIN/pairing.test" ./pairing
go test -c -o "$BIN/psk.test" ./psk
go test -c -o "$BIN/relay.test" ./bench/cmd/relay
: >"$WORK/floortls.txt"
: >"$WORK/floor.txt"
: >"$WORK/setup.txt"
: >"$WORK/floordtls.txt"
: >"$WORK/setup1.txt"
# The library floor is process CPU (cpu-ns/op, as the proxies' figures
# are), on one scheduler thread (GOMAXPROCS=1): library work only, not the
# Go scheduler's spinning and cross-core hand-offs, which cost pion's
# handshake 0.05-0.12 ms more on two threads (a 2026-11-24 review of this
# harness; before it the DTLS part ran on two threads and the pairing part
# was wall time, which read the floor high by 0.02-0.03x of the ratio).
lib_floor() {
	(cd pairing && GOMAXPROCS=1 "$BIN/pairing.test" -test.run '^$' -test.bench 'BenchmarkFloor(Server|Client|Encode)$' -test.benchtime "$FLOOR_BENCHTIME") >>"$WORK/floor.txt" 2>&1 ||
		{ cat "$WORK/floor.txt" >&2; exit 1; }
	(cd psk && GOMAXPROCS=1 "$BIN/psk.test" -test.run '^$' -test.bench 'BenchmarkFloorDTLS$' -test.benchtime 200x) >>"$WORK/floordtls.txt" 2>&1 ||
		{ cat "$WORK/floordtls.txt" >&2; exit 1; }
}
floor_round() {
	(cd psk && "$BIN/psk.test" -test.run '^$' -test.bench 'BenchmarkSessionSetup$' -test.benchtime 200x) >>"$WORK/setup.txt" 2>&1 ||
		{ cat "$WORK/setup.txt" >&2; exit 1; }
	# Again on one scheduler thread, with the DTLS part of the floor: with
	# two, the same session costs 5-15% more (context switches, goroutines
	# resuming on the other core's cold cache; bench/RESULTS.md), by an
	# amount that varies from run to run.
	(cd psk && GOMAXPROCS=1 "$BIN/psk.test" -test.run '^$' -test.bench 'BenchmarkSessionSetup$|BenchmarkFloorDTLS$' -test.benchtime 200x) >>"$WORK/setup1.txt" 2>&1 ||
		{ cat "$WORK/setup1.txt" >&2; exit 1; }
	# A reference, not a floor of milagro's: go-mtls's handshake alone in
	# one process (crypto/tls 1.3 with client certificates, both sides).
	"$BIN/relay.test" -test.run '^$' -test.bench 'BenchmarkFloorTLS$' -test.benchtime 400x >>"$WORK/floortls.txt" 2>&1 ||
		{ cat "$WORK/floortls.txt" >&2; exit 1; }
}

# ---- rounds -----------------------------------------------------------------------
RAW=$WORK/rounds.csv
"$LG" header >"$RAW"
read -r -a PEER_LIST <<<"$PEERS"
NP=${#PEER_LIST[@]}
FAILED=()
for ((r = 1; r <= ROUNDS; r++)); do
	log "round $r of $ROUNDS (load $(load1))"
	for ((k = 0; k < NP; k++)); do
		p=${PEER_LIST[(k + r - 1) % NP]} # rotate the order each round
		if [[ $p == milagro-cold ]]; then
			# coldconn is the client sidecar here: it runs with the proxies' environment
			cmd=(env "${GO_ENV[@]}" "$BIN/coldconn" -addr "${ADDR[$p]}" -keys "$WORK/client-keys" -server-id "$SERVER_ID"
				-server-pids "${SPIDS[$p]}" -duration "$DURATION" -workers "$WORKERS" -size "$SIZE" -peer "$p" -round "$r")
		else
			cmd=("$LG" bench -addr "${ADDR[$p]}" -peer "$p" -round "$r" -client-pids "${CPIDS[$p]}" -server-pids "${SPIDS[$p]}"
				-bulk-mb "$BULK_MB" -duration "$DURATION" -workers "$WORKERS" -size "$SIZE" -pings "$PINGS")
		fi
		[[ $p == milagro-cold ]] && lib_floor # the floor before …
		if row=$("${cmd[@]}" 2>>"$WORK/loadgen.log"); then
			echo "$row" >>"$RAW"
			log "  $row"
		else
			FAILED+=("$p round $r")
			log "  $p round $r FAILED: $(tail -n1 "$WORK/loadgen.log")"
		fi
		[[ $p == milagro-cold ]] && lib_floor # … and after the cold connections
	done
	if [[ " $PEERS " == *" milagro-cold "* ]]; then # only the cold connection is compared with the floors
		log "  in-process session and TLS reference (go test -bench in ./psk and ./bench/cmd/relay)"
		floor_round
	fi
done
for ((i = 1; i <= FLOOR_COUNT; i++)); do
	log "floor round $i of $FLOOR_COUNT more"
	lib_floor
	floor_round
done
cp "$RAW" "$OUT/results-$STAMP-rounds.csv"

# ---- profile (optional) ------------------------------------------------------------
# profile NAME PERF_PIDS PERFSUM_PIDS TITLE CMD…: perf record -g of PERF_PIDS while
# CMD runs (its stdout is the load tool's CSV row), summarised by category with perfsum
# (per GiB when the row carries the GiB moved, field 5) into $OUT/NAME-$STAMP.txt.
# A PERF_PIDS or PERFSUM_PIDS entry "CMD" stands for CMD's own process: it is
# started first and attached to half a second later, once the Go runtime has
# made its threads (perf -p follows the threads a sampled thread makes, but
# misses one made while it attaches: attached at once, coldconn lost a
# quarter of its samples in two runs of three).
profile() {
	local name=$1 pids=$2 sumpids=$3 title=$4 cmd=
	shift 4
	if [[ ",$pids," == *,CMD,* ]]; then
		"$@" >"$WORK/$name-row.csv" 2>>"$WORK/loadgen.log" &
		cmd=$!
		pids=${pids/CMD/$cmd} sumpids=${sumpids/CMD/$cmd}
		sleep 0.5
	fi
	start perf-record perf record -F 499 -g -o "$WORK/$name.data" -p "$pids"
	PERF=$STARTED
	sleep 1
	if [[ -n $cmd ]]; then
		wait "$cmd" || true
	else
		"$@" >"$WORK/$name-row.csv" 2>>"$WORK/loadgen.log"
	fi
	stop -INT "$PERF"
	local prof=$OUT/$name-$STAMP.txt gib
	gib=$(cut -d, -f5 "$WORK/$name-row.csv")
	{
		echo "# perf record -g of $title"
		echo "# load tool row: $(cat "$WORK/$name-row.csv")"
		echo
		perf script -F pid,tid,period,ip,sym -i "$WORK/$name.data" 2>/dev/null |
			"$BIN/perfsum" -pids "$sumpids" -s-per-gib "${gib:-0}" || true
		echo
		echo "# hottest symbols (self)"
		perf report -i "$WORK/$name.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40 || true
	} >"$prof"
	sed -n '/^category/,/^total/p' "$prof" >&2
	log "profile written to $prof"
}
if [[ $PROFILE == 1 && -n ${CPIDS[milagro]:-} ]]; then
	log "profiling both milagro sidecars under one ${BULK_MB} MiB bulk transfer (perf)"
	profile profile "${CPIDS[milagro]},${SPIDS[milagro]}" "client=${CPIDS[milagro]},server=${SPIDS[milagro]}" \
		"milagro client (pid ${CPIDS[milagro]}) + server (pid ${SPIDS[milagro]}) during one ${BULK_MB} MiB bulk transfer" \
		"$LG" bench -addr "${ADDR[milagro]}" -peer profile -bulk-mb "$BULK_MB" -duration 0 -pings 0 \
		-client-pids "${CPIDS[milagro]}" -server-pids "${SPIDS[milagro]}"
fi
if [[ $PROFILE == 1 && -n ${SPIDS[milagro-cold]:-} ]]; then
	log "profiling the milagro server and coldconn under ${DURATION} of cold connections from coldconn (perf)"
	profile profile-cold "${SPIDS[milagro-cold]},CMD" "server=${SPIDS[milagro-cold]},client=CMD" \
		"the milagro server (pid ${SPIDS[milagro-cold]}) and the client side (coldconn) during ${DURATION} of cold connections (coldconn, $WORKERS workers)" \
		"$BIN/coldconn" -addr "${ADDR[milagro-cold]}" -keys "$WORK/client-keys" -server-id "$SERVER_ID" \
		-server-pids "${SPIDS[milagro-cold]}" -duration "$DURATION" -workers "$WORKERS" -size "$SIZE" -peer profile
fi

metric() { # metric FILE BENCHMARK UNIT: that metric of every run of the benchmark, in order
	{ grep -E "^$2(-[0-9]+)?[[:space:]]" "$1" || true; } | awk -v u="$3" '{for(i=1;i<=NF;i++) if($(i+1)==u) print $i}'
}
median() { # median FILE BENCHMARK UNIT: the median of one metric of one benchmark over the rounds
	metric "$@" | sort -g | awk '{v[NR]=$1} END{if(NR==0){print 0}else if(NR%2){print v[(NR+1)/2]}else{print (v[NR/2]+v[NR/2+1])/2}}'
}
FLOOR_S=$(median "$WORK/floor.txt" BenchmarkFloorServer cpu-ns/op)
FLOOR_C=$(median "$WORK/floor.txt" BenchmarkFloorClient cpu-ns/op)
FLOOR_E=$(median "$WORK/floor.txt" BenchmarkFloorEncode cpu-ns/op)
# the library floor of each round: the mean of the two measured around its cold
# connections (the first 2 × ROUNDS library floors are the rounds')
LIB_ROUNDS=$(paste -d' ' <(metric "$WORK/floor.txt" BenchmarkFloorServer cpu-ns/op) <(metric "$WORK/floor.txt" BenchmarkFloorClient cpu-ns/op) \
	<(metric "$WORK/floor.txt" BenchmarkFloorEncode cpu-ns/op) <(metric "$WORK/floordtls.txt" BenchmarkFloorDTLS cpu-ns/op) |
	head -n "$((2 * ROUNDS))" | awk '{v = $1 + $2 + $3 + $4} NR % 2 {b = v; next} {printf "%s%.0f", (NR > 2 ? "," : ""), (b + v) / 2}')
SETUP_CPU=$(median "$WORK/setup.txt" BenchmarkSessionSetup cpu-ns/op)
FLOOR_D=$(median "$WORK/floordtls.txt" BenchmarkFloorDTLS cpu-ns/op)
SETUP_CPU1=$(median "$WORK/setup1.txt" BenchmarkSessionSetup cpu-ns/op)
FLOOR_D1=$(median "$WORK/setup1.txt" BenchmarkFloorDTLS cpu-ns/op)
FLOOR_TLS=$(median "$WORK/floortls.txt" BenchmarkFloorTLS cpu-ns/op)

# ---- RSS per idle connection ----------------------------------------------------------
IDLE=$WORK/idle.csv
: >"$IDLE"
if ((IDLE_CONNS > 0)); then
	MAX_STREAMS=2048
	for p in $IDLE_PEERS; do
		[[ " $PEERS " == *" $p "* ]] || continue
		log "idle: $IDLE_CONNS connections through fresh $p processes"
		stop_peer "$p"
		if ! start_peer "$p"; then
			FAILED+=("$p idle: did not start")
			continue
		fi
		# shellcheck disable=SC2086
		pids=$(echo ${CPIDS[$p]} ${SPIDS[$p]} | tr ' ' ',')
		# Descriptors one proxy process holds per idle connection: milagro's
		# sides 1 (streams share the session's socket), the mTLS relay 2, the
		# plain relay 6 (two sockets, and io.Copy's splice holds a pipe pair
		# per direction while it waits).
		fds=1
		case $p in go-mtls) fds=2 ;; go-relay) fds=6 ;; esac
		n=$IDLE_CONNS
		if [[ $NOFILE != unlimited ]] && ((fds * n + 1000 > NOFILE)); then
			n=$(((NOFILE - 1000) / fds))
			log "  ($p holds $fds descriptors per connection: $n connections for ulimit -n $NOFILE)"
		fi
		if row=$("$LG" idle -addr "${ADDR[$p]}" -peer "$p" -pids "$pids" -n "$n" 2>>"$WORK/loadgen.log"); then
			echo "$row" >>"$IDLE"
			log "  $row (peer,n,base KiB,with KiB,KiB/conn,client;server KiB/conn)"
		else
			FAILED+=("$p idle")
			log "  $p idle FAILED: $(tail -n1 "$WORK/loadgen.log")"
		fi
		stop_peer "$p"
	done
fi

# ---- latency over a long round trip (optional) ----------------------------------------------
# RTT_MS > 0: a delay line (bench/cmd/delayline: a relay adding RTT_MS/2 to
# each direction, and one round trip before the client's first bytes for
# TCP's connect) sits between a fresh client side and the server side of
# each peer in RTT_PEERS. One worker makes connections one after the other
# for $DURATION; 1000 / (connections per second) is the time one new
# connection takes from connect to the echo of its request, counted below
# in round trips. milagro-cold (every connection a new session) is timed
# with the client's pipelining of Msg3 and the ClientHello (PROTOCOL.md §5,
# the sidecar's way) and without it; coldconn runs with -abrupt there, so
# that it too ends each connection at the echo, as the load tool does (its
# default, the half-close and the wait for the server's EOF, adds one
# round trip that no other row counts; runs before 2026-11-24T144937Z were
# timed that way).
RTT_OUT=$OUT/rtt-$STAMP.txt
measure_rtt() {
	local p pc pd row cpid dpid half=$((RTT_MS * 500))us
	rtt_row() { # rtt_row CSV-ROW LABEL
		{ "$LG" header; echo "$1"; } | awk -F, -v c="$2" -v rtt="$RTT_MS" '
			NR == 1 { for (i = 1; i <= NF; i++) if ($i == "conn_per_s") k = i }
			NR == 2 { printf "  %-44s %7.1f ms  = %.2f round trips\n", c, 1000 / $k, 1000 / $k / rtt }'
	}
	why() { # why PEER: what the logs say about a failed measurement
		local f
		kill -0 "${SPIDS[$1]:-0}" 2>/dev/null || echo "    the $1 server (pid ${SPIDS[$1]:-none}) is not running"
		local logs=("rtt-delay-$1" "rtt-client-$1" loadgen)
		[[ $1 == milagro ]] && logs+=(milagro-server)
		for f in "${logs[@]}"; do
			[[ -s $WORK/$f.log ]] && tail -n 3 "$WORK/$f.log" | sed "s/^/    $f: /"
		done
		return 0
	}
	echo "new connection over a ${RTT_MS} ms round trip (delay line), one at a time for $DURATION, $SIZE B request/echo:"
	for p in $RTT_PEERS; do
		[[ $p == milagro-cold ]] && continue
		[[ -n ${SPIDS[$p]:-} ]] || start_peer "$p" 2>/dev/null || { echo "  $p: could not start"; continue; }
		read -r pc pd < <("$LG" ports -n 2)
		local srv
		case $p in
		go-relay) srv=$H:$P_RELAY_S ;;
		go-mtls) srv=$H:$P_TLS_S ;;
		milagro) srv=$H:$P_MI_S ;;
		*) continue ;;
		esac
		client_cmd "$p" "$H:$pc" "$H:$pd"
		start "rtt-delay-$p" "$BIN/delayline" -listen "$H:$pd" -target "$srv" -delay "$half"
		dpid=$STARTED
		start "rtt-client-$p" "${CMD[@]}"
		cpid=$STARTED
		if "$LG" wait -addr "$H:$pc" 2>>"$WORK/loadgen.log" &&
			row=$("$LG" bench -addr "$H:$pc" -peer "$p-rtt" -bulk-mb 0 -pings 0 -workers 1 -duration "$DURATION" -size "$SIZE" 2>>"$WORK/loadgen.log"); then
			rtt_row "$row" "$p"
		else
			echo "  $p: FAILED"
			why "$p"
		fi
		if [[ $p == milagro && " $RTT_PEERS " == *" milagro-cold "* ]]; then
			local pl
			for pl in true false; do
				if row=$(env "${GO_ENV[@]}" "$BIN/coldconn" -addr "$H:$pd" -keys "$WORK/client-keys" -server-id "$SERVER_ID" -server-pids "${SPIDS[milagro]}" \
					-duration "$DURATION" -workers 1 -size "$SIZE" -pipeline="$pl" -abrupt -peer milagro-cold-rtt 2>>"$WORK/loadgen.log"); then
					rtt_row "$row" "milagro-cold (new session), pipeline=$pl"
				else
					echo "  milagro-cold pipeline=$pl: FAILED"
					why milagro
				fi
			done
		fi
		stop "$cpid" "$dpid"
	done
}
if ((RTT_MS > 0)); then
	log "latency over a ${RTT_MS} ms round trip"
	[[ " $RTT_PEERS " != *" milagro"* || -d $WORK/server-keys ]] || setup_milagro_keys
	measure_rtt >"$RTT_OUT"
	cat "$RTT_OUT" >&2
fi

# ---- report -----------------------------------------------------------------------------
LOAD_END=$(load1)
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
ELAPSED=$(($(date +%s) - T0))
RESULTS=$OUT/results-$STAMP.csv
echo
echo "milagro whole-process benchmark, $STAMP"
echo "machine: $(nproc) CPUs, ${CPU_MODEL:-unknown CPU}, Linux $(uname -r)"
echo "load average: $LOAD_START at start, $LOAD_END at end (1 min)"
echo "rounds $ROUNDS, bulk ${BULK_MB} MiB one way to a sink, new connections ${DURATION} × $WORKERS workers with ${SIZE} B request/response, $PINGS pings of ${SIZE} B, idle $IDLE_CONNS connections, permits $PERMIT"
[[ -n $GO_PROXY_ENV ]] && echo "Go proxies (milagro, go-relay, go-mtls) and coldconn ran with: $GO_PROXY_ENV"
echo
"$BIN/report" -raw "$RAW" -idle "$IDLE" -floor-server-ns "$FLOOR_S" -floor-client-ns "$FLOOR_C" -floor-encode-ns "$FLOOR_E" -lib-floor-rounds "$LIB_ROUNDS" -floor-dtls-ns "$FLOOR_D" -session-cpu-ns "$SETUP_CPU" \
	-session-cpu-ns-1 "$SETUP_CPU1" -floor-dtls-ns-1 "$FLOOR_D1" -floor-tls-ns "$FLOOR_TLS" -out "$RESULTS" \
	-meta "date=$STAMP" -meta "nproc=$(nproc)" -meta "cpu=$CPU_MODEL" -meta "kernel=$(uname -r)" \
	-meta "load_start=$LOAD_START" -meta "load_end=$LOAD_END" -meta "rounds=$ROUNDS" -meta "bulk_mb=$BULK_MB" \
	-meta "duration=$DURATION" -meta "workers=$WORKERS" -meta "size=$SIZE" -meta "permit=$PERMIT"
echo
if [[ -s $WORK/floor.txt ]]; then
	echo "milagro-cold: each connection is a full TCP + mpinkex + DTLS-PSK + yamux handshake by bench/cmd/coldconn"
	echo "  (the client sidecar's pool reuses sessions), against the milagro server process; its client-side CPU is"
	echo "  the whole coldconn process (it has no application socket: a client sidecar's accept and copy, ~0.05 ms, are"
	echo "  not in it). Floor, process CPU on one thread: BenchmarkFloorServer $(printf '%.0f' "$FLOOR_S") ns + BenchmarkFloorClient $(printf '%.0f' "$FLOOR_C") ns"
	echo "  (library floor + BenchmarkFloorEncode $(printf '%.0f' "$FLOOR_E") ns, the six compressed point encodings,"
	echo "  + psk BenchmarkFloorDTLS $(printf '%.0f' "$FLOOR_D") ns: pion's DTLS-PSK handshake and yamux setup alone, both sides)."
fi
for s in "${SKIPPED[@]}"; do echo "skipped: $s"; done
for f in "${FAILED[@]}"; do echo "failed: $f"; done
chmod a+r "$OUT"/*"$STAMP"* # the work folder's umask is for its secrets, not for the results
echo "results: $RESULTS (per round: $OUT/results-$STAMP-rounds.csv)"
if [[ -n ${PROF:-} ]]; then
	echo "profile of the sidecars under bulk: $PROF"
	sed -n '/^category/,/^total/p' "$PROF"
fi
if [[ -s $RTT_OUT ]]; then echo; cat "$RTT_OUT"; fi
echo "run time: ${ELAPSED}s"
