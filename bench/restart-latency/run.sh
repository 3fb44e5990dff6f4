#!/usr/bin/env bash
# Crash-to-restart latency of a supervised process: fleet-agent against supervisord, same
# crashing program, same machine, same run.
#
#   bench/restart-latency/run.sh [TRIALS]        (default 50; needs root for apt-get once)
#
# Each trial starts from a clean state (an operator restart, which also resets fleet's
# backoff), lets the program run 300 ms, kills it with SIGKILL, and measures the time from
# just before the kill to the moment the new process wrote its first line. The program is
# `crasher.sh`: it appends a nanosecond timestamp to a file and sleeps. Both supervisors run it
# with restart-on-crash and no minimum run time (fleet: restart = "always", start_secs = "0s";
# supervisord: autorestart=true, startsecs=0). Results go to stdout as a Markdown table, with
# the raw samples in $OUT (default bench/restart-latency/results/).
set -euo pipefail

TRIALS=${1:-50}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/bench/restart-latency/results}
mkdir -p "$OUT"

if ! command -v supervisord >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq supervisor >/dev/null
fi
(cd "$ROOT" && cargo build --release --bins -q)
BIN=$ROOT/target/release

WORK=$(mktemp -d)
cleanup() {
  [ -n "${SUPERVISORD_PID:-}" ] && kill "$SUPERVISORD_PID" 2>/dev/null || true
  [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null || true
  [ -n "${COORD_PID:-}" ] && kill "$COORD_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/crasher.sh" <<'EOF'
#!/bin/sh
date +%s%N >> "$1"
exec sleep 100000
EOF
chmod +x "$WORK/crasher.sh"

now_ns() { local t=$EPOCHREALTIME; echo "${t/./}000"; }

# measure NAME PIDCMD RESTARTCMD STARTSFILE → one latency in microseconds per trial
measure() {
  local name=$1 pidcmd=$2 restartcmd=$3 starts=$4 out=$OUT/$1.us
  : > "$out"
  for _ in $(seq "$TRIALS"); do
    eval "$restartcmd" >/dev/null
    sleep 0.3
    local pid n t0 t1
    pid=$(eval "$pidcmd")
    n=$(wc -l < "$starts")
    t0=$(now_ns)
    kill -9 "$pid"
    for _ in $(seq 20000); do
      [ "$(wc -l < "$starts")" -gt "$n" ] && break
      sleep 0.001
    done
    t1=$(tail -n 1 "$starts")
    echo $(( (t1 - t0) / 1000 )) >> "$out"
  done
}

stats() {
  sort -n "$OUT/$1.us" | awk -v name="$1" '{ a[NR] = $1 } END {
    p50 = a[int((NR + 1) / 2)]; p95 = a[int(NR * 0.95 + 0.999)];
    printf "| %s | %d | %.1f | %.1f | %.1f | %.1f |\n", name, NR, a[1] / 1000, p50 / 1000, p95 / 1000, a[NR] / 1000 }'
}

# --- fleet -----------------------------------------------------------------------------
PKI=$WORK/pki
"$BIN/fleetctl" certs init --dir "$PKI" >/dev/null
"$BIN/fleetctl" certs issue coordinator coordinator --dir "$PKI" >/dev/null
"$BIN/fleetctl" certs issue agent bench --dir "$PKI" >/dev/null
"$BIN/fleetctl" certs issue operator ops --dir "$PKI" >/dev/null
cat > "$WORK/coordinator.toml" <<EOF
data_dir = "$WORK/coordinator"
[grpc]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[tls]
ca = "$PKI/ca.pem"
cert = "$PKI/coordinator.pem"
key = "$PKI/coordinator-key.pem"
EOF
"$BIN/fleet-coordinator" run --config "$WORK/coordinator.toml" 2>"$WORK/coordinator.log" &
COORD_PID=$!
for _ in $(seq 200); do [ -f "$WORK/coordinator/coordinator.addrs.json" ] && break; sleep 0.05; done
PORT=$(sed -E 's/.*"grpc":"[^:]*:([0-9]+)".*/\1/' "$WORK/coordinator/coordinator.addrs.json")
cat > "$WORK/agent.toml" <<EOF
name = "bench"
coordinator = "https://127.0.0.1:$PORT"
data_dir = "$WORK/agent"
[tls]
ca = "$PKI/ca.pem"
cert = "$PKI/bench.pem"
key = "$PKI/bench-key.pem"
[[services]]
name = "crasher"
command = "$WORK/crasher.sh"
args = ["$WORK/fleet.starts"]
restart = "always"
start_secs = "0s"
EOF
touch "$WORK/fleet.starts"
"$BIN/fleet-agent" run --config "$WORK/agent.toml" 2>"$WORK/agent.log" &
AGENT_PID=$!
export FLEET_ADDR=https://127.0.0.1:$PORT FLEET_CA=$PKI/ca.pem FLEET_CERT=$PKI/ops.pem FLEET_KEY=$PKI/ops-key.pem
for _ in $(seq 200); do "$BIN/fleetctl" services 2>/dev/null | grep -q running && break; sleep 0.05; done
measure fleet-agent "cut -d' ' -f1 $WORK/agent/run/crasher.pid" "$BIN/fleetctl restart bench crasher" "$WORK/fleet.starts"
kill "$AGENT_PID" "$COORD_PID"; wait "$AGENT_PID" "$COORD_PID" 2>/dev/null || true
unset AGENT_PID COORD_PID

# --- supervisord ---------------------------------------------------------------------------
cat > "$WORK/supervisord.conf" <<EOF
[unix_http_server]
file = $WORK/supervisor.sock
[supervisord]
nodaemon = true
logfile = $WORK/supervisord.log
pidfile = $WORK/supervisord.pid
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl = unix://$WORK/supervisor.sock
[program:crasher]
command = $WORK/crasher.sh $WORK/supervisord.starts
autorestart = true
startsecs = 0
startretries = 1000
EOF
touch "$WORK/supervisord.starts"
supervisord -c "$WORK/supervisord.conf" > "$WORK/supervisord.out" 2>&1 &
SUPERVISORD_PID=$!
SCTL="supervisorctl -c $WORK/supervisord.conf"
for _ in $(seq 200); do $SCTL status crasher 2>/dev/null | grep -q RUNNING && break; sleep 0.05; done
measure supervisord "$SCTL pid crasher" "$SCTL restart crasher" "$WORK/supervisord.starts"

echo "| supervisor | crashes | min ms | median ms | p95 ms | max ms |"
echo "|---|---|---|---|---|---|"
stats fleet-agent
stats supervisord
echo
echo "machine: $(nproc) cores, $(uname -r); supervisord $(supervisord --version); fleet $("$BIN/fleet-agent" --version | cut -d' ' -f2)"
