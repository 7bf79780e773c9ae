#!/usr/bin/env bash
# cowvol demo: the whole workflow on real input.
#
# 1. builds a real ext4 file-system image (mke2fs -d) from real files — the
#    TypeScript compiler's library folder installed by `pnpm install` — or,
#    where e2fsprogs is missing, a real tarball of the same files;
# 2. creates a volume, writes the image into it, takes a snapshot;
# 3. changes the data (with debugfs: deletes and adds files; or overwrites
#    a region), writes it again, takes a second snapshot, overwrites more;
# 4. reads every snapshot back and verifies it by SHA-256 against the bytes
#    it was taken from (and with e2fsck -fn when available);
# 5. deletes the first snapshot and verifies the second again.
#
# Env: COWVOL_DEMO_DIR (work folder; default: a new temporary one, removed at exit).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cowvol() { node "$root/packages/cli/bin/run.js" "$@"; }
say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
sum() { sha256sum "$1" | cut -c1-16; }

if [ -n "${COWVOL_DEMO_DIR:-}" ]; then work=$COWVOL_DEMO_DIR; mkdir -p "$work"; else work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; fi
src=$(dirname "$(node -p "require.resolve('typescript/package.json', {paths: ['$root']})")")/lib
export PATH="$PATH:/usr/sbin:/sbin"

if command -v mke2fs >/dev/null && command -v debugfs >/dev/null; then
  kind=ext4
  say "building an ext4 image of $src ($(du -sh "$src" | cut -f1)) with mke2fs -d"
  truncate -s 64M "$work/v1.img"
  mke2fs -q -F -t ext4 -b 4096 -d "$src" "$work/v1.img"
  cp "$work/v1.img" "$work/v2.img"
  # Change the file system: delete two files, add one, make a directory.
  printf 'rm /typescript.js\nrm /tsc.js\nmkdir /added\nwrite %s /added/README.md\n' "$root/README.md" > "$work/edit.cmds"
  debugfs -w -f "$work/edit.cmds" "$work/v2.img" >/dev/null 2>&1
  e2fsck -fn "$work/v2.img" >/dev/null 2>&1
else
  kind=tar
  say "e2fsprogs not found: using a tarball of $src instead of an ext4 image"
  tar -C "$(dirname "$src")" -cf "$work/v1.img" lib
  truncate -s 64M "$work/v1.img"
  cp "$work/v1.img" "$work/v2.img"
  head -c 3M /dev/urandom | dd of="$work/v2.img" bs=1M seek=5 conv=notrunc status=none
fi

vol="$work/demo.vol"
say "cowvol create $vol --size 64M"
cowvol create "$vol" --size 64M
say "writing the $kind image ($(sum "$work/v1.img")…) into the volume"
cowvol write "$vol" --input "$work/v1.img"
cowvol snapshot create "$vol" original
say "changing the data: writing the edited image ($(sum "$work/v2.img")…)"
cowvol write "$vol" --input "$work/v2.img"
cowvol snapshot create "$vol" edited
say "overwriting 4 MiB at offset 8M with random bytes"
head -c 4M /dev/urandom > "$work/noise.bin"
cowvol write "$vol" --offset 8M --input "$work/noise.bin"
cowvol snapshot list "$vol"

fail=0
check() { # name expected-file
  cowvol snapshot read "$vol" "$1" --output "$work/$1.out"
  if cmp -s "$work/$1.out" "$2"; then say "snapshot $1 reads back identical: sha256 $(sum "$work/$1.out")…"; else say "MISMATCH: snapshot $1"; fail=1; fi
  if [ "$kind" = ext4 ]; then
    if e2fsck -fn "$work/$1.out" >/dev/null 2>&1; then say "snapshot $1 passes e2fsck -fn"; else say "e2fsck -fn failed on snapshot $1"; fail=1; fi
  fi
}
check original "$work/v1.img"
check edited "$work/v2.img"
cowvol read "$vol" --output "$work/live.out"
cp "$work/v2.img" "$work/v3.img"; dd if="$work/noise.bin" of="$work/v3.img" bs=1M seek=8 conv=notrunc status=none
if cmp -s "$work/live.out" "$work/v3.img"; then say "live volume holds the newest data: sha256 $(sum "$work/live.out")…"; else say "MISMATCH: live volume"; fail=1; fi
if [ "$kind" = ext4 ]; then
  debugfs -R "cat /typescript.js" "$work/original.out" 2>/dev/null | cmp -s - "$src/typescript.js" && say "a file deleted later is still in snapshot original: /typescript.js ($(stat -c %s "$src/typescript.js") bytes)" || { say "file missing from snapshot"; fail=1; }
fi
say "deleting snapshot original; edited must stay intact"
cowvol snapshot delete "$vol" original
check edited "$work/v2.img"
cowvol info "$vol"
if [ "$fail" = 0 ]; then say "demo OK: every snapshot read back exactly what the volume held when it was taken"; else say "demo FAILED"; exit 1; fi
