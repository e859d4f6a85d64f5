"""Group snapshots: the GroupController service through grpcio against the real plugin, on loop volumes
mounted through real loop devices. Every member's filesystem is held frozen from before the first copy
until after the last, so writes issued to any member during the call wait for the thaw and are in no
copy; a crash at any point inside the call leaves nothing frozen and no half-made group once the plugin
restarts, and the retry makes the whole group. Members are ordinary snapshots with `group_snapshot_id`,
restored with CreateVolume and checked by checksum."""
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from conftest import MiB, block_cap, code_of, create_req, csi_pb2, mount_cap, sha256, write_random
from test_node import stage, unstage
from test_snapshot import (_blocked_writers, _state, from_snapshot, mounted, paths, plugin_on, release,  # noqa: F401
                           snapshot_dirs, writable_within)

C = grpc.StatusCode


def group_req(name, sources, **params):
    return csi_pb2.CreateVolumeGroupSnapshotRequest(name=name, source_volume_ids=sources, parameters=params)


def take(plugin, name, sources):
    return plugin.group.CreateVolumeGroupSnapshot(group_req(name, sources)).group_snapshot


def delete_req(group):
    return csi_pb2.DeleteVolumeGroupSnapshotRequest(
        group_snapshot_id=group.group_snapshot_id, snapshot_ids=[s.snapshot_id for s in group.snapshots])


def frozen_markers(plugin):
    out = []
    for folder, _, files in os.walk(os.path.join(plugin.data, "snapshots")):
        if "frozen" in files:
            out.append(os.path.join(folder, "frozen"))
    return sorted(out)


def test_the_group_controller_service_is_advertised_with_its_one_capability(plugin):
    caps = plugin.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest()).capabilities
    S = csi_pb2.PluginCapability.Service
    assert S.GROUP_CONTROLLER_SERVICE in {c.service.type for c in caps if c.HasField("service")}
    group_caps = plugin.group.GroupControllerGetCapabilities(csi_pb2.GroupControllerGetCapabilitiesRequest())
    R = csi_pb2.GroupControllerServiceCapability.RPC
    assert [c.rpc.type for c in group_caps.capabilities] == [R.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT]


