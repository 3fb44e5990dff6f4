#!/bin/sh
# Builds a release artifact of the example app: app-VERSION.tar.gz in OUT_DIR (default: the
# repository's target/example-app, out of git's way), and prints its path:
#   fleetctl rollout start app --artifact "$(deploy/example-app/build.sh 2.0)" --version 2.0
set -eu
version=${1:?usage: build.sh VERSION [OUT_DIR]}
src=$(cd "$(dirname "$0")" && pwd -P)
out=${2:-$src/../../target/example-app}
mkdir -p "$out"
out=$(cd "$out" && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin"
cp "$src/bin/start" "$stage/bin/start"
chmod 0755 "$stage/bin/start"
printf '%s\n' "$version" > "$stage/VERSION"
tar -C "$stage" -czf "$out/app-$version.tar.gz" bin VERSION
echo "$out/app-$version.tar.gz"
