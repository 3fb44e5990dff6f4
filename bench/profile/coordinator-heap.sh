#!/usr/bin/env bash
# Where a coordinator's heap goes: fleet-coordinator under valgrind's massif with N agents from
# fleet-loadgen (default 500) for DURATION (default 40s), then the allocation sites holding
# more than 2% of the peak heap. Per-agent costs are what grows with N.
#
#   bench/profile/coordinator-heap.sh [N] [DURATION]
set -euo pipefail
N=${1:-500}
DURATION=${2:-40s}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
command -v valgrind >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
[ -n "${NOBUILD:-}" ] || (cd "$ROOT" && cargo build --release --bins -q)
BIN=$ROOT/target/release
WORK=$(mktemp -d)
trap 'pkill -INT -f "massif.*$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$BIN/fleetctl" certs init --dir "$WORK/pki" >/dev/null
"$BIN/fleetctl" certs issue coordinator coordinator --dir "$WORK/pki" >/dev/null
cat > "$WORK/coordinator.toml" <<EOC
data_dir = "$WORK/data"
[grpc]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[agents]
max_connections = 200000
[tls]
ca = "$WORK/pki/ca.pem"
cert = "$WORK/pki/coordinator.pem"
key = "$WORK/pki/coordinator-key.pem"
EOC
RUST_LOG=warn valgrind --tool=massif --depth=40 --threshold=0.5 --massif-out-file="$WORK/massif.out" \
  "$BIN/fleet-coordinator" run --config "$WORK/coordinator.toml" 2>"$WORK/coordinator.log" &
VG=$!
for _ in $(seq 600); do [ -f "$WORK/data/coordinator.addrs.json" ] && break; sleep 0.1; done
GRPC=$(sed -E 's/.*"grpc":"([^"]+)".*/\1/' "$WORK/data/coordinator.addrs.json")
"$BIN/fleet-loadgen" --addr "https://$GRPC" --pki "$WORK/pki" --agents "$N" --report-interval 5s --duration "$DURATION" 2>/dev/null
kill -INT "$VG"; wait "$VG" 2>/dev/null || true
python3 "$ROOT/bench/profile/heap_top.py" "$WORK/massif.out" 0.02 16
