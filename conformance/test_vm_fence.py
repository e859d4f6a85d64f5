"""The fence drill at the CSI level, with two kernels (issue 35): a volume published to guest A,
which runs PostgreSQL under pgbench and a ledger writer on it; the host's controller unpublishes A
while both still write, then publishes the volume to guest B. A's next write fails; B sees every
ledger record A had acknowledged (fsync returned) and at most the one in flight, the filesystem
checks clean, and PostgreSQL, started on it by B, recovers and passes pg_amcheck.

iSCSI: unpublishing takes A's initiator name out of the target's ACL and ends its sessions. The
guests reach the host's tgtd through qemu's user network (the host's 127.0.0.1 is 10.0.2.2); each
runs the node plugin with its own node ID, and logs in with the initiator name its publish context
gives. A's initiator gives up on the lost session after 5 s (`replacement_timeout`, set in its
iscsid.conf), so that its failed write shows within the drill; the fence does not depend on it:
the target refuses A whatever A's initiator waits for.

rbd: unpublishing blocklists the Ceph client A mapped the image with (`ceph osd blocklist add`,
the address A's node plugin recorded with the image at stage), and only then gives the image up.
The Ceph cluster (conformance/ceph.py) and the controller run in a network namespace of the test's,
on a bridge with one tap per guest, so the guests reach the monitor and the OSDs at the addresses
they advertise. A's kernel client (krbd) is refused by every OSD from then on.
"""
import os
import shutil
import subprocess
import tempfile
import time

import pytest

import ceph
import iscsi
import pg
from conftest import SWELL, MiB, Plugin, clean_host, create_req, csi_pb2, mount_cap, require_root
from test_iscsi import Controller
from test_vm_db import stage_postgres

# Each backend's start: its kernel modules and tools, and `block_dev`, the device of a block stage.
PRELUDE = {
    "iscsi": r'''
for m in iscsi_tcp sd_mod ext4; do modprobe "$m"; done
mkdir -p /etc/iscsi
echo "node.session.timeo.replacement_timeout = 5" > /etc/iscsi/iscsid.conf
iscsid
block_dev() { echo /dev/$(ls /sys/class/iscsi_session/*/device/target*/*/block/ | head -n 1); }
''',
    "rbd": r'''
for m in rbd ext4; do modprobe "$m"; done
ip addr flush dev eth0
ip addr add $GUEST_ADDR/24 dev eth0
ip link set eth0 up
cp /share/swell/bin/rbd /usr/bin/rbd
block_dev() { echo /dev/rbd$(ls /sys/bus/rbd/devices | head -n 1); }
''',
}

GUEST_COMMON = r'''
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LD_LIBRARY_PATH=/share/swell/lib
. /share/params
result() { echo "$1=$2" >> /share/results; }
csi() { sub=$1; shift; /tmp/swell csi "$sub" --endpoint unix:///tmp/csi.sock "$@"; }
. /share/prelude
cp /share/swell/bin/swell /tmp/swell
''' + pg.GUEST_SETUP + r'''
/tmp/swell plugin --mode node --endpoint unix:///tmp/csi.sock --data-dir /tmp/swell-data --node-id $NODE \
  --log-level info >> /share/guest-plugin.log 2>&1 &
i=0; while [ ! -S /tmp/csi.sock ]; do i=$((i+1)); [ $i -lt 600 ] || { echo "no plugin socket"; exit 1; }; sleep 0.1; done
ARGS="$SECRETS"; for kv in $CTX; do ARGS="$ARGS --context $kv"; done
for kv in $PUB; do ARGS="$ARGS --publish-context $kv"; done
S=/tmp/csi/stage/v
mkdir -p /tmp/csi/stage; chmod 755 /tmp/csi /tmp/csi/stage
'''

