import os
import threading

import grpc
import pytest

from conftest import (csi_pb2, create_req, mount_cap, block_cap, code_of, MiB, GiB, NODE_ID, TOPOLOGY_KEY)

C = grpc.StatusCode
AM = csi_pb2.VolumeCapability.AccessMode


def test_create_rounds_up_and_sets_topology(plugin):
    v = plugin.controller.CreateVolume(create_req("r1", required=10 * MiB + 1)).volume
    assert v.volume_id == "r1"
    assert v.capacity_bytes == 11 * MiB
    assert [dict(t.segments) for t in v.accessible_topology] == [{TOPOLOGY_KEY: NODE_ID}]
    disk = os.path.join(plugin.data, "volumes", "r1", "disk.img")
    assert os.path.getsize(disk) == 11 * MiB
    assert os.stat(disk).st_blocks == 0, "the backing file is sparse"


def test_create_is_idempotent_by_name(plugin):
    a = plugin.controller.CreateVolume(create_req("same", required=32 * MiB)).volume
    b = plugin.controller.CreateVolume(create_req("same", required=32 * MiB)).volume
    assert a == b
    entries = plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest()).entries
    assert [e.volume.volume_id for e in entries] == ["same"]


def test_same_name_incompatible_is_already_exists(plugin):
    plugin.controller.CreateVolume(create_req("x", required=32 * MiB))
    assert code_of(plugin.controller.CreateVolume, create_req("x", required=64 * MiB)) == C.ALREADY_EXISTS
    assert code_of(plugin.controller.CreateVolume, create_req("x", required=32 * MiB, cap=block_cap())) == C.ALREADY_EXISTS
    assert code_of(plugin.controller.CreateVolume,
                   create_req("x", required=32 * MiB, cap=mount_cap("xfs"))) == C.ALREADY_EXISTS


@pytest.mark.parametrize("required,limit", [(10 * MiB + 1, 10 * MiB + 100), (20 * MiB, 10 * MiB), (0, 1000)])
def test_sizes_that_cannot_fit_under_the_limit_are_out_of_range(plugin, required, limit):
    assert code_of(plugin.controller.CreateVolume, create_req("o", required=required, limit=limit)) == C.OUT_OF_RANGE


def test_no_space_is_resource_exhausted(plugin):
    # 8 TiB is a size the driver supports, but no test machine has it free.
    assert code_of(plugin.controller.CreateVolume, create_req("huge", required=8 << 40)) == C.RESOURCE_EXHAUSTED


def test_requisite_topology_elsewhere_is_resource_exhausted(plugin):
    req = create_req("t1")
    req.accessibility_requirements.requisite.add().segments[TOPOLOGY_KEY] = "another-node"
    assert code_of(plugin.controller.CreateVolume, req) == C.RESOURCE_EXHAUSTED
    req.accessibility_requirements.requisite.add().segments[TOPOLOGY_KEY] = NODE_ID
    assert code_of(plugin.controller.CreateVolume, req) == C.OK


def invalid_create_requests():
    yield "empty name", create_req("")
    yield "name with slash", create_req("a/b")
    yield "dot-dot name", create_req("..")
    yield "NUL in name", create_req("a\x00b")
    yield "over-long name", create_req("x" * 129)
    yield "name that reads as a flag", create_req("-rf")
    yield "negative size", create_req("n", required=-1)
    yield "absurd size", create_req("n", required=1 << 62)
    no_caps = create_req("n")
    del no_caps.volume_capabilities[:]
    yield "no capabilities", no_caps
    for mode in (AM.MULTI_NODE_READER_ONLY, AM.MULTI_NODE_SINGLE_WRITER, AM.MULTI_NODE_MULTI_WRITER, AM.UNKNOWN):
        yield f"access mode {mode}", create_req("n", cap=mount_cap(mode=mode))
    yield "unsupported fs", create_req("n", cap=mount_cap("btrfs"))
    yield "unknown parameter", create_req("n", params={"colour": "blue"})
    no_type = create_req("n")
    no_type.volume_capabilities[0].ClearField("mount")
    yield "no access type", no_type


