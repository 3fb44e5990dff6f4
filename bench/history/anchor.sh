#!/usr/bin/env bash
# fleet's history beside Prometheus' TSDB, on the same samples in the same run: N simulated
# hosts (fleet-loadgen's reports, every 5 s) for MINUTES go into fleet's series store and, as
# OpenMetrics with their timestamps, through Prometheus' own `promtool tsdb
# create-blocks-from openmetrics` (Debian's prometheus package). Prints one Markdown row: the
# samples, each store's bytes and bytes a sample, and the ratio.
#
#   bench/history/anchor.sh [HOSTS] [MINUTES]        defaults 200 and 60
#
# Bytes a sample do not depend on the number of hosts (each host's series are alike); the
# OpenMetrics text of 10,000 hosts' hour would be about 40 GB, hence the smaller default.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HOSTS=${1:-200}
MINUTES=${2:-60}
if ! command -v promtool >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
line=$(cd "$ROOT" && cargo bench -q -p fleet-loadgen --bench anchor -- "$HOSTS" "$MINUTES" 5 "$OUT")
eval "$line"
promtool tsdb create-blocks-from openmetrics "$OUT/samples.om" "$OUT/prometheus" >"$OUT/promtool.log" 2>&1 \
  || { cat "$OUT/promtool.log" >&2; exit 1; }
prom_bytes=$(du -sb "$OUT/prometheus" | cut -f1)
prom_samples=$(python3 - "$OUT/prometheus" <<'PY'
import glob, json, sys
print(sum(json.load(open(p))["stats"]["numSamples"] for p in glob.glob(sys.argv[1] + "/*/meta.json")))
PY
)
[ "$prom_samples" = "$samples" ] || echo "warning: promtool stored $prom_samples samples, fleet $samples" >&2
echo "| hosts | minutes | series | samples | fleet bytes | fleet bytes/sample | Prometheus bytes | Prometheus bytes/sample | fleet / Prometheus |"
echo "|---|---|---|---|---|---|---|---|---|"
python3 - "$hosts" "$minutes" "$series" "$samples" "$fleet_bytes" "$prom_bytes" "$prom_samples" <<'PY'
import sys
h, m, series, samples, fb, pb, ps = sys.argv[1:]
samples, fb, pb, ps = int(samples), int(fb), int(pb), int(ps)
f, p = fb / samples, pb / ps
print(f"| {h} | {m} | {series} | {samples} | {fb / 2**20:.1f} MiB | {f:.2f} | {pb / 2**20:.1f} MiB | {p:.2f} | {f / p:.2f} |")
PY