GUEST_A = GUEST_COMMON + r'''
csi stage --fs-type ext4 $ARGS v $S
chmod 755 $S; mkdir -p $S/pg; chown postgres:postgres $S/pg; chmod 700 $S/pg
as_pg "$PGBIN/initdb -D $S/pg/data -A trust -U postgres" > /dev/null
as_pg "$PGBIN/pg_ctl -D $S/pg/data -l /tmp/pg.log -o '-k /tmp -p 5432 -c listen_addresses= -c fsync=on -c synchronous_commit=on' -w -t 120 start" > /dev/null
as_pg "$PGBIN/pgbench -h /tmp -p 5432 -i -s 2 -q postgres" > /dev/null 2>&1
as_pg "$PGBIN/pgbench -h /tmp -p 5432 -c 2 -T 900 postgres" > /share/pgbench-a.txt 2>&1 &
# The ledger: record i at offset 9*(i-1), each written with fsync; acknowledged only once dd returns.
i=0
while :; do
  i=$((i+1))
  printf '%08d\n' $i > /tmp/rec
  if dd if=/tmp/rec of=$S/ledger bs=9 seek=$((i-1)) count=1 conv=notrunc,fsync 2>/dev/null; then
    echo $i > /share/acked.tmp; mv /share/acked.tmp /share/acked
    [ $i -eq 100 ] && touch /share/writing
  else
    result failed_at $i
    break
  fi
  [ $i -lt 100000 ] || { echo "never fenced"; exit 1; }
done
touch /share/fenced-here
'''

GUEST_B = GUEST_COMMON + r'''
csi stage --fs-type ext4 $ARGS v $S
# Every record A acknowledged, in order, and at most the one in flight.
n=0; bad=0
while :; do
  rec=$(dd if=$S/ledger bs=9 skip=$n count=1 2>/dev/null)
  [ -n "$rec" ] || break
  want=$(printf '%08d' $((n+1)))
  [ "$rec" = "$want" ] || { bad=$((bad+1)); break; }
  n=$((n+1))
done
result ledger_records $n
result ledger_bad $bad
as_pg "$PGBIN/pg_ctl -D $S/pg/data -l /tmp/pg.log -o '-k /tmp -p 5432 -c listen_addresses=' -w -t 300 start" > /dev/null
result pg_started $?
as_pg "$PGBIN/pg_amcheck -h /tmp -p 5432 -U postgres --install-missing --all" > /share/amcheck.txt 2>&1
result amcheck $?
result accounts "$(as_pg "$PGBIN/psql -h /tmp -p 5432 -U postgres -At -c 'select count(*) from pgbench_accounts' postgres")"
pg_stop $S/pg/data > /dev/null
csi unstage --keep-published v $S
# The filesystem, unmounted clean, checked read-only through a block stage of the same LUN.
csi stage --block $ARGS v /tmp/csi/stage/vb
e2fsck -fn "$(block_dev)" > /share/fsck.txt 2>&1
result fsck $?
csi unstage --keep-published v /tmp/csi/stage/vb
'''


