#!/usr/bin/env bash
# Stops the cluster test/ceph/start.sh started under <dir> (by its pid files) and removes <dir>.
set -euo pipefail
dir=${1:?usage: stop.sh <dir>}
[ -d "$dir" ] || exit 0
for f in "$dir"/run/*.pid; do
  [ -e "$f" ] || continue
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
done
for f in "$dir"/run/*.pid; do
  [ -e "$f" ] || continue
  pid=$(cat "$f")
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
done
rm -rf "$dir"
