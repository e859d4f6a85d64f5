"""Nothing acknowledged is lost (issue 36, goal 1), in the VM tier: a reset of the guest right after
an answer, then a second boot of the same disks.

Boot 1: two plugins in the guest (controller and node, as the DaemonSet runs it), one with its data
directory on an xfs disk, one on an ext4 disk, each with 8 loop volumes made and synced before.
Eight clients (four a plugin) then call at once, each making new volumes one after another and
deleting two of the old ones; every answered call is appended to a file in the 9p share, which
reaches the host as it is written. When 40 answers are in, the clients stop; then a create on the
xfs and a delete on the ext4 run at once, and the guest is reset as soon as both are answered
(`echo b > /proc/sysrq-trigger`: no sync, no unmount), so whatever the plugins left in the guest's
page cache is lost. The last calls matter: on both filesystems any later fsync commits the journal
with every earlier change in it, so a change a plugin failed to make durable would be saved by the
next call's fsync on that filesystem; only a call with nothing after it shows the gap. The two
filesystems have their own journals, so the two last calls cannot commit each other.

Boot 2 mounts both disks (each filesystem replays its journal), starts the plugins on them, and
lists the volumes: every volume whose create was answered must be there, with its size, and every
volume whose delete was answered must be gone.

Checked that it can fail (2026-12-06, one data directory on xfs, a create last): with the fsync
of the data directory after a create's rename left out, the reset lost that create."""
import json
import os
import shutil
import tempfile

from conftest import SWELL, require_root
import iscsi

MiB = 1 << 20
VOLUME = 16 * MiB
ANSWERS = 40

COMMON = r'''
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LD_LIBRARY_PATH=/share/swell/lib
. /share/params
for m in virtio_blk xfs ext4 loop; do modprobe "$m"; done
i=0; while [ ! -b /dev/vdb ]; do i=$((i+1)); [ $i -lt 100 ] || { echo "no /dev/vdb"; exit 1; }; sleep 0.1; done
cp /share/swell/bin/swell /tmp/swell
csi() { p=$1; sub=$2; shift 2; /tmp/swell csi "$sub" --endpoint unix:///tmp/$p.sock "$@"; }
start_plugin() {   # p: its socket /tmp/p.sock, its data directory /data/p/swell
  p=$1
  /tmp/swell plugin --mode all --endpoint unix:///tmp/$p.sock --data-dir /data/$p/swell --node-id vm --log-level info \
    >> /share/guest-plugin-$p.log 2>&1 &
  eval "pid_$p=$!"
  i=0; while ! csi $p probe >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 600 ] || { echo "no plugin $p"; exit 1; }; sleep 0.1; done
}
mkdir -p /data/x /data/e
'''

FIRST_BOOT = COMMON + r'''
mkfs.xfs -q /dev/vda
/usr/sbin/mke2fs -q -t ext4 /dev/vdb
mount /dev/vda /data/x
mount /dev/vdb /data/e
for p in x e; do
  start_plugin $p
  for i in $(seq 1 8); do csi $p create --bytes $BYTES old-$i > /dev/null; done
done
sync
echo "old volumes made and synced" > /share/ready
client() {   # p k: make new-k-1, new-k-2, ... with plugin p, and delete old-(2k-1) and old-(2k) along the way
  p=$1; k=$2; j=0
  while [ ! -e /tmp/stop ]; do
    j=$((j+1))
    if csi $p create --bytes $BYTES new-$k-$j > /dev/null 2>&1; then echo "created $p/new-$k-$j" >> /share/acked-$p-$k; fi
    if [ $j -le 2 ]; then
      old=old-$(( 2 * k - 2 + j ))
      if csi $p delete $old > /dev/null 2>&1; then echo "deleted $p/$old" >> /share/acked-$p-$k; fi
    fi
  done
}
pids=""
for p in x e; do for k in 1 2 3 4; do client $p $k & pids="$pids $!"; done; done
while [ "$(cat /share/acked-* 2>/dev/null | wc -l)" -lt $ANSWERS ]; do sleep 0.01; done
# The clients finish the calls they are in, and stop. Then the last calls, and the reset as soon as
# they are answered: nothing after them (another call's fsync on the same filesystem) can make
# their changes durable by chance. Each filesystem has its own journal, so the create on the xfs
# and the delete on the ext4 cannot commit each other.
touch /tmp/stop
wait $pids
( csi x create --bytes $BYTES last > /dev/null && echo "created x/last" >> /share/acked-last-x ) &
last_x=$!
( csi e delete new-1-1 > /dev/null && echo "deleted e/new-1-1" >> /share/acked-last-e ) &
last_e=$!
wait $last_x
wait $last_e
echo b > /proc/sysrq-trigger
sleep 60
echo "the reset did not happen"
exit 1
'''

