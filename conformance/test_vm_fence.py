"""The fence drill at the CSI level, with two kernels (issue 35): an iSCSI volume published to
guest A, which runs PostgreSQL under pgbench and a ledger writer on it; the host's controller
unpublishes A (its name leaves the target's ACL, its sessions end) while both still write, then
publishes the volume to guest B. A's next write fails; B sees every ledger record A had acknowledged
(fsync returned) and at most the one in flight, the filesystem checks clean, and PostgreSQL, started
on it by B, recovers and passes pg_amcheck.

The guests reach the host's tgtd through qemu's user network (the host's 127.0.0.1 is 10.0.2.2);
each runs the node plugin with its own node ID, and logs in with the initiator name its publish
context gives. A's initiator gives up on the lost session after 5 s (`replacement_timeout`, set in
its iscsid.conf), so that its failed write shows within the drill; the fence does not depend on
it: the target refuses A whatever A's initiator waits for.
"""
import os
import time

import pytest

import iscsi
import pg
from conftest import SWELL, MiB, mount_cap, require_root
from test_iscsi import Controller
from test_vm_db import stage_postgres

GUEST_COMMON = r'''
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LD_LIBRARY_PATH=/share/swell/lib
. /share/params
result() { echo "$1=$2" >> /share/results; }
csi() { sub=$1; shift; /tmp/swell csi "$sub" --endpoint unix:///tmp/csi.sock "$@"; }
for m in iscsi_tcp sd_mod ext4; do modprobe "$m"; done
mkdir -p /etc/iscsi
echo "node.session.timeo.replacement_timeout = 5" > /etc/iscsi/iscsid.conf
iscsid
cp /share/swell/bin/swell /tmp/swell
''' + pg.GUEST_SETUP + r'''
/tmp/swell plugin --mode node --endpoint unix:///tmp/csi.sock --data-dir /tmp/swell-data --node-id $NODE \
  --log-level info >> /share/guest-plugin.log 2>&1 &
i=0; while [ ! -S /tmp/csi.sock ]; do i=$((i+1)); [ $i -lt 600 ] || { echo "no plugin socket"; exit 1; }; sleep 0.1; done
ARGS=""; for kv in $CTX; do ARGS="$ARGS --context $kv"; done
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
as_pg "$PGBIN/pg_ctl -D $S/pg/data -m fast -w stop" > /dev/null
csi unstage --keep-published v $S
# The filesystem, unmounted clean, checked read-only through a block stage of the same LUN.
csi stage --block $ARGS v /tmp/csi/stage/vb
dev=$(ls /sys/class/iscsi_session/*/device/target*/*/block/ | head -n 1)
e2fsck -fn /dev/$dev > /share/fsck.txt 2>&1
result fsck $?
csi unstage --keep-published v /tmp/csi/stage/vb
'''


def write_params(share, node, ctx, pub):
    with open(os.path.join(share, "params"), "w") as f:
        f.write(f"NODE={node}\nCTX='{iscsi.shell_words(ctx)}'\nPUB='{iscsi.shell_words(pub)}'\n")


def boot(root, name, script, node, ctx, pub):
    d = os.path.join(root, name)
    os.makedirs(d)
    vm = iscsi.VM(d, iscsi.vm_artifacts(), memory_mib=768)
    iscsi.stage_binary(SWELL, os.path.join(vm.share, "swell"))
    stage_postgres(vm.share)
    write_params(vm.share, node, ctx, pub)
    vm.boot(script)
    return vm


def test_vm_fence_drill_iscsi():
    require_root()
    if not pg.available():
        pytest.fail("PostgreSQL 15 is not installed (scripts/setup.sh --tests installs postgresql-15)")
    ctl = Controller(portal_host=iscsi.GUEST_PORTAL_HOST)
    a = b = None
    try:
        ctl.start()
        ctx = dict(ctl.create("v", 512 * MiB, cap=mount_cap("ext4"), publish_to=None).volume_context)
        a = boot(ctl.root, "a", GUEST_A, "vm-a", ctx, ctl.publish("v", "vm-a"))
        a.wait_for("writing", 900)
        assert ctl.tgtd.targets()["iqn.2026-11.dev.swell:v"] == 1, "A is logged in"
        t0 = time.monotonic()
        ctl.unpublish("v", "vm-a")
        unpublished = time.monotonic() - t0
        assert ctl.acl("v") == []
        sessions_after = ctl.tgtd.targets()["iqn.2026-11.dev.swell:v"]
        a.wait_for("fenced-here", 120)
        failed_after = time.monotonic() - t0
        with open(os.path.join(a.share, "acked")) as f:
            acked = int(f.read())
        ra = a.results()
        assert int(ra["failed_at"]) == acked + 1, (ra, acked)
        pub_b = ctl.publish("v", "vm-b")
        assert pub_b["initiator"] == iscsi.initiator_name("vm-b")
        b = boot(ctl.root, "b", GUEST_B, "vm-b", ctx, pub_b)
        status = b.finish(900)
        rb = b.results()
        assert status == 0, f"guest B failed ({status}):\n{b.console()}"
        assert rb["ledger_bad"] == "0", rb
        assert acked <= int(rb["ledger_records"]) <= acked + 1, (acked, rb)
        assert rb["pg_started"] == "0" and rb["amcheck"] == "0", open(os.path.join(b.share, "amcheck.txt")).read()
        assert int(rb["accounts"]) == 200000
        assert rb["fsck"] == "0", open(os.path.join(b.share, "fsck.txt")).read()
        assert sessions_after == 0
        print(f"fence drill: {acked} records acknowledged by A; unpublish took {unpublished * 1000:.0f} ms; "
              f"A's next write failed {failed_after:.1f} s after it; B read {rb['ledger_records']}")
    finally:
        for vm in (a, b):
            if vm is not None:
                vm.close()
        ctl.close()
