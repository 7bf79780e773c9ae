#!/usr/bin/env bash
# Installs `cowvol` as README "Installing the command" says and runs it
# outside the checkout: packs the tarball, `npm install -g` it into a
# temporary prefix offline with an empty npm cache (so everything must be in
# the tarball), then runs --version, create, write, snapshot create and
# snapshot read in a temporary folder; the snapshot must read back exactly
# what was written before it, and the command must start from its bundle
# (packages/cli/dist/bundle), those commands through its lean start.
# Exits non-zero on any failure.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
case "$tmp/" in "$root"/*) echo "install-check: $tmp is inside the checkout" >&2; exit 1 ;; esac

tarball="$(cd "$root" && pnpm -s pack:cli --out-dir "$tmp")"
npm install -g --prefix "$tmp/prefix" --cache "$tmp/npm-cache" --offline --no-audit --no-fund "$tarball" >/dev/null

mkdir "$tmp/work" && cd "$tmp/work"
export PATH="$tmp/prefix/bin:$PATH" XDG_CACHE_HOME="$tmp/cache"
unset NODE_PATH
[ "$(command -v cowvol)" = "$tmp/prefix/bin/cowvol" ] || { echo "install-check: cowvol is not the installed one" >&2; exit 1; }
# The installed command starts from its bundle (packages/cli/bin/run.js): it is there, and the copy has no src/ (only a checkout's bundle can be stale).
installed="$tmp/prefix/lib/node_modules/cowvol"
[ -f "$installed/dist/bundle/cowvol.js" ] && [ ! -e "$installed/src" ] || { echo "install-check: the installed copy does not start from its bundle" >&2; exit 1; }
cowvol --version
# The lean start (docs/ARCHITECTURE.md §1) must run these from the installed
# copy, its addons found by path there: `require` fails a line it declines.
export COWVOL_LEAN_START=require
cowvol create vol.img --size 4M
head -c 20000 /dev/urandom >before.bin
cowvol write vol.img --input before.bin --offset 4K
cowvol snapshot create vol.img one
head -c 20000 /dev/urandom | cowvol write vol.img --offset 4K
cowvol snapshot read vol.img one --offset 4K --length 20000 --output one.bin
cmp before.bin one.bin
unset COWVOL_LEAN_START
cowvol autocomplete script bash >/dev/null
echo "install-check: $(basename "$tarball") installed with npm outside the checkout; commands work"
