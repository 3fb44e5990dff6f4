#!/usr/bin/env bash
# How far one coordinator goes: N simulated agents (fleet-loadgen: real mutual-TLS sessions,
# reports shaped like an agent with 5 services) against a release-built fleet-coordinator on
# this machine. The load generator and the coordinator share the machine's cores.
#
#   bench/coordinator-load/run.sh [N...]              default: 1000 5000 10000
#   INTERVAL=5s DURATION=60s WARMUP=10s bench/coordinator-load/run.sh 2000   (WARMUP: leave the first
#   seconds after the connection ramp out of the latency percentiles)
#   NOBUILD=1 reuses the release binaries. history.max_series is raised above its default
#   (1,000,000) beyond 16,000 agents, as an operator of such a fleet would. Every minute of the
#   run, the coordinator's RSS and the history's series and bytes on disk are appended to
#   $OUT/memory-N.tsv. The coordinator evaluates the default rules
#   (deploy/rules/fleet.rules.yml) every 15 s, as a production one would; RULES= (empty)
#   leaves them out.
#
# For each N it prints one Markdown row: coordinator CPU (cores, averaged over the run) and
# peak RSS, ack latency p50/p99, reports sent/acked, errors, the store's write rate, the time
# and size of a /metrics scrape, and the time until every host is marked offline after all
# agents disconnect at once. Raw outputs go to $OUT (default bench/coordinator-load/results/).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/bench/coordinator-load/results}
INTERVAL=${INTERVAL:-5s}
RULES=${RULES-$ROOT/deploy/rules/fleet.rules.yml}
DURATION=${DURATION:-60s}
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(1000 5000 10000)
mkdir -p "$OUT"
[ -n "${NOBUILD:-}" ] || (cd "$ROOT" && cargo build --release --bins -q)
BIN=$ROOT/target/release
# Every agent is one socket on each side: raise the open-files limit to fit the largest N
# (root may raise the hard limit too).
most=$(printf '%s\n' "${SIZES[@]}" | sort -n | tail -n 1)
ulimit -n $((most + 4096)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge $((most + 4096)) ] || echo "warning: open files limited to $(ulimit -n); $most agents need $((most + 4096))" >&2