@pytest.mark.parametrize("what,req", list(invalid_create_requests()), ids=[w for w, _ in invalid_create_requests()])
def test_invalid_create_is_invalid_argument(plugin, what, req):
    assert code_of(plugin.controller.CreateVolume, req) == C.INVALID_ARGUMENT, what
    assert os.listdir(os.path.join(plugin.data, "volumes")) == [], "nothing was made"


def test_provisioner_parameters_are_accepted_and_ignored(plugin):
    params = {"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "db", "backend": "loop"}
    assert code_of(plugin.controller.CreateVolume, create_req("p1", params=params)) == C.OK


def test_delete_missing_volume_is_ok_and_delete_is_idempotent(plugin):
    plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="never-made"))
    plugin.controller.CreateVolume(create_req("d"))
    plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="d"))
    plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="d"))
    assert not os.path.exists(os.path.join(plugin.data, "volumes", "d"))
    assert code_of(plugin.controller.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id="")) == C.INVALID_ARGUMENT
    assert code_of(plugin.controller.DeleteVolume,
                   csi_pb2.DeleteVolumeRequest(volume_id="../../etc")) == C.INVALID_ARGUMENT


def test_expand_grows_is_idempotent_and_never_shrinks(plugin):
    plugin.controller.CreateVolume(create_req("e", required=64 * MiB))
    exp = lambda n: plugin.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id="e", capacity_range=csi_pb2.CapacityRange(required_bytes=n)))
    r = exp(100 * MiB)
    assert r.capacity_bytes == 100 * MiB and r.node_expansion_required
    assert exp(100 * MiB).capacity_bytes == 100 * MiB
    assert exp(10 * MiB).capacity_bytes == 100 * MiB, "a smaller request answers the current size"
    assert os.path.getsize(os.path.join(plugin.data, "volumes", "e", "disk.img")) == 100 * MiB
    assert exp(100 * MiB + 1).capacity_bytes == 101 * MiB


def test_expand_errors(plugin):
    plugin.controller.CreateVolume(create_req("ee"))
    req = lambda vid, n, limit=0: csi_pb2.ControllerExpandVolumeRequest(
        volume_id=vid, capacity_range=csi_pb2.CapacityRange(required_bytes=n, limit_bytes=limit))
    assert code_of(plugin.controller.ControllerExpandVolume, req("missing", GiB)) == C.NOT_FOUND
    assert code_of(plugin.controller.ControllerExpandVolume, req("", GiB)) == C.INVALID_ARGUMENT
    assert code_of(plugin.controller.ControllerExpandVolume, req("ee", -5)) == C.INVALID_ARGUMENT
    assert code_of(plugin.controller.ControllerExpandVolume, req("ee", 10 * MiB + 1, 10 * MiB + 5)) == C.OUT_OF_RANGE
    assert code_of(plugin.controller.ControllerExpandVolume, req("ee", 8 << 40)) == C.RESOURCE_EXHAUSTED
    no_range = csi_pb2.ControllerExpandVolumeRequest(volume_id="ee")
    assert code_of(plugin.controller.ControllerExpandVolume, no_range) == C.INVALID_ARGUMENT


def test_validate_volume_capabilities(plugin):
    plugin.controller.CreateVolume(create_req("vv", cap=mount_cap("xfs")))
    ok = plugin.controller.ValidateVolumeCapabilities(csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id="vv", volume_capabilities=[mount_cap("xfs")]))
    assert ok.HasField("confirmed") and list(ok.confirmed.volume_capabilities) == [mount_cap("xfs")]
    for caps in ([block_cap()], [mount_cap("ext4")], [mount_cap(mode=AM.MULTI_NODE_MULTI_WRITER)]):
        r = plugin.controller.ValidateVolumeCapabilities(
            csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id="vv", volume_capabilities=caps))
        assert not r.HasField("confirmed") and r.message
    assert code_of(plugin.controller.ValidateVolumeCapabilities, csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id="nope", volume_capabilities=[mount_cap()])) == C.NOT_FOUND
    assert code_of(plugin.controller.ValidateVolumeCapabilities,
                   csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id="vv")) == C.INVALID_ARGUMENT


