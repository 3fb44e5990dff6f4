#!/usr/bin/env bash
# Runs every test of fleet: the unit tests and the end-to-end tests, which start the real
# binaries beside a real promtool and Alertmanager (Debian packages prometheus and
# prometheus-alertmanager; curl for the README walkthrough; faketime for an agent whose clock is
# off; etcd-server for several coordinators). Two tests mount a small tmpfs to fill a disk,
# which needs root. When those are missing it installs them with apt-get if it runs as root on
# Debian, and otherwise says what to install. Extra arguments go to `cargo test` (for example
# `scripts/test.sh -p fleet-rules`).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/bin/prometheus-alertmanager ] || missing+=(prometheus-alertmanager)
command -v curl >/dev/null 2>&1 || missing+=(curl)   # the README walkthrough's curl lines
[ -x /usr/bin/faketime ] || missing+=(faketime)        # an agent whose clock is off
[ -x /usr/bin/etcd ] || missing+=(etcd-server)          # several coordinators (tests/ha.rs)

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

# Debian 12's promtool (2.42) has no --http.config.file, which the test of the HTTP port's
# credentials uses as operators do: take the promtool package of Debian 13 (a static Go
# binary) into target/test-tools with a private apt state, leaving the system's sources alone.
tools="$PWD/target/test-tools"
http_config_flag() { "$1" query instant --help 2>&1 | grep -q -- '--http.config.file'; }
if [ -z "${FLEET_PROMTOOL:-}" ]; then
  if http_config_flag promtool; then
    FLEET_PROMTOOL="$(command -v promtool)"
  elif [ -x "$tools/bin/promtool" ] && http_config_flag "$tools/bin/promtool"; then
    FLEET_PROMTOOL="$tools/bin/promtool"
  elif command -v apt-get >/dev/null 2>&1; then
    echo "fetching a promtool with --http.config.file (Debian 13's) into $tools" >&2
    apt_dir="$tools/apt"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$tools/bin"
    echo "deb http://deb.debian.org/debian trixie main" > "$apt_dir/sources.list"
    apt_opts=(-q -o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=-
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::archives=$apt_dir/archives"
      -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
    apt-get "${apt_opts[@]}" update >/dev/null
    (cd "$apt_dir" && apt-get "${apt_opts[@]}" download promtool >/dev/null 2>&1)
    dpkg-deb --fsys-tarfile "$apt_dir"/promtool_*.deb | tar -xO ./usr/bin/promtool > "$tools/bin/promtool"
    chmod 755 "$tools/bin/promtool"
    FLEET_PROMTOOL="$tools/bin/promtool"
  else
    echo "the test of the HTTP port needs a promtool with --http.config.file (Prometheus 2.45 or later):" >&2
    echo "  set FLEET_PROMTOOL=/path/to/promtool and run $0 again" >&2
    exit 2
  fi
fi
export FLEET_PROMTOOL

exec cargo test --workspace "$@"
