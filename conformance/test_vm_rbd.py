"""VM tier: the rbd backend's node side with the kernel's RBD client (krbd), which this machine's
kernel lacks and the guest's Debian kernel has.

The Ceph cluster (conformance/ceph.py) runs on the host inside a network namespace this test
makes, on 192.168.77.1 at a tap device; qemu runs in that namespace too, with the tap as the
guest's NIC, so the guest reaches the monitor and the OSDs at the very addresses they advertise.
The guest runs the real plugin (controller and node) against the cluster, with the host's `rbd`
binary and its libraries: ext4, xfs and block volumes are created, staged (mapped), written,
grown while mounted, snapshotted while mounted and restored, checked by size and checksum, staged
again without a format, and removed; a stage is refused while another client watches the image;
no mapping is left.

Then PostgreSQL on an rbd volume in a pool of size 2 on three OSDs: pgbench, then pgbench while
the host SIGKILLs one OSD and the volume grows online: no failed transaction, pg_amcheck clean;
and the same pgbench on an iSCSI volume (tgtd on the host, in the test's namespace, exporting a
volume the host's controller made) and on the guest's own ext4, for their TPS (`bench/` does not
repeat it: the figures are printed by this test and copied into docs/performance.md)."""
import os
import re
import time
import shutil
import signal
import subprocess
import tempfile

import pytest

import ceph
import iscsi
import pg
from conftest import SWELL, mount_cap, require_root
from test_iscsi import Controller
from test_vm_db import stage_postgres

MiB = 1 << 20
POOL = "swell-vm"
HOST_ADDR = "192.168.77.1"
GUEST_ADDR = "192.168.77.2"

