"""PostgreSQL and fio on Swell volumes in the VM tier, where device-mapper exists and ext4 grows
online (the guest's root has CAP_SYS_RESOURCE).

Inside the guest, the real plugin (controller and node) serves every local kind: an LVM thin
volume, a thick (linear) LV and a loop volume, all ext4, and a dir volume (a directory of the
guest's own ext4 with a project quota). The guest's own ext4 on a disk of its own (with project
quotas on, as a node serving dir volumes has it) stands for the host directory; the loop volume's
file and the dir volume live on it. In each of the five places the same fio commit job (8 KiB writes, each followed by fdatasync) and the same
pgbench run; then, on each Swell volume, pgbench writes while the volume grows online twice
(ControllerExpandVolume and NodeExpandVolume). No transaction may fail, pg_amcheck must find
nothing, and the filesystem must show the new size. The figures are written to the share for
bench/bench_vm_db.py; this test asserts only behaviour."""
import glob
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import SWELL, require_root
import iscsi
import pg

MiB = 1 << 20
# The guest's own filesystem first, then each Swell kind.
PLACES = ("own", "lvm", "thick", "loop", "dir")

GUEST_SCRIPT = r'''
# Runs in the guest (busybox sh -e).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LD_LIBRARY_PATH=/share/swell/lib
result() { echo "$1=$2" >> /share/results; }
csi() { sub=$1; shift; /tmp/swell csi $sub --endpoint unix:///tmp/csi.sock "$@"; }
fs_bytes() { stat -f -c '%b %S' "$1" | awk '{print $1*$2}'; }
ms() { read up _ < /proc/uptime; echo "${up%.*}${up#*.}0"; }
for m in dm_thin_pool virtio_blk ext4 xfs loop quota_v2; do modprobe "$m"; done
mkdir -p /dev/shm /tmp/pglogs
mount -t tmpfs tmpfs /dev/shm
chmod 777 /tmp/pglogs
# The server's logs reach the share whatever happens (the postgres user cannot write there).
trap 'cp /tmp/pglogs/* /share/ 2>/dev/null || true' EXIT
cp /share/swell/bin/swell /tmp/swell
cp /share/swell/bin/fio /tmp/fio

# PostgreSQL 15 at the paths Debian's build expects, and its user.
mkdir -p /usr/lib/postgresql /usr/share/postgresql /usr/share/zoneinfo
cp -a /share/pg/lib15 /usr/lib/postgresql/15
cp -a /share/pg/share15 /usr/share/postgresql/15
cp -a /share/pg/zoneinfo/. /usr/share/zoneinfo/
echo "postgres:x:70:70:postgres:/tmp:/bin/sh" >> /etc/passwd
echo "postgres:x:70:" >> /etc/group
PGBIN=/usr/lib/postgresql/15/bin
as_pg() { su -s /bin/sh postgres -c "LD_LIBRARY_PATH=$LD_LIBRARY_PATH TZ=UTC $*"; }
pg_start() {  # datadir port
  mkdir -p /tmp/pgsock-$2; chown postgres /tmp/pgsock-$2
  as_pg $PGBIN/pg_ctl -D $1 -l /tmp/pglogs/pg-$2.log -w -t 300 -o "'-k /tmp/pgsock-$2 -p $2 -c listen_addresses= -c jit=off -c fsync=on'" start
}
pg_stop() { as_pg $PGBIN/pg_ctl -D $1 -m fast -w -t 300 stop; }
bench() {  # port seconds output
  as_pg $PGBIN/pgbench -h /tmp/pgsock-$1 -p $1 -U postgres -c 2 -j 1 -T $2 postgres > $3 2>&1
}

# The guest's own filesystem, what a host directory would be: ext4 on a disk of its own (vdb).
/usr/sbin/mke2fs -q -t ext4 -m 0 -O quota,project -E quotatype=prjquota /dev/vdb
mkdir -p /own
mount -o noatime,prjquota /dev/vdb /own
lvm pvcreate -q /dev/vda
lvm vgcreate -q vg0 /dev/vda
lvm lvcreate -q --type thin-pool -L 1400M -n pool0 vg0
/tmp/swell plugin --mode all --endpoint unix:///tmp/csi.sock --data-dir /own/swell-data --node-id vm \
  --lvm-vg vg0 --lvm-thin-pool pool0 --dir-root /own/swell-dirs --log-level info >> /share/guest-plugin.log 2>&1 &
plugin_pid=$!
i=0; while [ ! -S /tmp/csi.sock ]; do i=$((i+1)); [ $i -lt 600 ] || { echo "no plugin socket"; exit 1; }; sleep 0.1; done
csi probe

# One cluster made once (initdb and pgbench -i are slow under emulation), copied to each place.
mkdir -p /tmp/pgt
chown postgres /tmp/pgt
as_pg $PGBIN/initdb -D /tmp/pgt/data -A trust -U postgres --no-sync > /share/initdb.log 2>&1
pg_start /tmp/pgt/data 5400
as_pg $PGBIN/pgbench -h /tmp/pgsock-5400 -p 5400 -U postgres -i -s 2 -q postgres > /share/pgbench-init.log 2>&1
pg_stop /tmp/pgt/data

for kind in lvm:lvm thick:lvm:provisioning=thick loop:loop dir:dir; do
  IFS=: read name backend param <<EOT
$kind
EOT
  csi create --parameter backend=$backend ${param:+--parameter $param} --fs-type ext4 --bytes $((512 * 1048576)) db-$name
  csi stage --fs-type ext4 --context backend=$backend db-$name /tmp/csi/stage/db-$name
done
result thick_segtype "$(lvm lvs --noheadings -o segtype vg0/sw-db-thick | tr -d ' ')"
chmod 755 /tmp/csi /tmp/csi/stage   # the staging parents are root's 0750; the postgres user passes through
result loop_dio "$(cat /sys/block/$(basename $(findmnt -n -o SOURCE /tmp/csi/stage/db-loop))/loop/dio)"

port=5401
for place in own:/own lvm:/tmp/csi/stage/db-lvm thick:/tmp/csi/stage/db-thick loop:/tmp/csi/stage/db-loop dir:/tmp/csi/stage/db-dir; do
  name=${place%%:*}; dir=${place#*:}
  /tmp/fio --name=commit --directory=$dir --size=64m --rw=write --bs=8k --ioengine=sync --fdatasync=1 \
    --runtime=8 --time_based --output-format=json --output=/share/fio-$name.json
  rm -f $dir/commit.0.0
  cp -a /tmp/pgt/data $dir/pgdata
  chown -R postgres $dir/pgdata
  pg_start $dir/pgdata $port
  bench $port 12 /share/pgbench-$name.txt
  if [ $name != own ]; then
    result fs_bytes_before_$name "$(fs_bytes $dir)"
    bench $port 30 /share/pggrow-$name.txt &
    load=$!
    for mib in 768 1024; do
      sleep 8
      t0=$(ms)
      csi expand --bytes $((mib * 1048576)) db-$name
      csi node-expand --bytes $((mib * 1048576)) db-$name $dir
      result grow_ms_${mib}_$name $(( $(ms) - t0 ))
      result fs_bytes_${mib}_$name "$(fs_bytes $dir)"
    done
    if wait $load; then result pggrow_status_$name 0; else result pggrow_status_$name $?; fi
    if as_pg $PGBIN/pg_amcheck -h /tmp/pgsock-$port -p $port -U postgres --install-missing --all --heapallindexed \
        > /share/amcheck-$name.txt 2>&1; then result amcheck_$name 0; else result amcheck_$name $?; fi
  fi
  pg_stop $dir/pgdata
  port=$((port + 1))
done
for name in lvm thick loop dir; do
  csi unstage db-$name /tmp/csi/stage/db-$name
  csi delete db-$name
done
result swell_lvs_left "$(lvm lvs --noheadings -o lv_name vg0 | grep -c sw- || true)"
result dir_volumes_left "$(ls /own/swell-dirs/volumes | wc -l)"
kill $plugin_pid
'''


