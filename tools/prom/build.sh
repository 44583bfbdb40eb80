#!/usr/bin/env bash
# Build promtool (github.com/prometheus/prometheus/cmd/promtool) from tools/prom/go.mod (pinned, from the Go module
# proxy; nothing prebuilt is downloaded) into .tools/prom/bin. It checks deploy/components/monitoring: the scrape
# configuration, the alert rules and their unit tests (tests/deploy/test_monitoring.py).
# Service discovery is built in only for Kubernetes (tags remove_all_sd,enable_kubernetes_sd): the scrape config
# uses nothing else, and the other mechanisms' cloud SDKs would double the build.
# Rebuilt only when go.mod, go.sum, the Go version or the build flags changed since it was built: the stamp file
# .tools/prom/bin/promtool.stamp holds the hash of all four. Usage: tools/prom/build.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$here/../gobuild.sh"
out="$root/.tools/prom/bin"
mkdir -p "$out"
command -v go >/dev/null || { echo "prom-bins: no go command: install Go (the version in tools/prom/go.mod or newer), then re-run" >&2; exit 2; }

version=$(cd "$here" && go list -m -f '{{.Version}}' github.com/prometheus/prometheus)
tags="remove_all_sd,enable_kubernetes_sd"
ldflags="-s -w -X github.com/prometheus/common/version.Version=$version"
inputs() { cat "$here/go.mod" "$here/go.sum"; go version; echo "$tags $ldflags"; }
hash=$(inputs | sha256sum | cut -d' ' -f1)
stamped_build prom-bins "$here" "$out" promtool github.com/prometheus/prometheus/cmd/promtool "$hash" \
  -tags "$tags" -ldflags="$ldflags"
echo "prom-bins: promtool $version in $out"
