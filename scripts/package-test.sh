#!/usr/bin/env bash
# Builds the Debian packages (fleet-coordinator, fleet-agent, fleetctl) with cargo deb, installs
# them with dpkg -i on this machine and walks docs/install.md's "Two machines in a handful of
# commands" on it: the PKI, check-config of the installed example configs, the coordinator as
# the fleet user, a join token, `fleet-agent enroll`, the agent online. Everything it installed
# is purged at the end, whatever happened.
#
# Needs root on Debian or Ubuntu, and refuses to run where fleet is already installed or
# /etc/fleet exists (it would replace a real installation). .ci/run calls it with
# FLEET_DEB_PROFILE=package-test (the release profile, less optimised: quicker to build); the default is
# the release build operators install.
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${FLEET_DEB_PROFILE:-release}"
die() { echo "package-test: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "needs root (it installs the packages with dpkg -i); run it in a throwaway machine or container"
command -v dpkg >/dev/null || die "needs dpkg (Debian or Ubuntu)"
for p in fleet-coordinator fleet-agent fleetctl; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "installed"; then
    die "$p is installed on this machine; this test would replace it (dpkg --purge $p first, or use another machine)"
  fi
done
[ ! -e /etc/fleet ] || die "/etc/fleet exists; this test would replace it (move it away, or use another machine)"

if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb" >&2
  cargo install cargo-deb --version '^3.8' --locked
fi
missing=()
for cmd in adduser:adduser runuser:util-linux python3:python3 dpkg-shlibdeps:dpkg-dev; do
  command -v "${cmd%%:*}" >/dev/null || missing+=("${cmd##*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

out=target/debian
rm -f "$out"/fleet*.deb
# One build of the three binaries (built one package at a time, cargo would unify features
# differently and compile the shared crates three times), then the packages from it.
cargo build --profile "$profile" -p fleet-coordinator -p fleet-agent -p fleetctl --bins
for p in fleet-coordinator fleet-agent fleetctl; do
  cargo deb -p "$p" --profile "$profile" --no-build --fast -o "$out/" >/dev/null
done
debs=("$out"/fleet-coordinator_*.deb "$out"/fleet-agent_*.deb "$out"/fleetctl_*.deb)
for d in "${debs[@]}"; do [ -f "$d" ] || die "cargo deb made no $d"; done
echo "built: ${debs[*]}"

work="$(mktemp -d)"
pids=()
cleanup() {
  status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" != 0 ]; then
    for log in "$work"/*.log; do [ -f "$log" ] && { echo "---- $log"; tail -n 30 "$log"; }; done
  fi
  dpkg --purge fleet-coordinator fleet-agent fleetctl >/dev/null 2>&1 || true
  rm -rf /etc/fleet /var/lib/fleet-coordinator /var/lib/fleet-agent "$work"
  if getent passwd fleet >/dev/null; then deluser --system fleet >/dev/null 2>&1 || true; fi
  if getent group fleet >/dev/null; then delgroup --system fleet >/dev/null 2>&1 || true; fi
  exit "$status"
}
trap cleanup EXIT

fail() { echo "package-test: FAILED: $*" >&2; exit 1; }
# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# What the packages hold: binaries, units, conffiles.
contents() { dpkg-deb -c "$1" | awk '{print $NF}' | sed 's|^\./|/|'; }
conffiles() { dpkg-deb --ctrl-tarfile "$1" | tar -xO ./conffiles; }
expect_file() { grep -qx "$2" <(contents "$1") || fail "$1 does not hold $2"; }
expect_conffile() { grep -qx "$2" <(conffiles "$1") || fail "$1 does not mark $2 as a conffile"; }
expect_file "${debs[0]}" /usr/bin/fleet-coordinator
expect_file "${debs[0]}" /usr/lib/systemd/system/fleet-coordinator.service
expect_file "${debs[0]}" /etc/fleet/coordinator.toml
expect_file "${debs[0]}" /etc/fleet/rules/fleet.rules.yml
expect_conffile "${debs[0]}" /etc/fleet/coordinator.toml
expect_conffile "${debs[0]}" /etc/fleet/rules/fleet.rules.yml
expect_file "${debs[1]}" /usr/bin/fleet-agent
expect_file "${debs[1]}" /usr/lib/systemd/system/fleet-agent.service
expect_file "${debs[1]}" /etc/fleet/agent.toml
expect_conffile "${debs[1]}" /etc/fleet/agent.toml
expect_file "${debs[2]}" /usr/bin/fleetctl
echo "contents: binaries, units and conffiles are where they belong"

dpkg -i "${debs[@]}" > "$work/dpkg.log" 2>&1 || fail "dpkg -i: $(cat "$work/dpkg.log")"
getent passwd fleet >/dev/null || fail "the fleet user was not made"
[ "$(stat -c %U:%a /var/lib/fleet-coordinator)" = fleet:700 ] || fail "/var/lib/fleet-coordinator is $(stat -c %U:%a /var/lib/fleet-coordinator)"
for f in /etc/fleet/coordinator.toml:root:fleet:640 /etc/fleet/agent.toml:root:root:640 /etc/fleet/pki:root:fleet:750; do
  [ "$(stat -c %U:%G:%a "${f%%:*}")" = "${f#*:}" ] || fail "${f%%:*} is $(stat -c %U:%G:%a "${f%%:*}"), not ${f#*:}"
done
echo "installed: $(dpkg-query -W -f='${Package} ${Version}, ' fleet-coordinator fleet-agent fleetctl)"

if command -v systemd-analyze >/dev/null; then
  # --man=no: the units' Documentation= is a file, not a man page.
  systemd-analyze verify --man=no /usr/lib/systemd/system/fleet-coordinator.service /usr/lib/systemd/system/fleet-agent.service \
    > "$work/verify.log" 2>&1 || fail "systemd-analyze verify: $(cat "$work/verify.log")"
  echo "systemd-analyze verify: both units pass"
fi

# The quickstart, on this machine.
fleetctl certs init --dir /etc/fleet/pki >/dev/null
fleetctl certs issue coordinator coordinator --dir /etc/fleet/pki >/dev/null
fleetctl certs issue operator alice --dir /etc/fleet/pki >/dev/null
chgrp fleet /etc/fleet/pki/coordinator-key.pem /etc/fleet/pki/ca-key.pem
chmod 0640 /etc/fleet/pki/coordinator-key.pem /etc/fleet/pki/ca-key.pem

# The example configs as installed.
fleet-coordinator check-config > "$work/check.log" 2>&1 || fail "check-config of the installed coordinator.toml: $(cat "$work/check.log")"
echo "fleet-coordinator check-config: the installed example config passes"

# What the quickstart asks to change: enrollment and an admin; and free ports for this test.
conf=/etc/fleet/coordinator.toml
sed -i -e 's|^# \[enrollment\]|[enrollment]|' -e 's|^# ca_key = |ca_key = |' \
  -e 's|^# \[access.operators\]|[access.operators]|' -e 's|^# alice = "admin"|alice = "admin"|' \
  -e 's|^listen = "0.0.0.0:7443"|listen = "127.0.0.1:0"|' -e 's|^listen = "127.0.0.1:9090"|listen = "127.0.0.1:0"|' "$conf"
grep -q '^\[enrollment\]' "$conf" && grep -q '^alice = "admin"' "$conf" || fail "the quickstart's edits do not apply to $conf"
fleet-coordinator check-config > "$work/check.log" 2>&1 || fail "check-config after the quickstart's edits: $(cat "$work/check.log")"

runuser -u fleet -- fleet-coordinator run > "$work/coordinator.log" 2>&1 &
pids+=($!)
wait_for 30 grep -q "serving grpc=" "$work/coordinator.log" || fail "the coordinator did not start"
grpc="$(sed -n 's/.*serving grpc=\([0-9.:]*\).*/\1/p' "$work/coordinator.log" | head -n1)"
export FLEET_ADDR="https://localhost:${grpc##*:}" FLEET_CA=/etc/fleet/pki/ca.pem \
  FLEET_CERT=/etc/fleet/pki/alice.pem FLEET_KEY=/etc/fleet/pki/alice-key.pem
fleetctl whoami | grep -q admin || fail "alice is not an admin: $(fleetctl whoami 2>&1)"

command="$(fleetctl -o json tokens create --name main-pc | python3 -c 'import json,sys; print(json.load(sys.stdin)["command"])')"
case "$command" in "fleet-agent enroll "*) ;; *) fail "tokens create printed \"$command\"";; esac
sed -i "s|^coordinator = .*|coordinator = \"$FLEET_ADDR\"|" /etc/fleet/agent.toml
case "$command" in *" --name main-pc") ;; *) fail "the command does not name the host the token is bound to: $command";; esac
$command > "$work/enroll.log" 2>&1 || fail "enroll: $(cat "$work/enroll.log")"
[ "$(stat -c %a /var/lib/fleet-agent/identity/agent.pem)" = 600 ] || fail "the agent's key is not 0600"
sed -i '0,/^# name = .*/s//name = "main-pc"/' /etc/fleet/agent.toml
fleet-agent check-config > "$work/check.log" 2>&1 || fail "check-config of the installed agent.toml: $(cat "$work/check.log")"
echo "fleet-agent enroll and check-config: pass"

fleet-agent run > "$work/agent.log" 2>&1 &
pids+=($!)
online() { fleetctl -o json hosts | python3 -c 'import json,sys; sys.exit(0 if any(h["name"]=="main-pc" and h["status"]=="online" for h in json.load(sys.stdin)) else 1)'; }
wait_for 30 online || fail "main-pc did not come online: $(fleetctl hosts 2>&1)"
echo "main-pc enrolled with a join token and is online"
echo "package-test: ok"
