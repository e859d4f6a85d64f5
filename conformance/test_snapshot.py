"""Snapshots and clones of loop volumes: CreateSnapshot, DeleteSnapshot, ListSnapshots, GetSnapshot,
and CreateVolume from a snapshot or a volume, through grpcio against the real plugin. Data is checked
by checksum through real mounts; a mounted volume is frozen around its copy and must be writable after;
a SIGKILL inside CreateSnapshot must converge on one snapshot with nothing frozen or left over."""
import os
import signal
import subprocess
import tempfile
import threading
import time

import grpc
import pytest

from conftest import (MiB, NODE_ID, TOPOLOGY_KEY, Plugin, block_cap, clean_host, code_of, create_req, csi_pb2,
                      loops_under, host_mounts_under, mount_cap, require_root, sha256, write_random)
from test_node import stage, publish, unpublish, unstage

C = grpc.StatusCode


def snap(plugin, name, source, **params):
    return plugin.controller.CreateSnapshot(
        csi_pb2.CreateSnapshotRequest(name=name, source_volume_id=source, parameters=params)).snapshot


def from_snapshot(name, snapshot_id, required=0, cap=None):
    req = create_req(name, required=required, cap=cap)
    req.volume_content_source.snapshot.snapshot_id = snapshot_id
    return req


def from_volume(name, volume_id, required=0, cap=None):
    req = create_req(name, required=required, cap=cap)
    req.volume_content_source.volume.volume_id = volume_id
    return req


def paths(plugin, name):
    return (os.path.join(plugin.root, "kubelet", "plugins", name, "globalmount"),
            os.path.join(plugin.root, "kubelet", "pods", "p1", "volumes", name, "mount"))


def mounted(plugin, name, cap, size=None, volume=None):
    """Creates a volume of `size` (or takes `volume`, a CreateVolume answer), stages and publishes it
    with its volume context, as kubelet passes it from the PV; returns the target path. A volume
    staged before keeps the context it was created with."""
    if size is not None:
        volume = plugin.controller.CreateVolume(create_req(name, required=size, cap=cap)).volume
    if volume is not None:
        _contexts[name] = dict(volume.volume_context)
    staging, target = paths(plugin, name)
    plugin.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
        volume_id=name, staging_target_path=staging, volume_capability=cap, volume_context=_contexts.get(name, {}),
        publish_context=plugin.publish_here(name, cap)))
    publish(plugin, name, staging, target, cap)
    return target


_contexts = {}


def release(plugin, name):
    staging, target = paths(plugin, name)
    unpublish(plugin, name, target)
    unstage(plugin, name, staging)


_blocked_writers = []