def stage_postgres(share):
    """PostgreSQL's binaries, modules and share files (no JIT bitcode), a UTC zone, and every
    library they need (with fio's) beside the plugin's."""
    lib15 = os.path.join(share, "pg", "lib15")
    shutil.copytree(os.path.dirname(pg.PG_BIN), lib15, symlinks=True,
                    ignore=shutil.ignore_patterns("bitcode", "llvmjit*"))
    shutil.copytree("/usr/share/postgresql/15", os.path.join(share, "pg", "share15"), symlinks=True)
    zones = os.path.join(share, "pg", "zoneinfo")
    os.makedirs(os.path.join(zones, "Etc"))
    for name in ("UTC", "GMT", "Etc/UTC"):
        shutil.copy2(os.path.realpath(os.path.join("/usr/share/zoneinfo", name)), os.path.join(zones, name))
    libdir = os.path.join(share, "swell", "lib")
    binaries = glob.glob(os.path.join(pg.PG_BIN, "*")) + glob.glob(os.path.join(lib15, "lib", "*.so"))
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
                dest = os.path.join(libdir, parts[0])
                if not os.path.exists(dest):
                    shutil.copy2(os.path.realpath(parts[2]), dest)


def run_db_vm(swell, root):
    """Boots the guest with a 2.5 GiB disk for LVM and a 2 GiB disk of its own, runs GUEST_SCRIPT,
    and returns the VM (the caller closes it), guest.sh's exit status, its results and log."""
    if shutil.which("fio") is None or not pg.available():
        pytest.fail("fio and postgresql-15 are needed (scripts/setup.sh --tests installs them)")
    return iscsi.run_guest(root, GUEST_SCRIPT, [2560 * MiB, 2048 * MiB], 1200, memory_mib=1536,
                           binaries=[swell, shutil.which("fio")], stage=stage_postgres)