def boot(root, name, backend, node, ctx, pub, extra_params="", secrets=None, binaries=(), **vm_options):
    """Guest `name` (A writes, B reads) as node `node`, staging with the volume context `ctx` and
    the publish context `pub`."""
    d = os.path.join(root, name)
    os.makedirs(d)
    vm = iscsi.VM(d, iscsi.vm_artifacts(), memory_mib=768, **vm_options)
    for binary in (SWELL, *binaries):
        iscsi.stage_binary(binary, os.path.join(vm.share, "swell"))
    stage_postgres(vm.share)
    with open(os.path.join(vm.share, "prelude"), "w") as f:
        f.write(PRELUDE[backend])
    args = ""
    if secrets:
        with open(os.path.join(vm.share, "secrets"), "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in secrets.items()))
        args = "--secrets-file /share/secrets"
    with open(os.path.join(vm.share, "params"), "w") as f:
        f.write(f"NODE={node}\nCTX='{iscsi.shell_words(ctx)}'\nPUB='{iscsi.shell_words(pub)}'\nSECRETS='{args}'\n")
        f.write(extra_params)
    vm.boot(GUEST_A if name == "a" else GUEST_B)
    return vm


def drill(publish, unpublish, boot_guest, fenced):
    """The drill's steps, the same for every backend: `publish(node)` returns the publish context,
    `boot_guest(name, node, pub)` starts a guest, `fenced()` asserts on the storage side right after
    A's unpublish. Returns what it measured."""
    a = b = None
    try:
        a = boot_guest("a", "vm-a", publish("vm-a"))
        a.wait_for("writing", 900)
        t0 = time.monotonic()
        unpublish("vm-a")
        unpublished = time.monotonic() - t0
        fenced()
        a.wait_for("fenced-here", 120)
        failed_after = time.monotonic() - t0
        with open(os.path.join(a.share, "acked")) as f:
            acked = int(f.read())
        ra = a.results()
        assert int(ra["failed_at"]) == acked + 1, (ra, acked)
        b = boot_guest("b", "vm-b", publish("vm-b"))
        status = b.finish(900)
        rb = b.results()
        assert status == 0, f"guest B failed ({status}):\n{b.console()}"
        assert rb["ledger_bad"] == "0", rb
        assert acked <= int(rb["ledger_records"]) <= acked + 1, (acked, rb)
        assert rb["pg_started"] == "0" and rb["amcheck"] == "0", open(os.path.join(b.share, "amcheck.txt")).read()
        assert int(rb["accounts"]) == 200000
        assert rb["fsck"] == "0", open(os.path.join(b.share, "fsck.txt")).read()
        return {"acked": acked, "unpublished": unpublished, "failed_after": failed_after, "read": rb["ledger_records"]}
    finally:
        for vm in (a, b):
            if vm is not None:
                vm.close()


def report(backend, m):
    print(f"fence drill ({backend}): {m['acked']} records acknowledged by A; unpublish took "
          f"{m['unpublished'] * 1000:.0f} ms; A's next write failed {m['failed_after']:.1f} s after it; "
          f"B read {m['read']}")


def need_postgres():
    require_root()
    if not pg.available():
        pytest.fail("PostgreSQL 15 is not installed (scripts/setup.sh --tests installs postgresql-15)")


def test_vm_fence_drill_iscsi():
    need_postgres()
    ctl = Controller(portal_host=iscsi.GUEST_PORTAL_HOST)
    try:
        ctl.start()
        ctx = dict(ctl.create("v", 512 * MiB, cap=mount_cap("ext4"), publish_to=None).volume_context)
        logged_in = {}

        def publish(node):
            pub = ctl.publish("v", node)
            assert pub["initiator"] == iscsi.initiator_name(node)
            return pub

        def unpublish(node):
            logged_in["a-before-fence"] = ctl.tgtd.targets()["iqn.2026-11.dev.swell:v"]
            ctl.unpublish("v", node)

        def fenced():
            assert logged_in["a-before-fence"] == 1, "A is logged in"
            assert ctl.acl("v") == []
            assert ctl.tgtd.targets()["iqn.2026-11.dev.swell:v"] == 0, "A's session is ended"

        m = drill(publish, unpublish, lambda name, node, pub: boot(ctl.root, name, "iscsi", node, ctx, pub), fenced)
        report("iscsi", m)
    finally:
        ctl.close()


RBD_POOL = "swell-fence"
HOST_ADDR = "192.168.78.1"
GUEST_ADDRS = {"a": "192.168.78.2", "b": "192.168.78.3"}


def test_vm_fence_drill_rbd():
    need_postgres()
    for tool in ("ceph-mon", "ceph-osd", "ceph-mgr", "ceph", "rbd"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (scripts/setup.sh --tests installs it)")
    ns = f"swell-rbd-fence-{os.getpid()}"
    inns = ["ip", "netns", "exec", ns]
    root = tempfile.mkdtemp(prefix="swell-vmfence-")
    cluster = plugin = None
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        # One bridge, the Ceph cluster's address on it, and a tap per guest.
        for argv in (["ip", "link", "add", "br0", "type", "bridge"], ["ip", "addr", "add", f"{HOST_ADDR}/24", "dev", "br0"],
                     ["ip", "link", "set", "br0", "up"], ["ip", "link", "set", "lo", "up"]):
            subprocess.run(inns + argv, check=True)
        for tap in ("tap0", "tap1"):
            for argv in (["ip", "tuntap", "add", tap, "mode", "tap"], ["ip", "link", "set", tap, "master", "br0"],
                         ["ip", "link", "set", tap, "up"]):
                subprocess.run(inns + argv, check=True)
        cluster = ceph.Cluster(address=HOST_ADDR, netns=ns, osd_bytes=512 << 20).start()
        cluster.create_pool(RBD_POOL)
        key = cluster.create_user("swell-plugin", RBD_POOL)
        key_file = os.path.join(root, "plugin.key")
        with open(key_file, "w") as f:
            f.write(key + "\n")
        nodes_file = os.path.join(root, "nodes")
        with open(nodes_file, "w") as f:
            f.write("vm-a\nvm-b\n")
        # The controller: the host's plugin, in the namespace with the cluster.
        plugin = Plugin(os.path.join(root, "controller"))
        os.makedirs(plugin.root)
        plugin.start(prefix=inns, extra_args=[
            "--rbd-monitors", cluster.monitors, "--rbd-pool", RBD_POOL, "--rbd-user", "swell-plugin",
            "--rbd-key-file", key_file, "--nodes-file", nodes_file])
        c = plugin.controller
        req = create_req("v", 512 * MiB, cap=mount_cap("ext4"), params={"backend": "rbd"})
        ctx = dict(c.CreateVolume(req).volume.volume_context)
        secrets = {"userID": "swell-plugin", "userKey": key}
        spec = f"{RBD_POOL}/swell-vol-v"
        seen = {}

        def publish(node):
            return dict(c.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
                volume_id="v", node_id=node, volume_capability=mount_cap("ext4"))).publish_context)

        def unpublish(node):
            # The client A's node plugin recorded with the image when it mapped it.
            seen["client"] = cluster.run("rbd", "image-meta", "get", spec, "swell.client").stdout.strip()
            seen["watchers"] = cluster.run("rbd", "status", spec).stdout
            c.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id="v", node_id=node))

        def fenced():
            address = seen["client"].split("addr=", 1)[1].split(";")[0]
            assert "node=vm-a" in seen["client"] and address in seen["watchers"], seen
            assert address in cluster.run("ceph", "osd", "blocklist", "ls").stdout, "A's client is blocklisted"
            assert cluster.run("rbd", "image-meta", "get", spec, "swell.publication", check=False).returncode != 0

        def boot_guest(name, node, pub):
            return boot(root, name, "rbd", node, ctx, pub, extra_params=f"GUEST_ADDR={GUEST_ADDRS[name]}\n",
                        secrets=secrets, binaries=[shutil.which("rbd")], prefix=inns,
                        netdev=f"tap,id=n0,ifname=tap{0 if name == 'a' else 1},script=no,downscript=no",
                        mac=f"52:54:00:12:78:0{2 if name == 'a' else 3}")

        m = drill(publish, unpublish, boot_guest, fenced)
        report("rbd", m)
        c.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id="v", node_id="vm-b"))
        c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="v"))
        assert cluster.run("rbd", "ls", RBD_POOL).stdout.split() == []
    finally:
        if plugin is not None:
            plugin.stop()
        if cluster is not None:
            cluster.stop()
        subprocess.run(["ip", "netns", "delete", ns], check=False)
        clean_host(root)
