"""PostgreSQL, MariaDB and fio on Swell volumes in the VM tier, where device-mapper exists and ext4
grows online (the guest's root has CAP_SYS_RESOURCE).

Inside the guest, the real plugin (controller and node) serves every local kind: an LVM thin
volume, a thick (linear) LV and a loop volume, all ext4, and a dir volume (a directory of the
guest's own ext4 with a project quota). The guest's own ext4 on a disk of its own (with project
quotas on, as a node serving dir volumes has it) stands for the host directory; the loop volume's
file and the dir volume live on it. In each of the five places, one after the other (fio, plain
pgbench and the guest's own filesystem only for bench/bench_vm_db.py, which compares speeds; the
test runs the rest):
- fio: commits (8 KiB writes, each followed by fdatasync) on a new file and on a file written
  before, and random 4 KiB direct reads and writes;
- pgbench, then pgbench while each Swell volume grows online twice (ControllerExpandVolume and
  NodeExpandVolume): no transaction may fail, and pg_amcheck must find nothing;
- MariaDB (InnoDB, innodb_flush_log_at_trx_commit=1): one writer committing batches of 100 rows
  of 1 KiB at a fixed pace (conformance/mariadb_stream.lua) beside 4 readers, while each Swell
  volume grows online twice more; every commit's start and end are logged.
Each filesystem must show each new size. The figures are written to the share for
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
import mdb
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

''' + pg.GUEST_SETUP + r'''
pg_start() {  # datadir port
  mkdir -p /tmp/pgsock-$2; chown postgres /tmp/pgsock-$2
  as_pg $PGBIN/pg_ctl -D $1 -l /tmp/pglogs/pg-$2.log -w -t 300 -o "'-k /tmp/pgsock-$2 -p $2 -c listen_addresses= -c jit=off -c fsync=on'" start
}
bench() {  # port seconds output
  as_pg $PGBIN/pgbench -h /tmp/pgsock-$1 -p $1 -U postgres -c 2 -j 1 -T $2 postgres > $3 2>&1
}

hand_grow() {  # name dir mib: an operator's grow with the kind's own tools (no tool for dir's quota here)
  src=$(findmnt -n -o SOURCE $2)
  t0=$(ms)
  case $1 in
    lvm|thick) lvm lvextend -q -L ${3}M vg0/sw-db-$1 > /dev/null; resize2fs $src > /dev/null 2>&1 ;;
    loop) truncate -s ${3}M "$(cat /sys/block/${src#/dev/}/loop/backing_file)"; losetup -c $src; resize2fs $src > /dev/null 2>&1 ;;
    *) return 0 ;;
  esac
  result hand_grow_ms_$1 $(( $(ms) - t0 ))
  result fs_bytes_hand_$1 "$(fs_bytes $2)"
}

# MariaDB: the commit stream (one writer paced at MDB_PACE batches of 100 rows of 1 KiB a second,
# one commit a batch) beside 4 unpaced readers for MDB_SECONDS; on a Swell volume, two online grows
# under it. Each commit's start and end, and each grow's, are in ms of /proc/uptime's clock.
mkdir -p /tmp/mshare
cp -a /share/mariadb/share/. /tmp/mshare/
cp /share/swell/bin/mariadbd /share/swell/bin/sysbench /tmp/
mdb_stream() {  # name dir
  cp -a /share/mariadb/data $2/mdb
  /tmp/mariadbd --no-defaults --skip-networking --user=root --innodb-log-file-size=32M --innodb-buffer-pool-size=64M \
    --innodb-flush-log-at-trx-commit=1 --datadir=$2/mdb --socket=/tmp/mdb-$1.sock --pid-file=/tmp/mdb-$1.pid \
    --lc-messages-dir=/tmp/mshare --character-sets-dir=/tmp/mshare/charsets --log-error=/tmp/pglogs/mdb-$1.err &
  server=$!
  i=0; while [ ! -S /tmp/mdb-$1.sock ]; do i=$((i+1)); [ $i -lt 1500 ] || { echo "no mariadb socket"; exit 1; }; sleep 0.2; done
  sb="/tmp/sysbench /share/mariadb/stream.lua --db-driver=mysql --mysql-socket=/tmp/mdb-$1.sock --mysql-user=root --mysql-db=sb --time=$MDB_SECONDS"
  $sb --role=reader --threads=4 run > /share/mdb-reader-$1.txt 2>&1 &
  readers=$!
  $sb --role=writer --threads=1 --pace=$MDB_PACE --log=/tmp/commits-$1.log run > /share/mdb-writer-$1.txt 2>&1 &
  writer=$!
  if [ $1 != own ]; then
    for mib in 1152 1280; do
      sleep $((MDB_SECONDS / 3))
      t0=$(ms)
      csi expand --bytes $((mib * 1048576)) db-$1
      csi node-expand --bytes $((mib * 1048576)) db-$1 $2
      result mdb_grow_${mib}_$1 "$t0 $(ms)"
      result fs_bytes_${mib}_$1 "$(fs_bytes $2)"
    done
  fi
  if wait $writer; then result mdb_writer_$1 0; else result mdb_writer_$1 $?; fi
  if wait $readers; then result mdb_readers_$1 0; else result mdb_readers_$1 $?; fi
  cp /tmp/commits-$1.log /share/
  kill $server
  wait $server || true
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
  # The speed figures (fio, plain pgbench, the guest's own filesystem) only for the benchmark.
  if [ "$FIGURES" = 0 ] && [ $name = own ]; then continue; fi
  if [ "$FIGURES" = 1 ]; then
  # Commits on fio's own new file, then on a file written once before (as WAL segments are), then
  # random 4 KiB direct reads and writes.
  /tmp/fio --name=commit --directory=$dir --size=64m --rw=write --bs=8k --ioengine=sync --fdatasync=1 \
    --runtime=8 --time_based --output-format=json --output=/share/fio-$name.json
  rm -f $dir/commit.0.0
  /tmp/fio --name=commit --directory=$dir --size=32m --overwrite=1 --rw=write --bs=8k --ioengine=sync --fdatasync=1 \
    --runtime=8 --time_based --output-format=json --output=/share/fio-written-$name.json
  rm -f $dir/commit.0.0
  /tmp/fio --name=rand --directory=$dir --size=64m --rw=randrw --bs=4k --direct=1 --ioengine=psync \
    --runtime=8 --time_based --output-format=json --output=/share/fio-rand-$name.json
  rm -f $dir/rand.0.0
  fi
  cp -a /tmp/pgt/data $dir/pgdata
  chown -R postgres $dir/pgdata
  pg_start $dir/pgdata $port
  if [ "$FIGURES" = 1 ]; then bench $port 12 /share/pgbench-$name.txt; fi
  if [ $name != own ]; then
    result fs_bytes_before_$name "$(fs_bytes $dir)"
    # For the benchmark, a grow by hand between the plugin's two, with the kind's own tools, in
    # the same boot and under the same load (the run is longer by as much).
    secs=30; [ "$FIGURES" = 0 ] || secs=42
    bench $port $secs /share/pggrow-$name.txt &
    load=$!
    for mib in 768 1024; do
      sleep 8
      t0=$(ms)
      csi expand --bytes $((mib * 1048576)) db-$name
      csi node-expand --bytes $((mib * 1048576)) db-$name $dir
      result grow_ms_${mib}_$name $(( $(ms) - t0 ))
      result fs_bytes_${mib}_$name "$(fs_bytes $dir)"
      if [ "$FIGURES" = 1 ] && [ $mib = 768 ]; then sleep 4; hand_grow $name $dir 896; fi
    done
    if wait $load; then result pggrow_status_$name 0; else result pggrow_status_$name $?; fi
    if as_pg $PGBIN/pg_amcheck -h /tmp/pgsock-$port -p $port -U postgres --install-missing --all --heapallindexed \
        > /share/amcheck-$name.txt 2>&1; then result amcheck_$name 0; else result amcheck_$name $?; fi
  fi
  pg_stop $dir/pgdata
  rm -rf $dir/pgdata
  port=$((port + 1))
  mdb_stream $name $dir
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


def stage(share):
    stage_postgres(share)
    mdb.stage(share)


def run_db_vm(swell, root, mdb_seconds=30, mdb_pace=3, speed_figures=True):
    """Boots the guest with a 3 GiB disk for LVM and a 2 GiB disk of its own, runs GUEST_SCRIPT
    (the MariaDB stream for `mdb_seconds` at `mdb_pace` commits a second), and returns the VM (the
    caller closes it), guest.sh's exit status, its results and log. Without `speed_figures`, the
    guest skips what only the benchmark needs: fio, plain pgbench, and every workload on its own
    filesystem."""
    if shutil.which("fio") is None or not pg.available() or not mdb.available():
        pytest.fail("fio, postgresql-15, mariadb-server and sysbench are needed (scripts/setup.sh --tests installs them)")
    script = f"MDB_SECONDS={int(mdb_seconds)} MDB_PACE={int(mdb_pace)} FIGURES={int(speed_figures)}\n" + GUEST_SCRIPT
    return iscsi.run_guest(root, script, [3072 * MiB, 2048 * MiB], 1500, memory_mib=1536,
                           binaries=[swell, shutil.which("fio"), mdb.MARIADBD, shutil.which("sysbench")], stage=stage)


def share_text(vm, name):
    try:
        with open(os.path.join(vm.share, name)) as f:
            return f.read()
    except OSError:
        return ""


def fio_iops(vm, name):
    job = json.loads(share_text(vm, name))["jobs"][0]
    return job["read"]["iops"], job["write"]["iops"]


def mdb_figures(vm, place, results, seconds):
    """The MariaDB stream on one place: rows committed a second, whole seconds without a commit,
    each grow's length, and the longest commit in flight during a grow and outside every grow."""
    spans = mdb.commits(share_text(vm, f"commits-{place}.log"))
    grows = [tuple(float(x) for x in results[f"mdb_grow_{mib}_{place}"].split())
             for mib in (1152, 1280) if f"mdb_grow_{mib}_{place}" in results]
    during = mdb.overlapping(spans, grows)
    outside = [c for c in spans if c not in during]
    start = spans[0][0] if spans else 0.0
    return {
        "rows_per_s": len(spans) * 100 / seconds,
        "idle_s": mdb.idle_seconds(spans, start, start + seconds * 1000 - 1000),
        "grow_ms": [end - begin for begin, end in grows],
        "longest_during_grow_ms": mdb.longest(during),
        "longest_outside_ms": mdb.longest(outside),
    }


