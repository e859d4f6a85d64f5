"""Database-speed local volumes, in the VM tier: this machine's kernel has neither quotas nor
device-mapper, a stock Debian kernel under qemu TCG has both.

Inside the guest, the real plugin (controller and node, as the node DaemonSet runs it) serves:
- dir volumes on an xfs mounted with `prjquota`: create, stage, publish, statfs reporting the
  limit, a writer refused at the limit (ENOSPC on xfs, EDQUOT on ext4), a grow while a writer keeps writing, capacity
  net of what the limits promise, project IDs that stay distinct across a restart and a SIGKILL
  inside create and inside grow, delete refused while mounted, then freeing the ID and its limit;
  snapshots, restores and clones of an unstaged volume (reflink copies, a SIGKILL after each copy),
  and a staged one refused; an overcommitting class;
- dir volumes on an ext4 with the `project` and `quota` features, mounted with `prjquota` (a
  snapshot and a restore are plain copies there);
- a dir root on an xfs mounted without `prjquota`: Probe and CreateVolume say which option is missing;
- thick (linear) LVM volumes in a volume group with no thin pool: create (and a SIGKILL right
  after lvcreate), xfs staged, grown online, capacity from the group's free extents, and the
  snapshot and clone they refuse;
- a loop volume with ext4 grown while published: the guest's root holds CAP_SYS_RESOURCE, so this
  is the branch of NE4 the host (without it) cannot reach."""
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
SOCK=/tmp/csi.sock
AS_POD="/usr/bin/setpriv --reuid=1000 --regid=1000 --clear-groups"
csi() { case "$1" in snapshot|group-snapshot) sub="$1 $2"; shift 2 ;; *) sub=$1; shift ;; esac
  /tmp/swell csi $sub --endpoint unix://$SOCK "$@"; }
expect_code() { code=$1; shift; if out=$(csi "$@" 2>&1); then echo "expected $code: $*"; exit 1; fi
  case "$out" in *"$code"*) ;; *) echo "expected $code, got: $out"; exit 1 ;; esac; echo "$out"; }
for m in virtio_blk dm_mod xfs ext4 loop quota_v2; do modprobe "$m"; done
i=0; while [ ! -b /dev/vdc ]; do i=$((i+1)); [ $i -lt 100 ] || { echo "no /dev/vdc"; exit 1; }; sleep 0.1; done
cp /share/swell/bin/swell /tmp/swell

# The data filesystems: xfs and ext4 with project quotas enforced, and an xfs without them.
mkfs.xfs -q /dev/vdb
mkdir -p /data/xfs /data/ext4 /data/plain
mount -o prjquota /dev/vdb /data/xfs
/usr/sbin/mke2fs -q -t ext4 -O quota,project -E quotatype=prjquota /dev/vdc
mount -o prjquota /dev/vdc /data/ext4
dd if=/dev/zero of=/tmp/plain.img bs=1M count=0 seek=300 2>/dev/null
mkfs.xfs -q /tmp/plain.img
mount -o loop /tmp/plain.img /data/plain
lvm pvcreate -q /dev/vda
lvm vgcreate -q vg0 /dev/vda

start_plugin() {   # SOCK, then extra flags
  /tmp/swell plugin --mode all --endpoint unix://$SOCK --data-dir /tmp/swell-data-$(basename $SOCK .sock) --node-id vm \
    --log-level info "$@" >> /share/guest-plugin.log 2>&1 &
  plugin_pid=$!
  i=0; while [ ! -S $SOCK ]; do i=$((i+1)); [ $i -lt 600 ] || { echo "no plugin socket"; exit 1; }; sleep 0.1; done
}
restart_plugin() {   # kills the plugin (or waits for the one a failpoint killed), starts it again
  kill -9 $plugin_pid 2>/dev/null || true; wait $plugin_pid || true; rm -f $SOCK
  start_plugin "$@"
}
FLAGS="--dir-root /data/xfs/swell --lvm-vg vg0"
project() { sed -n 's/^project=//p' /data/xfs/swell/volumes/$1/meta; }

