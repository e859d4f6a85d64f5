import os
import stat
import struct
import subprocess

import grpc
import pytest

from conftest import (csi_pb2, create_req, mount_cap, block_cap, code_of, sha256, write_random, loops_under,
                      host_mounts_under, MiB, HAS_SYS_RESOURCE)

C = grpc.StatusCode


def paths(plugin, name="v"):
    return (os.path.join(plugin.root, "kubelet", "plugins", name, "globalmount"),
            os.path.join(plugin.root, "kubelet", "pods", "p1", "volumes", name, "mount"))


def stage(plugin, vid, staging, cap):
    plugin.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
        volume_id=vid, staging_target_path=staging, volume_capability=cap,
        publish_context=plugin.publish_here(vid, cap)))


def publish(plugin, vid, staging, target, cap, readonly=False):
    plugin.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
        volume_id=vid, staging_target_path=staging, target_path=target, volume_capability=cap, readonly=readonly))


def unpublish(plugin, vid, target):
    plugin.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target))


def unstage(plugin, vid, staging):
    plugin.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging))
    plugin.unpublish_here(vid)


def expand(plugin, vid, n):
    return plugin.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id=vid, capacity_range=csi_pb2.CapacityRange(required_bytes=n)))


def node_expand(plugin, vid, path, n=0, staging="", cap=None):
    req = csi_pb2.NodeExpandVolumeRequest(volume_id=vid, volume_path=path, staging_target_path=staging,
                                          capacity_range=csi_pb2.CapacityRange(required_bytes=n))
    if cap is not None:
        req.volume_capability.CopyFrom(cap)
    return plugin.node.NodeExpandVolume(req)


def fs_type_at(path):
    return subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--mountpoint", path],
                          capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_full_lifecycle_with_online_expand(plugin, fs):
    cap = mount_cap(fs)
    staging, target = paths(plugin)
    plugin.controller.CreateVolume(create_req("v", required=320 * MiB, cap=cap))
    stage(plugin, "v", staging, cap)
    stage(plugin, "v", staging, cap)  # idempotent
    assert fs_type_at(staging) == fs
    publish(plugin, "v", staging, target, cap)
    publish(plugin, "v", staging, target, cap)  # idempotent
    assert fs_type_at(target) == fs
    assert len(loops_under(plugin.root)) == 1

    data = os.path.join(target, "db.bin")
    write_random(data, 24)
    before = sha256(data)
    total_before = os.statvfs(target).f_blocks * os.statvfs(target).f_frsize

    r = expand(plugin, "v", 640 * MiB)
    assert r.capacity_bytes == 640 * MiB and r.node_expansion_required
    if fs == "ext4" and not HAS_SYS_RESOURCE:
        # The kernel refuses: the plugin must say why, plainly, and harm nothing.
        with pytest.raises(grpc.RpcError) as err:
            node_expand(plugin, "v", target, 640 * MiB, staging)
        assert err.value.code() == C.FAILED_PRECONDITION and "CAP_SYS_RESOURCE" in err.value.details()
        assert sha256(data) == before and fs_type_at(target) == fs
        unpublish(plugin, "v", target)
        unstage(plugin, "v", staging)
        assert loops_under(plugin.root) == [] and host_mounts_under(plugin.root) == []
        return
    assert node_expand(plugin, "v", target, 640 * MiB, staging).capacity_bytes == 640 * MiB
    assert node_expand(plugin, "v", target, 640 * MiB, staging).capacity_bytes == 640 * MiB  # idempotent
    total_after = os.statvfs(target).f_blocks * os.statvfs(target).f_frsize
    assert total_after > total_before + 250 * MiB
    assert sha256(data) == before
    with open(data, "rb") as f:  # still readable and writable, mounted throughout
        f.read(1)
    write_random(os.path.join(target, "after.bin"), 4)

    stats = plugin.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_id="v", volume_path=target))
    units = {u.unit: u for u in stats.usage}
    assert units[csi_pb2.VolumeUsage.BYTES].total == total_after
    assert units[csi_pb2.VolumeUsage.BYTES].used >= 28 * MiB
    assert units[csi_pb2.VolumeUsage.INODES].total > 0
    assert stats.HasField("volume_condition") and not stats.volume_condition.abnormal

    unpublish(plugin, "v", target)
    unpublish(plugin, "v", target)  # idempotent
    assert not os.path.exists(target)
    unstage(plugin, "v", staging)
    unstage(plugin, "v", staging)  # idempotent
    assert loops_under(plugin.root) == []
    assert host_mounts_under(plugin.root) == []
    plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="v"))