WORK=$(mktemp -d)
cleanup() {
  [ -n "${COORD:-}" ] && kill "$COORD" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN/fleetctl" certs init --dir "$WORK/pki" >/dev/null
"$BIN/fleetctl" certs issue coordinator coordinator --dir "$WORK/pki" >/dev/null

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_kib() { awk '/VmHWM/ { print $2 }' "/proc/$1/status"; }

echo "| agents | interval | coordinator CPU (cores) | peak RSS | ack p50 ms | ack p99 ms | sent | acked | errors | store writes/s | /metrics scrape | /metrics size | all offline after disconnect |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for N in "${SIZES[@]}"; do
  DATA=$WORK/data-$N
  cat > "$WORK/coordinator.toml" <<EOF
data_dir = "$DATA"
[grpc]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[history]
max_series = $(( N * 60 > 1000000 ? N * 60 : 1000000 ))
[agents]
offline_after = "15s"
max_connections = 200000
[tls]
ca = "$WORK/pki/ca.pem"
cert = "$WORK/pki/coordinator.pem"
key = "$WORK/pki/coordinator-key.pem"
EOF
  if [ -n "$RULES" ]; then
    printf '[alerting]\nrule_files = ["%s"]\nevaluation_interval = "15s"\n' "$RULES" >> "$WORK/coordinator.toml"
  fi
  RUST_LOG=warn "$BIN/fleet-coordinator" run --config "$WORK/coordinator.toml" 2>"$OUT/coordinator-$N.log" &
  COORD=$!
  for _ in $(seq 200); do [ -f "$DATA/coordinator.addrs.json" ] && break; sleep 0.05; done
  GRPC=$(sed -E 's/.*"grpc":"([^"]+)".*/\1/' "$DATA/coordinator.addrs.json")
  HTTP=$(sed -E 's/.*"http":"([^"]+)".*/\1/' "$DATA/coordinator.addrs.json")
  t0=$(cpu_ticks "$COORD"); s0=$(date +%s.%N)
  "$BIN/fleet-loadgen" --addr "https://$GRPC" --pki "$WORK/pki" --agents "$N" \
    --report-interval "$INTERVAL" --duration "$DURATION" --warmup "${WARMUP:-0s}" > "$OUT/loadgen-$N.json" 2> "$OUT/loadgen-$N.log" &
  LG=$!
  (
    t=0
    echo -e "minute\trss_mib\thistory_series\thistory_disk_mib" > "$OUT/memory-$N.tsv"
    while kill -0 "$LG" 2>/dev/null; do
      m=$(curl -s "http://$HTTP/metrics")
      series=$(awk '/^fleet_coordinator_history_series / { print $2 }' <<<"$m")
      disk=$(awk '/^fleet_coordinator_history_disk_bytes / { printf "%.0f", $2 / 1048576 }' <<<"$m")
      echo -e "$t\t$(( $(awk '/VmRSS/ { print $2 }' "/proc/$COORD/status") / 1024 ))\t$series\t$disk" >> "$OUT/memory-$N.tsv"
      t=$((t + 1))
      sleep 60
    done
  ) &
  MEM=$!
  # Scrape /metrics once the load is on (the load generator's progress line shows every agent
  # connected, or a minute has passed; then one more interval), and time it.
  for _ in $(seq 120); do
    kill -0 "$LG" 2>/dev/null || break
    connected=$(tail -n 1 "$OUT/loadgen-$N.log" | awk '{ print $3 }')
    [ "${connected:-0}" -ge "$N" ] 2>/dev/null && break
    sleep 0.5
  done
  sleep "$(( ${INTERVAL%s} + 5 ))"
  scrape=$(curl -s -o "$OUT/metrics-$N.txt" -w '%{time_total}' "http://$HTTP/metrics")
  size=$(wc -c < "$OUT/metrics-$N.txt")
  stored0=$(awk '/^fleet_coordinator_reports_stored_total/ { print $2 }' "$OUT/metrics-$N.txt")
  w0=$(date +%s.%N)
  wait "$LG"
  kill "$MEM" 2>/dev/null || true
  t1=$(cpu_ticks "$COORD"); s1=$(date +%s.%N)
  # The load generator has just closed every session: time until every host is offline.
  d0=$(date +%s.%N)
  for _ in $(seq 600); do
    online=$(curl -s "http://$HTTP/metrics" | awk '/^fleet_coordinator_hosts\{status="online"\}/ { print $2 }')
    [ "${online%.*}" = "0" ] && break
    sleep 0.1
  done
  d1=$(date +%s.%N)
  curl -s "http://$HTTP/metrics" > "$OUT/metrics-$N-end.txt"
  stored1=$(awk '/^fleet_coordinator_reports_stored_total/ { print $2 }' "$OUT/metrics-$N-end.txt")
  rss=$(rss_kib "$COORD")
  kill "$COORD"; wait "$COORD" 2>/dev/null || true; unset COORD
  python3 - "$N" "$INTERVAL" "$t0" "$t1" "$s0" "$s1" "$ticks" "$rss" "$scrape" "$size" "$stored0" "$stored1" "$w0" "$d0" "$d1" "$OUT/loadgen-$N.json" <<'PY'
import json, sys
n, interval, t0, t1, s0, s1, ticks, rss, scrape, size, st0, st1, w0, d0, d1, lg = sys.argv[1:]
r = json.load(open(lg))
cores = (float(t1) - float(t0)) / float(ticks) / (float(s1) - float(s0))
writes = (float(st1) - float(st0)) / (float(d0) - float(w0))
print(f"| {n} | {interval} | {cores:.2f} | {int(rss)/1024:.0f} MiB | {r['ack_p50_ms']:.1f} | {r['ack_p99_ms']:.1f} | {r['reports_sent']} | {r['reports_acked']} | {r['errors']} | {writes:.0f} | {float(scrape)*1000:.0f} ms | {int(size)/1024:.0f} KiB | {float(d1)-float(d0):.1f} s |")
PY
done
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2/1048576 }' /proc/meminfo), $(uname -r); fleet $("$BIN/fleet-coordinator" --version | cut -d' ' -f2)"
