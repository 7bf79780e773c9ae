#!/usr/bin/env bash
# cowvol backup example: a nightly job and a restore drill.
#
#   examples/backup.sh nightly <volume> <backup-dir>
#       Run once a night (cron). Takes a snapshot nightly-<UTC time> labelled
#       kind=nightly, exports it to <backup-dir>/<name>.cvs — incremental since
#       the previous night's snapshot when that one is still on the volume,
#       else a full stream — and appends "<name> <full|incremental>" to
#       <backup-dir>/CHAIN. The newest exported snapshot is held (it is the
#       base of tomorrow's incremental, so rotation must not delete it) and the
#       previous one released. Rotation keeps the newest $KEEP nightly
#       snapshots on the volume (one atomic delete; held ones are skipped).
#
#   examples/backup.sh drill <backup-dir> <new-volume> [<source-volume>]
#       Restore drill: rebuilds <new-volume> from the last full stream of CHAIN
#       and every incremental after it (each import verifies the whole stream
#       first and refuses a corrupt one), then compares, byte for byte, every
#       rebuilt snapshot that still exists on <source-volume> and checks the
#       rebuilt live volume equals the newest snapshot.
#
#   examples/backup.sh demo
#       What CI runs: creates a scratch volume, simulates $NIGHTS nights of
#       writes, each followed by the nightly job, shows the diff and the space
#       accounting, checks that a corrupted backup is refused, then runs the
#       drill. Exits non-zero on any mismatch.
#
# Env: KEEP (nightly snapshots kept on the volume, default 3), NIGHTS (demo,
# default 5), COWVOL (the cowvol command; default: this checkout's CLI),
# COWVOL_DEMO_DIR (demo work folder; default a temporary one, removed at exit).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
KEEP=${KEEP:-3}
NIGHTS=${NIGHTS:-5}
cowvol() { ${COWVOL:-node "$root/packages/cli/bin/run.js"} "$@"; }
say() { printf '\033[1m==>\033[0m %s\n' "$*"; }

nightly() { # <volume> <backup-dir> [<snapshot name>]
  local vol=$1 dir=$2 name=${3:-nightly-$(date -u +%Y%m%dT%H%M%SZ)} prev="" kind
  mkdir -p "$dir"
  [ -s "$dir/CHAIN" ] && prev=$(tail -n 1 "$dir/CHAIN" | cut -d' ' -f1)
  # --wait: if another cowvol command holds the volume, wait for it rather than fail.
  cowvol snapshot create "$vol" "$name" --label kind=nightly --wait 60 >/dev/null
  if [ -n "$prev" ] && cowvol snapshot info "$vol" "$prev" >/dev/null 2>&1; then
    kind=incremental
    cowvol snapshot export "$vol" "$name" --since "$prev" --output "$dir/$name.cvs"
  else
    kind=full
    cowvol snapshot export "$vol" "$name" --output "$dir/$name.cvs"
  fi
  echo "$name $kind" >> "$dir/CHAIN"
  cowvol snapshot hold "$vol" "$name" >/dev/null
  if [ -n "$prev" ] && cowvol snapshot info "$vol" "$prev" >/dev/null 2>&1; then cowvol snapshot release "$vol" "$prev" >/dev/null; fi
  cowvol snapshot delete "$vol" --label kind=nightly --keep-newest "$KEEP"
}