# Without prjquota: reported by Probe and CreateVolume, and nothing is made.
SOCK=/tmp/csi-plain.sock
start_plugin --dir-root /data/plain/swell
result plain_probe "$(expect_code FAILED_PRECONDITION probe | tr '\n' ' ')"
result plain_create "$(expect_code FAILED_PRECONDITION create --parameter backend=dir --bytes 8388608 pvc-p | tr '\n' ' ')"
result plain_volumes "$(ls /data/plain/swell/volumes | wc -l)"
kill $plugin_pid; wait $plugin_pid || true

SOCK=/tmp/csi.sock
start_plugin $FLAGS
csi probe
# A SIGKILL inside CreateVolume, after the limit is set: the retry keeps the recorded project ID.
restart_plugin $FLAGS
kill $plugin_pid; wait $plugin_pid || true; rm -f $SOCK
SWELL_FAILPOINTS=dir-create-after-quota start_plugin $FLAGS
if csi create --parameter backend=dir --bytes 67108864 pvc-d1; then echo "no crash"; exit 1; fi
result crash_marker_project "$(sed -n 's/^project=//p' /data/xfs/swell/volumes/.pvc-d1.creating/meta)"
restart_plugin $FLAGS
csi create --parameter backend=dir --bytes 67108864 pvc-d1
csi create --parameter backend=dir --bytes 67108864 pvc-d1   # idempotent
result d1_project "$(project pvc-d1)"
result creating_left "$(ls -a /data/xfs/swell/volumes | grep -c creating || true)"
expect_code INVALID_ARGUMENT create --parameter backend=dir --block --bytes 8388608 pvc-blk
csi create --parameter backend=dir --bytes 33554432 pvc-d2
result d2_project "$(project pvc-d2)"

# Stage, publish, statfs, fill to the limit.
csi stage --context backend=dir pvc-d1 /tmp/csi/stage/pvc-d1
csi stage --context backend=dir pvc-d1 /tmp/csi/stage/pvc-d1   # idempotent
csi publish pvc-d1 /tmp/csi/stage/pvc-d1 /tmp/csi/pub/pvc-d1
# Writers run as a pod's do: not root, without CAP_SYS_RESOURCE (which lets ext4's quotas be exceeded).
chown 1000:1000 /tmp/csi/pub/pvc-d1
chmod 755 /tmp/csi /tmp/csi/pub /tmp/csi/stage
result d1_statfs_bytes "$(stat -f -c '%b %S' /tmp/csi/pub/pvc-d1 | awk '{print $1*$2}')"
result d1_stats "$(csi stats pvc-d1 /tmp/csi/pub/pvc-d1 | tr '\n' ' ')"
if $AS_POD dd if=/dev/zero of=/tmp/csi/pub/pvc-d1/fill bs=1M count=100 conv=fsync 2> /tmp/dd.err; then echo "no EDQUOT"; exit 1; fi
result fill_error "$(tr '\n' ' ' < /tmp/dd.err)"
cat /tmp/dd.err
result fill_bytes "$(stat -c %s /tmp/csi/pub/pvc-d1/fill)"
result fill_health "$(csi stats pvc-d1 /tmp/csi/pub/pvc-d1 | tr '\n' ' ')"
rm /tmp/csi/pub/pvc-d1/fill

# A writer keeps writing 1 MiB at a time while the volume grows from 64 to 128 MiB; it writes
# 40 MiB, waits for the grow, then goes on to 100 MiB, past the old limit.
( i=0; while [ $i -lt 100 ]; do
    [ $i -ne 40 ] || while [ ! -e /tmp/grown ]; do sleep 0.05; done
    $AS_POD dd if=/dev/urandom of=/tmp/csi/pub/pvc-d1/w bs=1M count=1 seek=$i conv=notrunc,fsync 2>>/tmp/w.err || { echo $i > /tmp/w.failed; exit 1; }
    i=$((i+1)); done; touch /tmp/w.done ) &
writer=$!
while [ ! -s /tmp/csi/pub/pvc-d1/w ] || [ $(stat -c %s /tmp/csi/pub/pvc-d1/w) -lt 20971520 ]; do sleep 0.05; done
t0=$(ms)
result d1_expand "$(csi expand --bytes 134217728 pvc-d1)"
csi node-expand --bytes 134217728 pvc-d1 /tmp/csi/pub/pvc-d1
result grow_ms $(( $(ms) - t0 ))
result written_at_grow "$(stat -c %s /tmp/csi/pub/pvc-d1/w)"
touch /tmp/grown
wait $writer || true
result writer_done "$([ -e /tmp/w.done ] && echo yes || echo "no: $(cat /tmp/w.failed 2>/dev/null) $(cat /tmp/w.err)")"
result written_after_grow "$(stat -c %s /tmp/csi/pub/pvc-d1/w)"
result d1_statfs_after "$(stat -f -c '%b %S' /tmp/csi/pub/pvc-d1 | awk '{print $1*$2}')"
csi expand --bytes 67108864 pvc-d1   # never shrinks
result d1_list "$(csi list | grep pvc-d1)"

