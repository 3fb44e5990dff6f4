#!/usr/bin/env bash
# Where an agent's instructions go: fleet-agent under valgrind's callgrind for SECONDS (default
# 40) in the agent-footprint set-up (5 s reports, 3 supervised services, a local coordinator),
# then the top functions by instructions. Instruction counts do not depend on what else the
# machine is doing.
#
#   bench/profile/agent-callgrind.sh [SECONDS]
set -euo pipefail
SECS=${1:-40}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
command -v valgrind >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
OUTFILE=$(mktemp)
# The footprint script's own table is meaningless under valgrind; only the profile is kept.
AGENT_WRAPPER="valgrind --tool=callgrind --fair-sched=yes --callgrind-out-file=$OUTFILE" \
  "$ROOT/bench/agent-footprint/run.sh" "$SECS" >/dev/null
callgrind_annotate "$OUTFILE" | sed -n '/PROGRAM TOTALS/,$p' | head -30 | cut -c1-200
rm -f "$OUTFILE"
