#!/usr/bin/env bash
# Failover: a three-member etcd and three coordinators (release builds, on loopback); the
# leader is killed with SIGKILL KILLS times. Each time it prints how long until another
# coordinator leads (its /health says "leader": its lease is live and it holds the leader key,
# so it drives rollouts and sends commands), then starts the killed one again and waits for it
# to rejoin as a follower. Ends with the median and the maximum.
#
#   bench/ha/failover.sh [KILLS]              default 20; LEASE_TTL=10s (the default lease)
#   NOBUILD=1 reuses the release binaries.
source "$(dirname "$0")/common.sh"
KILLS=${1:-20}
for _ in $(seq 300); do [ "$(leader_index)" != none ] && break; sleep 0.1; done
times=()
for k in $(seq "$KILLS"); do
  old=$(leader_index)
  [ "$old" = none ] && { echo "no leader before kill $k" >&2; exit 1; }
  kill -9 "${COORD_PIDS[$old]}"; wait "${COORD_PIDS[$old]}" 2>/dev/null || true
  t0=$(date +%s.%N)
  new=none
  for _ in $(seq 1200); do
    for i in 0 1 2; do
      [ "$i" = "$old" ] && continue
      [ "$(state_of "$i")" = leader ] && { new=$i; break 2; }
    done
    sleep 0.1
  done
  t1=$(date +%s.%N)
  [ "$new" = none ] && { echo "no new leader within 120 s after kill $k" >&2; exit 1; }
  took=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  times+=("$took")
  echo "kill $k: coordinator $old killed, coordinator $new leads after $took s"
  start_coordinator "$old"
  for _ in $(seq 300); do [ "$(state_of "$old")" = follower ] && break; sleep 0.1; done
done
printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END {
  m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
  printf "| kills | lease_ttl | new leader after, median | max |\n|---|---|---|---|\n| %d | %s | %.1f s | %.1f s |\n", NR, ENVIRON["LEASE_TTL"] ? ENVIRON["LEASE_TTL"] : "10s", m, a[NR]
}'