def share_text(vm, name):
    try:
        with open(os.path.join(vm.share, name)) as f:
            return f.read()
    except OSError:
        return ""


def figures(vm):
    """{place: (fio commits/s, pgbench tps)} from the guest's outputs."""
    out = {}
    for place in PLACES:
        job = json.loads(share_text(vm, f"fio-{place}.json"))["jobs"][0]
        tps = float(share_text(vm, f"pgbench-{place}.txt").split("tps = ")[1].split()[0])
        out[place] = (job["write"]["iops"], tps)
    return out


def test_vm_postgres_on_every_local_kind_grows_online():
    require_root()
    if shutil.which("lvm") is None:
        pytest.fail("lvm2 is not installed on the host (scripts/setup.sh --tests installs it)")
    root = tempfile.mkdtemp(prefix="swell-vmdb-")
    vm = None
    try:
        vm, status, r, log = run_db_vm(SWELL, root)
        assert status == 0, (f"the guest failed:\n{vm.console()}\n{log[-3000:]}\n"
                             f"{share_text(vm, 'initdb.log')[-2000:]}{share_text(vm, 'pg-5401.log')[-2000:]}")
        assert r["loop_dio"] == "1", "the guest's loop volume does direct I/O"
        assert r["thick_segtype"] == "linear"
        for place in PLACES[1:]:
            out = share_text(vm, f"pggrow-{place}.txt")
            assert r[f"pggrow_status_{place}"] == "0", out
            assert "number of failed transactions: 0" in out, out
            assert r[f"amcheck_{place}"] == "0", share_text(vm, f"amcheck-{place}.txt")
            before, mid, after = (int(r[f"fs_bytes_{k}_{place}"]) for k in ("before", "768", "1024"))
            assert mid - before > 240 * MiB and after - mid > 240 * MiB, (place, before, mid, after)
            log_text = "".join(share_text(vm, n) for n in os.listdir(vm.share) if n.startswith("pg-"))
            assert "No space left on device" not in log_text
        for place, (commits, tps) in figures(vm).items():
            assert commits > 0 and tps > 0, place
        assert r["swell_lvs_left"] == "0"
        assert r["dir_volumes_left"] == "0"
    finally:
        if vm is not None:
            vm.close()
        shutil.rmtree(root, ignore_errors=True)
