#!/usr/bin/env bash
# Build the real peers that tests and `flotilla up --jaeger` talk to from tools/peers/go.mod (pinned,
# from the Go module proxy; nothing prebuilt is downloaded) into .tools/peers/bin:
#   jaeger  Jaeger all-in-one (OTLP receiver, query API and UI), github.com/jaegertracing/jaeger/cmd/jaeger
#   nats    the nats CLI, github.com/nats-io/natscli/nats
# A binary is rebuilt only when go.mod, go.sum, the Go version or the build flags changed since it was
# built: the stamp file .tools/peers/bin/<name>.stamp holds the hash of all four.
# Usage: tools/peers/build.sh [name...]   (default: all)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$here/../gobuild.sh"
out="$root/.tools/peers/bin"
mkdir -p "$out"
command -v go >/dev/null || { echo "peer-bins: no go command: install Go (the version in tools/peers/go.mod or newer), then re-run" >&2; exit 2; }

declare -A pkg=(
  [jaeger]=github.com/jaegertracing/jaeger/cmd/jaeger
  [nats]=github.com/nats-io/natscli/nats
)
order=(jaeger nats)
[ $# -gt 0 ] && order=("$@")

ldflags="-s -w"
inputs() { cat "$here/go.mod" "$here/go.sum"; go version; echo "$ldflags"; }
hash=$(inputs | sha256sum | cut -d' ' -f1)
total_start=$(date +%s)
for name in "${order[@]}"; do
  stamped_build peer-bins "$here" "$out" "$name" "${pkg[$name]:?unknown binary $name (known: ${!pkg[*]})}" "$hash" \
    -ldflags="$ldflags"
done
echo "peer-bins: done in $(( $(date +%s) - total_start )) s: $out"