def test_list_volumes_pages_and_rejects_bad_tokens(plugin):
    names = [f"l{i:02d}" for i in range(7)]
    for n in names:
        plugin.controller.CreateVolume(create_req(n, required=MiB))
    seen, token = [], ""
    while True:
        r = plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=3, starting_token=token))
        assert len(r.entries) <= 3
        seen += [e.volume.volume_id for e in r.entries]
        token = r.next_token
        if not token:
            break
    assert seen == names
    for e in plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest()).entries:
        assert e.volume.capacity_bytes == MiB
        # An unset message reads as its defaults in Python protobuf: the condition must be there.
        assert e.HasField("status") and e.status.HasField("volume_condition"), e
        assert e.status.volume_condition.abnormal is False
    assert code_of(plugin.controller.ListVolumes, csi_pb2.ListVolumesRequest(starting_token="invalid-token")) == C.ABORTED
    assert code_of(plugin.controller.ListVolumes, csi_pb2.ListVolumesRequest(max_entries=-1)) == C.INVALID_ARGUMENT


def test_get_capacity_reports_real_free_space(plugin):
    r = plugin.controller.GetCapacity(csi_pb2.GetCapacityRequest())
    st = os.statvfs(plugin.data)
    free = st.f_bavail * st.f_frsize
    assert abs(r.available_capacity - free) < 256 * MiB
    assert r.maximum_volume_size.value <= r.available_capacity
    wrong = csi_pb2.GetCapacityRequest(accessible_topology=csi_pb2.Topology(segments={TOPOLOGY_KEY: "elsewhere"}))
    assert plugin.controller.GetCapacity(wrong).available_capacity == 0
    multi = csi_pb2.GetCapacityRequest(volume_capabilities=[mount_cap(mode=AM.MULTI_NODE_MULTI_WRITER)])
    assert plugin.controller.GetCapacity(multi).available_capacity == 0


def test_controller_get_volume_reports_condition(plugin):
    plugin.controller.CreateVolume(create_req("g", required=8 * MiB))
    r = plugin.controller.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id="g"))
    assert r.HasField("status") and r.status.HasField("volume_condition"), r
    assert r.volume.capacity_bytes == 8 * MiB and not r.status.volume_condition.abnormal
    # Damage: the backing file is truncated behind the driver's back, then removed.
    os.truncate(os.path.join(plugin.data, "volumes", "g", "disk.img"), MiB)
    r = plugin.controller.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id="g"))
    assert r.status.volume_condition.abnormal and "shorter" in r.status.volume_condition.message
    os.unlink(os.path.join(plugin.data, "volumes", "g", "disk.img"))
    r = plugin.controller.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id="g"))
    assert r.status.volume_condition.abnormal and "missing" in r.status.volume_condition.message
    assert code_of(plugin.controller.ControllerGetVolume,
                   csi_pb2.ControllerGetVolumeRequest(volume_id="nope")) == C.NOT_FOUND


def test_parallel_creates_with_one_name_make_one_volume(plugin):
    results, lock = [], threading.Lock()

    def call():
        try:
            v = plugin.controller.CreateVolume(create_req("race", required=16 * MiB)).volume
            out = ("ok", v.volume_id, v.capacity_bytes)
        except grpc.RpcError as e:
            out = ("err", e.code(), None)
        with lock:
            results.append(out)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    oks = [r for r in results if r[0] == "ok"]
    errs = [r for r in results if r[0] == "err"]
    assert oks, results
    assert all(r[1:] == ("race", 16 * MiB) for r in oks)
    assert all(r[1] == C.ABORTED for r in errs), errs
    assert os.listdir(os.path.join(plugin.data, "volumes")) == ["race"]
    # Every caller that was told ABORTED succeeds on retry with the same volume.
    assert plugin.controller.CreateVolume(create_req("race", required=16 * MiB)).volume.volume_id == "race"
