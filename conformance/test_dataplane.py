"""The data plane a database needs: loop devices in direct-I/O mode (checked in sysfs), a buffered
fallback that is announced, thick (preallocated) volumes, and `noatime` staging mounts."""
import contextlib
import os
import subprocess
import tempfile
import time

import grpc
import pytest

from conftest import (Plugin, clean_host, csi_pb2, create_req, mount_cap, block_cap, code_of, free_port, loops_under,
                      host_mounts_under, sha256, write_random, require_root, MiB)
from test_node import paths, stage, unstage, expand
from test_metrics import scrape, samples, value

C = grpc.StatusCode


def loop_of(plugin, vid):
    disk = os.path.join(os.path.realpath(plugin.data), "volumes", vid, "disk.img")
    for name in loops_under(plugin.root):
        with open(f"/sys/block/{name}/loop/backing_file") as f:
            if f.read().strip() == disk:
                return name
    raise AssertionError(f"no loop device for {vid}")


def dio(name):
    with open(f"/sys/block/{name}/loop/dio") as f:
        return f.read().strip()


def mount_options(path):
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                return set(fields[5].split(","))
    raise AssertionError(f"{path} is not mounted")


def allocated(path):
    return os.stat(path).st_blocks * 512


def disk_of(plugin, vid):
    return os.path.join(plugin.data, "volumes", vid, "disk.img")


@pytest.mark.parametrize("fs", ["xfs", "ext4", "block"])
def test_a_staged_volume_is_a_direct_io_loop_device_with_noatime(plugin, fs):
    cap = block_cap() if fs == "block" else mount_cap(fs)
    staging, _ = paths(plugin)
    plugin.controller.CreateVolume(create_req("v", required=320 * MiB, cap=cap))
    stage(plugin, "v", staging, cap)
    name = loop_of(plugin, "v")
    assert dio(name) == "1", "the loop device must read and write its backing file with O_DIRECT"
    with open(f"/sys/block/{name}/queue/logical_block_size") as f:
        assert f.read().strip() == "512"
    if fs != "block":
        opts = mount_options(staging)
        assert "noatime" in opts and "relatime" not in opts, opts
    unstage(plugin, "v", staging)
    assert loops_under(plugin.root) == []


def test_a_capability_that_chooses_atime_keeps_it(plugin):
    cap = mount_cap("xfs", flags=["relatime"])
    staging, _ = paths(plugin)
    plugin.controller.CreateVolume(create_req("v", required=320 * MiB, cap=cap))
    stage(plugin, "v", staging, cap)
    opts = mount_options(staging)
    assert "relatime" in opts and "noatime" not in opts, opts
    unstage(plugin, "v", staging)


def test_reattached_after_a_node_restart_in_the_same_mode(plugin):
    """A reboot takes the loop device away; the next stage attaches it again with direct I/O. A
    device someone attached buffered (an older plugin) is switched to direct I/O by the stage."""
    cap = mount_cap("xfs")
    staging, _ = paths(plugin)
    plugin.controller.CreateVolume(create_req("v", required=320 * MiB, cap=cap))
    stage(plugin, "v", staging, cap)
    marker = os.path.join(staging, "marker")
    write_random(marker, 4)
    before = sha256(marker)
    # The node restarts: the plugin dies, the mount and the loop device are gone.
    plugin.stop()
    name = loop_of(plugin, "v")
    subprocess.run(["umount", staging], check=True)
    subprocess.run(["losetup", "-d", f"/dev/{name}"], check=True)
    plugin.start()
    stage(plugin, "v", staging, cap)
    assert dio(loop_of(plugin, "v")) == "1"
    assert sha256(marker) == before
    unstage(plugin, "v", staging)

    # An older plugin's buffered device, with nothing mounted yet.
    disk = os.path.realpath(disk_of(plugin, "v"))
    dev = subprocess.run(["losetup", "--find", "--show", disk], check=True, capture_output=True, text=True).stdout.strip()
    assert dio(dev.removeprefix("/dev/")) == "0"
    stage(plugin, "v", staging, cap)
    assert loop_of(plugin, "v") == dev.removeprefix("/dev/"), "the existing device is reused"
    assert dio(dev.removeprefix("/dev/")) == "1", "and switched to direct I/O"
    assert sha256(marker) == before
    unstage(plugin, "v", staging)
    assert loops_under(plugin.root) == []


