#!/usr/bin/env bash
# The reconnect storm: N simulated agents (fleet-loadgen, with the agent's jittered exponential
# backoff) attached to a coordinator that is then killed with SIGKILL and started again on the
# same ports. Prints the time from the restart until every agent is online again, and how many
# connection attempts failed meanwhile.
#
#   bench/coordinator-load/reconnect.sh [N]        default 10000
#   HISTORY=600 bench/coordinator-load/reconnect.sh 10000   (kill after 600 s of reports, so the
#                                                    restarted coordinator has that history to load)
set -euo pipefail
N=${1:-10000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
[ -n "${NOBUILD:-}" ] || (cd "$ROOT" && cargo build --release --bins -q)
BIN=$ROOT/target/release
ulimit -n $((N + 4096)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"  # a socket per agent on each side
WORK=$(mktemp -d)
cleanup() {
  [ -n "${COORD:-}" ] && kill "$COORD" 2>/dev/null || true
  [ -n "${LG:-}" ] && kill "$LG" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GRPC=$(port); HTTP=$(port)
"$BIN/fleetctl" certs init --dir "$WORK/pki" >/dev/null
"$BIN/fleetctl" certs issue coordinator coordinator --dir "$WORK/pki" >/dev/null
cat > "$WORK/coordinator.toml" <<EOF2
data_dir = "$WORK/data"
[grpc]
listen = "127.0.0.1:$GRPC"
[http]
listen = "127.0.0.1:$HTTP"
[agents]
offline_after = "15s"
max_connections = 200000
[tls]
ca = "$WORK/pki/ca.pem"
cert = "$WORK/pki/coordinator.pem"
key = "$WORK/pki/coordinator-key.pem"
EOF2
start() {
  RUST_LOG=warn "$BIN/fleet-coordinator" run --config "$WORK/coordinator.toml" 2>>"$WORK/coordinator.log" &
  COORD=$!
  for _ in $(seq 400); do curl -sf "http://127.0.0.1:$HTTP/health/live" >/dev/null && return; sleep 0.05; done
}
online() { curl -s "http://127.0.0.1:$HTTP/metrics" | awk '/^fleet_coordinator_hosts\{status="online"\}/ { print int($2) }'; }
start
HISTORY=${HISTORY:-0}
"$BIN/fleet-loadgen" --addr "https://127.0.0.1:$GRPC" --pki "$WORK/pki" --agents "$N" --report-interval 5s --duration "$((HISTORY + 600))s" \
  > "$WORK/loadgen.json" 2> "$WORK/loadgen.log" &
LG=$!
for _ in $(seq 1200); do [ "$(online)" = "$N" ] && break; sleep 0.5; done
[ "$(online)" = "$N" ] || { echo "not all $N agents came online" >&2; exit 1; }
sleep "$HISTORY"
held=$(curl -s "http://127.0.0.1:$HTTP/metrics" | awk '/^fleet_coordinator_history_reports / { print int($2) }')
kill -9 "$COORD"; wait "$COORD" 2>/dev/null || true
t0=$(date +%s.%N)
start
for _ in $(seq 2400); do [ "$(online)" = "$N" ] && break; sleep 0.25; done
t1=$(date +%s.%N)
final=$(online)
# The history is read back in the background: how long until it is complete.
history_ok() {
  curl -s "http://127.0.0.1:$HTTP/health" |
    python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)["parts"]["history"]["status"] != "ok")' 2>/dev/null
}
for _ in $(seq 2400); do history_ok && break; sleep 0.25; done
t2=$(date +%s.%N)
echo "| agents | reports held at the kill | all online again after a coordinator kill -9 and restart | online at the end | history read back after |"
echo "|---|---|---|---|---|"
awk -v n="$N" -v h="$held" -v a="$t0" -v b="$t1" -v f="$final" -v c="$t2" 'BEGIN { printf "| %d | %d | %.1f s | %d | %.1f s |\n", n, h, b - a, f, c - a }'
tail -n 2 "$WORK/loadgen.log"