GUEST_SCRIPT = r'''
# Runs in the guest (busybox sh -e).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LD_LIBRARY_PATH=/share/swell/lib
. /share/params
result() { echo "$1=$2" >> /share/results; }
csi() { case "$1" in snapshot) sub="$1 $2"; shift 2 ;; *) sub=$1; shift ;; esac
  /tmp/swell csi $sub --endpoint unix:///tmp/csi.sock "$@"; }
for m in virtio_blk ext4 xfs rbd; do modprobe "$m"; done
i=0; while [ ! -b /dev/vda ]; do i=$((i+1)); [ $i -lt 100 ] || { echo "no /dev/vda"; exit 1; }; sleep 0.1; done
ip addr flush dev eth0
ip addr add $GUEST_ADDR/24 dev eth0
cp /share/swell/bin/swell /tmp/swell
cp /share/swell/bin/rbd /usr/bin/rbd
mkdir -p /tmp/csi/stage
/tmp/swell plugin --mode all --endpoint unix:///tmp/csi.sock --data-dir /tmp/swell-data --node-id vm --log-level debug \
  --rbd-monitors $MON --rbd-pool $POOL --rbd-user swell-plugin --rbd-key-file /share/plugin.key \
  >> /share/guest-plugin.log 2>&1 &
plugin_pid=$!
i=0; while [ ! -S /tmp/csi.sock ]; do i=$((i+1)); [ $i -lt 600 ] || { echo "no plugin socket"; exit 1; }; sleep 0.1; done
S="--secrets-file /share/secrets"
CTX="--context backend=rbd --context pool=$POOL --context monitors=$MON"
mapped() { ls /sys/bus/rbd/devices | wc -l; }
ms() { read up _ < /proc/uptime; echo "${up%.*}${up#*.}0"; }
expect_precondition() { if out=$(csi "$@" 2>&1); then echo "expected FAILED_PRECONDITION: $*"; exit 1; fi; echo "$out"; }
mkfifo /tmp/hold; exec 3<> /tmp/hold   # a stdin that never ends, for `rbd watch`
# rbd volumes stay published to this node between stages (--keep-published): unpublishing fences
# the node's client with `ceph osd blocklist`, and the guest has the rbd tool but not ceph's.

# ext4: staged, written, grown while mounted, staged again without a format.
csi create --parameter backend=rbd --fs-type ext4 $S --bytes 268435456 pvc-e
csi stage --fs-type ext4 $CTX $S pvc-e /tmp/csi/stage/pvc-e
result e_source "$(findmnt -n -o SOURCE /tmp/csi/stage/pvc-e)"
result e_fstype "$(findmnt -n -o FSTYPE /tmp/csi/stage/pvc-e)"
result e_lock "$(rbd -c /dev/null -m $MON --id swell-plugin --keyfile /share/plugin.key lock ls $POOL/swell-vol-pvc-e | tr '\n' ' ')"
dd if=/dev/urandom of=/tmp/csi/stage/pvc-e/data bs=1M count=16 conv=fsync 2>/dev/null
result e_sha_before "$(sha256sum /tmp/csi/stage/pvc-e/data | cut -d' ' -f1)"
result e_fs_before "$(stat -f -c '%b %S' /tmp/csi/stage/pvc-e | awk '{print $1*$2}')"
result e_expand "$(csi expand $S --bytes 536870912 pvc-e)"
result e_node_expand "$(csi node-expand --bytes 536870912 pvc-e /tmp/csi/stage/pvc-e 2>&1 | tr '\n' ' ')"
result e_dev_bytes "$(blockdev --getsize64 "$(findmnt -n -o SOURCE /tmp/csi/stage/pvc-e)")"
result e_fs_after "$(stat -f -c '%b %S' /tmp/csi/stage/pvc-e | awk '{print $1*$2}')"
result e_sha_after "$(sha256sum /tmp/csi/stage/pvc-e/data | cut -d' ' -f1)"
result e_stats "$(csi stats pvc-e /tmp/csi/stage/pvc-e 2>&1 | tr '\n' ' ')"
# A snapshot of the mounted volume (the controller takes the image's lock from the mapping and
# hands it back), restored into a second image.
csi snapshot create snap-e pvc-e
csi create --parameter backend=rbd --fs-type ext4 $S --bytes 536870912 --from-snapshot snap-e pvc-e2
csi unstage --keep-published pvc-e /tmp/csi/stage/pvc-e
result e_mapped_after_unstage "$(mapped)"
# Another client watching the image, as a mapping on a second node would: the stage is refused.
rbd -c /dev/null -m $MON --id swell-plugin --keyfile /share/plugin.key watch $POOL/swell-vol-pvc-e < /tmp/hold > /dev/null 2>&1 &
watch_pid=$!
i=0; until rbd -c /dev/null -m $MON --id swell-plugin --keyfile /share/plugin.key status $POOL/swell-vol-pvc-e | grep -q watcher=; do
  i=$((i+1)); [ $i -lt 100 ] || { echo "no watcher"; exit 1; }; sleep 0.5; done
result e_stage_watched "$(expect_precondition stage --fs-type ext4 $CTX $S pvc-e /tmp/csi/stage/pvc-e | tr '\n' ' ')"
result e_mapped_while_watched "$(mapped)"
kill $watch_pid; wait $watch_pid || true
i=0; while rbd -c /dev/null -m $MON --id swell-plugin --keyfile /share/plugin.key status $POOL/swell-vol-pvc-e | grep -q watcher=; do
  i=$((i+1)); [ $i -lt 120 ] || { echo "the watch never lapsed"; exit 1; }; sleep 0.5; done
csi stage --fs-type ext4 $CTX $S pvc-e /tmp/csi/stage/pvc-e
result e_sha_restaged "$(sha256sum /tmp/csi/stage/pvc-e/data | cut -d' ' -f1)"
result e_delete_staged "$(expect_precondition delete $S pvc-e | tr '\n' ' ')"
csi unstage --keep-published pvc-e /tmp/csi/stage/pvc-e
csi stage --fs-type ext4 $CTX $S pvc-e2 /tmp/csi/stage/pvc-e2
result e2_sha "$(sha256sum /tmp/csi/stage/pvc-e2/data | cut -d' ' -f1)"
csi unstage --keep-published pvc-e2 /tmp/csi/stage/pvc-e2
csi delete $S pvc-e
csi delete $S pvc-e2
csi snapshot delete snap-e

# xfs (at least 300 MiB), grown while mounted.
csi create --parameter backend=rbd --fs-type xfs $S --bytes 335544320 pvc-x
csi stage --fs-type xfs $CTX $S pvc-x /tmp/csi/stage/pvc-x
result x_fstype "$(findmnt -n -o FSTYPE /tmp/csi/stage/pvc-x)"
dd if=/dev/urandom of=/tmp/csi/stage/pvc-x/data bs=1M count=8 conv=fsync 2>/dev/null
result x_sha_before "$(sha256sum /tmp/csi/stage/pvc-x/data | cut -d' ' -f1)"
result x_fs_before "$(stat -f -c '%b %S' /tmp/csi/stage/pvc-x | awk '{print $1*$2}')"
csi expand $S --bytes 469762048 pvc-x
csi node-expand --bytes 469762048 pvc-x /tmp/csi/stage/pvc-x
result x_dev_bytes "$(blockdev --getsize64 "$(findmnt -n -o SOURCE /tmp/csi/stage/pvc-x)")"
result x_fs_after "$(stat -f -c '%b %S' /tmp/csi/stage/pvc-x | awk '{print $1*$2}')"
result x_sha_after "$(sha256sum /tmp/csi/stage/pvc-x/data | cut -d' ' -f1)"
csi unstage --keep-published pvc-x /tmp/csi/stage/pvc-x
csi delete $S pvc-x

# A block volume: written through the device, grown, the device sees the new size.
csi create --parameter backend=rbd --block $S --bytes 67108864 pvc-b
# A client that dies holding the image: the host's `rbd bench`, SIGKILLed while it writes (holding
# the exclusive lock and a watch), as a node that loses power would. The stage is refused while the
# dead client's watch lasts, then succeeds; the first write takes the lock from the dead owner.
# Published to this node first (as the attacher would, before kubelet's first stage), so that each
# try below is the stage alone: its refusal is measured against the dead client's watch.
PB=""; for kv in $(csi controller-publish --block pvc-b); do PB="$PB --publish-context $kv"; done
touch /share/hold-lock
i=0; while [ ! -e /share/holder-killed ]; do i=$((i+1)); [ $i -lt 1200 ] || { echo "the host killed no holder"; exit 1; }; sleep 0.1; done
t0=$(ms); refusals=0
until csi stage --block $CTX $S $PB pvc-b /tmp/csi/stage/pvc-b > /tmp/stage-out 2>&1; do
  grep -q FAILED_PRECONDITION /tmp/stage-out || { cat /tmp/stage-out; exit 1; }
  refusals=$((refusals+1)); [ $refusals -lt 120 ] || { echo "never staged"; exit 1; }; sleep 1
done
result b_stage_after_dead_ms $(( $(ms) - t0 ))
result b_refusals $refusals
dev=/dev/rbd$(ls /sys/bus/rbd/devices)
result b_dev_bytes_before "$(blockdev --getsize64 $dev)"
dd if=/dev/urandom of=/tmp/b.bin bs=1M count=8 2>/dev/null
dd if=/tmp/b.bin of=$dev bs=1M seek=4 conv=fsync 2>/dev/null
result b_sha_written "$(sha256sum /tmp/b.bin | cut -d' ' -f1)"
result b_lock_after_write "$(rbd -c /dev/null -m $MON --id swell-plugin --keyfile /share/plugin.key lock ls $POOL/swell-vol-pvc-b | tr '\n' ' ')"
mkdir -p /tmp/csi/pub
csi publish --block pvc-b /tmp/csi/stage/pvc-b /tmp/csi/pub/pvc-b
csi expand $S --bytes 134217728 pvc-b
result b_node_expand "$(csi node-expand --bytes 134217728 pvc-b /tmp/csi/pub/pvc-b 2>&1 | tr '\n' ' ')"
result b_pub_bytes "$(blockdev --getsize64 /tmp/csi/pub/pvc-b)"
result b_dev_bytes_after "$(blockdev --getsize64 $dev)"
result b_sha_read "$(dd if=$dev bs=1M skip=4 count=8 2>/dev/null | sha256sum | cut -d' ' -f1)"
csi unpublish pvc-b /tmp/csi/pub/pvc-b
csi unstage --keep-published pvc-b /tmp/csi/stage/pvc-b
csi delete $S pvc-b

# PostgreSQL on an rbd volume (the pool keeps 2 copies on 3 OSDs): pgbench quietly, then pgbench
# while the host SIGKILLs one OSD and the volume grows online once; then the same quiet pgbench on
# the guest's own ext4 (vda), for the TPS beside the rbd volume's.
mkdir -p /dev/shm /tmp/pglogs /own
mount -t tmpfs tmpfs /dev/shm
chmod 777 /tmp/pglogs
trap 'cp /tmp/pglogs/* /share/ 2>/dev/null || true' EXIT
''' + pg.GUEST_SETUP + r'''
pg_init() {  # datadir port
  mkdir -p /tmp/pgsock-$2 $(dirname $1); chown postgres /tmp/pgsock-$2 $(dirname $1)
  as_pg $PGBIN/initdb -D $1 -A trust -U postgres > /share/initdb-$2.log 2>&1
  as_pg $PGBIN/pg_ctl -D $1 -l /tmp/pglogs/pg-$2.log -w -t 300 -o "'-k /tmp/pgsock-$2 -p $2 -c listen_addresses= -c jit=off -c fsync=on'" start
  as_pg $PGBIN/pgbench -h /tmp/pgsock-$2 -p $2 -U postgres -i -s 2 -q postgres > /share/pgbench-init-$2.log 2>&1
}
bench() { as_pg $PGBIN/pgbench -h /tmp/pgsock-$1 -p $1 -U postgres -c 2 -j 1 -T $2 postgres > $3 2>&1; }

csi create --parameter backend=rbd --fs-type ext4 $S --bytes 1073741824 db-rbd
csi stage --fs-type ext4 $CTX $S db-rbd /tmp/csi/stage/db-rbd
chmod 755 /tmp/csi /tmp/csi/stage
pg_init /tmp/csi/stage/db-rbd/pg/data 5401
bench 5401 30 /share/pgbench-rbd-quiet.txt
bench 5401 100 /share/pgbench-rbd.txt &
load=$!
sleep 15
touch /share/kill-osd
i=0; while [ ! -e /share/osd-killed ]; do i=$((i+1)); [ $i -lt 1200 ] || { echo "the host killed no OSD"; exit 1; }; sleep 0.1; done
sleep 25
t0=$(ms)
csi expand $S --bytes 1610612736 db-rbd
csi node-expand --bytes 1610612736 db-rbd /tmp/csi/stage/db-rbd
result db_grow_ms $(( $(ms) - t0 ))
result db_fs_bytes "$(stat -f -c '%b %S' /tmp/csi/stage/db-rbd | awk '{print $1*$2}')"
if wait $load; then result db_pgbench 0; else result db_pgbench $?; fi
if as_pg $PGBIN/pg_amcheck -h /tmp/pgsock-5401 -p 5401 -U postgres --install-missing --all --heapallindexed \
    > /share/amcheck-rbd.txt 2>&1; then result db_amcheck 0; else result db_amcheck $?; fi
pg_stop /tmp/csi/stage/db-rbd/pg/data
csi unstage --keep-published db-rbd /tmp/csi/stage/db-rbd
csi delete $S db-rbd

# The same quiet pgbench on an iSCSI volume that the host's controller exported (tgtd on the
# host, in the test's namespace), for its TPS beside rbd's in the same boot.
for m in iscsi_tcp sd_mod; do modprobe "$m"; done
iscsid
ICTX=""; for kv in $CTX_ISCSI; do ICTX="$ICTX --context $kv"; done
for kv in $PUB_ISCSI; do ICTX="$ICTX --publish-context $kv"; done
csi stage --fs-type ext4 $ICTX db-iscsi /tmp/csi/stage/db-iscsi
result iscsi_source "$(findmnt -n -o SOURCE /tmp/csi/stage/db-iscsi)"
chmod 755 /tmp/csi/stage/db-iscsi
pg_init /tmp/csi/stage/db-iscsi/pg/data 5403
bench 5403 30 /share/pgbench-iscsi.txt
pg_stop /tmp/csi/stage/db-iscsi/pg/data
csi unstage db-iscsi /tmp/csi/stage/db-iscsi
result iscsi_sessions_at_end "$(ls /sys/class/iscsi_session | wc -l)"
/usr/sbin/mke2fs -q -t ext4 -m 0 /dev/vda
mount -o noatime /dev/vda /own
pg_init /own/pg/data 5402
bench 5402 30 /share/pgbench-own.txt
pg_stop /own/pg/data
umount /own

result mapped_at_end "$(mapped)"
result images_at_end "$(rbd -c /dev/null -m $MON --id swell-plugin --keyfile /share/plugin.key ls $POOL | wc -l)"
kill $plugin_pid; wait $plugin_pid || true
'''


