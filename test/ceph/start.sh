#!/usr/bin/env bash
# Starts a single-node Ceph cluster for the tests under <dir> (README "Tests";
# docs/ARCHITECTURE.md §17): one monitor, one manager, one bluestore OSD on a
# sparse file, a RADOS Gateway on a free loopback port and a test user.
# Writes <dir>/env (shell export lines). Stop it with test/ceph/stop.sh <dir>.
set -euo pipefail
dir=${1:?usage: start.sh <dir>}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
t0=$(date +%s)
fail() { # <what> <log>: says which daemon failed and shows the end of its log
  echo "start.sh: $1 failed; see $2" >&2
  tail -n 20 "$2" >&2 || true
  exit 1
}
wait_for() { # <seconds> <what> <log> <command...>
  local secs=$1 what=$2 log=$3; shift 3
  local end=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    if (($(date +%s) >= end)); then
      fail "$what (not ready after ${secs}s)" "$log"
    fi
    sleep 1
  done
}
# Free loopback ports for RGW and the monitor's v2 and v1 addresses, so that
# clusters under different folders can run side by side.
read -r port mon_v2 mon_v1 < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
mon_addrs="[v2:127.0.0.1:$mon_v2,v1:127.0.0.1:$mon_v1]"
fsid=$(uuidgen)
osd_uuid=$(uuidgen)
conf=$dir/ceph.conf
mkdir -p "$dir"/{mon,mgr,osd,rgw,run,log}
cat >"$conf" <<CONF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_v2,v1:127.0.0.1:$mon_v1
public network = 127.0.0.0/8
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $dir/\$name.keyring
log file = $dir/log/\$name.log
admin socket = $dir/run/\$name.asok
run dir = $dir/run
pid file = $dir/run/\$name.pid
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
mon data = $dir/mon/\$id
mgr data = $dir/mgr/\$id
osd data = $dir/osd/\$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 4294967296
# Outside "osd data": bluestore links <osd data>/block to this path, and a
# path inside the data folder would be a link to itself (ELOOP at mkfs).
bluestore block path = $dir/osd/\$id.block
osd memory target = 1073741824
bluestore cache size = 268435456
[client.rgw.t]
rgw frontends = beast endpoint=127.0.0.1:$port
rgw data = $dir/rgw
CONF
export CEPH_CONF=$conf
ceph-authtool --create-keyring "$dir/mon.a.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool --create-keyring "$dir/client.admin.keyring" --gen-key -n client.admin \
  --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
ceph-authtool "$dir/mon.a.keyring" --import-keyring "$dir/client.admin.keyring" >/dev/null
monmaptool --create --addv a "$mon_addrs" --fsid "$fsid" "$dir/monmap" >/dev/null
ceph-mon --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon.a.keyring" ||
  fail "ceph-mon --mkfs" "$dir/log/mon.a.log"
ceph-mon -i a || fail "ceph-mon" "$dir/log/mon.a.log"
wait_for 30 "ceph-mon" "$dir/log/mon.a.log" timeout 5 ceph -s
ceph config set global osd_pool_default_pg_num 8
ceph config set global osd_pool_default_pgp_num 8
ceph config set global mon_max_pg_per_osd 1000
mkdir -p "$dir/mgr/x"
ceph auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' -o "$dir/mgr/x/keyring"
cp "$dir/mgr/x/keyring" "$dir/mgr.x.keyring"
ceph-mgr -i x || fail "ceph-mgr" "$dir/log/mgr.x.log"
osd_id=$(ceph osd new "$osd_uuid")
mkdir -p "$dir/osd/$osd_id"
ceph-authtool --create-keyring "$dir/osd.$osd_id.keyring" --gen-key -n "osd.$osd_id" >/dev/null
ceph auth add "osd.$osd_id" osd 'allow *' mon 'allow profile osd' mgr 'allow profile osd' -i "$dir/osd.$osd_id.keyring"
ceph-osd -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" 2>>"$dir/log/osd.$osd_id.log" ||
  fail "ceph-osd --mkfs" "$dir/log/osd.$osd_id.log"
ceph-osd -i "$osd_id" || fail "ceph-osd" "$dir/log/osd.$osd_id.log"
osd_up() { ceph osd stat | grep -q '1 up'; }
wait_for 90 "ceph-osd" "$dir/log/osd.$osd_id.log" osd_up
echo "start.sh: mon, mgr, osd up in $(($(date +%s) - t0))s" >&2
ceph auth get-or-create client.rgw.t mon 'allow rw' osd 'allow rwx' mgr 'allow rw' -o "$dir/client.rgw.t.keyring"
radosgw -n client.rgw.t || fail "radosgw" "$dir/log/client.rgw.t.log"
wait_for 120 "radosgw" "$dir/log/client.rgw.t.log" curl -fsS "http://127.0.0.1:$port/"
access=cowvoltest$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
secret=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')
radosgw-admin user create --uid cowvol-test --display-name cowvol-test --access-key "$access" --secret "$secret" >/dev/null
cat >"$dir/env" <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=$access
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=us-east-1
export CEPH_CONF=$conf
export COWVOL_TEST_S3=1
ENV
echo "start.sh: S3 answering at http://127.0.0.1:$port after $(($(date +%s) - t0))s" >&2
