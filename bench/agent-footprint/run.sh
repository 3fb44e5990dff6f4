#!/usr/bin/env bash
# What an agent costs its host: fleet-agent (5s report interval, supervising 3 services, its
# session to a local coordinator up) beside prometheus-node-exporter scraped every 5s, on the
# same machine, in the same run. Prints the CPU (share of one core, averaged) and the resident
# memory (average and peak) of each.
#
#   bench/agent-footprint/run.sh [SECONDS]        default 600 (10 minutes)
#
# NOBUILD=1 reuses the release binaries; AGENT_WRAPPER runs the agent under a profiler
# (bench/profile/agent-callgrind.sh uses it).
set -euo pipefail

SECONDS_TOTAL=${1:-600}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
if ! command -v prometheus-node-exporter >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-node-exporter >/dev/null
fi
[ -n "${NOBUILD:-}" ] || (cd "$ROOT" && cargo build --release --bins -q)
BIN=$ROOT/target/release
WORK=$(mktemp -d)
cleanup() {
  for p in ${PIDS:-}; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

"$BIN/fleetctl" certs init --dir "$WORK/pki" >/dev/null
"$BIN/fleetctl" certs issue coordinator coordinator --dir "$WORK/pki" >/dev/null
"$BIN/fleetctl" certs issue agent bench --dir "$WORK/pki" >/dev/null
cat > "$WORK/coordinator.toml" <<EOF
data_dir = "$WORK/coordinator"
[grpc]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[tls]
ca = "$WORK/pki/ca.pem"
cert = "$WORK/pki/coordinator.pem"
key = "$WORK/pki/coordinator-key.pem"
EOF
RUST_LOG=warn "$BIN/fleet-coordinator" run --config "$WORK/coordinator.toml" 2>"$WORK/coordinator.log" &
PIDS="$!"
for _ in $(seq 200); do [ -f "$WORK/coordinator/coordinator.addrs.json" ] && break; sleep 0.05; done
GRPC=$(sed -E 's/.*"grpc":"([^"]+)".*/\1/' "$WORK/coordinator/coordinator.addrs.json")
{
  cat <<EOF
name = "bench"
coordinator = "https://$GRPC"
data_dir = "$WORK/agent"
report_interval = "5s"
[tls]
ca = "$WORK/pki/ca.pem"
cert = "$WORK/pki/bench.pem"
key = "$WORK/pki/bench-key.pem"
EOF
  for i in 1 2 3; do
    p=$(port)
    cat <<EOF
[[services]]
name = "web$i"
command = "$BIN/fleetctl"
args = ["demo-server", "--listen", "127.0.0.1:$p", "--heartbeat", "5"]
[services.health]
http = "http://127.0.0.1:$p/health"
interval = "5s"
EOF
  done
} > "$WORK/agent.toml"
RUST_LOG=warn ${AGENT_WRAPPER:-} "$BIN/fleet-agent" run --config "$WORK/agent.toml" 2>"$WORK/agent.log" &
AGENT=$!
NE_PORT=$(port)
prometheus-node-exporter --web.listen-address="127.0.0.1:$NE_PORT" >"$WORK/node-exporter.log" 2>&1 &
NE=$!
PIDS="$PIDS $AGENT $NE"
sleep 5
ticks=$(getconf CLK_TCK)
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }
a0=$(cpu "$AGENT"); n0=$(cpu "$NE"); start=$(date +%s)
asum=0; nsum=0; amax=0; nmax=0; samples=0
while [ $(( $(date +%s) - start )) -lt "$SECONDS_TOTAL" ]; do
  curl -s -o /dev/null "http://127.0.0.1:$NE_PORT/metrics"   # the scrape node_exporter would get
  for _ in 1 2 3 4 5; do
    ar=$(rss "$AGENT"); nr=$(rss "$NE")
    asum=$((asum + ar)); nsum=$((nsum + nr)); samples=$((samples + 1))
    [ "$ar" -gt "$amax" ] && amax=$ar
    [ "$nr" -gt "$nmax" ] && nmax=$nr
    sleep 1
  done
done
a1=$(cpu "$AGENT"); n1=$(cpu "$NE"); secs=$(( $(date +%s) - start ))
echo "| process | CPU (% of one core) | RSS average | RSS peak |"
echo "|---|---|---|---|"
awk -v c0="$a0" -v c1="$a1" -v t="$ticks" -v s="$secs" -v sum="$asum" -v n="$samples" -v mx="$amax" \
  'BEGIN { printf "| fleet-agent (3 services, 5s reports) | %.2f | %.1f MiB | %.1f MiB |\n", (c1-c0)/t/s*100, sum/n/1024, mx/1024 }'
awk -v c0="$n0" -v c1="$n1" -v t="$ticks" -v s="$secs" -v sum="$nsum" -v n="$samples" -v mx="$nmax" \
  'BEGIN { printf "| prometheus-node-exporter (scraped every 5s) | %.2f | %.1f MiB | %.1f MiB |\n", (c1-c0)/t/s*100, sum/n/1024, mx/1024 }'
echo
echo "$secs s on $(nproc) cores, $(uname -r); $(prometheus-node-exporter --version 2>&1 | head -1); fleet $("$BIN/fleet-agent" --version | cut -d' ' -f2)"