def test_a_backing_filesystem_that_refuses_direct_io_falls_back_with_a_warning_and_a_metric():
    """The data directory on a disk with 4 KiB logical sectors: the kernel cannot do 512-byte direct
    I/O there, so the loop device stays buffered. The volume still works, the log says why once per
    stage, and /metrics counts the buffered device."""
    require_root()
    root = tempfile.mkdtemp(prefix="swell-conf-")
    outer_img = os.path.join(root, "outer.img")
    outer_dev = None
    p = Plugin(root)
    try:
        with open(outer_img, "wb") as f:
            f.truncate(512 * MiB)
        outer_dev = subprocess.run(["losetup", "--find", "--show", "--sector-size", "4096", outer_img],
                                   check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run(["mkfs.ext4", "-q", outer_dev], check=True)
        os.makedirs(p.data)
        subprocess.run(["mount", outer_dev, p.data], check=True)
        port = free_port()
        p.start(extra_args=["--metrics-address", f"127.0.0.1:{port}", "--log-format", "json"])
        cap = mount_cap("xfs")
        staging, _ = paths(p)
        p.controller.CreateVolume(create_req("v", required=320 * MiB, cap=cap))
        stage(p, "v", staging, cap)
        assert dio(loop_of(p, "v")) == "0"
        data = os.path.join(staging, "data")
        write_random(data, 8)
        digest = sha256(data)
        deadline = time.monotonic() + 5
        while "refused direct I/O" not in p.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = p.log()
        assert log.count("refused direct I/O") == 1, log
        s = samples(scrape(port)[1])
        assert value(s, "swell_loop_devices", direct_io="off") == 1
        assert value(s, "swell_loop_devices", direct_io="on") == 0
        unstage(p, "v", staging)
        stage(p, "v", staging, cap)
        assert sha256(data) == digest
        unstage(p, "v", staging)
        s = samples(scrape(port)[1])
        assert value(s, "swell_loop_devices", direct_io="off") == 0
    finally:
        p.stop()
        for mp in reversed(host_mounts_under(root)):
            subprocess.run(["umount", "-l", mp], check=False)
        for name in loops_under(p.data):
            subprocess.run(["losetup", "-d", f"/dev/{name}"], check=False)
        if outer_dev:
            subprocess.run(["losetup", "-d", outer_dev], check=False)
        clean_host(root)


def test_thick_volumes_are_preallocated_at_create_and_at_each_grow(plugin):
    thick = {"provisioning": "thick"}
    plugin.controller.CreateVolume(create_req("thin", required=256 * MiB))
    plugin.controller.CreateVolume(create_req("thick", required=256 * MiB, params=thick))
    assert allocated(disk_of(plugin, "thin")) < 1 * MiB
    assert allocated(disk_of(plugin, "thick")) >= 256 * MiB
    expand(plugin, "thick", 384 * MiB)
    assert os.path.getsize(disk_of(plugin, "thick")) == 384 * MiB
    assert allocated(disk_of(plugin, "thick")) >= 384 * MiB
    expand(plugin, "thin", 384 * MiB)
    assert allocated(disk_of(plugin, "thin")) < 1 * MiB
    # The same name with the other provisioning is another volume.
    assert code_of(plugin.controller.CreateVolume, create_req("thick", required=256 * MiB)) == C.ALREADY_EXISTS
    assert code_of(plugin.controller.CreateVolume,
                   create_req("thin", required=256 * MiB, params=thick)) == C.ALREADY_EXISTS
    # A retry of the same request is the same volume.
    again = plugin.controller.CreateVolume(create_req("thick", required=256 * MiB, params=thick)).volume
    assert again.capacity_bytes == 384 * MiB
    bad = create_req("x", params={"provisioning": "eager"})
    assert code_of(plugin.controller.CreateVolume, bad) == C.INVALID_ARGUMENT


@contextlib.contextmanager
def plugin_on_a_small_filesystem(mib=128):
    """A plugin whose data directory is its own ext4 of `mib` MiB (no reserved blocks), on a loop
    device of the test's; everything is unmounted and detached after, on failure too."""
    require_root()
    root = tempfile.mkdtemp(prefix="swell-conf-")
    p = Plugin(root)
    img = os.path.join(root, "small.img")
    try:
        with open(img, "wb") as f:
            f.truncate(mib * MiB)
        subprocess.run(["mkfs.ext4", "-q", "-m", "0", img], check=True)
        os.makedirs(p.data)
        subprocess.run(["mount", "-o", "loop", img, p.data], check=True)
        p.start()
        yield p
    finally:
        p.stop()
        clean_host(root)


def test_thick_without_the_space_is_resource_exhausted_and_leaves_nothing():
    """On a 128 MiB data filesystem: a thick volume too large for it is refused before any work; a
    thick restore whose preallocation runs out of space half-way (a restore skips the free-space
    precheck, the copy is judged by its source) is refused by fallocate's ENOSPC, and neither leaves
    a file behind. The thick volume that fitted keeps its bytes."""
    with plugin_on_a_small_filesystem() as p:
        thick = {"provisioning": "thick"}
        p.controller.CreateVolume(create_req("big", required=64 * MiB, params=thick))
        assert code_of(p.controller.CreateVolume,
                       create_req("huge", required=96 * MiB, params=thick)) == C.RESOURCE_EXHAUSTED
        p.controller.CreateVolume(create_req("src", required=16 * MiB))
        p.controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(name="s", source_volume_id="src"))
        req = create_req("restored", required=96 * MiB, params=thick)
        req.volume_content_source.snapshot.snapshot_id = "s"
        try:
            p.controller.CreateVolume(req)
            raise AssertionError("a 96 MiB thick restore fitted in what 64 MiB left of 128 MiB")
        except grpc.RpcError as e:
            assert e.code() == C.RESOURCE_EXHAUSTED, e.details()
            assert "no space" in e.details()
        names = os.listdir(os.path.join(p.data, "volumes"))
        assert sorted(names) == ["big", "src"], names
        assert code_of(p.controller.ControllerExpandVolume, csi_pb2.ControllerExpandVolumeRequest(
            volume_id="big", capacity_range=csi_pb2.CapacityRange(required_bytes=256 * MiB))) == C.RESOURCE_EXHAUSTED
        assert os.path.getsize(disk_of(p, "big")) == 64 * MiB