def writable_within(path, seconds=10):
    """True when a small fsynced write to a file under `path` completes in time. A frozen filesystem
    blocks it uninterruptibly, so a writer that does not finish is left to finish after the thaw."""
    proc = subprocess.Popen(["dd", "if=/dev/zero", f"of={os.path.join(path, 'probe')}", "bs=4k", "count=1",
                             "conv=fsync"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return proc.wait(timeout=seconds) == 0
    except subprocess.TimeoutExpired:
        _blocked_writers.append(proc)
        return False


def snapshot_dirs(plugin):
    return sorted(os.listdir(os.path.join(plugin.data, "snapshots")))


def test_controller_reports_snapshot_and_clone_capabilities(plugin):
    caps = {c.rpc.type for c in plugin.controller.ControllerGetCapabilities(
        csi_pb2.ControllerGetCapabilitiesRequest()).capabilities}
    R = csi_pb2.ControllerServiceCapability.RPC
    assert {R.CREATE_DELETE_SNAPSHOT, R.LIST_SNAPSHOTS, R.GET_SNAPSHOT, R.CLONE_VOLUME} <= caps


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_snapshot_of_a_mounted_volume_restores_what_was_written_before_it(plugin, fs):
    cap = mount_cap(fs)
    target = mounted(plugin, "src", cap, size=320 * MiB)
    write_random(os.path.join(target, "before.bin"), 16)
    digest = sha256(os.path.join(target, "before.bin"))
    t0 = time.time_ns()
    s = snap(plugin, "snap-1", "src")
    t1 = time.time_ns()
    assert s.snapshot_id == "snap-1" and s.source_volume_id == "src" and s.ready_to_use
    assert s.size_bytes == 320 * MiB
    created = s.creation_time.seconds * 10**9 + s.creation_time.nanos
    assert t0 - 10**9 <= created <= t1 + 10**9
    assert snap(plugin, "snap-1", "src") == s, "idempotent: the same snapshot"
    assert writable_within(target), "the source was thawed"
    write_random(os.path.join(target, "after.bin"), 2)

    v = plugin.controller.CreateVolume(from_snapshot("restored", "snap-1", cap=cap)).volume
    assert v.volume_context["contentSource"] == "snapshot:snap-1"
    assert v.capacity_bytes == 320 * MiB, "a restore is the snapshot's size by default"
    assert v.content_source.snapshot.snapshot_id == "snap-1"
    assert [dict(t.segments) for t in v.accessible_topology] == [{TOPOLOGY_KEY: NODE_ID}]
    assert plugin.controller.CreateVolume(from_snapshot("restored", "snap-1", cap=cap)).volume == v
    restored = mounted(plugin, "restored", cap, volume=v)
    assert sha256(os.path.join(restored, "before.bin")) == digest
    assert not os.path.exists(os.path.join(restored, "after.bin")), "written after the snapshot"
    write_random(os.path.join(restored, "mine.bin"), 1)
    assert not os.path.exists(os.path.join(target, "mine.bin")), "the restore shares nothing with its source"
    release(plugin, "restored")
    release(plugin, "src")
    assert loops_under(plugin.root) == [] and host_mounts_under(plugin.root) == []


def test_a_larger_restore_grows_its_filesystem_at_stage_and_a_smaller_one_is_out_of_range(plugin):
    cap = mount_cap("xfs")  # grows online wherever the plugin runs
    target = mounted(plugin, "small", cap, size=320 * MiB)
    write_random(os.path.join(target, "data"), 4)
    digest = sha256(os.path.join(target, "data"))
    release(plugin, "small")
    snap(plugin, "s-small", "small")
    assert code_of(plugin.controller.CreateVolume, from_snapshot("tiny", "s-small", required=64 * MiB, cap=cap)) \
        == C.OUT_OF_RANGE
    assert code_of(plugin.controller.CreateVolume, from_volume("tiny", "small", required=64 * MiB, cap=cap)) \
        == C.OUT_OF_RANGE
    req = from_snapshot("tiny", "s-small", required=64 * MiB, cap=cap)
    req.capacity_range.limit_bytes = 100 * MiB
    assert code_of(plugin.controller.CreateVolume, req) == C.OUT_OF_RANGE
    big = plugin.controller.CreateVolume(from_snapshot("big", "s-small", required=640 * MiB, cap=cap)).volume
    assert big.capacity_bytes == 640 * MiB
    restored = mounted(plugin, "big", cap, volume=big)
    st = os.statvfs(restored)
    assert st.f_blocks * st.f_frsize > 560 * MiB, "the filesystem fills the larger volume"
    assert sha256(os.path.join(restored, "data")) == digest
    release(plugin, "big")
    assert sorted(os.listdir(os.path.join(plugin.data, "volumes"))) == ["big", "small"]


@pytest.mark.parametrize("while_mounted", [True, False], ids=["mounted", "unstaged"])
def test_a_clone_holds_its_source_data(plugin, while_mounted):
    cap = mount_cap("ext4")
    target = mounted(plugin, "orig", cap, size=64 * MiB)
    write_random(os.path.join(target, "f"), 8)
    digest = sha256(os.path.join(target, "f"))
    if not while_mounted:
        release(plugin, "orig")
    c = plugin.controller.CreateVolume(from_volume("copy", "orig", cap=cap)).volume
    assert c.capacity_bytes == 64 * MiB and c.content_source.volume.volume_id == "orig"
    if while_mounted:
        assert writable_within(target), "the source was thawed after the clone"
    cloned = mounted(plugin, "copy", cap, volume=c)
    assert sha256(os.path.join(cloned, "f")) == digest
    release(plugin, "copy")
    if while_mounted:
        release(plugin, "orig")
    plugin.controller.CreateVolume(create_req("other", required=64 * MiB, cap=cap))
    assert code_of(plugin.controller.CreateVolume, from_volume("copy", "other", cap=cap)) == C.ALREADY_EXISTS, \
        "the same name with another source"
    assert code_of(plugin.controller.CreateVolume, create_req("copy", required=64 * MiB, cap=cap)) == C.ALREADY_EXISTS, \
        "the same name with no source"


def test_snapshot_errors(plugin):
    plugin.controller.CreateVolume(create_req("ev", required=16 * MiB))
    Req = csi_pb2.CreateSnapshotRequest
    assert code_of(plugin.controller.CreateSnapshot, Req(source_volume_id="ev")) == C.INVALID_ARGUMENT
    assert code_of(plugin.controller.CreateSnapshot, Req(name="s")) == C.INVALID_ARGUMENT
    assert code_of(plugin.controller.CreateSnapshot, Req(name="../s", source_volume_id="ev")) == C.INVALID_ARGUMENT
    assert code_of(plugin.controller.CreateSnapshot, Req(name="-s", source_volume_id="ev")) == C.INVALID_ARGUMENT
    assert code_of(plugin.controller.CreateSnapshot, Req(name="s", source_volume_id="nope")) == C.NOT_FOUND
    assert code_of(plugin.controller.CreateSnapshot,
                   Req(name="s", source_volume_id="ev", parameters={"colour": "blue"})) == C.INVALID_ARGUMENT
    ok = Req(name="s", source_volume_id="ev", parameters={"csi.storage.k8s.io/volumesnapshot/name": "x"})
    assert code_of(plugin.controller.CreateSnapshot, ok) == C.OK
    plugin.controller.CreateVolume(create_req("ev2", required=16 * MiB))
    assert code_of(plugin.controller.CreateSnapshot, Req(name="s", source_volume_id="ev2")) == C.ALREADY_EXISTS
    assert code_of(plugin.controller.DeleteSnapshot, csi_pb2.DeleteSnapshotRequest()) == C.INVALID_ARGUMENT
    assert code_of(plugin.controller.DeleteSnapshot, csi_pb2.DeleteSnapshotRequest(snapshot_id="never")) == C.OK
    assert code_of(plugin.controller.GetSnapshot, csi_pb2.GetSnapshotRequest(snapshot_id="never")) == C.NOT_FOUND
    assert plugin.controller.GetSnapshot(csi_pb2.GetSnapshotRequest(snapshot_id="s")).snapshot.source_volume_id == "ev"
    assert code_of(plugin.controller.CreateVolume, from_snapshot("r", "never")) == C.NOT_FOUND
    assert code_of(plugin.controller.CreateVolume, from_volume("r", "never")) == C.NOT_FOUND
    empty = create_req("r")
    empty.volume_content_source.SetInParent()
    assert code_of(plugin.controller.CreateVolume, empty) == C.INVALID_ARGUMENT
    plugin.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id="s"))
    plugin.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id="s"))
    assert snapshot_dirs(plugin) == []
    assert sorted(os.listdir(os.path.join(plugin.data, "volumes"))) == ["ev", "ev2"]