def figures(vm, mdb_seconds=30):
    """{place: {figure: value}} from the guest's outputs."""
    results = vm.results()
    out = {}
    for place in PLACES:
        f = {"commits": fio_iops(vm, f"fio-{place}.json")[1],
             "commits_written": fio_iops(vm, f"fio-written-{place}.json")[1]}
        f["rand_read"], f["rand_write"] = fio_iops(vm, f"fio-rand-{place}.json")
        f["tps"] = float(share_text(vm, f"pgbench-{place}.txt").split("tps = ")[1].split()[0])
        if place != "own":
            f["tps_growing"] = float(share_text(vm, f"pggrow-{place}.txt").split("tps = ")[1].split()[0])
            f["pg_grow_ms"] = [int(results[f"grow_ms_{mib}_{place}"]) for mib in (768, 1024)]
            if f"hand_grow_ms_{place}" in results:
                f["hand_grow_ms"] = int(results[f"hand_grow_ms_{place}"])
                f["hand_fs_bytes"] = int(results[f"fs_bytes_hand_{place}"])
        f["mdb"] = mdb_figures(vm, place, results, mdb_seconds)
        out[place] = f
    return out


def test_vm_postgres_on_every_local_kind_grows_online():
    require_root()
    if shutil.which("lvm") is None:
        pytest.fail("lvm2 is not installed on the host (scripts/setup.sh --tests installs it)")
    root = tempfile.mkdtemp(prefix="swell-vmdb-")
    vm = None
    try:
        vm, status, r, log = run_db_vm(SWELL, root, speed_figures=False)
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
        for place in PLACES[1:]:
            # The MariaDB stream ran to its end beside its readers, committing.
            writer = share_text(vm, f"mdb-writer-{place}.txt")
            assert r[f"mdb_writer_{place}"] == "0" and "FATAL" not in writer, writer
            assert r[f"mdb_readers_{place}"] == "0", share_text(vm, f"mdb-reader-{place}.txt")
            m = mdb_figures(vm, place, r, 30)
            assert m["rows_per_s"] > 0, place
            # Grown online twice under the stream: the filesystem shows each new size.
            sizes = [int(r[f"fs_bytes_{mib}_{place}"]) for mib in (1024, 1152, 1280)]
            assert sizes[1] - sizes[0] > 120 * MiB and sizes[2] - sizes[1] > 120 * MiB, (place, sizes)
            assert len(m["grow_ms"]) == 2, place
            # A grow must not hold commits back. Each grow window holds both RPCs (seconds each for
            # lvextend under TCG); a commit held behind either would be in flight for as long.
            bound = max(2 * m["longest_outside_ms"], m["longest_outside_ms"] + 1000)
            assert m["longest_during_grow_ms"] <= bound, (place, m)
            print(f"{place}: MariaDB {m['rows_per_s']:.0f} rows/s, {m['idle_s']} s without a commit, grows "
                  f"{[round(g) for g in m['grow_ms']]} ms, longest commit during a grow {m['longest_during_grow_ms']:.0f} ms, "
                  f"outside {m['longest_outside_ms']:.0f} ms")
        assert r["swell_lvs_left"] == "0"
        assert r["dir_volumes_left"] == "0"
    finally:
        if vm is not None:
            vm.close()
        shutil.rmtree(root, ignore_errors=True)