# Capacity is the free space less what the limits promise beyond what is used.
result capacity "$(csi capacity --parameter backend=dir)"
result fs_avail "$(stat -f -c '%a %S' /data/xfs/swell | awk '{print $1*$2}')"
expect_code RESOURCE_EXHAUSTED create --parameter backend=dir --bytes 1073741824 pvc-huge
# A class that asks for overcommit gets the 1 GiB limit on this 512 MiB disk, and reserves nothing.
csi create --parameter backend=dir --parameter overcommit=true --bytes 1073741824 pvc-over
result over_capacity "$(csi capacity --parameter backend=dir)"
result over_capacity_oc "$(csi capacity --parameter backend=dir --parameter overcommit=true)"
result over_fs_avail "$(stat -f -c '%a %S' /data/xfs/swell | awk '{print $1*$2}')"
result over_statfs "$(csi stage --context backend=dir pvc-over /tmp/csi/stage/pvc-over >/dev/null && stat -f -c '%b %S' /tmp/csi/stage/pvc-over | awk '{print $1*$2}')"
result over_fs_total "$(stat -f -c '%b %S' /data/xfs/swell | awk '{print $1*$2}')"
csi unstage pvc-over /tmp/csi/stage/pvc-over
csi delete pvc-over

# A SIGKILL inside ControllerExpandVolume, after the limit is raised: the retry records it.
kill $plugin_pid; wait $plugin_pid || true; rm -f $SOCK
SWELL_FAILPOINTS=dir-expand-after-quota start_plugin $FLAGS
if csi expand --bytes 50331648 pvc-d2; then echo "no crash"; exit 1; fi
result d2_meta_after_crash "$(sed -n 's/^capacity_bytes=//p' /data/xfs/swell/volumes/pvc-d2/meta)"
restart_plugin $FLAGS
result d2_expand_retry "$(csi expand --bytes 50331648 pvc-d2)"
result d2_meta_after_retry "$(sed -n 's/^capacity_bytes=//p' /data/xfs/swell/volumes/pvc-d2/meta)"

# After a restart the IDs hold; a new volume takes one no one has.
csi create --parameter backend=dir --bytes 16777216 pvc-d3
result d3_project "$(project pvc-d3)"
result d1_project_after_restart "$(project pvc-d1)"
expect_code FAILED_PRECONDITION snapshot create snap-d1 pvc-d1   # staged: refused
# A directory has nothing to preallocate: provisioning=thick is refused, thin changes nothing.
result d2_modify_thick "$(expect_code INVALID_ARGUMENT modify --parameter provisioning=thick pvc-d2 | tr '\n' ' ')"
result d2_modify_thin "$(csi modify --parameter provisioning=thin pvc-d2)"
# Dir volumes share the host's filesystem: no group snapshot of them, and nothing made.
result d_group "$(expect_code FAILED_PRECONDITION group-snapshot create grp-d pvc-d1 pvc-d2 | tr '\n' ' ')"
result d_group_dirs "$(ls /data/xfs/swell/snapshots | grep -c grp-d || true)"
# An inode limit (the project quota's), set at create from a VolumeAttributesClass and changed while
# the volume is staged; a grow keeps it.
fill() { i=$1; while [ $i -lt $2 ] && touch /tmp/csi/stage/pvc-in/f$i 2>/dev/null; do i=$((i+1)); done; echo $i; }
csi create --parameter backend=dir --mutable-parameter inodeLimit=40 --bytes 16777216 pvc-in
csi stage --context backend=dir pvc-in /tmp/csi/stage/pvc-in
n=$(fill 0 1000); result in_files_40 $n
result in_statfs_40 "$(stat -f -c %c /tmp/csi/stage/pvc-in)"
result in_below "$(expect_code INVALID_ARGUMENT modify --parameter inodeLimit=10 pvc-in | tr '\n' ' ')"
result in_modify "$(csi modify --parameter inodeLimit=200 pvc-in)"
m=$(fill $n 1000); result in_files_200 $m
csi expand --bytes 33554432 pvc-in
result in_statfs_after_expand "$(stat -f -c %c /tmp/csi/stage/pvc-in)"
result in_meta "$(grep inode_limit /data/xfs/swell/volumes/pvc-in/meta)"
csi modify --parameter inodeLimit=0 pvc-in
result in_files_none "$(fill $m $((m + 100)))"
csi unstage pvc-in /tmp/csi/stage/pvc-in
csi delete pvc-in

