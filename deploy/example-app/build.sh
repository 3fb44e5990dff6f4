#!/bin/sh
# Builds a release artifact of the example app: app-VERSION.tar.gz in OUT_DIR (default: .).
#   deploy/example-app/build.sh 2.0 [OUT_DIR]
set -eu
version=${1:?usage: build.sh VERSION [OUT_DIR]}
out=${2:-.}
src=$(cd "$(dirname "$0")" && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin"
cp "$src/bin/start" "$stage/bin/start"
chmod 0755 "$stage/bin/start"
printf '%s\n' "$version" > "$stage/VERSION"
tar -C "$stage" -czf "$out/app-$version.tar.gz" bin VERSION
echo "$out/app-$version.tar.gz"
