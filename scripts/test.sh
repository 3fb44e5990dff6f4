#!/usr/bin/env bash
# Runs every test of fleet: the unit tests and the end-to-end tests, which start the real
# binaries beside a real promtool and Alertmanager (Debian packages prometheus and
# prometheus-alertmanager; curl for the README walkthrough; faketime for an agent whose clock is
# off). Two tests mount a small tmpfs to fill a disk, which needs root. When those are missing it installs them with apt-get if it runs
# as root on Debian, and otherwise says what to install. Extra arguments go to `cargo test`
# (for example `scripts/test.sh -p fleet-rules`).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/bin/prometheus-alertmanager ] || missing+=(prometheus-alertmanager)
command -v curl >/dev/null 2>&1 || missing+=(curl)   # the README walkthrough's curl lines
[ -x /usr/bin/faketime ] || missing+=(faketime)        # an agent whose clock is off

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (the tests run promtool and Alertmanager)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "the tests need promtool and Alertmanager; install the Debian packages: ${missing[*]}" >&2
    echo "  sudo apt-get install ${missing[*]}" >&2
    echo "then run $0 again" >&2
    exit 2
  fi
fi

exec cargo test --workspace "$@"