def test_restage_after_unstage_keeps_data(plugin):
    cap = mount_cap("ext4")
    staging, target = paths(plugin)
    plugin.controller.CreateVolume(create_req("keep", required=64 * MiB, cap=cap))
    stage(plugin, "keep", staging, cap)
    publish(plugin, "keep", staging, target, cap)
    write_random(os.path.join(target, "f"), 2)
    digest = sha256(os.path.join(target, "f"))
    unpublish(plugin, "keep", target)
    unstage(plugin, "keep", staging)
    stage(plugin, "keep", staging, cap)  # must not reformat
    publish(plugin, "keep", staging, target, cap, readonly=True)
    assert sha256(os.path.join(target, "f")) == digest
    with pytest.raises(OSError):
        open(os.path.join(target, "g"), "wb")
    unpublish(plugin, "keep", target)
    unstage(plugin, "keep", staging)


def test_block_lifecycle(plugin):
    cap = block_cap()
    staging, _ = paths(plugin, "b")
    target = os.path.join(plugin.root, "kubelet", "pods", "p1", "volumeDevices", "b")
    plugin.controller.CreateVolume(create_req("b", required=32 * MiB, cap=cap))
    stage(plugin, "b", staging, cap)
    publish(plugin, "b", staging, target, cap)
    publish(plugin, "b", staging, target, cap)
    assert stat.S_ISBLK(os.stat(target).st_mode)
    payload = os.urandom(4096)
    with open(target, "r+b") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    expand(plugin, "b", 48 * MiB)
    assert node_expand(plugin, "b", target, cap=cap).capacity_bytes == 48 * MiB
    out = subprocess.run(["blockdev", "--getsize64", target], capture_output=True, text=True, check=True)
    assert int(out.stdout) == 48 * MiB
    with open(target, "rb") as f:
        assert f.read(4096) == payload
    stats = plugin.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_id="b", volume_path=target))
    assert [(u.unit, u.total) for u in stats.usage] == [(csi_pb2.VolumeUsage.BYTES, 48 * MiB)]
    unpublish(plugin, "b", target)
    assert not os.path.exists(target)
    unstage(plugin, "b", staging)
    assert loops_under(plugin.root) == []


def test_never_formats_a_device_with_data(plugin):
    cap = mount_cap("ext4")
    staging, _ = paths(plugin, "d")
    plugin.controller.CreateVolume(create_req("d", required=64 * MiB, cap=cap))
    disk = os.path.join(plugin.data, "volumes", "d", "disk.img")
    # A DOS partition table with one partition: not a filesystem, but data.
    with open(disk, "r+b") as f:
        f.seek(446)
        f.write(struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0x83, b"\x00\x00\x00", 2048, 64 * MiB // 512 - 2048))
        f.seek(510)
        f.write(b"\x55\xaa")
    digest = sha256(disk)
    assert code_of(stage, plugin, "d", staging, cap) == C.FAILED_PRECONDITION
    assert sha256(disk) == digest, "the device was left untouched"
    assert loops_under(plugin.root) == []


def test_node_errors(plugin):
    cap = mount_cap()
    staging, target = paths(plugin, "n")
    plugin.controller.CreateVolume(create_req("n", cap=cap))
    Req = csi_pb2.NodeStageVolumeRequest
    assert code_of(plugin.node.NodeStageVolume, Req(volume_id="missing", staging_target_path=staging,
                                                    volume_capability=cap)) == C.NOT_FOUND
    assert code_of(plugin.node.NodeStageVolume, Req(volume_id="n", staging_target_path="relative/x",
                                                    volume_capability=cap)) == C.INVALID_ARGUMENT
    assert code_of(plugin.node.NodeStageVolume, Req(volume_id="n", staging_target_path="",
                                                    volume_capability=cap)) == C.INVALID_ARGUMENT
    assert code_of(plugin.node.NodeStageVolume, Req(volume_id="n", staging_target_path=staging)) == C.INVALID_ARGUMENT
    assert code_of(plugin.node.NodeStageVolume, Req(volume_id="../n", staging_target_path=staging,
                                                    volume_capability=cap)) == C.INVALID_ARGUMENT
    assert code_of(plugin.node.NodeStageVolume, Req(volume_id="n", staging_target_path=staging + "/../../etc",
                                                    volume_capability=cap)) == C.INVALID_ARGUMENT
    # Publishing before staging.
    assert code_of(publish, plugin, "n", staging, target, cap) == C.FAILED_PRECONDITION
    assert code_of(plugin.node.NodeUnpublishVolume, csi_pb2.NodeUnpublishVolumeRequest(
        volume_id="n", target_path="")) == C.INVALID_ARGUMENT
    stats = lambda vid, p: plugin.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=p))
    assert code_of(stats, "n", "/tmp") == C.NOT_FOUND
    stage(plugin, "n", staging, cap)
    assert code_of(stats, "n", "/") == C.NOT_FOUND, "a path that cannot be a mount of the volume"
    assert code_of(stats, "n", plugin.root) == C.NOT_FOUND, "a path that is not a volume of ours"
    assert code_of(node_expand, plugin, "n", staging, 4 << 30) == C.OUT_OF_RANGE
    assert code_of(node_expand, plugin, "missing", staging) == C.NOT_FOUND
    unstage(plugin, "n", staging)
    assert loops_under(plugin.root) == []


