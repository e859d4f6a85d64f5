"""A real PostgreSQL 15 on a Swell volume: a snapshot taken while pgbench writes restores to a
database that starts (crash recovery), passes pg_amcheck, and holds every row committed before the
snapshot was asked for, in a table that is only appended to."""
import os

import pytest

from conftest import MiB, create_req, csi_pb2, free_port, mount_cap, host_mounts_under, loops_under
import pg


APPEND = "INSERT INTO appendonly (payload) VALUES (repeat('x', 200));\n"


def staged_and_published(plugin, name, cap, volume):
    staging = os.path.join(plugin.root, "kubelet", "plugins", name, "globalmount")
    target = os.path.join(plugin.root, "kubelet", "pods", "db", "volumes", name, "mount")
    plugin.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
        volume_id=name, staging_target_path=staging, volume_capability=cap, volume_context=volume.volume_context))
    plugin.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
        volume_id=name, staging_target_path=staging, target_path=target, volume_capability=cap))
    return staging, target


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
        copy.start()
        copy.wait_ready()
        rows = int(copy.psql("SELECT count(*) FROM appendonly"))
        assert committed_before <= rows <= committed_after, (committed_before, rows, committed_after)
        assert copy.psql("SELECT count(*) FROM pgbench_accounts") == "500000"
        code, report = copy.amcheck()
        assert code == 0, report
        assert "redo done" in open(copy.log).read() or "database system was not properly shut down" in open(copy.log).read(), \
            "the copy needed crash recovery, as a copy of a running server does"
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