def test_group_snapshot_errors(plugin):
    for v in ("ea", "eb", "ec"):
        plugin.controller.CreateVolume(create_req(v, required=8 * MiB))
    create = plugin.group.CreateVolumeGroupSnapshot
    assert code_of(create, csi_pb2.CreateVolumeGroupSnapshotRequest()) == C.INVALID_ARGUMENT
    assert code_of(create, group_req("", ["ea"])) == C.INVALID_ARGUMENT
    assert code_of(create, group_req("g", [])) == C.INVALID_ARGUMENT
    assert code_of(create, group_req("../g", ["ea"])) == C.INVALID_ARGUMENT
    assert code_of(create, group_req("g", ["ea", "../eb"])) == C.INVALID_ARGUMENT
    assert code_of(create, group_req("g", ["ea", "ea"])) == C.INVALID_ARGUMENT
    assert code_of(create, group_req("g" * 126, ["ea"])) == C.INVALID_ARGUMENT, "no room for a member's suffix"
    assert code_of(create, group_req("g", ["ea"], colour="blue")) == C.INVALID_ARGUMENT
    assert code_of(create, group_req("g", ["ea", "nope"])) == C.NOT_FOUND
    assert snapshot_dirs(plugin) == [], "a refused group leaves no member"
    group = take(plugin, "g", ["eb", "ea"])
    assert code_of(create, group_req("g", ["ea", "ec"])) == C.ALREADY_EXISTS
    assert code_of(create, group_req("g", ["ea"])) == C.ALREADY_EXISTS
    # A member's ID taken by a snapshot of its own: that name cannot be a group.
    plugin.controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(name="h.0", source_volume_id="ea"))
    assert code_of(create, group_req("h", ["ea", "eb"])) == C.ALREADY_EXISTS
    assert snapshot_dirs(plugin) == ["g.0", "g.1", "h.0"]
    get = plugin.group.GetVolumeGroupSnapshot
    assert code_of(get, csi_pb2.GetVolumeGroupSnapshotRequest()) == C.INVALID_ARGUMENT
    assert code_of(get, csi_pb2.GetVolumeGroupSnapshotRequest(group_snapshot_id="never")) == C.NOT_FOUND
    assert code_of(get, csi_pb2.GetVolumeGroupSnapshotRequest(group_snapshot_id="g", snapshot_ids=["g.0"])) \
        == C.INVALID_ARGUMENT, "a snapshot list that is not the group's"
    delete = plugin.group.DeleteVolumeGroupSnapshot
    assert code_of(delete, csi_pb2.DeleteVolumeGroupSnapshotRequest()) == C.INVALID_ARGUMENT
    assert code_of(delete, csi_pb2.DeleteVolumeGroupSnapshotRequest(group_snapshot_id="never")) == C.OK
    assert code_of(delete, csi_pb2.DeleteVolumeGroupSnapshotRequest(group_snapshot_id="g", snapshot_ids=["g.0"])) \
        == C.INVALID_ARGUMENT
    assert code_of(delete, csi_pb2.DeleteVolumeGroupSnapshotRequest(
        group_snapshot_id="g", snapshot_ids=["g.0", "g.1", "h.0"])) == C.INVALID_ARGUMENT
    assert code_of(delete, csi_pb2.DeleteVolumeGroupSnapshotRequest(group_snapshot_id="g")) == C.INVALID_ARGUMENT
    # A member cannot be deleted alone (the spec's "Snapshot is part of a group").
    assert code_of(plugin.controller.DeleteSnapshot, csi_pb2.DeleteSnapshotRequest(snapshot_id="g.1")) \
        == C.INVALID_ARGUMENT
    assert snapshot_dirs(plugin) == ["g.0", "g.1", "h.0"], "every refusal left the group whole"
    delete(delete_req(group))
    assert code_of(delete, delete_req(group)) == C.OK, "a repeat is OK"
    assert snapshot_dirs(plugin) == ["h.0"]


