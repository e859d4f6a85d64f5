"""The lvm backend, in the VM tier: this machine's kernel has no device-mapper, a stock Debian
kernel under qemu TCG does. Inside the guest, on a volume group made on a virtio disk, the real
plugin (controller and node, as the node DaemonSet runs it) makes thin volumes, stages them as ext4
and xfs, grows them online, refuses what would overcommit the pool, converges after a crash in the
middle of CreateVolume, and deletes them. Thin snapshots are taken of a mounted volume (with a
crash right after their lvcreate), restored larger and cloned. A loop volume goes through the same steps in the same run,
for comparison (bench/bench_lvm.py reads the timings)."""
import shutil
import tempfile

import pytest

from conftest import SWELL, require_root
import iscsi

MiB = 1 << 20

GUEST_SCRIPT = r'''
# Runs in the guest (busybox sh -e).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LD_LIBRARY_PATH=/share/swell/lib
result() { echo "$1=$2" >> /share/results; }
ms() { read up _ < /proc/uptime; echo "${up%.*}${up#*.}0"; }
csi() { case "$1" in snapshot|group-snapshot) sub="$1 $2"; shift 2 ;; *) sub=$1; shift ;; esac
  /tmp/swell csi $sub --endpoint unix:///tmp/csi.sock "$@"; }
expect_code() { code=$1; shift; if out=$(csi "$@" 2>&1); then echo "expected $code: $*"; exit 1; fi
  case "$out" in *"$code"*) ;; *) echo "expected $code, got: $out"; exit 1 ;; esac; echo "$out"; }
for m in dm_thin_pool virtio_blk ext4 xfs loop; do modprobe "$m"; done
cp /share/swell/bin/swell /tmp/swell
lvm pvcreate -q /dev/vda
lvm vgcreate -q vg0 /dev/vda
lvm lvcreate -q --type thin-pool -L 600M -n pool0 vg0
start_plugin() {
  /tmp/swell plugin --mode all --endpoint unix:///tmp/csi.sock --data-dir /tmp/swell-data --node-id vm \
    --lvm-vg vg0 --lvm-thin-pool pool0 --lvm-overcommit-ratio 1 --log-level info >> /share/guest-plugin.log 2>&1 &
  plugin_pid=$!
  i=0; while [ ! -S /tmp/csi.sock ]; do i=$((i+1)); [ $i -lt 600 ] || { echo "no plugin socket"; exit 1; }; sleep 0.1; done
  csi probe
}

# A crash right after lvcreate, inside CreateVolume: the retry by a restarted plugin converges.
SWELL_FAILPOINTS=lvm-create-after-lvcreate start_plugin
if csi create --parameter backend=lvm --fs-type ext4 --bytes 33554432 pvc-crash; then echo "no crash"; exit 1; fi
wait $plugin_pid || true
rm -f /tmp/csi.sock
start_plugin
csi create --parameter backend=lvm --fs-type ext4 --bytes 33554432 pvc-crash
result crash_lvs "$(lvm lvs --noheadings -o lv_name vg0 | grep -c crash)"
csi delete pvc-crash
result crash_lvs_after_delete "$(lvm lvs --noheadings -o lv_name vg0 | grep -c crash || true)"

# ext4 and xfs on lvm, one ext4 on loop: create, stage, write, grow online, verify.
for spec in pvc-e4:lvm:ext4:64:128 pvc-xf:lvm:xfs:320:400 pvc-lp:loop:ext4:64:128; do
  IFS=: read id backend fs before after <<EOT
$spec
EOT
  csi create --parameter backend=$backend --fs-type $fs --bytes $((before * 1048576)) $id
  csi create --parameter backend=$backend --fs-type $fs --bytes $((before * 1048576)) $id   # idempotent
  csi stage --fs-type $fs --context backend=$backend $id /tmp/csi/stage/$id
  csi publish --fs-type $fs $id /tmp/csi/stage/$id /tmp/csi/pub/$id
  dd if=/dev/urandom of=/tmp/csi/pub/$id/data bs=1M count=16 conv=fsync 2>/dev/null
  result sha_before_$id "$(sha256sum /tmp/csi/pub/$id/data | cut -d' ' -f1)"
  result fs_bytes_before_$id "$(stat -f -c '%b %S' /tmp/csi/pub/$id | awk '{print $1*$2}')"
  csi expand --bytes $((after * 1048576)) $id
  csi expand --bytes $((before * 1048576)) $id   # never shrinks
  csi node-expand --bytes $((after * 1048576)) $id /tmp/csi/pub/$id
  result fs_bytes_after_$id "$(stat -f -c '%b %S' /tmp/csi/pub/$id | awk '{print $1*$2}')"
  result dev_bytes_after_$id "$(blockdev --getsize64 "$(findmnt -n -o SOURCE /tmp/csi/stage/$id)")"
  result sha_after_$id "$(sha256sum /tmp/csi/pub/$id/data | cut -d' ' -f1)"
done
# The loop volume's file is on the guest's tmpfs, which this kernel (6.1) cannot do O_DIRECT on: it
# refuses a direct-I/O attach, and the plugin attaches the device buffered.
result loop_dio_on_tmpfs "$(cat /sys/block/$(basename $(findmnt -n -o SOURCE /tmp/csi/stage/pvc-lp))/loop/dio)"
result lv_path_e4 "$(findmnt -n -o SOURCE /tmp/csi/stage/pvc-e4)"

# The pool (600 MiB, overcommit 1.0) holds 128 + 400 MiB now: more is RESOURCE_EXHAUSTED.
expect_code RESOURCE_EXHAUSTED create --parameter backend=lvm --fs-type ext4 --bytes 134217728 pvc-big
expect_code RESOURCE_EXHAUSTED expand --bytes 268435456 pvc-e4
expect_code INVALID_ARGUMENT create --parameter backend=lvm --parameter pool=nope --bytes 1048576 pvc-nopool
# A thin LV cannot become linear in place (ControllerModifyVolume); thin again changes nothing.
result e4_modify_thick "$(expect_code INVALID_ARGUMENT modify --parameter provisioning=thick pvc-e4 | tr '\n' ' ')"
result e4_modify_thin "$(csi modify --parameter provisioning=thin pvc-e4)"
result capacity "$(csi capacity --parameter backend=lvm)"

# Sizes are whole extents (4 MiB here): 65 MiB asked is 68 MiB made.
result odd_size "$(csi create --parameter backend=lvm --block --bytes 68157440 pvc-odd | head -n 1)"
csi delete pvc-odd

# A mounted volume is not deleted; after unstage it is, and its LV is gone.
expect_code FAILED_PRECONDITION delete pvc-e4
for id in pvc-e4 pvc-xf pvc-lp; do
  csi unpublish $id /tmp/csi/pub/$id
  csi unstage $id /tmp/csi/stage/$id
  csi delete $id
  csi delete $id   # idempotent
done
result swell_lvs_left "$(lvm lvs --noheadings -o lv_name vg0 | grep -c sw- || true)"

# After a node restart LVs are inactive: stage activates them.
csi create --parameter backend=lvm --fs-type xfs --bytes 314572800 pvc-re
lvm lvchange -an vg0/sw-pvc-re
csi stage --fs-type xfs --context backend=lvm pvc-re /tmp/csi/stage/pvc-re
result reactivated "$(findmnt -n -o FSTYPE /tmp/csi/stage/pvc-re)"
csi unstage pvc-re /tmp/csi/stage/pvc-re
csi delete pvc-re
# Thin snapshots of an ext4 volume mounted here: a crash right after the snapshot's lvcreate, then
# a retry; a restore that is larger (grown online at stage) and a clone of the mounted source.
csi create --parameter backend=lvm --fs-type ext4 --bytes 67108864 pvc-sn
csi stage --fs-type ext4 --context backend=lvm pvc-sn /tmp/csi/stage/pvc-sn
dd if=/dev/urandom of=/tmp/csi/stage/pvc-sn/data bs=1M count=8 conv=fsync 2>/dev/null
result sha_snap_source "$(sha256sum /tmp/csi/stage/pvc-sn/data | cut -d' ' -f1)"
kill $plugin_pid; wait $plugin_pid || true; rm -f /tmp/csi.sock
SWELL_FAILPOINTS=lvm-snapshot-after-lvcreate start_plugin
if csi snapshot create snap-sn pvc-sn; then echo "no crash"; exit 1; fi
wait $plugin_pid || true
rm -f /tmp/csi.sock
start_plugin
csi snapshot create snap-sn pvc-sn
csi snapshot create snap-sn pvc-sn   # idempotent
result snap_lvs "$(lvm lvs --noheadings -o lv_name vg0 | grep -c sws-snap-sn)"
result snap_list "$(csi snapshot list)"
expect_code ALREADY_EXISTS snapshot create snap-sn pvc-none-such
dd if=/dev/zero of=/tmp/csi/stage/pvc-sn/data bs=1M count=8 conv=fsync 2>/dev/null   # changed after the snapshot
csi create --parameter backend=lvm --fs-type ext4 --bytes 100663296 --from-snapshot snap-sn pvc-rs
csi stage --fs-type ext4 --context backend=lvm --context contentSource=snapshot:snap-sn pvc-rs /tmp/csi/stage/pvc-rs
result sha_restored "$(sha256sum /tmp/csi/stage/pvc-rs/data | cut -d' ' -f1)"
result fs_bytes_restored "$(stat -f -c '%b %S' /tmp/csi/stage/pvc-rs | awk '{print $1*$2}')"
result dev_bytes_restored "$(blockdev --getsize64 "$(findmnt -n -o SOURCE /tmp/csi/stage/pvc-rs)")"
csi create --parameter backend=lvm --fs-type ext4 --bytes 67108864 --from-volume pvc-sn pvc-cl
csi stage --fs-type ext4 --context backend=lvm --context contentSource=volume:pvc-sn pvc-cl /tmp/csi/stage/pvc-cl
result sha_clone "$(sha256sum /tmp/csi/stage/pvc-cl/data | cut -d' ' -f1)"
dd if=/dev/urandom of=/tmp/csi/stage/pvc-sn/after bs=1M count=1 conv=fsync 2>/dev/null   # the source is not frozen
# A group of thin LVs cannot be held at one instant: refused, naming why, with nothing made.
result group_refused "$(expect_code FAILED_PRECONDITION group-snapshot create grp pvc-sn pvc-cl)"
result group_lvs "$(lvm lvs --noheadings -o lv_name vg0 | grep -c grp || true)"
expect_code OUT_OF_RANGE create --parameter backend=lvm --fs-type ext4 --bytes 33554432 --from-snapshot snap-sn pvc-small
# The pool guards apply to snapshots: 64 + 64 + 96 + 64 MiB are given out, 300 more fit once, not twice.
csi create --parameter backend=lvm --block --bytes 314572800 pvc-bigsrc
expect_code RESOURCE_EXHAUSTED snapshot create snap-big pvc-bigsrc
csi delete pvc-bigsrc
# A snapshot outlives its source.
csi unstage pvc-sn /tmp/csi/stage/pvc-sn
csi delete pvc-sn
result snap_after_source_delete "$(csi snapshot list)"
csi snapshot delete snap-sn
csi snapshot delete snap-sn   # idempotent
for id in pvc-rs pvc-cl; do csi unstage $id /tmp/csi/stage/$id; csi delete $id; done
result lvs_left_after_snapshots "$(lvm lvs --noheadings -o lv_name vg0 | grep -c sw || true)"

# What one LVM command costs here (the backend runs one to four per call).
t0=$(ms); lvm lvs --reportformat json vg0 > /dev/null; result lvs_ms $(( $(ms) - t0 ))
kill $plugin_pid
'''


