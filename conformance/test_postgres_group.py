"""A real PostgreSQL 15 whose WAL lives on a second Swell volume (`initdb --waldir`), under pgbench.

One group snapshot of both volumes restores to a database that starts (crash recovery), passes
`pg_amcheck --heapallindexed`, and holds every row committed before the call in a table that is only
appended to. Two single snapshots taken one after the other, with a checkpoint falling between them (as
checkpoints do under load), restore to a database that does not start: the data volume's control file
names a checkpoint that the WAL volume's copy, taken earlier, never saw. That gap is what the group
closes."""
import os
import subprocess
import time

import pytest

from conftest import MiB, create_req, csi_pb2, free_port, host_mounts_under, loops_under, mount_cap
from test_postgres import APPEND, assert_a_consistent_copy, staged_and_published
import pg


def released(plugin, names):
    for name in names:
        target = os.path.join(plugin.root, "kubelet", "pods", "db", "volumes", name, "mount")
        staging = os.path.join(plugin.root, "kubelet", "plugins", name, "globalmount")
        plugin.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=name, target_path=target))
        plugin.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=name, staging_target_path=staging))


def restore(plugin, cap, snapshots, suffix):
    """Restores the data and WAL snapshots to two new volumes, points the copy's pg_wal link at the
    restored WAL volume (a pod would mount it where the original was), and returns the data dir."""
    targets = {}
    for role, snapshot_id in snapshots.items():
        req = create_req(f"pg{role}-{suffix}", required=0, cap=cap)
        req.volume_content_source.snapshot.snapshot_id = snapshot_id
        volume = plugin.controller.CreateVolume(req).volume
        targets[role] = staged_and_published(plugin, f"pg{role}-{suffix}", cap, volume)[1]
    datadir = os.path.join(targets["data"], "pgdata")
    link = os.path.join(datadir, "pg_wal")
    assert os.path.islink(link), "pg_wal is the link initdb --waldir made"
    os.unlink(link)
    os.symlink(os.path.join(targets["wal"], "pg_wal"), link)
    pg.open_path_for_postgres(os.path.join(targets["wal"], "pg_wal"))
    # Taken from a running server: its lock file names the primary's PID.
    os.unlink(os.path.join(datadir, "postmaster.pid"))
    return datadir


def test_a_group_snapshot_of_data_and_wal_restores_a_consistent_database_and_two_single_snapshots_do_not(plugin):
    if not pg.available():
        pytest.fail("postgresql-15 is not installed (scripts/setup.sh --tests installs it)")
    pg.open_path_for_postgres(plugin.root)
    cap = mount_cap("ext4")
    targets = {}
    for role in ("data", "wal"):
        volume = plugin.controller.CreateVolume(create_req(f"pg{role}", required=512 * MiB, cap=cap)).volume
        targets[role] = staged_and_published(plugin, f"pg{role}", cap, volume)[1]
    script = os.path.join(plugin.root, "append.sql")
    with open(script, "w") as f:
        f.write(APPEND)
    os.chmod(script, 0o644)
    primary = pg.Server(os.path.join(targets["data"], "pgdata"), free_port())
    copies = []
    made = ["pgdata", "pgwal"]
    try:
        primary.initdb(waldir=os.path.join(targets["wal"], "pg_wal"))
        primary.start("-c max_wal_size=128MB")
        primary.pgbench("-i", "-s", "5", "-q", check=True, capture_output=True)
        primary.psql("CREATE TABLE appendonly (id bigserial PRIMARY KEY, payload text NOT NULL)")
        load = primary.pgbench_background("-c", "4", "-j", "2", "-T", "14", "-b", "tpcb-like@3", "-f", f"{script}@1")
        time.sleep(4)

        # The group: both volumes at one instant.
        committed_before = int(primary.psql("SELECT count(*) FROM appendonly"))
        group = plugin.group.CreateVolumeGroupSnapshot(csi_pb2.CreateVolumeGroupSnapshotRequest(
            name="pg-group", source_volume_ids=["pgdata", "pgwal"])).group_snapshot
        committed_after = int(primary.psql("SELECT count(*) FROM appendonly"))
        by_source = {s.source_volume_id: s.snapshot_id for s in group.snapshots}

        # Two single snapshots, WAL first, with a checkpoint between them.
        time.sleep(1)
        plugin.controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(name="pg-wal-alone", source_volume_id="pgwal"))
        primary.psql("CHECKPOINT")
        plugin.controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(name="pg-data-alone", source_volume_id="pgdata"))

        out, _ = load.communicate(timeout=120)
        assert load.returncode == 0, out
        assert "number of failed transactions: 0" in out, out
        assert group.ready_to_use and committed_before > 0

        datadir = restore(plugin, cap, {"data": by_source["pgdata"], "wal": by_source["pgwal"]}, "group")
        made += ["pgdata-group", "pgwal-group"]
        copy = pg.Server(datadir, free_port())
        copies.append(copy)
        assert_a_consistent_copy(copy, committed_before, committed_after)
        copy.stop()

        datadir = restore(plugin, cap, {"data": "pg-data-alone", "wal": "pg-wal-alone"}, "alone")
        made += ["pgdata-alone", "pgwal-alone"]
        apart = pg.Server(datadir, free_port())
        copies.append(apart)
        with pytest.raises(subprocess.CalledProcessError):
            apart.start()
        log = open(apart.log).read()
        assert "could not locate a valid checkpoint record" in log, log[-3000:]
    finally:
        for copy in copies:
            copy.stop()
        primary.stop()
    released(plugin, made)
    assert loops_under(plugin.root) == [] and host_mounts_under(plugin.root) == []