def test_unstage_refuses_while_published(plugin):
    cap = mount_cap()
    staging, target = paths(plugin, "u")
    plugin.controller.CreateVolume(create_req("u", cap=cap))
    stage(plugin, "u", staging, cap)
    publish(plugin, "u", staging, target, cap)
    assert code_of(unstage, plugin, "u", staging) == C.FAILED_PRECONDITION
    assert code_of(plugin.controller.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id="u")) == C.FAILED_PRECONDITION
    unpublish(plugin, "u", target)
    unstage(plugin, "u", staging)
    plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="u"))


def test_attaches_and_unmounts_made_outside_the_plugin_are_seen_at_once(plugin):
    """The plugin keeps an index of loop devices and a cached mount table; the kernel stays the
    truth. A device attached by hand must block DeleteVolume on the next call, and a staging mount
    removed by hand must make NodeStageVolume mount again rather than answer from a stale table."""
    cap = mount_cap()
    plugin.controller.CreateVolume(create_req("out", cap=cap))
    plugin.controller.CreateVolume(create_req("warm", cap=cap))
    plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="warm"))  # one lookup: the index is built
    disk = os.path.join(plugin.data, "volumes", "out", "disk.img")
    device = subprocess.run(["losetup", "--find", "--show", disk], check=True, capture_output=True,
                            text=True).stdout.strip()
    try:
        err = None
        try:
            plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="out"))
        except grpc.RpcError as e:
            err = e
        assert err is not None and err.code() == C.FAILED_PRECONDITION and device in err.details(), err
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
    assert os.path.exists(disk)

    staging, _ = paths(plugin, "out")
    stage(plugin, "out", staging, cap)
    with open(os.path.join(staging, "kept"), "w") as f:
        f.write("data")
    subprocess.run(["umount", staging], check=True)
    assert staging not in host_mounts_under(plugin.root)
    stage(plugin, "out", staging, cap)
    assert staging in host_mounts_under(plugin.root), "staged again after the mount went away"
    assert open(os.path.join(staging, "kept")).read() == "data"
    unstage(plugin, "out", staging)
    plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="out"))
    assert loops_under(plugin.root) == [] and not os.path.exists(disk)


def test_unpublish_never_deletes_what_it_did_not_make(plugin):
    precious = os.path.join(plugin.root, "precious.txt")
    with open(precious, "w") as f:
        f.write("keep me")
    assert code_of(plugin.node.NodeUnpublishVolume, csi_pb2.NodeUnpublishVolumeRequest(
        volume_id="v", target_path=precious)) == C.FAILED_PRECONDITION
    full = os.path.join(plugin.root, "full")
    os.makedirs(full)
    open(os.path.join(full, "f"), "w").close()
    assert code_of(plugin.node.NodeUnpublishVolume, csi_pb2.NodeUnpublishVolumeRequest(
        volume_id="v", target_path=full)) == C.FAILED_PRECONDITION
    assert open(precious).read() == "keep me" and os.path.exists(os.path.join(full, "f"))
    # A missing target and an empty directory are fine.
    plugin.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id="v", target_path=full + "-none"))
    empty = os.path.join(plugin.root, "empty")
    os.makedirs(empty)
    plugin.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id="v", target_path=empty))
    assert not os.path.exists(empty)


def test_symlinked_targets_are_refused(plugin):
    cap = mount_cap()
    staging, target = paths(plugin, "sl")
    plugin.controller.CreateVolume(create_req("sl", cap=cap))
    elsewhere = os.path.join(plugin.root, "elsewhere")
    os.makedirs(elsewhere)
    os.makedirs(os.path.dirname(staging), exist_ok=True)
    os.symlink(elsewhere, staging)
    assert code_of(stage, plugin, "sl", staging, cap) == C.INVALID_ARGUMENT
    assert host_mounts_under(plugin.root) == [] and loops_under(plugin.root) == []