SECOND_BOOT = COMMON + r'''
mount /dev/vda /data/x
mount /dev/vdb /data/e
for p in x e; do
  start_plugin $p
  csi $p list --json > /share/listed-$p.json
  eval "kill \$pid_$p; wait \$pid_$p || true"
done
umount /data/x /data/e
'''


def acked(share):
    """The answered calls: ({"x/new-1-1", …} created, {…} deleted)."""
    created, deleted = set(), set()
    for name in os.listdir(share):
        if name.startswith("acked-"):
            with open(os.path.join(share, name)) as f:
                for line in f:
                    verb, _, vid = line.strip().partition(" ")
                    (created if verb == "created" else deleted).add(vid)
    return created, deleted


def test_vm_every_answered_create_and_delete_survives_a_reset():
    require_root()
    root = tempfile.mkdtemp(prefix="swell-vmdurable-")
    disks = [os.path.join(root, f"vd{c}.img") for c in "ab"]
    for disk in disks:
        with open(disk, "wb") as f:
            f.truncate(2048 * MiB)
    vm = iscsi.VM(root, iscsi.vm_artifacts(), disks=disks)
    second = None
    try:
        iscsi.stage_binary(SWELL, os.path.join(vm.share, "swell"))
        with open(os.path.join(vm.share, "params"), "w") as f:
            f.write(f"BYTES={VOLUME}\nANSWERS={ANSWERS}\n")
        vm.boot(FIRST_BOOT)
        vm.wait_for("ready", 300)
        try:
            vm.proc.wait(timeout=300)
        except Exception:
            raise AssertionError(f"the guest was not reset:\n{vm.console()}")
        assert not os.path.exists(os.path.join(vm.share, "exit-status")), f"the guest ended its script:\n{vm.console()}"
        created, deleted = acked(vm.share)
        assert len(created) + len(deleted) >= ANSWERS + 2, (created, deleted)
        assert "x/last" in created and "e/new-1-1" in deleted, (created, deleted)
        assert any(v.startswith("x/") for v in deleted) and any(v.startswith("e/") for v in deleted), deleted

        second = iscsi.VM(root, iscsi.vm_artifacts(), disks=disks)
        second.boot(SECOND_BOOT)
        status = second.finish(300)
        logs = "".join(open(os.path.join(vm.share, f"guest-plugin-{p}.log")).read()[-1500:] for p in "xe")
        assert status == 0, f"the second boot failed:\n{second.console()}\n{logs}"
        listed = {}
        for p in "xe":
            with open(os.path.join(vm.share, f"listed-{p}.json")) as f:
                # The CLI prints the proto's own field names.
                for e in json.load(f).get("entries", []):
                    listed[f"{p}/{e['volume']['volume_id']}"] = int(e["volume"].get("capacity_bytes", 0))
        lost = sorted(created - deleted - listed.keys())
        assert not lost, f"answered creates lost in the reset: {lost} (listed: {sorted(listed)})"
        back = sorted(deleted & listed.keys())
        assert not back, f"answered deletes undone by the reset: {back}"
        assert all(listed[v] == VOLUME for v in created - deleted), listed
        print(f"{len(created)} answered creates and {len(deleted)} answered deletes on an xfs and an ext4, all kept "
              f"across the reset; {len(listed)} volumes listed after it")
    finally:
        for v in (vm, second):
            if v is not None:
                v.close()
        shutil.rmtree(root, ignore_errors=True)