drill() { # <backup-dir> <new-volume> [<source-volume>]
  local dir=$1 target=$2 source=${3:-} start names=() fail=0
  [ -e "$target" ] && { echo "drill: $target exists; give a new path" >&2; return 2; }
  # The last full stream starts the chain; every incremental after it applies in order.
  start=$(grep -n ' full$' "$dir/CHAIN" | tail -n 1 | cut -d: -f1)
  while read -r name kind; do
    say "import $name ($kind)"
    cowvol import "$target" --input "$dir/$name.cvs" --verify
    names+=("$name")
  done < <(tail -n +"$start" "$dir/CHAIN")
  cowvol check "$target" >/dev/null
  local newest=${names[-1]} tmp
  tmp=$(mktemp -d)
  # One cowvol process per volume at a time: read to files, then compare.
  cowvol read "$target" --output "$tmp/live"
  cowvol snapshot read "$target" "$newest" --output "$tmp/newest"
  if cmp -s "$tmp/live" "$tmp/newest"; then
    say "drill: the rebuilt live volume is snapshot $newest ($(sha256sum "$tmp/live" | cut -c1-16)…)"
  else say "drill MISMATCH: live volume of $target is not $newest"; fail=1; fi
  if [ -n "$source" ]; then
    for name in "${names[@]}"; do
      cowvol snapshot info "$source" "$name" >/dev/null 2>&1 || continue # rotated away on the source
      cowvol snapshot read "$target" "$name" --output "$tmp/a"
      cowvol snapshot read "$source" "$name" --output "$tmp/b"
      if cmp -s "$tmp/a" "$tmp/b"; then
        say "drill: snapshot $name is identical on $target and $source"
      else say "drill MISMATCH: snapshot $name differs"; fail=1; fi
    done
  fi
  rm -rf "$tmp"
  return $fail
}

demo() {
  local vol backups
  if [ -n "${COWVOL_DEMO_DIR:-}" ]; then work=$COWVOL_DEMO_DIR; mkdir -p "$work"; else work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; fi
  vol=$work/data.img backups=$work/backups
  say "cowvol create $vol --size 32M, with 8 MiB of data"
  cowvol create "$vol" --size 32M >/dev/null
  head -c 8M /dev/urandom | cowvol write "$vol" >/dev/null
  for night in $(seq 1 "$NIGHTS"); do
    # The day's changes: some new data, some rewritten, one range zeroed.
    head -c $((200 + RANDOM % 900))K /dev/urandom | cowvol write "$vol" --offset $((RANDOM % 24))M >/dev/null
    head -c $((RANDOM % 64))K /dev/zero | cowvol write "$vol" --offset $((RANDOM % 31))M >/dev/null
    say "night $night: nightly job"
    nightly "$vol" "$backups" "nightly-$(date -u +%Y%m%d)-$night"
  done
  say "snapshots on the volume (rotation keeps $KEEP; the newest is held):"
  cowvol snapshot list "$vol"
  local last prev
  last=$(tail -n 1 "$backups/CHAIN" | cut -d' ' -f1)
  prev=$(tail -n 2 "$backups/CHAIN" | head -n 1 | cut -d' ' -f1)
  say "what changed between $prev and $last:"
  cowvol snapshot diff "$vol" "$prev" "$last"
  ls -l "$backups"
  say "a corrupted backup is refused and nothing is written"
  cp "$backups/$last.cvs" "$work/bad.cvs"
  printf '\xff' | dd of="$work/bad.cvs" bs=1 seek=$(( $(stat -c %s "$work/bad.cvs") / 2 )) conv=notrunc status=none
  local code=0
  cowvol import "$work/never.img" --input "$work/bad.cvs" 2>"$work/bad.err" || code=$?
  if [ "$code" = 8 ] && grep -q STREAM_CORRUPT "$work/bad.err" && [ ! -e "$work/never.img" ]; then say "refused (exit 8): $(cat "$work/bad.err")"; else say "corrupt stream NOT refused (exit $code)"; return 1; fi
  say "restore drill into a new volume"
  drill "$backups" "$work/restored.img" "$vol"
  say "backup demo OK"
}

case "${1:-}" in
  nightly) shift; [ $# -ge 2 ] || { echo "usage: $0 nightly <volume> <backup-dir>" >&2; exit 2; }; nightly "$@" ;;
  drill) shift; [ $# -ge 2 ] || { echo "usage: $0 drill <backup-dir> <new-volume> [<source-volume>]" >&2; exit 2; }; drill "$@" ;;
  demo) demo ;;
  *) echo "usage: $0 nightly <volume> <backup-dir> | drill <backup-dir> <new-volume> [<source-volume>] | demo" >&2; exit 2 ;;
esac