def test_list_snapshots_filters_and_pages(plugin):
    for v in ("va", "vb"):
        plugin.controller.CreateVolume(create_req(v, required=8 * MiB))
    names = {"s1": "va", "s2": "vb", "s3": "va", "s4": "vb", "s5": "va"}
    for n, v in names.items():
        snap(plugin, n, v)
    L = lambda **kw: plugin.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(**kw))
    assert [e.snapshot.snapshot_id for e in L().entries] == ["s1", "s2", "s3", "s4", "s5"]
    assert [e.snapshot.snapshot_id for e in L(source_volume_id="va").entries] == ["s1", "s3", "s5"]
    assert [(e.snapshot.snapshot_id, e.snapshot.source_volume_id) for e in L(snapshot_id="s4").entries] == [("s4", "vb")]
    assert list(L(snapshot_id="missing").entries) == [] and list(L(snapshot_id="../x").entries) == []
    assert list(L(snapshot_id="s4", source_volume_id="va").entries) == []
    seen, token = [], ""
    while True:
        r = L(max_entries=2, starting_token=token)
        assert len(r.entries) <= 2
        seen += [e.snapshot.snapshot_id for e in r.entries]
        token = r.next_token
        if not token:
            break
    assert seen == ["s1", "s2", "s3", "s4", "s5"]
    assert code_of(plugin.controller.ListSnapshots, csi_pb2.ListSnapshotsRequest(starting_token="bogus")) == C.ABORTED
    assert code_of(plugin.controller.ListSnapshots, csi_pb2.ListSnapshotsRequest(max_entries=-1)) == C.INVALID_ARGUMENT
    assert all(e.snapshot.ready_to_use and e.snapshot.size_bytes == 8 * MiB for e in L().entries)


