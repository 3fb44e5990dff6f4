# Shared by bench/ha/*.sh: a three-member etcd and three coordinators of cluster "bench" on
# loopback, release binaries, everything under $WORK (removed on exit).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
[ -n "${NOBUILD:-}" ] || (cd "$ROOT" && cargo build --release --bins -q)
BIN=$ROOT/target/release
command -v etcd >/dev/null 2>&1 || { echo "install etcd (Debian: apt-get install etcd-server)" >&2; exit 2; }
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}" ${COORD_PIDS[@]+"${COORD_PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# N distinct free ports (held together while picked, so none comes twice).
ports() { python3 -c 'import socket, sys; ss = [socket.socket() for _ in range(int(sys.argv[1]))]; [s.bind(("127.0.0.1", 0)) for s in ss]; print(" ".join(str(s.getsockname()[1]) for s in ss))' "$1"; }
read -r -a PORTS <<<"$(ports 12)"

"$BIN/fleetctl" certs init --dir "$WORK/pki" >/dev/null
"$BIN/fleetctl" certs issue coordinator coordinator --dir "$WORK/pki" >/dev/null
"$BIN/fleetctl" certs issue operator ops --dir "$WORK/pki" >/dev/null

# etcd: three members.
ETCD_CLIENT=("${PORTS[@]:0:3}"); ETCD_PEER=("${PORTS[@]:3:3}")
INITIAL="etcd0=http://127.0.0.1:${ETCD_PEER[0]},etcd1=http://127.0.0.1:${ETCD_PEER[1]},etcd2=http://127.0.0.1:${ETCD_PEER[2]}"
for i in 0 1 2; do
  etcd --name "etcd$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT[$i]}" --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER[$i]}" \
    --initial-cluster "$INITIAL" --initial-cluster-state new --initial-cluster-token fleet-bench \
    >"$WORK/etcd$i.log" 2>&1 &
  PIDS+=("$!")
done
for i in 0 1 2; do
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:${ETCD_CLIENT[$i]}/health" | grep -q true && break; sleep 0.1; done
done
ETCD_URLS="\"http://127.0.0.1:${ETCD_CLIENT[0]}\", \"http://127.0.0.1:${ETCD_CLIENT[1]}\", \"http://127.0.0.1:${ETCD_CLIENT[2]}\""

# Three coordinators.
GRPC=("${PORTS[@]:6:3}"); HTTP=("${PORTS[@]:9:3}"); COORD_PIDS=()
for i in 0 1 2; do
  cat > "$WORK/coordinator$i.toml" <<EOF
data_dir = "$WORK/coordinator$i"
[grpc]
listen = "127.0.0.1:${GRPC[$i]}"
[http]
listen = "127.0.0.1:${HTTP[$i]}"
[agents]
offline_after = "15s"
max_connections = 200000
[access.operators]
ops = "admin"
[cluster]
name = "bench"
advertise = "127.0.0.1:${GRPC[$i]}"
etcd = [$ETCD_URLS]
lease_ttl = "${LEASE_TTL:-10s}"
[tls]
ca = "$WORK/pki/ca.pem"
cert = "$WORK/pki/coordinator.pem"
key = "$WORK/pki/coordinator-key.pem"
EOF
done
start_coordinator() {
  local i=$1
  RUST_LOG=warn "$BIN/fleet-coordinator" run --config "$WORK/coordinator$i.toml" 2>>"$WORK/coordinator$i.log" &
  COORD_PIDS[$i]=$!
  for _ in $(seq 400); do curl -sf "http://127.0.0.1:${HTTP[$i]}/health/live" >/dev/null && return; sleep 0.05; done
}
# The cluster part of coordinator i's /health: its state ("leader", "follower", ...).
state_of() {
  curl -s --max-time 2 "http://127.0.0.1:${HTTP[$1]}/health" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["parts"]["cluster"]["state"])' 2>/dev/null || echo down
}
leader_index() {
  for i in 0 1 2; do [ "$(state_of "$i")" = leader ] && { echo "$i"; return; }; done
  echo none
}
for i in 0 1 2; do start_coordinator "$i"; done
