"""A real PostgreSQL 15 on a Swell volume: a snapshot taken while pgbench writes restores to a
database that starts (crash recovery), passes pg_amcheck, and holds every row committed before the
snapshot was asked for, in a table that is only appended to."""
import os
import subprocess

import pytest

from conftest import MiB, create_req, csi_pb2, free_port, mount_cap, host_mounts_under, loops_under
import pg


APPEND = "INSERT INTO appendonly (payload) VALUES (repeat('x', 200));\n"


def staged_and_published(plugin, name, cap, volume):
    staging = os.path.join(plugin.root, "kubelet", "plugins", name, "globalmount")
    target = os.path.join(plugin.root, "kubelet", "pods", "db", "volumes", name, "mount")
    plugin.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
        volume_id=name, staging_target_path=staging, volume_capability=cap, volume_context=volume.volume_context,
        publish_context=plugin.publish_here(name, cap)))
    plugin.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
        volume_id=name, staging_target_path=staging, target_path=target, volume_capability=cap))
    return staging, target


def assert_a_consistent_copy(copy, committed_before, committed_after):
    """Starts a copy of a running server (crash recovery) and checks it: every row of the append-only
    table committed before the snapshot was asked for, none after it returned; pgbench's accounts
    whole; pg_amcheck --heapallindexed clean."""
    try:
        copy.start()
    except subprocess.CalledProcessError:
        pytest.fail("the copy did not start:\n" + open(copy.log).read()[-3000:])
    copy.wait_ready()
    rows = int(copy.psql("SELECT count(*) FROM appendonly"))
    assert committed_before <= rows <= committed_after, (committed_before, rows, committed_after)
    assert copy.psql("SELECT count(*) FROM pgbench_accounts") == "500000"
    code, report = copy.amcheck()
    assert code == 0, report
    assert "database system was not properly shut down" in open(copy.log).read(), \
        "the copy needed crash recovery, as a copy of a running server does"


def test_a_snapshot_taken_under_pgbench_restores_a_consistent_database(plugin):
    if not pg.available():
        pytest.fail("postgresql-15 is not installed (scripts/setup.sh --tests installs it)")
    pg.open_path_for_postgres(plugin.root)
    cap = mount_cap("ext4")
    src = plugin.controller.CreateVolume(create_req("pgdata", required=1024 * MiB, cap=cap)).volume
    src_staging, src_target = staged_and_published(plugin, "pgdata", cap, src)
    script = os.path.join(plugin.root, "append.sql")
    with open(script, "w") as f:
        f.write(APPEND)
    os.chmod(script, 0o644)
    primary = pg.Server(os.path.join(src_target, "pgdata"), free_port())
    copy = None
    try:
        primary.initdb()
        primary.start()
        primary.pgbench("-i", "-s", "5", "-q", check=True, capture_output=True)
        primary.psql("CREATE TABLE appendonly (id bigserial PRIMARY KEY, payload text NOT NULL)")
        load = primary.pgbench_background("-c", "4", "-j", "2", "-T", "12", "-b", "tpcb-like@3", "-f", f"{script}@1")
        import time
        time.sleep(4)
        committed_before = int(primary.psql("SELECT count(*) FROM appendonly"))
        snap = plugin.controller.CreateSnapshot(
            csi_pb2.CreateSnapshotRequest(name="pg-snap", source_volume_id="pgdata")).snapshot
        committed_after = int(primary.psql("SELECT count(*) FROM appendonly"))
        out, _ = load.communicate(timeout=120)
        assert load.returncode == 0, out
        assert "number of failed transactions: 0" in out, out
        assert snap.ready_to_use and committed_before > 0

        req = create_req("pgcopy", required=0, cap=cap)
        req.volume_content_source.snapshot.snapshot_id = "pg-snap"
        restored = plugin.controller.CreateVolume(req).volume
        _, copy_target = staged_and_published(plugin, "pgcopy", cap, restored)
        datadir = os.path.join(copy_target, "pgdata")
        # The copy was taken from a running server: its lock file names the primary's PID.
        os.unlink(os.path.join(datadir, "postmaster.pid"))
        copy = pg.Server(datadir, free_port())
        assert_a_consistent_copy(copy, committed_before, committed_after)
    finally:
        if copy is not None:
            copy.stop()
        primary.stop()
    for name in ("pgcopy", "pgdata"):
        target = os.path.join(plugin.root, "kubelet", "pods", "db", "volumes", name, "mount")
        staging = os.path.join(plugin.root, "kubelet", "plugins", name, "globalmount")
        plugin.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=name, target_path=target))
        plugin.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=name, staging_target_path=staging))
    assert loops_under(plugin.root) == [] and host_mounts_under(plugin.root) == []


def test_pgbench_keeps_committing_while_its_volume_grows_online_twice(plugin):
    """pgbench writes for 20 s while the volume grows 512 MiB → 768 MiB → 1 GiB through
    ControllerExpandVolume and NodeExpandVolume on the mounted filesystem (xfs: ext4 cannot grow
    online on a machine without CAP_SYS_RESOURCE). No transaction may fail, pg_amcheck must find
    nothing, and the filesystem must show each new size."""
    if not pg.available():
        pytest.fail("postgresql-15 is not installed (scripts/setup.sh --tests installs it)")
    import time
    pg.open_path_for_postgres(plugin.root)
    cap = mount_cap("xfs")
    vol = plugin.controller.CreateVolume(create_req("pggrow", required=512 * MiB, cap=cap)).volume
    staging, target = staged_and_published(plugin, "pggrow", cap, vol)
    server = pg.Server(os.path.join(target, "pgdata"), free_port())
    sizes = []
    try:
        server.initdb()
        server.start()
        server.pgbench("-i", "-s", "10", "-q", check=True, capture_output=True)
        st = os.statvfs(target)
        sizes.append(st.f_blocks * st.f_frsize)
        load = server.pgbench_background("-c", "4", "-j", "2", "-T", "20")
        previous = 512 * MiB
        for size in (768 * MiB, 1024 * MiB):
            time.sleep(5)
            assert load.poll() is None, "pgbench ended before the grow"
            grown = plugin.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
                volume_id="pggrow", capacity_range=csi_pb2.CapacityRange(required_bytes=size), volume_capability=cap))
            assert grown.capacity_bytes == size and grown.node_expansion_required
            plugin.node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
                volume_id="pggrow", volume_path=target, staging_target_path=staging,
                capacity_range=csi_pb2.CapacityRange(required_bytes=size), volume_capability=cap))
            st = os.statvfs(target)
            sizes.append(st.f_blocks * st.f_frsize)
            # The filesystem gained the device's new bytes (xfs keeps its log and headers aside).
            assert sizes[-1] - sizes[-2] >= (size - previous) * 0.95, (size, sizes)
            previous = size
        out, _ = load.communicate(timeout=120)
        assert load.returncode == 0, out
        assert "number of failed transactions: 0" in out, out
        tps = float(out.split("tps = ")[1].split()[0])
        assert tps > 0, out
        code, report = server.amcheck()
        assert code == 0, report
        assert server.psql("SELECT count(*) FROM pgbench_accounts") == "1000000"
        assert "No space left on device" not in open(server.log).read()
    finally:
        server.stop()
    plugin.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id="pggrow", target_path=target))
    plugin.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id="pggrow", staging_target_path=staging))
    assert loops_under(plugin.root) == [] and host_mounts_under(plugin.root) == []