def test_parallel_snapshots_with_one_name_make_one(plugin):
    import threading
    plugin.controller.CreateVolume(create_req("par", required=64 * MiB))
    with open(os.path.join(plugin.data, "volumes", "par", "disk.img"), "r+b") as f:
        f.write(os.urandom(16 * MiB))  # enough to copy that the calls overlap
    results, lock = [], threading.Lock()

    def call():
        try:
            out = ("ok", snap(plugin, "par-1", "par").snapshot_id)
        except grpc.RpcError as e:
            out = ("err", e.code())
        with lock:
            results.append(out)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ("ok", "par-1") in results
    assert all(r == ("ok", "par-1") or r == ("err", C.ABORTED) for r in results), results
    assert snapshot_dirs(plugin) == ["par-1"]
    assert snap(plugin, "par-1", "par").snapshot_id == "par-1", "a caller told ABORTED succeeds on retry"


def test_snapshots_outlive_their_volume(plugin):
    cap = mount_cap("ext4")
    target = mounted(plugin, "gone", cap, size=64 * MiB)
    write_random(os.path.join(target, "f"), 2)
    digest = sha256(os.path.join(target, "f"))
    release(plugin, "gone")
    snap(plugin, "keep", "gone")
    plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="gone"))
    assert [e.snapshot.snapshot_id for e in plugin.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest()).entries] \
        == ["keep"]
    back = plugin.controller.CreateVolume(from_snapshot("back", "keep", cap=cap)).volume
    assert sha256(os.path.join(mounted(plugin, "back", cap, volume=back), "f")) == digest
    release(plugin, "back")


def test_a_snapshot_is_a_sparse_copy_on_a_data_directory_without_reflink(plugin):
    plugin.controller.CreateVolume(create_req("sp", required=256 * MiB))
    disk = os.path.join(plugin.data, "volumes", "sp", "disk.img")
    with open(disk, "r+b") as f:
        f.seek(100 * MiB)
        f.write(os.urandom(MiB))
    snap(plugin, "sp-1", "sp")
    copy = os.path.join(plugin.data, "snapshots", "sp-1", "disk.img")
    assert os.path.getsize(copy) == 256 * MiB
    assert os.stat(copy).st_blocks * 512 < 8 * MiB, "only the written extents were copied"
    assert sha256(copy) == sha256(disk)
    meta = open(os.path.join(plugin.data, "snapshots", "sp-1", "meta")).read()
    assert "method=copy" in meta


def test_a_block_volume_in_use_is_not_copied_without_reflink(plugin):
    cap = block_cap()
    plugin.controller.CreateVolume(create_req("blk", required=16 * MiB, cap=cap))
    staging, _ = paths(plugin, "blk")
    stage(plugin, "blk", staging, cap)
    assert code_of(snap, plugin, "blk-1", "blk") == C.FAILED_PRECONDITION
    assert snapshot_dirs(plugin) == []
    unstage(plugin, "blk", staging)
    assert snap(plugin, "blk-1", "blk").ready_to_use