def test_vm_rbd_node_maps_grows_and_unmaps():
    require_root()
    for tool in ("ceph-mon", "ceph-osd", "ceph-mgr", "rbd", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (scripts/setup.sh --tests installs it)")
    ns = f"swell-rbd-{os.getpid()}"
    root = tempfile.mkdtemp(prefix="swell-vmrbd-")
    inns = ["ip", "netns", "exec", ns]
    cluster = vm = ctl = None
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for argv in (["ip", "tuntap", "add", "tap0", "mode", "tap"], ["ip", "addr", "add", f"{HOST_ADDR}/24", "dev", "tap0"],
                     ["ip", "link", "set", "tap0", "up"], ["ip", "link", "set", "lo", "up"]):
            subprocess.run(inns + argv, check=True)
        cluster = ceph.Cluster(address=HOST_ADDR, netns=ns, osd_bytes=512 << 20).start()
        cluster.create_pool(POOL)
        key = cluster.create_user("swell-plugin", POOL)
        # An iSCSI volume for the same pgbench: tgtd in the namespace, admitting only the guest.
        ctl = Controller(portal_host=HOST_ADDR, address=HOST_ADDR, prefix=inns).start()
        iscsi_ctx = dict(ctl.create("db-iscsi", 1024 * MiB, cap=mount_cap("ext4"), publish_to="vm").volume_context)
        iscsi_pub = ctl.publish("db-iscsi", "vm", cap=mount_cap("ext4"))

        def stage(share):
            with open(os.path.join(share, "params"), "w") as f:
                f.write(f"MON={cluster.monitors}\nPOOL={POOL}\nGUEST_ADDR={GUEST_ADDR}\n")
                f.write(f"CTX_ISCSI='{iscsi.shell_words(iscsi_ctx)}'\n")
                f.write(f"PUB_ISCSI='{iscsi.shell_words(iscsi_pub)}'\n")
            with open(os.path.join(share, "plugin.key"), "w") as f:
                f.write(key + "\n")
            with open(os.path.join(share, "secrets"), "w") as f:
                f.write(f"userID=swell-plugin\nuserKey={key}\n")

        killed, holder = {}, {}

        def kill_a_holder(vm):
            """`rbd bench` writes the block volume's image from the host, holding its exclusive
            lock and a watch, and is SIGKILLed; then the guest may try to stage it."""
            vm.wait_for("hold-lock", 1200)
            spec = f"{POOL}/swell-vol-pvc-b"
            bench = subprocess.Popen(
                cluster.prefix + ["rbd", "-c", cluster.conf, "bench", "--io-type", "write", "--io-size", "4K",
                                  "--io-threads", "1", "--io-total", "10G", "--io-pattern", "rand", spec],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cluster.env(), start_new_session=True)
            try:
                ceph.Cluster.wait(lambda: "client." in cluster.run("rbd", "lock", "ls", spec).stdout, 60,
                                  "rbd bench holds the exclusive lock")
                status = cluster.run("rbd", "status", spec).stdout
                holder["address"] = re.search(r"watcher=(\S+)", status).group(1)
            finally:
                os.killpg(bench.pid, signal.SIGKILL)
                bench.wait()
            holder["at"] = time.monotonic()
            vm.signal("holder-killed")
            ceph.Cluster.wait(lambda: "watcher=" not in cluster.run("rbd", "status", spec).stdout, 120,
                              "the dead client's watch lapses")
            holder["lapsed_after"] = time.monotonic() - holder["at"]

        def kill_an_osd(vm):
            vm.wait_for("kill-osd", 1200)
            cluster.kill("osd.2")
            killed["at"] = time.monotonic()
            vm.signal("osd-killed")
            # The monitors mark it down: the pool serves from the two OSDs left.
            ceph.Cluster.wait(lambda: cluster.ceph_json("osd", "stat")["num_up_osds"] == 2, 120, "osd.2 is marked down")
            killed["down_after"] = time.monotonic() - killed["at"]

        vm, status, r, log = iscsi.run_guest(
            root, GUEST_SCRIPT, [1024 * MiB], 1500, memory_mib=1536, binaries=[SWELL, shutil.which("rbd")],
            stage=lambda share: (stage(share), stage_postgres(share)),
            during=lambda vm: (kill_a_holder(vm), kill_an_osd(vm)),
            netdev="tap,id=n0,ifname=tap0,script=no,downscript=no", prefix=inns)
        assert status == 0, f"guest.sh failed ({status}):\n{vm.console()}\n{log[-4000:]}"

        assert r["e_source"].startswith("/dev/rbd") and r["e_fstype"] == "ext4", r
        assert "client." in r["e_lock"], r["e_lock"]
        assert r["e_expand"] == f"capacity: {512 * MiB} bytes, node expansion required: true", r["e_expand"]
        assert int(r["e_dev_bytes"]) == 512 * MiB
        assert int(r["e_fs_after"]) > int(r["e_fs_before"]) + 200 * MiB, (r["e_fs_before"], r["e_fs_after"])
        assert r["e_sha_after"] == r["e_sha_before"] == r["e_sha_restaged"]
        assert f"bytes: total {r['e_fs_after']} " in r["e_stats"] and "condition: normal" in r["e_stats"], r["e_stats"]
        assert r["e_mapped_after_unstage"] == "0"
        assert "FAILED_PRECONDITION" in r["e_stage_watched"] and "in use by" in r["e_stage_watched"], r["e_stage_watched"]
        assert r["e_mapped_while_watched"] == "0"
        assert r["e2_sha"] == r["e_sha_after"], "the snapshot taken while mounted restores the data"
        assert "FAILED_PRECONDITION" in r["e_delete_staged"], r["e_delete_staged"]

        assert r["x_fstype"] == "xfs" and int(r["x_dev_bytes"]) == 448 * MiB
        assert int(r["x_fs_after"]) > int(r["x_fs_before"]) + 100 * MiB, (r["x_fs_before"], r["x_fs_after"])
        assert r["x_sha_after"] == r["x_sha_before"]

        # The dead client: refused while its watch lasted, staged once it lapsed; the guest's first
        # write broke its lock and blocklisted it (krbd does both when the owner has no watch).
        assert int(r["b_refusals"]) >= 1, r
        assert "client." in r["b_lock_after_write"], r["b_lock_after_write"]
        listed = cluster.run("ceph", "osd", "blocklist", "ls")
        blocklist = listed.stdout + listed.stderr
        assert holder["address"] in blocklist, (holder["address"], blocklist)
        assert int(r["b_dev_bytes_before"]) == 64 * MiB and int(r["b_dev_bytes_after"]) == 128 * MiB
        assert r["b_node_expand"].startswith(f"capacity: {128 * MiB}"), r["b_node_expand"]
        assert int(r["b_pub_bytes"]) == 128 * MiB
        assert r["b_sha_read"] == r["b_sha_written"]
        assert r["mapped_at_end"] == "0" and r["images_at_end"] == "0"

        def pgbench(name):
            with open(os.path.join(vm.share, f"pgbench-{name}.txt")) as f:
                text = f.read()
            tps = re.search(r"tps = ([0-9.]+)", text)
            failed = re.search(r"number of failed transactions: (\d+)", text)
            assert tps and failed, text
            return float(tps.group(1)), int(failed.group(1)), text
        tps_quiet, _, _ = pgbench("rbd-quiet")
        tps_kill, failed, text = pgbench("rbd")
        tps_own, _, _ = pgbench("own")
        tps_iscsi, iscsi_failed, iscsi_text = pgbench("iscsi")
        assert iscsi_failed == 0, iscsi_text
        assert r["iscsi_source"].startswith("/dev/sd") and r["iscsi_sessions_at_end"] == "0", r
        assert all(n == 0 for n in ctl.tgtd.targets().values()), ctl.tgtd.show()
        ctl.delete("db-iscsi")
        assert ctl.tgtd.targets() == {}
        assert r["db_pgbench"] == "0" and failed == 0, text
        assert r["db_amcheck"] == "0", open(os.path.join(vm.share, "amcheck-rbd.txt")).read()
        assert int(r["db_fs_bytes"]) > 1400 * MiB, r["db_fs_bytes"]
        print(f"pgbench TPS (-c 2, scale 2, TCG guest): rbd {tps_quiet:.1f}, rbd with an OSD killed and a grow "
              f"{tps_kill:.1f}, iSCSI {tps_iscsi:.1f}, the guest's own ext4 {tps_own:.1f}; osd.2 marked down {killed['down_after']:.1f} s "
              f"after its SIGKILL; the grow took {r['db_grow_ms']} ms; a client SIGKILLed holding an image: its watch "
              f"lapsed {holder['lapsed_after']:.1f} s after, the stage was refused {r['b_refusals']} times and "
              f"succeeded {int(r['b_stage_after_dead_ms']) / 1000:.1f} s after the guest learned of the kill")
        assert key not in log, "the key is never logged"
    finally:
        if vm is not None:
            vm.close()
        if ctl is not None:
            ctl.close()
        if cluster is not None:
            cluster.stop()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(root, ignore_errors=True)