def run_lvm_vm(swell, root):
    """Boots the guest with a 1 GiB virtio disk and runs GUEST_SCRIPT; returns the VM (the caller
    closes it), guest.sh's exit status, its results and the guest plugin's log."""
    return iscsi.run_guest(root, GUEST_SCRIPT, [1 << 30], 900, binaries=[swell])


def test_vm_lvm_thin_lifecycle():
    require_root()
    if shutil.which("lvm") is None:
        pytest.fail("lvm2 is not installed on the host (scripts/setup.sh --tests installs it)")
    root = tempfile.mkdtemp(prefix="swell-lvm-")
    vm = None
    try:
        vm, status, r, log = run_lvm_vm(SWELL, root)
        assert status == 0, f"the guest failed:\n{vm.console()}\n{log[-4000:]}"
        assert r["crash_lvs"] == "1", "the retried create found the LV the crashed one made"
        assert r["crash_lvs_after_delete"] == "0"
        for vid, before, after in [("pvc-e4", 64, 128), ("pvc-xf", 320, 400), ("pvc-lp", 64, 128)]:
            assert r[f"sha_after_{vid}"] == r[f"sha_before_{vid}"], vid
            assert int(r[f"dev_bytes_after_{vid}"]) == after * MiB, vid
            fs_before, fs_after = int(r[f"fs_bytes_before_{vid}"]), int(r[f"fs_bytes_after_{vid}"])
            assert fs_after > fs_before + (after - before) * MiB * 0.9, (vid, fs_before, fs_after)
        assert r["loop_dio_on_tmpfs"] == "0", "the loop device on the guest's tmpfs is buffered"
        assert "refused direct I/O" in log, "and each stage of it logged why"
        assert r["lv_path_e4"] in ("/dev/vg0/sw-pvc-e4", "/dev/mapper/vg0-sw--pvc--e4")
        # 600 MiB pool, overcommit 1.0, 528 MiB given out: GetCapacity says what is left.
        assert r["capacity"].startswith(f"available: {72 * MiB} bytes"), r["capacity"]
        assert r["odd_size"] == f"volume pvc-odd: {68 * MiB} bytes", r["odd_size"]
        assert "in place" in r["e4_modify_thick"] and r["e4_modify_thin"] == "modified pvc-e4", r
        assert r["swell_lvs_left"] == "0"
        assert r["reactivated"] == "xfs"
        # Thin snapshots: one LV after a crash and a retry; restore and clone hold the data of
        # their moment; the larger restore's filesystem fills its device.
        assert r["snap_lvs"] == "1", "the retried snapshot found the LV the crashed one made"
        assert r["snap_list"].startswith("snap-sn\tof pvc-sn\t67108864 bytes"), r["snap_list"]
        assert r["sha_restored"] == r["sha_snap_source"]
        zeros_8mib = "2daeb1f36095b44b318410b3f4e8b5d989dcc7bb023d1426c492dab0a3053e74"
        assert r["sha_clone"] == zeros_8mib, "the clone holds the source as it was when cloned"
        assert int(r["dev_bytes_restored"]) == 96 * MiB
        assert int(r["fs_bytes_restored"]) > 80 * MiB, "the restored ext4 was grown online at stage"
        assert r["snap_after_source_delete"].startswith("snap-sn\tof pvc-sn"), r["snap_after_source_delete"]
        assert r["lvs_left_after_snapshots"] == "0"
        assert "lvm volumes" in r["group_refused"] and "frozen" in r["group_refused"], r["group_refused"]
        assert r["group_lvs"] == "0"
    finally:
        if vm is not None:
            vm.close()
        shutil.rmtree(root, ignore_errors=True)