# ---- Data directories of other filesystems: reflink on xfs, no room on a small one --------

@pytest.fixture
def plugin_on(request):
    """The plugin with its data directory on a loop-mounted filesystem of the test's own:
    `plugin_on(fs, mib)`."""
    require_root()
    made = []

    def start(fs, mib):
        root = tempfile.mkdtemp(prefix="swell-conf-")
        image = os.path.join(root, "datafs.img")
        with open(image, "wb") as f:
            f.truncate(mib * MiB)
        mkfs = ["mkfs.xfs", "-q", "-m", "reflink=1"] if fs == "xfs" else ["mkfs.ext4", "-q", "-F", "-m", "0"]
        subprocess.run(mkfs + [image], check=True, capture_output=True)
        p = Plugin(root)
        os.makedirs(p.data)
        made.append(p)
        subprocess.run(["mount", "-o", "loop", image, p.data], check=True, capture_output=True)
        return p.start()

    yield start
    for p in made:
        p.stop()
        clean_host(p.root)


def test_a_snapshot_is_a_reflink_on_xfs_with_reflink(plugin_on):
    plugin = plugin_on("xfs", 1024)
    cap = mount_cap("ext4")
    target = mounted(plugin, "rv", cap, size=256 * MiB)
    write_random(os.path.join(target, "f"), 32)
    digest = sha256(os.path.join(target, "f"))
    free_before = os.statvfs(plugin.data).f_bavail * os.statvfs(plugin.data).f_frsize
    snap(plugin, "rv-1", "rv")
    free_after = os.statvfs(plugin.data).f_bavail * os.statvfs(plugin.data).f_frsize
    assert "method=reflink" in open(os.path.join(plugin.data, "snapshots", "rv-1", "meta")).read()
    assert free_before - free_after < 8 * MiB, "a reflink shares the blocks"
    assert writable_within(target)
    write_random(os.path.join(target, "later"), 4)
    back = plugin.controller.CreateVolume(from_snapshot("rv-back", "rv-1", cap=cap)).volume
    restored = mounted(plugin, "rv-back", cap, volume=back)
    assert sha256(os.path.join(restored, "f")) == digest and not os.path.exists(os.path.join(restored, "later"))
    release(plugin, "rv-back")
    # On xfs a block volume in use can be captured too: a reflink is atomic.
    plugin.controller.CreateVolume(create_req("rb", required=16 * MiB, cap=block_cap()))
    staging, _ = paths(plugin, "rb")
    stage(plugin, "rb", staging, block_cap())
    assert snap(plugin, "rb-1", "rb").ready_to_use
    unstage(plugin, "rb", staging)
    release(plugin, "rv")


def test_a_snapshot_that_cannot_fit_is_resource_exhausted(plugin_on):
    plugin = plugin_on("ext4", 96)
    cap = mount_cap("ext4")
    target = mounted(plugin, "fat", cap, size=80 * MiB)
    write_random(os.path.join(target, "f"), 48)
    release(plugin, "fat")
    assert code_of(snap, plugin, "fat-1", "fat") == C.RESOURCE_EXHAUSTED
    assert snapshot_dirs(plugin) == [], "nothing was left behind"
    assert code_of(plugin.controller.CreateVolume, from_volume("fat-2", "fat", cap=cap)) == C.RESOURCE_EXHAUSTED
    assert os.listdir(os.path.join(plugin.data, "volumes")) == ["fat"]


# ---- Crashes inside CreateSnapshot ---------------------------------------------------------

