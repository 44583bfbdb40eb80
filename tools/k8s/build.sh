#!/usr/bin/env bash
# Build the Kubernetes test world's programs from tools/k8s/go.mod (pinned, from the Go module
# proxy; nothing prebuilt is downloaded) into .tools/k8s/bin. A binary is rebuilt only when
# tools/k8s/go.mod, go.sum, the Go version or the build flags changed since it was built: the
# stamp file .tools/k8s/bin/<name>.stamp holds the hash of all four.
# Usage: tools/k8s/build.sh [name...]   (default: all, biggest first)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$here/../gobuild.sh"
out="$root/.tools/k8s/bin"
mkdir -p "$out"
command -v go >/dev/null || { echo "k8s-bins: no go command: install Go (the version in tools/k8s/go.mod or newer), then re-run" >&2; exit 2; }

declare -A pkg=(
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kubectl]=k8s.io/kubernetes/cmd/kubectl
  [kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
  [kwok]=sigs.k8s.io/kwok/cmd/kwok
  [etcd]=go.etcd.io/etcd/server/v3
)
order=(kube-apiserver kube-controller-manager kubectl kube-scheduler kwok etcd)
[ $# -gt 0 ] && order=("$@")

# Version stamps the programs print for `--version`; from the pinned go.mod, not from git.
modver() { (cd "$here" && go list -m -f '{{.Version}}' "$1"); }
k8s=$(modver k8s.io/kubernetes)
kwokv=$(modver sigs.k8s.io/kwok)
minor=${k8s#v1.}; minor=${minor%%.*}
ldk8s="-X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1"
ldk8s+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
ldk8s+=" -X k8s.io/client-go/pkg/version.gitVersion=$k8s -X k8s.io/client-go/pkg/version.gitMajor=1"
ldk8s+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"
ldkwok="-X sigs.k8s.io/kwok/pkg/consts.Version=${kwokv#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${k8s#v}"

inputs() { cat "$here/go.mod" "$here/go.sum"; go version; echo "$ldk8s $ldkwok"; }
hash=$(inputs | sha256sum | cut -d' ' -f1)
total_start=$(date +%s)
for name in "${order[@]}"; do
  case $name in
    kwok) ld=$ldkwok ;;
    etcd) ld="" ;;
    *) ld=$ldk8s ;;
  esac
  stamped_build k8s-bins "$here" "$out" "$name" "${pkg[$name]:?unknown binary $name (known: ${!pkg[*]})}" "$hash" \
    -ldflags="-s -w $ld"
done
# kwok's stage files (nodes Ready, pods Running, deleted pods go) next to the binaries, for the harness.
stages="$root/.tools/k8s/stages"
kwokdir=$(cd "$here" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
rm -rf "$stages.tmp" && mkdir -p "$stages.tmp"
cp -r "$kwokdir/kustomize/stage/node" "$kwokdir/kustomize/stage/pod" "$stages.tmp/"
chmod -R u+w "$stages.tmp" && rm -rf "$stages" && mv "$stages.tmp" "$stages"
echo "k8s-bins: done in $(( $(date +%s) - total_start )) s: $out"
