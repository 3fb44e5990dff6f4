#!/usr/bin/env bash
# What several coordinators cost etcd: a three-member etcd, three coordinators (release
# builds, on loopback) and N simulated agents (fleet-loadgen, 5 s reports) holding a session to
# every coordinator (one load generator per coordinator, with the same agent names). Once every
# agent is online on every coordinator and a minute has passed, it counts etcd's raft proposals
# and key writes for SECONDS and prints them per minute, with etcd's database size and key count.
#
#   bench/ha/etcd-writes.sh [N] [SECONDS]        defaults 3000 and 600
#   NOBUILD=1 reuses the release binaries.
source "$(dirname "$0")/common.sh"
N=${1:-3000}
SECONDS_TOTAL=${2:-600}
ulimit -n $((6 * N + 4096)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
for _ in $(seq 300); do [ "$(leader_index)" != none ] && break; sleep 0.1; done
RUN=$((SECONDS_TOTAL + 300))
for i in 0 1 2; do
  "$BIN/fleet-loadgen" --addr "https://127.0.0.1:${GRPC[$i]}" --pki "$WORK/pki" --agents "$N" --report-interval 5s \
    --duration "${RUN}s" --ramp 60s > "$WORK/loadgen$i.json" 2> "$WORK/loadgen$i.log" &
  PIDS+=("$!")
done
online() { curl -s "http://127.0.0.1:${HTTP[$1]}/metrics" | awk '/^fleet_coordinator_hosts\{status="online"\}/ { print int($2) }'; }
for _ in $(seq 600); do
  [ "$(online 0)" = "$N" ] && [ "$(online 1)" = "$N" ] && [ "$(online 2)" = "$N" ] && break
  sleep 1
done
for i in 0 1 2; do [ "$(online "$i")" = "$N" ] || { echo "coordinator $i: $(online "$i") of $N agents online" >&2; exit 1; }; done
sleep 60
etcd_metric() {  # sum of a metric family on etcd member 0
  curl -s "http://127.0.0.1:${ETCD_CLIENT[0]}/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%.0f", s }'
}
snap() { echo "$(etcd_metric etcd_server_proposals_committed_total) $(etcd_metric etcd_mvcc_put_total) $(etcd_metric etcd_mvcc_txn_total) $(etcd_metric etcd_mvcc_delete_total)"; }
read -r p0 u0 t0 d0 <<<"$(snap)"
start=$(date +%s)
sleep "$SECONDS_TOTAL"
read -r p1 u1 t1 d1 <<<"$(snap)"
secs=$(( $(date +%s) - start ))
db=$(etcd_metric etcd_mvcc_db_total_size_in_bytes)
keys=$(etcd_metric etcd_debugging_mvcc_keys_total)
sessions=$(for i in 0 1 2; do curl -s "http://127.0.0.1:${HTTP[$i]}/metrics" | awk '/^fleet_coordinator_sessions / { print int($2) }'; done | paste -sd+ | bc)
echo "| agents (sessions) | raft proposals / min | puts / min | txns / min | deletes / min | etcd db size | keys |"
echo "|---|---|---|---|---|---|---|"
awk -v n="$N" -v s="$sessions" -v secs="$secs" -v p="$((p1 - p0))" -v u="$((u1 - u0))" -v t="$((t1 - t0))" -v d="$((d1 - d0))" -v db="$db" -v k="$keys" \
  'BEGIN { m = secs / 60; printf "| %d (%d) | %.1f | %.1f | %.1f | %.1f | %.0f KiB | %d |\n", n, s, p / m, u / m, t / m, d / m, db / 1024, k }'
echo
echo "$secs s of steady state on $(nproc) cores; $(etcd --version | head -1); fleet $("$BIN/fleet-coordinator" --version | cut -d' ' -f2)"