@pytest.mark.parametrize("point", ["snapshot-after-freeze", "snapshot-frozen-after-copy", "snapshot-after-thaw"])
def test_a_crash_inside_create_snapshot_converges_and_leaves_nothing_frozen(plugin, point):
    cap = mount_cap("ext4")
    target = mounted(plugin, "cv", cap, size=64 * MiB)
    write_random(os.path.join(target, "f"), 4)
    digest = sha256(os.path.join(target, "f"))
    plugin.stop()
    plugin.start(failpoints=point)
    with pytest.raises(grpc.RpcError) as err:
        snap(plugin, "cv-1", "cv")
    assert err.value.code() == C.UNAVAILABLE
    assert plugin.wait_dead() == -signal.SIGKILL
    assert snapshot_dirs(plugin) == [".cv-1.creating"], "the crash hit the middle of the snapshot"
    if point != "snapshot-after-thaw":
        assert not writable_within(target, seconds=2), "the crash left the filesystem frozen"
    plugin.start()
    assert writable_within(target), "the restart thawed the filesystem before serving"
    for writer in _blocked_writers:
        writer.wait(timeout=10)
    assert snapshot_dirs(plugin) == [], "the restart swept the half-made snapshot"
    s = snap(plugin, "cv-1", "cv")
    assert s.ready_to_use and snapshot_dirs(plugin) == ["cv-1"]
    assert writable_within(target)
    back = plugin.controller.CreateVolume(from_snapshot("cv-back", "cv-1", cap=cap)).volume
    assert sha256(os.path.join(mounted(plugin, "cv-back", cap, volume=back), "f")) == digest
    release(plugin, "cv-back")
    release(plugin, "cv")


@pytest.mark.parametrize("point", ["snapshot-after-freeze", "snapshot-frozen-after-copy", "create-after-clone"])
def test_a_crash_inside_a_clone_converges(plugin, point):
    cap = mount_cap("ext4")
    target = mounted(plugin, "co", cap, size=64 * MiB)
    write_random(os.path.join(target, "f"), 2)
    digest = sha256(os.path.join(target, "f"))
    plugin.stop()
    plugin.start(failpoints=point)
    with pytest.raises(grpc.RpcError) as err:
        plugin.controller.CreateVolume(from_volume("co-2", "co", cap=cap))
    assert err.value.code() == C.UNAVAILABLE
    assert plugin.wait_dead() == -signal.SIGKILL, "the plugin died at the failpoint"
    if point != "create-after-clone":
        assert not writable_within(target, seconds=2), "the crash left the filesystem frozen"
    plugin.start()
    assert writable_within(target), "the restart thawed the filesystem before serving"
    for writer in _blocked_writers:
        writer.wait(timeout=10)
    assert sorted(os.listdir(os.path.join(plugin.data, "volumes"))) == ["co"]
    clone = plugin.controller.CreateVolume(from_volume("co-2", "co", cap=cap)).volume
    assert sha256(os.path.join(mounted(plugin, "co-2", cap, volume=clone), "f")) == digest
    release(plugin, "co-2")
    release(plugin, "co")


