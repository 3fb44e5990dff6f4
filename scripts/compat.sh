#!/usr/bin/env bash
# Runs fleet against a compatibility corpus kept outside the repository (CI passes one when
# it has it): files that fleet must treat exactly as the real Prometheus tools do.
#
#   scripts/compat.sh DIR
#
# - DIR/rules/*.rules.test.yml: `fleetctl rules test` passes every file, as promtool does.
# - DIR/mixins/*/*.yaml: real monitoring mixins' rule files, each accepted by promtool. fleet
#   loads every one and evaluates every rule over a made-up history (`rules check --eval`), or
#   refuses it naming a construct it does not evaluate; any other refusal (a syntax it
#   misreads, a file it wrongly calls invalid, a rule whose evaluation fails) fails.
# - scripts/compat/<mixin>.alerts.test.yml: fleet's own promtool-format tests of a mixin's
#   alerts, run beside DIR/mixins/<mixin>/alerts.yaml; promtool and fleetctl must pass them.
# - DIR/promqltest/*.test: Prometheus' own PromQL test files. Every float case must pass
#   (`fleetctl rules promqltest`); the native histogram cases are skipped and listed.
#
# Needs `cargo build --bins` first (it runs target/debug/fleetctl) and promtool.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: scripts/compat.sh DIR}
fleetctl=${FLEETCTL:-target/debug/fleetctl}
failures=0

if [ -d "$dir/rules" ]; then
  for t in "$dir"/rules/*.rules.test.yml; do
    if ! out=$("$fleetctl" rules test "$t" 2>&1); then
      echo "FAIL rules: fleetctl rules test $t"; echo "$out"; failures=$((failures + 1))
    fi
    if ! (cd "$(dirname "$t")" && promtool test rules "$(basename "$t")" >/dev/null 2>&1); then
      echo "FAIL rules: promtool test rules $t fails: the corpus is not what this script expects"
      failures=$((failures + 1))
    fi
  done
  echo "rules: $(ls "$dir"/rules/*.rules.test.yml | wc -l) test files run"
fi

if [ -d "$dir/mixins" ]; then
  loaded=0 refused=0
  reasons=$(mktemp)
  trap 'rm -f "$reasons"' EXIT
  while IFS= read -r f; do
    if out=$("$fleetctl" rules check --eval "$f" 2>&1); then
      loaded=$((loaded + 1))
    elif grep -q "is not supported" <<<"$out"; then
      refused=$((refused + 1))
      grep "is not supported" <<<"$out" | sed -E 's/^[^:]*:[0-9]+: //; s/"[^"]*"/"…"/g; s/; the expression is.*//' >>"$reasons"
    else
      echo "FAIL mixins: $f is refused for a reason other than an unsupported construct:"
      echo "$out"
      failures=$((failures + 1))
    fi
  done < <(find "$dir/mixins" -name '*.yaml' | sort)
  echo "mixins: $loaded files loaded and every rule evaluated, $refused refused naming what fleet does not evaluate:"
  sort "$reasons" | uniq -c | sort -rn | sed 's/^/  /'
  # Templates and alert labels against promtool: the alerts fleet fires over a made-up history,
  # with their rendered annotations, written as a promtool test that promtool must pass.
  work=$(mktemp -d)
  files=0 alerts=0
  while IFS= read -r f; do
    t="$work/$(echo "$f" | tr '/' '_').test.yml"
    if ! out=$("$fleetctl" rules check --emit-test "$t" "$f" 2>&1); then
      grep -q "is not supported" <<<"$out" && continue
      echo "FAIL mixins: fleetctl rules check --emit-test $f"; echo "$out"; failures=$((failures + 1)); continue
    fi
    files=$((files + 1)) alerts=$((alerts + $(grep -c 'exp_labels' "$t" || true)))
    if ! out=$(promtool test rules "$t" 2>&1); then
      echo "FAIL mixins: promtool disagrees with fleet's alerts of $f ($t):"; echo "$out" | head -40
      failures=$((failures + 1))
    fi
  done < <(find "$dir/mixins" -name '*.yaml' | sort)
  rm -rf "$work"
  echo "mixins: $alerts alerts of $files files fired with the same labels and annotations in promtool and fleet"
fi

# fleet's own unit tests of mixins' alerts (scripts/compat/<mixin>.alerts.test.yml), run
# beside a copy of the mixin's alerts.yaml: promtool and fleetctl must both pass them.
for t in scripts/compat/*.alerts.test.yml; do
  mixin=$(basename "$t" .alerts.test.yml)
  [ -f "$dir/mixins/$mixin/alerts.yaml" ] || continue
  work=$(mktemp -d)
  cp "$t" "$dir/mixins/$mixin/alerts.yaml" "$work/"
  if ! out=$(cd "$work" && promtool test rules "$(basename "$t")" 2>&1); then
    echo "FAIL mixin tests: promtool test rules $t"; echo "$out"; failures=$((failures + 1))
  fi
  if ! out=$("$fleetctl" rules test "$work/$(basename "$t")" 2>&1); then
    echo "FAIL mixin tests: fleetctl rules test $t"; echo "$out"; failures=$((failures + 1))
  fi
  rm -rf "$work"
  echo "mixin tests: $t passes in promtool and fleetctl"
done

if [ -d "$dir/promqltest" ]; then
  if ! "$fleetctl" rules promqltest --list-skipped "$dir/promqltest"; then
    echo "FAIL promqltest: a PromQL case of Prometheus' own tests does not pass"
    failures=$((failures + 1))
  fi
fi

if [ "$failures" -gt 0 ]; then
  echo "$failures compatibility failures"
  exit 1
fi
echo "compatibility corpus: OK"