# Delete: refused while mounted; then the ID and its limit are freed and the next volume reuses it.
expect_code FAILED_PRECONDITION delete pvc-d1
csi unpublish pvc-d1 /tmp/csi/pub/pvc-d1
csi unstage pvc-d1 /tmp/csi/stage/pvc-d1

# Snapshots, restores and clones of unstaged dir volumes: reflink copies on this xfs. A SIGKILL
# after each copy, then a retry that converges.
result d1_sha "$(sha256sum /data/xfs/swell/volumes/pvc-d1/data/w | cut -d' ' -f1)"
kill $plugin_pid; wait $plugin_pid || true; rm -f $SOCK
SWELL_FAILPOINTS=dir-snapshot-after-copy start_plugin $FLAGS
if csi snapshot create snap-d1 pvc-d1; then echo "no crash"; exit 1; fi
restart_plugin $FLAGS
csi snapshot create snap-d1 pvc-d1
csi snapshot create snap-d1 pvc-d1   # idempotent
expect_code ALREADY_EXISTS snapshot create snap-d1 pvc-d2
result snap_list "$(csi snapshot list | grep snap-d1)"
result snap_method "$(sed -n 's/^method=//p' /data/xfs/swell/snapshots/snap-d1/meta)"
result snap_dirs "$(ls -a /data/xfs/swell/snapshots | grep -v '^\.\.\?$' | tr '\n' ' ')"
kill $plugin_pid; wait $plugin_pid || true; rm -f $SOCK
SWELL_FAILPOINTS=dir-restore-after-copy start_plugin $FLAGS
if csi create --parameter backend=dir --bytes 134217728 --from-snapshot snap-d1 pvc-r1; then echo "no crash"; exit 1; fi
restart_plugin $FLAGS
csi create --parameter backend=dir --bytes 134217728 --from-snapshot snap-d1 pvc-r1
csi create --parameter backend=dir --bytes 134217728 --from-snapshot snap-d1 pvc-r1   # idempotent
expect_code ALREADY_EXISTS create --parameter backend=dir --bytes 134217728 pvc-r1
expect_code OUT_OF_RANGE create --parameter backend=dir --bytes 33554432 --from-snapshot snap-d1 pvc-r2
expect_code NOT_FOUND create --parameter backend=dir --bytes 134217728 --from-snapshot snap-none pvc-r3
csi create --parameter backend=dir --bytes 134217728 --from-volume pvc-d1 pvc-c1
for id in pvc-r1 pvc-c1; do
  csi stage --context backend=dir $id /tmp/csi/stage/$id
  result ${id}_sha "$(sha256sum /tmp/csi/stage/$id/w | cut -d' ' -f1)"
  result ${id}_owner "$(stat -c %u /tmp/csi/stage/$id/w)"
  # The copy is charged to the new volume's own limit: statfs under it shows the file as used.
  result ${id}_used "$(stat -f -c '%b %f %S' /tmp/csi/stage/$id | awk '{print ($1-$2)*$3}')"
  result ${id}_project_differs "$([ "$(project $id)" != "$(project pvc-d1)" ] && echo yes || echo no)"
