# Sourced by tools/*/build.sh: one stamped `go build` of a pinned tools module's program.
#   stamped_build LABEL MODDIR OUT NAME PKG HASH [go build flags...]
# Builds PKG (from the module in MODDIR) into OUT/NAME unless OUT/NAME.stamp already holds HASH (the hash of
# go.mod, go.sum, the Go version and the build flags), statically (CGO off), reproducibly (-trimpath, no VCS).
stamped_build() {
  local label=$1 moddir=$2 out=$3 name=$4 pkg=$5 hash=$6
  shift 6
  local stamp="$out/$name.stamp"
  if [ -x "$out/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
    echo "$label: $name up to date (stamp ${hash:0:12})"
    return 0
  fi
  echo "$label: building $name from $pkg ..."
  local start
  start=$(date +%s)
  (cd "$moddir" && CGO_ENABLED=0 go build -trimpath -buildvcs=false "$@" -o "$out/$name.tmp" "$pkg")
  mv "$out/$name.tmp" "$out/$name"
  echo "$hash" > "$stamp"
  echo "$label: built $name in $(( $(date +%s) - start )) s ($(du -h "$out/$name" | cut -f1))"
}