@pytest.mark.parametrize("kind", ["mount", "block"])
def test_a_group_snapshot_restores_every_member(plugin, kind):
    """Two mounted (or two unstaged block) volumes: the group's members are ordinary snapshots with
    its ID, listed and fetched like any other, restored with CreateVolume to the data each volume held;
    a repeat, and parallel calls with one name, answer the same group."""
    cap = mount_cap("ext4") if kind == "mount" else block_cap()
    digests = {}
    for v, mib in (("pa", 3), ("pb", 5)):
        if kind == "mount":
            target = mounted(plugin, v, cap, size=32 * MiB)
            write_random(os.path.join(target, "f"), mib)
            digests[v] = sha256(os.path.join(target, "f"))
        else:
            plugin.controller.CreateVolume(create_req(v, required=16 * MiB, cap=cap))
            disk = os.path.join(plugin.data, "volumes", v, "disk.img")
            subprocess.run(["dd", "if=/dev/urandom", f"of={disk}", "bs=1M", f"count={mib}", "conv=notrunc,fsync"],
                           check=True, capture_output=True)
            digests[v] = sha256(disk)
    with ThreadPoolExecutor(8) as pool:
        calls = list(pool.map(lambda _: code_of(plugin.group.CreateVolumeGroupSnapshot, group_req("pg", ["pb", "pa"])),
                              range(8)))
    assert set(calls) <= {C.OK, C.ABORTED} and C.OK in calls, calls
    group = take(plugin, "pg", ["pa", "pb"])
    again = take(plugin, "pg", ["pb", "pa"])
    assert group == again, "a repeat answers the same group"
    assert group.group_snapshot_id == "pg" and group.ready_to_use and group.HasField("creation_time")
    members = {s.source_volume_id: s for s in group.snapshots}
    assert sorted(members) == ["pa", "pb"]
    for s in group.snapshots:
        assert s.group_snapshot_id == "pg" and s.ready_to_use and s.size_bytes >= 16 * MiB
        assert s.creation_time == group.creation_time, "every member is of the one instant"
    listed = plugin.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest()).entries
    assert sorted((e.snapshot.snapshot_id, e.snapshot.group_snapshot_id) for e in listed) == \
        sorted((s.snapshot_id, "pg") for s in group.snapshots)
    got = plugin.group.GetVolumeGroupSnapshot(csi_pb2.GetVolumeGroupSnapshotRequest(
        group_snapshot_id="pg", snapshot_ids=[s.snapshot_id for s in group.snapshots])).group_snapshot
    assert got == group
    if kind == "mount":
        for v in ("pa", "pb"):
            write_random(os.path.join(paths(plugin, v)[1], "later"), 1)
    for v, s in members.items():
        restored = plugin.controller.CreateVolume(from_snapshot(f"{v}-back", s.snapshot_id, cap=cap)).volume
        assert restored.content_source.snapshot.snapshot_id == s.snapshot_id
        if kind == "mount":
            target = mounted(plugin, f"{v}-back", cap, volume=restored)
            assert sha256(os.path.join(target, "f")) == digests[v]
            assert not os.path.exists(os.path.join(target, "later"))
            release(plugin, f"{v}-back")
        else:
            assert sha256(os.path.join(plugin.data, "volumes", f"{v}-back", "disk.img")) == digests[v]
    plugin.group.DeleteVolumeGroupSnapshot(delete_req(group))
    assert list(plugin.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest()).entries) == []
    if kind == "mount":
        release(plugin, "pa")
        release(plugin, "pb")


