"""Records that outlive an upgrade (issue 38, part 3): the plugin serves a data directory written
in every record format it still reads (conformance/fixtures/records/), and refuses a record of a
newer format (a downgrade, or a node plugin older than what wrote it) with FAILED_PRECONDITION,
changing nothing on disk."""
import hashlib
import os
import shutil
import subprocess
import tempfile

import grpc
import pytest

from conftest import (MiB, NODE_ID, Plugin, clean_host, create_req, csi_pb2, host_mounts_under, loops_under,
                      mount_cap, require_root)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "records")
C = grpc.StatusCode
CAP = mount_cap("ext4")
HELLO = b"written before the upgrade\n"


def disk_image(path, mib=64):
    """An ext4 image holding hello.txt, made the way a format-1 volume's disk.img is laid out."""
    src = tempfile.mkdtemp(prefix="swell-records-src-")
    try:
        with open(os.path.join(src, "hello.txt"), "wb") as f:
            f.write(HELLO)
        with open(path, "wb") as f:
            f.truncate(mib * MiB)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", src, path], check=True)
    finally:
        shutil.rmtree(src)


def tree(root):
    """Every file under `root`, with its size and, for small ones, its bytes' hash."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest() if st.st_size < 1 << 20 else ""
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns, digest)
    return out


@pytest.fixture(params=[d for d in sorted(os.listdir(FIXTURES)) if d.startswith("format-")])
def restored(request):
    """A plugin started on a copy of one format's data directory, with disk images beside its records."""
    require_root()
    root = tempfile.mkdtemp(prefix="swell-records-")
    p = Plugin(root)
    shutil.copytree(os.path.join(FIXTURES, request.param), p.data)
    for vid in os.listdir(os.path.join(p.data, "volumes")):
        disk_image(os.path.join(p.data, "volumes", vid, "disk.img"))
    for sid in os.listdir(os.path.join(p.data, "snapshots")):
        disk_image(os.path.join(p.data, "snapshots", sid, "disk.img"))
    try:
        yield p
    finally:
        p.stop()
        clean_host(root)


def staged_hello(p, vid):
    staging = os.path.join(p.root, "stage", vid)
    p.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
        volume_id=vid, staging_target_path=staging, volume_capability=CAP, publish_context={"node": NODE_ID}))
    try:
        with open(os.path.join(staging, "hello.txt"), "rb") as f:
            return f.read()
    finally:
        p.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging))


def test_every_format_still_read_is_served(restored):
    p = restored
    p.start()
    c = p.controller
    listed = {e.volume.volume_id: e for e in c.ListVolumes(csi_pb2.ListVolumesRequest()).entries}
    assert set(listed) == {"fmt1-vol", "fmt1-old"}
    for vid in listed:
        assert listed[vid].volume.capacity_bytes == 64 * MiB
        assert list(listed[vid].status.published_node_ids) == [NODE_ID], "the publication record is read"
        # The publication is the same one: a repeat with its capability is OK, another is ALREADY_EXISTS.
        c.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=vid, node_id=NODE_ID, volume_capability=CAP))
        assert staged_hello(p, vid) == HELLO
    snaps = {s.snapshot.snapshot_id: s.snapshot for s in c.ListSnapshots(csi_pb2.ListSnapshotsRequest()).entries}
    assert snaps["fmt1-snap"].source_volume_id == "fmt1-vol" and snaps["fmt1-snap"].size_bytes == 64 * MiB
    assert snaps["fmt1-snap"].creation_time.seconds == 1796559722
    req = create_req("fmt1-restored", required=64 * MiB, cap=CAP)
    req.volume_content_source.snapshot.snapshot_id = "fmt1-snap"
    c.CreateVolume(req)
    assert staged_hello(p, "fmt1-restored") == HELLO
    # Written again by this build: the old line gains its version and still names the node.
    c.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id="fmt1-old", node_id=NODE_ID))
    c.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id="fmt1-old", node_id=NODE_ID, volume_capability=CAP))
    with open(os.path.join(p.data, "publications", "fmt1-old")) as f:
        assert f.read().startswith("version=1;node=" + NODE_ID + ";")
    for vid in ("fmt1-vol", "fmt1-old", "fmt1-restored"):
        c.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=NODE_ID))
    c.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id="fmt1-snap"))
    for vid in ("fmt1-vol", "fmt1-old", "fmt1-restored"):
        c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid))
    assert os.listdir(os.path.join(p.data, "volumes")) == []
    assert loops_under(p.root) == [] and host_mounts_under(p.root) == []


def newer(path):
    """The record rewritten as format 2."""
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("version=1", "version=2") if "version=1" in text else "version=2;" + text)


def test_a_newer_format_is_refused_and_nothing_changes(restored):
    p = restored
    newer(os.path.join(p.data, "volumes", "fmt1-vol", "meta"))
    newer(os.path.join(p.data, "snapshots", "fmt1-snap", "meta"))
    newer(os.path.join(p.data, "publications", "fmt1-old"))
    before = tree(p.data)
    p.start()
    c = p.controller

    def refused(call, *args):
        with pytest.raises(grpc.RpcError) as e:
            call(*args)
        assert e.value.code() == C.FAILED_PRECONDITION, e.value.details()
        assert "newer Swell" in e.value.details() and "format 2" in e.value.details(), e.value.details()
        return e.value.details()

    message = refused(c.ControllerExpandVolume, csi_pb2.ControllerExpandVolumeRequest(
        volume_id="fmt1-vol", capacity_range=csi_pb2.CapacityRange(required_bytes=128 * MiB)))
    assert "fmt1-vol" in message
    refused(c.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id="fmt1-vol"))
    refused(c.CreateSnapshot, csi_pb2.CreateSnapshotRequest(name="s2", source_volume_id="fmt1-vol"))
    refused(c.ControllerGetVolume, csi_pb2.ControllerGetVolumeRequest(volume_id="fmt1-vol"))
    refused(p.node.NodeStageVolume, csi_pb2.NodeStageVolumeRequest(
        volume_id="fmt1-vol", staging_target_path=os.path.join(p.root, "stage", "v"), volume_capability=CAP,
        publish_context={"node": NODE_ID}))
    refused(c.DeleteSnapshot, csi_pb2.DeleteSnapshotRequest(snapshot_id="fmt1-snap"))
    req = create_req("from-newer", required=64 * MiB, cap=CAP)
    req.volume_content_source.snapshot.snapshot_id = "fmt1-snap"
    refused(c.CreateVolume, req)
    # The old-format volume whose publication record is newer: its publish and unpublish refuse.
    refused(c.ControllerPublishVolume, csi_pb2.ControllerPublishVolumeRequest(
        volume_id="fmt1-old", node_id=NODE_ID, volume_capability=CAP))
    refused(c.ControllerUnpublishVolume, csi_pb2.ControllerUnpublishVolumeRequest(volume_id="fmt1-old", node_id=NODE_ID))
    p.stop()
    assert tree(p.data) == before, "a refused call changed the data directory"
    assert loops_under(p.root) == [] and host_mounts_under(p.root) == []