def _frozen_marker(plugin):
    """The marker a snapshot or clone leaves while it holds a filesystem frozen (in a hidden staging
    directory, which glob would not see)."""
    for folder, _, files in os.walk(plugin.data):
        if "frozen" in files:
            return os.path.join(folder, "frozen")
    return None


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("copy", ["snapshot", "clone"])
def test_a_write_issued_during_the_copy_waits_for_the_thaw_and_is_not_in_the_copy(plugin, copy):
    """The freeze itself, not only fsynced data: with the plugin held one second after the freeze and
    one second after the copy, a write issued inside that window sleeps uninterruptibly until the thaw,
    and the copy does not hold it. Without the freeze the write lands before the copy and is in it."""
    cap = mount_cap("ext4")
    target = mounted(plugin, "fz", cap, size=64 * MiB)
    write_random(os.path.join(target, "before.bin"), 1)
    plugin.stop()
    plugin.start(failpoints="snapshot-after-freeze:pause,snapshot-frozen-after-copy:pause")
    call = plugin.controller.CreateSnapshot.future(
        csi_pb2.CreateSnapshotRequest(name="fz-1", source_volume_id="fz")) if copy == "snapshot" else \
        plugin.controller.CreateVolume.future(from_volume("fz-2", "fz", cap=cap))
    deadline = time.monotonic() + 30
    while _frozen_marker(plugin) is None and not call.done():
        assert time.monotonic() < deadline, "the copy never froze its source"
        time.sleep(0.01)
    assert not call.done(), "the call is held inside its freeze"
    time.sleep(0.2)  # past the marker, into the second the plugin holds after FIFREEZE
    writer = subprocess.Popen(["dd", "if=/dev/urandom", f"of={os.path.join(target, 'during.bin')}", "bs=4k",
                               "count=1", "conv=fsync"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while _state(writer.pid) != "D":
            assert writer.poll() is None, "the write finished while the source should be frozen"
            time.sleep(0.01)
        assert not call.done(), "the writer blocked while the copy held the freeze"
        call.result(timeout=30)
        assert writer.wait(timeout=10) == 0, "the thaw let the write finish"
    finally:
        if writer.poll() is None:
            subprocess.run(["fsfreeze", "--unfreeze", paths(plugin, "fz")[0]], stderr=subprocess.DEVNULL)
            writer.wait(timeout=10)
    assert _frozen_marker(plugin) is None
    assert os.path.getsize(os.path.join(target, "during.bin")) == 4096
    if copy == "snapshot":
        copy_volume = plugin.controller.CreateVolume(from_snapshot("fz-2", "fz-1", cap=cap)).volume
    else:
        copy_volume = call.result().volume
    restored = mounted(plugin, "fz-2", cap, volume=copy_volume)
    assert os.path.getsize(os.path.join(restored, "before.bin")) == MiB
    during = os.path.join(restored, "during.bin")
    assert not os.path.exists(during) or os.path.getsize(during) == 0, "the copy holds a write made after the freeze"
    release(plugin, "fz-2")
    release(plugin, "fz")


def test_a_snapshots_creation_time_is_its_freeze_so_every_commit_before_it_is_in_it(plugin):
    """CSI's creation_time is when the point-in-time snapshot is taken. A writer commits numbered
    records (each written and fsynced; its time taken once fsync returns) while the snapshot is
    taken, with the plugin held 2 s after the thaw (a failpoint) so that commits land between the
    thaw and the end of the call. Every record committed before creation_time must be in the
    snapshot. Stamped at the end of the call, as it was, the records of those 2 s looked older than
    the snapshot and were not in it."""
    cap = mount_cap("ext4")
    target = mounted(plugin, "ct", cap, size=64 * MiB)
    plugin.stop()
    plugin.start(failpoints="snapshot-after-thaw:pause=2")
    acked = {}  # record number -> the time its fsync returned
    stop = threading.Event()

    def writer():
        fd = os.open(os.path.join(target, "ledger"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            n = 0
            while not stop.is_set():
                n += 1
                os.pwrite(fd, b"%08d\n" % n, 9 * (n - 1))
                os.fsync(fd)
                acked[n] = time.time_ns()
                time.sleep(0.005)
        finally:
            os.close(fd)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.5)
        s = snap(plugin, "ct-1", "ct")
        returned = time.time_ns()
    finally:
        stop.set()
        thread.join(timeout=30)
    created = s.creation_time.seconds * 10**9 + s.creation_time.nanos
    restored = mounted(plugin, "ct-2", cap, volume=plugin.controller.CreateVolume(from_snapshot("ct-2", "ct-1", cap=cap)).volume)
    with open(os.path.join(restored, "ledger"), "rb") as f:
        held = {int(line) for line in f.read().split(b"\n") if len(line) == 8 and line.isdigit()}
    before = sorted(n for n, t in acked.items() if t < created)
    assert before, "records committed before the snapshot"
    missing = [n for n in before if n not in held]
    assert not missing, f"{len(missing)} records committed before creation_time are not in the snapshot: {missing[:5]}…"
    after = [n for n, t in acked.items() if created < t < returned]
    assert len(after) > 10, f"records committed between the snapshot's time and the call's end: {len(after)}"
    # At most the one whose fsync returned just before the freeze, timed just after it.
    assert len([n for n in after if n in held]) <= 1, "the snapshot holds what was committed after its time"
    release(plugin, "ct-2")
    release(plugin, "ct")