done
# The copy is the volume's own: a write to the restore leaves the snapshot and the source as they were.
echo changed > /tmp/csi/stage/pvc-r1/w
result d1_sha_after_restore_write "$(sha256sum /data/xfs/swell/volumes/pvc-d1/data/w | cut -d' ' -f1)"
result snap_sha_after_restore_write "$(sha256sum /data/xfs/swell/snapshots/snap-d1/data/w | cut -d' ' -f1)"
# A staged source cannot be copied consistently: refused, and nothing is made.
result staged_clone "$(expect_code FAILED_PRECONDITION create --parameter backend=dir --bytes 134217728 --from-volume pvc-r1 pvc-c2 | tr '\n' ' ')"
result staged_snapshot "$(expect_code FAILED_PRECONDITION snapshot create snap-r1 pvc-r1 | tr '\n' ' ')"
result refused_left "$(ls -a /data/xfs/swell/volumes /data/xfs/swell/snapshots | grep -c 'pvc-c2\|snap-r1' || true)"
for id in pvc-r1 pvc-c1; do csi unstage $id /tmp/csi/stage/$id; csi delete $id; done
csi snapshot delete snap-d1
csi snapshot delete snap-d1   # idempotent
result snaps_left "$(ls -a /data/xfs/swell/snapshots | grep -vc '^\.\.\?$' || true)"

csi delete pvc-d1
csi delete pvc-d1   # idempotent
result d1_gone "$(ls /data/xfs/swell/volumes | grep -c pvc-d1 || true)"
result capacity_after_delete "$(csi capacity --parameter backend=dir)"
csi create --parameter backend=dir --bytes 16777216 pvc-d4
result d4_project "$(project pvc-d4)"
for id in pvc-d2 pvc-d3 pvc-d4; do csi delete $id; done
result volumes_left "$(ls -a /data/xfs/swell/volumes | grep -c pvc || true)"

# Thick LVM: linear LVs in a group with no thin pool.
kill $plugin_pid; wait $plugin_pid || true; rm -f $SOCK
SWELL_FAILPOINTS=lvm-create-after-lvcreate start_plugin $FLAGS
if csi create --parameter backend=lvm --parameter provisioning=thick --fs-type xfs --bytes 314572800 pvc-t1; then echo "no crash"; exit 1; fi
restart_plugin $FLAGS
csi create --parameter backend=lvm --parameter provisioning=thick --fs-type xfs --bytes 314572800 pvc-t1
csi create --parameter backend=lvm --parameter provisioning=thick --fs-type xfs --bytes 314572800 pvc-t1   # idempotent
expect_code ALREADY_EXISTS create --parameter backend=lvm --fs-type xfs --bytes 314572800 pvc-t1
result t1_segtype "$(lvm lvs --noheadings -o segtype vg0/sw-pvc-t1 | tr -d ' ')"
result t1_lvs "$(lvm lvs --noheadings -o lv_name vg0 | grep -c pvc-t1)"
csi stage --fs-type xfs --context backend=lvm pvc-t1 /tmp/csi/stage/pvc-t1
dd if=/dev/urandom of=/tmp/csi/stage/pvc-t1/data bs=1M count=16 conv=fsync 2>/dev/null
result t1_sha_before "$(sha256sum /tmp/csi/stage/pvc-t1/data | cut -d' ' -f1)"
result t1_fs_before "$(stat -f -c '%b %S' /tmp/csi/stage/pvc-t1 | awk '{print $1*$2}')"
t0=$(ms)
csi expand --bytes 419430400 pvc-t1
csi node-expand --bytes 419430400 pvc-t1 /tmp/csi/stage/pvc-t1
result t1_grow_ms $(( $(ms) - t0 ))
result t1_dev_bytes "$(blockdev --getsize64 "$(findmnt -n -o SOURCE /tmp/csi/stage/pvc-t1)")"
result t1_fs_bytes "$(stat -f -c '%b %S' /tmp/csi/stage/pvc-t1 | awk '{print $1*$2}')"
result t1_sha_after "$(sha256sum /tmp/csi/stage/pvc-t1/data | cut -d' ' -f1)"
result t1_capacity "$(csi capacity --parameter backend=lvm --parameter provisioning=thick)"
result vg_free "$(lvm vgs --noheadings --units b --nosuffix -o vg_free vg0 | tr -d ' ')"
expect_code RESOURCE_EXHAUSTED create --parameter backend=lvm --parameter provisioning=thick --bytes 268435456 pvc-t2
expect_code INVALID_ARGUMENT create --parameter backend=lvm --bytes 8388608 pvc-thin
expect_code FAILED_PRECONDITION snapshot create snap-t1 pvc-t1
# A VolumeAttributesClass cannot make a linear LV thin in place; its own value changes nothing.
result t1_modify_thin "$(expect_code INVALID_ARGUMENT modify --parameter provisioning=thin pvc-t1 | tr '\n' ' ')"
result t1_modify_thick "$(csi modify --parameter provisioning=thick pvc-t1)"
expect_code INVALID_ARGUMENT create --parameter backend=lvm --parameter provisioning=thick --bytes 419430400 --from-volume pvc-t1 pvc-t3
csi unstage pvc-t1 /tmp/csi/stage/pvc-t1
csi delete pvc-t1
result lvs_left "$(lvm lvs --noheadings -o lv_name vg0 | grep -c sw- || true)"
kill $plugin_pid; wait $plugin_pid || true