def test_writes_to_any_member_wait_from_the_first_freeze_until_after_the_last_copy(plugin):
    """One instant: the plugin is held one second after freezing every member and one second after
    each copy. Writes issued to both volumes just after the freeze, before the first copy, sleep in
    D state through both copies (so the first member stays frozen while the second is copied), finish
    after the thaw, and are in neither copy. Two single snapshots in a row would let the write to
    the first volume land between the copies."""
    cap = mount_cap("ext4")
    targets = {v: mounted(plugin, v, cap, size=32 * MiB) for v in ("ia", "ib")}
    for target in targets.values():
        write_random(os.path.join(target, "before.bin"), 1)
    plugin.stop()
    plugin.start(failpoints="group-snapshot-after-freeze:pause,group-snapshot-frozen-after-copy:pause")
    call = plugin.group.CreateVolumeGroupSnapshot.future(group_req("ig", ["ia", "ib"]))
    deadline = time.monotonic() + 30
    while len(frozen_markers(plugin)) < 2 and not call.done():
        assert time.monotonic() < deadline, "the group never froze its members"
        time.sleep(0.01)
    assert not call.done(), "the call is held after freezing both members"
    frozen_at = time.monotonic()
    time.sleep(0.2)  # past the last marker, into the second the plugin holds after the freezes
    writers = {v: subprocess.Popen(["dd", "if=/dev/urandom", f"of={os.path.join(t, 'during.bin')}", "bs=4k", "count=1",
                                    "conv=fsync"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for v, t in targets.items()}
    try:
        for v, w in writers.items():
            while _state(w.pid) != "D":
                assert w.poll() is None, f"the write to {v} finished while it should be frozen"
                time.sleep(0.01)
        # 1 s after the freeze, a copy, 1 s, a copy, 1 s: at 2.5 s both copies are made, neither thawed.
        time.sleep(max(0.0, frozen_at + 2.5 - time.monotonic()))
        for v, w in writers.items():
            assert w.poll() is None and _state(w.pid) == "D", f"{v} was thawed before the last copy"
        assert not call.done()
        group = call.result(timeout=30)
        for v, w in writers.items():
            assert w.wait(timeout=10) == 0, f"the thaw let the write to {v} finish"
    finally:
        for v, w in writers.items():
            if w.poll() is None:
                subprocess.run(["fsfreeze", "--unfreeze", paths(plugin, v)[0]], stderr=subprocess.DEVNULL)
                w.wait(timeout=10)
    assert frozen_markers(plugin) == []
    for s in group.group_snapshot.snapshots:
        v = s.source_volume_id
        assert os.path.getsize(os.path.join(targets[v], "during.bin")) == 4096
        restored = plugin.controller.CreateVolume(from_snapshot(f"{v}-back", s.snapshot_id, cap=cap)).volume
        target = mounted(plugin, f"{v}-back", cap, volume=restored)
        assert os.path.getsize(os.path.join(target, "before.bin")) == MiB
        during = os.path.join(target, "during.bin")
        assert not os.path.exists(during) or os.path.getsize(during) == 0, f"{v}'s copy holds a write made after the freeze"
        release(plugin, f"{v}-back")
    for v in targets:
        release(plugin, v)


@pytest.mark.parametrize("point", ["group-snapshot-after-freeze", "group-snapshot-frozen-after-copy",
                                   "group-snapshot-after-rename"])
def test_a_crash_inside_a_group_snapshot_converges_and_leaves_nothing_frozen(plugin, point):
    """SIGKILL after the freezes, after the first copy, and after the first member was renamed into
    place: the restart thaws every member and removes the half-made group (a group of one member is not
    a group), GetVolumeGroupSnapshot does not see it, and the retry makes the whole group."""
    cap = mount_cap("ext4")
    digests = {}
    for v in ("ka", "kb"):
        target = mounted(plugin, v, cap, size=32 * MiB)
        write_random(os.path.join(target, "f"), 2)
        digests[v] = sha256(os.path.join(target, "f"))
    plugin.stop()
    plugin.start(failpoints=point)
    with pytest.raises(grpc.RpcError) as err:
        take(plugin, "kg", ["ka", "kb"])
    assert err.value.code() == C.UNAVAILABLE
    assert plugin.wait_dead() == -signal.SIGKILL
    if point == "group-snapshot-after-rename":
        assert snapshot_dirs(plugin) == [".kg.1.creating", "kg.0"], "the crash fell between the two renames"
    else:
        assert snapshot_dirs(plugin) == [".kg.0.creating", ".kg.1.creating"]
        for v in ("ka", "kb"):
            assert not writable_within(paths(plugin, v)[1], seconds=2), f"the crash left {v} frozen"
    plugin.start()
    for v in ("ka", "kb"):
        assert writable_within(paths(plugin, v)[1]), f"the restart thawed {v} before serving"
    for writer in _blocked_writers:
        writer.wait(timeout=10)
    assert snapshot_dirs(plugin) == [], "the restart removed the half-made group"
    assert code_of(plugin.group.GetVolumeGroupSnapshot,
                   csi_pb2.GetVolumeGroupSnapshotRequest(group_snapshot_id="kg")) == C.NOT_FOUND
    group = take(plugin, "kg", ["ka", "kb"])
    assert snapshot_dirs(plugin) == ["kg.0", "kg.1"]
    for s in group.snapshots:
        v = s.source_volume_id
        back = plugin.controller.CreateVolume(from_snapshot(f"{v}-back", s.snapshot_id, cap=cap)).volume
        assert sha256(os.path.join(mounted(plugin, f"{v}-back", cap, volume=back), "f")) == digests[v]
        release(plugin, f"{v}-back")
    for v in ("ka", "kb"):
        release(plugin, v)


def test_a_group_that_is_not_whole_is_hidden_and_taken_again_by_the_retry(plugin):
    """What a crash between two renames leaves when no restart sweeps it (or a delete interrupted
    half-way): one member of two. It is neither fetched nor listed; a create retried with the group's
    name removes it and takes every member again, at a new instant; a delete removes what is left."""
    for v in ("ra", "rb"):
        plugin.controller.CreateVolume(create_req(v, required=8 * MiB))
    group = take(plugin, "rg", ["ra", "rb"])
    subprocess.run(["rm", "-rf", os.path.join(plugin.data, "snapshots", "rg.1")], check=True)
    assert code_of(plugin.group.GetVolumeGroupSnapshot,
                   csi_pb2.GetVolumeGroupSnapshotRequest(group_snapshot_id="rg")) == C.NOT_FOUND
    assert list(plugin.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest()).entries) == []
    assert code_of(plugin.controller.GetSnapshot, csi_pb2.GetSnapshotRequest(snapshot_id="rg.0")) == C.NOT_FOUND
    time.sleep(0.01)
    again = take(plugin, "rg", ["ra", "rb"])
    assert snapshot_dirs(plugin) == ["rg.0", "rg.1"]
    stamp = lambda g: (g.creation_time.seconds, g.creation_time.nanos)
    assert stamp(again) > stamp(group), "the retry took both members again, later"
    subprocess.run(["rm", "-rf", os.path.join(plugin.data, "snapshots", "rg.0")], check=True)
    plugin.group.DeleteVolumeGroupSnapshot(delete_req(again))
    assert snapshot_dirs(plugin) == []


def test_volumes_that_cannot_share_one_instant_are_failed_precondition(plugin):
    """A block volume staged on this node has no filesystem to freeze: grouped with another volume,
    the call is FAILED_PRECONDITION naming it, and leaves nothing frozen and no member. Alone, it is
    a single snapshot's case (an atomic reflink, or refused)."""
    cap = mount_cap("ext4")
    target = mounted(plugin, "fa", cap, size=16 * MiB)
    plugin.controller.CreateVolume(create_req("fb", required=16 * MiB, cap=block_cap()))
    staging, _ = paths(plugin, "fb")
    stage(plugin, "fb", staging, block_cap())
    try:
        with pytest.raises(grpc.RpcError) as err:
            take(plugin, "fg", ["fa", "fb"])
        assert err.value.code() == C.FAILED_PRECONDITION
        assert "fb" in err.value.details() and "block device" in err.value.details(), err.value.details()
        assert snapshot_dirs(plugin) == [] and frozen_markers(plugin) == []
        assert writable_within(target)
    finally:
        unstage(plugin, "fb", staging)
    assert take(plugin, "fg", ["fa", "fb"]).ready_to_use, "unstaged, it can be held with the other"
    release(plugin, "fa")


def test_a_group_that_cannot_fit_is_resource_exhausted_and_leaves_nothing(plugin_on):
    """On a 96 MiB ext4 data filesystem (no reflink), two volumes of 20 MiB of data each: either copy
    fits alone, both do not. The group is RESOURCE_EXHAUSTED, with no member left, nothing frozen, and
    both volumes writable; a single snapshot of one still fits."""
    plugin = plugin_on("ext4", 96)
    cap = mount_cap("ext4")
    targets = {}
    for v in ("xa", "xb"):
        targets[v] = mounted(plugin, v, cap, size=32 * MiB)
        write_random(os.path.join(targets[v], "f"), 20)
    st = os.statvfs(plugin.data)
    free = st.f_bavail * st.f_frsize
    allocated = [os.stat(os.path.join(plugin.data, "volumes", v, "disk.img")).st_blocks * 512 for v in targets]
    assert max(allocated) < free < sum(allocated), ("the premise: one copy fits, two do not", allocated, free)
    assert code_of(plugin.group.CreateVolumeGroupSnapshot, group_req("xg", ["xa", "xb"])) == C.RESOURCE_EXHAUSTED
    assert snapshot_dirs(plugin) == [] and frozen_markers(plugin) == []
    for target in targets.values():
        assert writable_within(target)
    plugin.controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(name="xa-1", source_volume_id="xa"))
    for v in targets:
        release(plugin, v)
