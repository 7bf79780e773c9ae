#!/usr/bin/env bash
# cowvol off-machine backup example: a nightly job to an S3 repository
# (push, forget, prune) and a restore drill (README "Backups off the machine").
#
#   examples/backup-s3.sh nightly <volume> <repository-url> <key-file>
#       Run once a night (cron). Takes a snapshot nightly-<UTC time> labelled
#       kind=nightly, pushes it (only the chunks changed since the newest
#       snapshot already pushed), applies the retention rules (forget
#       --keep-last $KEEP_LAST --keep-daily $KEEP_DAILY --keep-weekly
#       $KEEP_WEEKLY for this volume)
#       and prunes what no snapshot needs any more. Rotation on the volume
#       keeps the newest $KEEP nightly snapshots (the newest is the base of
#       tomorrow's incremental push).
#
#   examples/backup-s3.sh drill <volume> <repository-url> <key-file> <scratch-dir>
#       Restore drill: verify --read-data (every chunk downloaded and
#       authenticated), then restores every snapshot of this volume in the
#       repository that the volume still has into a new volume under
#       <scratch-dir> and compares them byte for byte.
#
#   examples/backup-s3.sh demo <repository-url> <key-file>
#       What CI runs (test/backup-s3-example.test.ts, against the test Ceph
#       cluster): creates a scratch volume, simulates $NIGHTS nights of writes
#       each followed by the nightly job, shows the repository, then runs the
#       drill. Exits non-zero on any mismatch.
#
# S3: credentials from the AWS variables or profiles; ENDPOINT (e.g.
# http://127.0.0.1:7480) and PATH_STYLE=1 for RGW or MinIO. Env: KEEP
# (nightly snapshots kept on the volume, default 2), KEEP_LAST (default 2), KEEP_DAILY (default 7),
# KEEP_WEEKLY (default 4), NIGHTS (demo, default 3), COWVOL (the cowvol
# command; default: this checkout's CLI), COWVOL_DEMO_DIR (demo work folder;
# default a temporary one, removed at exit).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
KEEP=${KEEP:-2}
KEEP_LAST=${KEEP_LAST:-2}
KEEP_DAILY=${KEEP_DAILY:-7}
KEEP_WEEKLY=${KEEP_WEEKLY:-4}
NIGHTS=${NIGHTS:-3}
cowvol() { ${COWVOL:-node "$root/packages/cli/bin/run.js"} "$@"; }
say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
store_flags() { # <key-file>: the flags every repository command takes
  printf '%s\n' --key-file "$1"
  if [ -n "${ENDPOINT:-}" ]; then printf '%s\n' --endpoint "$ENDPOINT"; fi
  if [ "${PATH_STYLE:-0}" = 1 ]; then printf '%s\n' --path-style; fi
}
json_field() { # <field>: a top-level string field of the JSON document on stdin
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>process.stdout.write(String(JSON.parse(s)[process.argv[1]])))' "$1"
}

nightly() { # <volume> <url> <key-file> [<snapshot name>]
  local vol=$1 url=$2 key=$3 name=${4:-nightly-$(date -u +%Y%m%dT%H%M%SZ)} uuid
  local -a flags
  mapfile -t flags < <(store_flags "$key")
  uuid=$(cowvol info "$vol" --json | json_field uuid)
  cowvol snapshot create "$vol" "$name" --label kind=nightly --wait 60 >/dev/null
  # A push refused because a prune holds the repository (REPOSITORY_LOCKED, exit 5) is retried later the same night.
  cowvol backup push "$vol" "$name" --to "$url" "${flags[@]}" --no-progress
  cowvol backup forget "$url" "${flags[@]}" --volume "$uuid" --keep-last "$KEEP_LAST" --keep-daily "$KEEP_DAILY" --keep-weekly "$KEEP_WEEKLY"
  cowvol backup prune "$url" "${flags[@]}"
  cowvol snapshot delete "$vol" --label kind=nightly --keep-newest "$KEEP" >/dev/null
}

drill() { # <volume> <url> <key-file> <scratch-dir>
  local vol=$1 url=$2 key=$3 scratch=$4 uuid name n=0
  local -a flags
  mapfile -t flags < <(store_flags "$key")
  mkdir -p "$scratch"
  uuid=$(cowvol info "$vol" --json | json_field uuid)
  say "verify --read-data: every manifest and chunk authenticated"
  cowvol backup verify "$url" "${flags[@]}" --read-data
  for name in $(cowvol backup list "$url" "${flags[@]}" --volume "$uuid" --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{for(const e of JSON.parse(s).snapshots)console.log(e.snapshot)})'); do
    cowvol snapshot info "$vol" "$name" >/dev/null 2>&1 || continue # rotated off the volume: nothing to compare with
    say "restore $name and compare"
    cowvol backup restore "$url/$uuid/$name" "$scratch/$name.img" "${flags[@]}" --no-progress >/dev/null
    cmp <(cowvol snapshot read "$scratch/$name.img" "$name") <(cowvol snapshot read "$vol" "$name")
    n=$((n + 1))
  done
  [ "$n" -gt 0 ] || { echo "drill: no snapshot of $vol both in the repository and on the volume" >&2; exit 1; }
  say "drill: $n snapshot(s) restored byte-identical"
}

demo() { # <url> <key-file>
  local url=$1 key=$2 vol night
  local -a flags
  mapfile -t flags < <(store_flags "$key")
  dir=${COWVOL_DEMO_DIR:-$(mktemp -d)} # global: the EXIT trap runs after this function returned
  [ -n "${COWVOL_DEMO_DIR:-}" ] || trap 'rm -rf "$dir"' EXIT
  mkdir -p "$dir"
  vol=$dir/data.img
  [ -e "$key" ] || cowvol backup key-gen "$key"
  cowvol backup init "$url" "${flags[@]}" --chunk-size 64K
  cowvol create "$vol" --size 4M >/dev/null
  for night in $(seq 1 "$NIGHTS"); do
    say "night $night: writes, then the nightly job"
    head -c 300000 /dev/urandom | cowvol write "$vol" --offset "$(((night - 1) * 700))K" >/dev/null
    nightly "$vol" "$url" "$key" "nightly-$night"
  done
  cowvol backup list "$url" "${flags[@]}"
  drill "$vol" "$url" "$key" "$dir/drill"
}

case ${1:-} in
  nightly) shift; nightly "$@" ;;
  drill) shift; drill "$@" ;;
  demo) shift; demo "$@" ;;
  *) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