# ext4 with project quotas.
SOCK=/tmp/csi-ext4.sock
start_plugin --dir-root /data/ext4/swell
csi create --parameter backend=dir --bytes 33554432 pvc-e1
csi stage --context backend=dir pvc-e1 /tmp/csi/stage/pvc-e1
chown 1000:1000 /tmp/csi/stage/pvc-e1
result e1_statfs_bytes "$(stat -f -c '%b %S' /tmp/csi/stage/pvc-e1 | awk '{print $1*$2}')"
if $AS_POD dd if=/dev/zero of=/tmp/csi/stage/pvc-e1/fill bs=1M count=64 conv=fsync 2> /tmp/dd.err; then echo "no EDQUOT on ext4"; exit 1; fi
result e1_fill_error "$(tr '\n' ' ' < /tmp/dd.err)"
csi expand --bytes 67108864 pvc-e1
csi node-expand --bytes 67108864 pvc-e1 /tmp/csi/stage/pvc-e1
$AS_POD dd if=/dev/zero of=/tmp/csi/stage/pvc-e1/more bs=1M count=16 conv=fsync 2>/dev/null
result e1_statfs_after "$(stat -f -c '%b %S' /tmp/csi/stage/pvc-e1 | awk '{print $1*$2}')"
csi unstage pvc-e1 /tmp/csi/stage/pvc-e1
# ext4 has no reflink: a snapshot and its restore are plain copies.
result e1_sha "$(sha256sum /data/ext4/swell/volumes/pvc-e1/data/more | cut -d' ' -f1)"
csi snapshot create snap-e1 pvc-e1
result e1_snap_method "$(sed -n 's/^method=//p' /data/ext4/swell/snapshots/snap-e1/meta)"
csi create --parameter backend=dir --bytes 67108864 --from-snapshot snap-e1 pvc-e2
result e2_sha "$(sha256sum /data/ext4/swell/volumes/pvc-e2/data/more | cut -d' ' -f1)"
csi delete pvc-e2
csi snapshot delete snap-e1
csi delete pvc-e1
result e1_left "$(ls /data/ext4/swell/volumes | wc -l)"

