"""The node plugin's pod replaced under a staged volume (a DaemonSet update, a deleted pod).

In a pod, the plugin sees the data directory through a bind mount of its own mount namespace, and
it attaches loop devices through that mount. When the pod goes, so does the namespace, and the
kernel then prints the device's `backing_file` relative to a detached mount (`/volumes/<id>/disk.img`),
no longer at the path the next pod's plugin sees. The next plugin must still find the device (by
the backing file's device and inode): stats, growth, unstage and delete all depend on it. Found by
the real-node tier (cluster/), where the next pod answered "not staged" and kubelet's grow never
came; reproduced here with `unshare`, no cluster needed.
"""
import fcntl
import os
import struct
import subprocess
import tempfile

import pytest

from conftest import MiB, Plugin, clean_host, create_req, csi_pb2, mount_cap, require_root, sha256, write_random

LOOP_GET_STATUS64 = 0x4C05


def loops_backing(path):
    """Loop devices whose backing file is `path`'s inode, whatever path sysfs prints."""
    st = os.stat(path)
    found = []
    for name in os.listdir("/sys/block"):
        if not name.startswith("loop") or not os.path.exists(f"/sys/block/{name}/loop/backing_file"):
            continue
        fd = os.open(f"/dev/{name}", os.O_RDONLY)
        try:
            buf = bytearray(232)
            fcntl.ioctl(fd, LOOP_GET_STATUS64, buf)
        except OSError:
            continue
        finally:
            os.close(fd)
        dev, ino = struct.unpack_from("QQ", buf, 0)
        if (dev, ino) == (st.st_dev, st.st_ino):
            found.append(name)
    return found


def test_a_new_plugin_serves_volumes_its_predecessor_attached_from_a_namespace_now_gone():
    require_root()
    root = tempfile.mkdtemp(prefix="swell-conf-")
    real, data, kubelet = (os.path.join(root, d) for d in ("real", "data", "kubelet"))
    for d in (real, data, kubelet):
        os.makedirs(d)
    vid, disk = "pod-replaced", os.path.join(real, "volumes", "pod-replaced", "disk.img")
    staging = os.path.join(kubelet, "staging")
    cap = mount_cap("xfs")
    # kubelet's directory is shared with the pod (Bidirectional); the data directory is the pod's own.
    subprocess.run(["mount", "--bind", kubelet, kubelet], check=True)
    subprocess.run(["mount", "--make-shared", kubelet], check=True)
    first, second = Plugin(root), Plugin(root)
    first.data = second.data = data
    try:
        first.start(prefix=["unshare", "-m", "--propagation", "unchanged", "--", "sh", "-c",
                            'mount --bind "$0" "$1" && shift && exec "$@"', real, data])
        first.controller.CreateVolume(create_req(vid, 320 * MiB, cap=cap))
        first.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=staging, volume_capability=cap,
            publish_context=first.publish_here(vid, cap)))
        write_random(os.path.join(staging, "f"), 8)
        digest = sha256(os.path.join(staging, "f"))
        first.stop()  # the pod, and its mount namespace, are gone
        device = loops_backing(disk)
        assert len(device) == 1
        printed = open(f"/sys/block/{device[0]}/loop/backing_file").read().strip()
        assert printed != os.path.join(data, "volumes", vid, "disk.img"), "the kernel no longer prints the path"

        subprocess.run(["mount", "--bind", real, data], check=True)  # the next pod's view
        second.start()
        stats = second.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=staging))
        before = stats.usage[0].total
        assert before > 200 * MiB
        second.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=csi_pb2.CapacityRange(required_bytes=640 * MiB), volume_capability=cap))
        second.node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
            volume_id=vid, volume_path=staging, capacity_range=csi_pb2.CapacityRange(required_bytes=640 * MiB),
            volume_capability=cap))
        assert os.statvfs(staging).f_blocks * os.statvfs(staging).f_frsize > before + 250 * MiB
        assert sha256(os.path.join(staging, "f")) == digest
        # Attached, so not deletable; after unstage, no device is left and the delete goes through.
        with pytest.raises(Exception) as refused:
            second.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid))
        assert refused.value.code().name == "FAILED_PRECONDITION"
        second.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging))
        assert loops_backing(disk) == []
        second.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vid))
        assert not os.path.exists(disk)
    finally:
        first.stop()
        second.stop()
        for mp in (staging, data, kubelet):
            subprocess.run(["umount", "-l", mp], capture_output=True)
        if os.path.exists(disk):
            for name in loops_backing(disk):
                subprocess.run(["losetup", "-d", f"/dev/{name}"], capture_output=True)
        clean_host(root)