# A loop volume with ext4, grown while published: the guest's root holds CAP_SYS_RESOURCE, so the
# kernel's online resize runs (the host without it answers FAILED_PRECONDITION, NE4).
result cap_eff "$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)"
csi create --bytes 67108864 pvc-l1
csi stage pvc-l1 /tmp/csi/stage/pvc-l1
csi publish pvc-l1 /tmp/csi/stage/pvc-l1 /tmp/csi/pub/pvc-l1
result l1_fstype "$(findmnt -n -o FSTYPE /tmp/csi/pub/pvc-l1)"
dd if=/dev/urandom of=/tmp/csi/pub/pvc-l1/data bs=1M count=16 conv=fsync 2>/dev/null
result l1_sha_before "$(sha256sum /tmp/csi/pub/pvc-l1/data | cut -d' ' -f1)"
result l1_fs_before "$(stat -f -c '%b %S' /tmp/csi/pub/pvc-l1 | awk '{print $1*$2}')"
result l1_expand "$(csi expand --bytes 134217728 pvc-l1)"
result l1_node_expand "$(csi node-expand --bytes 134217728 pvc-l1 /tmp/csi/pub/pvc-l1 2>&1 | tr '\n' ' ')"
result l1_fs_after "$(stat -f -c '%b %S' /tmp/csi/pub/pvc-l1 | awk '{print $1*$2}')"
result l1_sha_after "$(sha256sum /tmp/csi/pub/pvc-l1/data | cut -d' ' -f1)"
csi unpublish pvc-l1 /tmp/csi/pub/pvc-l1
csi unstage pvc-l1 /tmp/csi/stage/pvc-l1
csi delete pvc-l1
result l1_loops "$(losetup -a | grep -c pvc-l1 || true)"
kill $plugin_pid; wait $plugin_pid || true
'''


def run_local_vm(swell, root):
    """Boots the guest with a 512 MiB disk for the volume group, a 512 MiB one for the xfs data
    filesystem and a 256 MiB one for the ext4; returns the VM (the caller closes it), guest.sh's
    exit status, its results and the guest plugin's log."""
    return iscsi.run_guest(root, GUEST_SCRIPT, [512 * MiB, 512 * MiB, 256 * MiB], 900, binaries=[swell])


def test_vm_dir_and_thick_lvm_volumes():
    require_root()
    if shutil.which("lvm") is None:
        pytest.fail("lvm2 is not installed on the host (scripts/setup.sh --tests installs it)")
    root = tempfile.mkdtemp(prefix="swell-local-")
    vm = None
    try:
        vm, status, r, log = run_local_vm(SWELL, root)
        assert status == 0, f"the guest failed:\n{vm.console()}\n{log[-4000:]}"
        # No quotas: the option is named, and nothing is made.
        assert "prjquota" in r["plain_probe"] and "prjquota" in r["plain_create"], r
        assert r["plain_volumes"] == "0"
        # The crashed create recorded its project ID first; the retry kept it and left no marker.
        assert r["crash_marker_project"] == r["d1_project"] != ""
        assert r["creating_left"] == "0"
        assert r["d2_project"] != r["d1_project"]
        # statfs under the volume reports the limit (xfs rounds nothing here: 64 MiB).
        assert int(r["d1_statfs_bytes"]) == 64 * MiB, r["d1_statfs_bytes"]
        assert f"total {64 * MiB}" in r["d1_stats"].replace(":", "").replace("=", " "), r["d1_stats"]
        # xfs answers a full project quota with ENOSPC (the tree looks like a full filesystem), ext4
        # with EDQUOT.
        assert "No space left on device" in r["fill_error"], r["fill_error"]
        assert 60 * MiB <= int(r["fill_bytes"]) <= 64 * MiB, r["fill_bytes"]
        assert "abnormal" in r["fill_health"].lower() and "full" in r["fill_health"], r["fill_health"]
        # The grow while writing: the writer was between 20 and 40 MiB, and went on past 64.
        assert 20 * MiB <= int(r["written_at_grow"]) <= 40 * MiB, r["written_at_grow"]
        assert r["writer_done"] == "yes", r["writer_done"]
        # A raised quota holds at once: kubelet has nothing to do for a dir volume.
        assert r["d1_expand"] == f"capacity: {128 * MiB} bytes, node expansion required: false", r["d1_expand"]
        assert int(r["written_after_grow"]) == 100 * MiB
        assert int(r["d1_statfs_after"]) == 128 * MiB
        assert f"{128 * MiB}" in r["d1_list"], r["d1_list"]
        # Capacity: free space less the unused part of every limit (pvc-d1: 128 - 100 MiB; pvc-d2: 32).
        capacity = int(r["capacity"].split()[1])
        promised = (128 - 100) * MiB + 32 * MiB
        assert abs(capacity - (int(r["fs_avail"]) - promised)) <= 4 * MiB, (capacity, r["fs_avail"], promised)
        # Overcommit: made beyond the free space, and counted against nothing.
        assert abs(int(r["over_capacity"].split()[1]) - capacity) <= 4 * MiB, (r["over_capacity"], capacity)
        assert abs(int(r["over_capacity_oc"].split()[1]) - int(r["over_fs_avail"])) <= 4 * MiB, r
        # statfs shows the smaller of the limit and the filesystem: here, the filesystem.
        assert int(r["over_statfs"]) == int(r["over_fs_total"]) < 1024 * MiB, r
        # The crashed grow raised the limit; the retry recorded it.
        assert r["d2_meta_after_crash"] == str(32 * MiB)
        assert str(48 * MiB) in r["d2_expand_retry"] and r["d2_meta_after_retry"] == str(48 * MiB)
        projects = {r["d1_project"], r["d2_project"], r["d3_project"]}
        assert len(projects) == 3, projects
        assert r["d1_project_after_restart"] == r["d1_project"]
        # Snapshots and copies of an unstaged dir volume.
        assert r["snap_method"] == "reflink", r["snap_method"]
        assert r["snap_dirs"].split() == ["snap-d1"], r["snap_dirs"]
        assert "snap-d1" in r["snap_list"] and "pvc-d1" in r["snap_list"], r["snap_list"]
        for copy in ("pvc-r1", "pvc-c1"):
            assert r[f"{copy}_sha"] == r["d1_sha"], copy
            assert r[f"{copy}_owner"] == "1000", copy
            assert r[f"{copy}_project_differs"] == "yes", copy
            assert 100 * MiB <= int(r[f"{copy}_used"]) <= 104 * MiB, (copy, r[f"{copy}_used"])
        assert r["d1_sha_after_restore_write"] == r["d1_sha"]
        assert r["snap_sha_after_restore_write"] == r["d1_sha"]
        assert "mounted at" in r["staged_clone"] and "mounted at" in r["staged_snapshot"], r
        assert r["refused_left"] == "0"
        assert r["snaps_left"] == "0"
        assert r["d1_gone"] == "0"
        assert int(r["capacity_after_delete"].split()[1]) > capacity + 16 * MiB
        assert r["d4_project"] == r["d1_project"], "the freed ID is the lowest free one again"
        assert r["volumes_left"] == "0"
        # Thick LVM.
        assert r["t1_segtype"] == "linear" and r["t1_lvs"] == "1"
        assert "in place" in r["t1_modify_thin"] and r["t1_modify_thick"] == "modified pvc-t1", r
        assert "preallocate" in r["d2_modify_thick"] and r["d2_modify_thin"] == "modified pvc-d2", r
        assert "dir volumes" in r["d_group"] and "host's filesystem" in r["d_group"], r["d_group"]
        assert r["d_group_dirs"] == "0"
        # inodeLimit: the volume's own directory is one of its inodes.
        files_40, files_200 = int(r["in_files_40"]), int(r["in_files_200"])
        assert 35 <= files_40 < 40 and 195 <= files_200 < 200, (files_40, files_200)
        assert r["in_statfs_40"] == "40" and r["in_statfs_after_expand"] == "200", r
        assert "already holds" in r["in_below"] and r["in_modify"] == "modified pvc-in", r
        assert r["in_meta"] == "inode_limit=200"
        assert int(r["in_files_none"]) == files_200 + 100, "no limit once it is set to 0"
        assert r["t1_sha_after"] == r["t1_sha_before"]
        assert int(r["t1_dev_bytes"]) == 400 * MiB
        assert int(r["t1_fs_bytes"]) > int(r["t1_fs_before"]) + 64 * MiB, (r["t1_fs_before"], r["t1_fs_bytes"])
        assert int(r["t1_capacity"].split()[1]) == int(r["vg_free"]), (r["t1_capacity"], r["vg_free"])
        assert r["lvs_left"] == "0"
        # ext4 project quotas.
        assert int(r["e1_statfs_bytes"]) == 32 * MiB, r["e1_statfs_bytes"]
        assert "quota exceeded" in r["e1_fill_error"], r["e1_fill_error"]
        assert int(r["e1_statfs_after"]) == 64 * MiB
        assert r["e1_snap_method"] == "copy" and r["e2_sha"] == r["e1_sha"] != "", r
        assert r["e1_left"] == "0"
        # ext4 grown online where CAP_SYS_RESOURCE is held: NE4's other branch.
        assert int(r["cap_eff"], 16) & (1 << 24), r["cap_eff"]
        assert r["l1_fstype"] == "ext4", r["l1_fstype"]
        assert "node expansion required: true" in r["l1_expand"], r["l1_expand"]
        assert f"{128 * MiB}" in r["l1_node_expand"], r["l1_node_expand"]
        assert int(r["l1_fs_after"]) > int(r["l1_fs_before"]) + 48 * MiB, (r["l1_fs_before"], r["l1_fs_after"])
        assert r["l1_sha_after"] == r["l1_sha_before"] != ""
        assert r["l1_loops"] == "0"
        print(f"dir grow under a writer: {r['grow_ms']} ms; thick LV grow: {r['t1_grow_ms']} ms (TCG)")
    finally:
        if vm is not None:
            vm.close()
        shutil.rmtree(root, ignore_errors=True)
