"""ControllerModifyVolume and CreateVolume's mutable_parameters (a VolumeAttributesClass), through
grpcio against the real plugin. The mutable parameter is `provisioning`: thin to thick reserves every
block of a loop volume's file while it stays mounted and written, thick to thin stops reserving at
later grows. Refusals change nothing; a SIGKILL between the reservation and its record converges on
the retry. The requests are shaped as csi-resizer's and csi-provisioner's recorded calls are: the
whole new class in `mutable_parameters`, no capability."""
import os
import signal

import grpc
import pytest

from conftest import MiB, block_cap, code_of, create_req, csi_pb2, mount_cap, sha256, write_random
from test_dataplane import allocated, disk_of, plugin_on_a_small_filesystem
from test_node import expand, node_expand, publish, stage, unpublish, unstage

C = grpc.StatusCode


def modify(plugin, vid, **params):
    return plugin.controller.ControllerModifyVolume(
        csi_pb2.ControllerModifyVolumeRequest(volume_id=vid, mutable_parameters=params))


def modify_code(plugin, vid, **params):
    return code_of(plugin.controller.ControllerModifyVolume,
                   csi_pb2.ControllerModifyVolumeRequest(volume_id=vid, mutable_parameters=params))


def recorded(plugin, vid):
    """The provisioning the volume's metadata records."""
    with open(os.path.join(plugin.data, "volumes", vid, "meta")) as f:
        return "thick" if "provisioning=thick\n" in f.read() else "thin"


@pytest.mark.parametrize("kind", ["mount", "block"])
def test_modify_errors_change_nothing(plugin, kind):
    cap = mount_cap() if kind == "mount" else block_cap()
    plugin.controller.CreateVolume(create_req("m", required=128 * MiB, cap=cap))
    before = allocated(disk_of(plugin, "m"))
    assert modify_code(plugin, "") == C.INVALID_ARGUMENT
    assert modify_code(plugin, "../m", provisioning="thick") == C.INVALID_ARGUMENT
    assert modify_code(plugin, "no-such-volume", provisioning="thick") == C.NOT_FOUND
    assert modify_code(plugin, "no-such-volume") == C.NOT_FOUND
    # csi-sanity's key, and a class that mixes a known key with an unknown one: refused whole.
    assert modify_code(plugin, "m", XXX_FakeKey="XXX_FakeValue") == C.INVALID_ARGUMENT
    assert modify_code(plugin, "m", provisioning="thick", tier="platinum") == C.INVALID_ARGUMENT
    assert modify_code(plugin, "m", provisioning="eager") == C.INVALID_ARGUMENT
    # An inode limit is a dir volume's (its project quota's); a loop volume's filesystem has its own.
    assert modify_code(plugin, "m", inodeLimit="1000") == C.INVALID_ARGUMENT
    assert modify_code(plugin, "m", inodeLimit="many") == C.INVALID_ARGUMENT
    assert modify_code(plugin, "m", provisioning="thick", inodeLimit="1000") == C.INVALID_ARGUMENT
    assert recorded(plugin, "m") == "thin" and allocated(disk_of(plugin, "m")) == before
    # No keys: nothing to change, and success (a volume made without a class).
    modify(plugin, "m")
    assert recorded(plugin, "m") == "thin" and allocated(disk_of(plugin, "m")) == before


def test_thin_to_thick_while_mounted_and_written_then_back(plugin):
    cap = mount_cap("xfs")
    staging = os.path.join(plugin.root, "staging", "v")
    target = os.path.join(plugin.root, "target", "v")
    plugin.controller.CreateVolume(create_req("v", required=320 * MiB, cap=cap))  # xfs's least
    stage(plugin, "v", staging, cap)
    publish(plugin, "v", staging, target, cap)
    data = os.path.join(target, "db.bin")
    write_random(data, 8)
    digest = sha256(data)
    assert allocated(disk_of(plugin, "v")) < 160 * MiB  # xfs's log and metadata, and the data

    modify(plugin, "v", provisioning="thick")
    assert recorded(plugin, "v") == "thick"
    assert allocated(disk_of(plugin, "v")) >= 320 * MiB
    assert sha256(data) == digest, "the reservation kept the data"
    write_random(os.path.join(target, "after.bin"), 2)  # still mounted and writable
    modify(plugin, "v", provisioning="thick")  # idempotent
    # A thick volume reserves each grow's new part too.
    expand(plugin, "v", 448 * MiB)
    node_expand(plugin, "v", target, 448 * MiB, staging)
    assert allocated(disk_of(plugin, "v")) >= 448 * MiB

    # Back to thin: recorded, nothing given back, and the next grow is sparse.
    modify(plugin, "v", provisioning="thin")
    assert recorded(plugin, "v") == "thin"
    held = allocated(disk_of(plugin, "v"))
    assert held >= 448 * MiB
    expand(plugin, "v", 576 * MiB)
    assert allocated(disk_of(plugin, "v")) < held + 16 * MiB
    assert sha256(data) == digest
    unpublish(plugin, "v", target)
    unstage(plugin, "v", staging)


@pytest.mark.parametrize("kind", ["mount", "block"])
def test_create_takes_mutable_parameters_over_parameters(plugin, kind):
    cap = mount_cap() if kind == "mount" else block_cap()
    req = create_req("a", required=96 * MiB, cap=cap)
    req.mutable_parameters["provisioning"] = "thick"
    vol = plugin.controller.CreateVolume(req).volume
    assert recorded(plugin, "a") == "thick" and allocated(disk_of(plugin, "a")) >= 96 * MiB
    assert plugin.controller.CreateVolume(req).volume == vol, "the same request is the same volume"
    # The class's value wins over the StorageClass's (the spec: mutable_parameters take precedence).
    req = create_req("b", required=96 * MiB, cap=cap, params={"provisioning": "thick"})
    req.mutable_parameters["provisioning"] = "thin"
    plugin.controller.CreateVolume(req)
    assert recorded(plugin, "b") == "thin" and allocated(disk_of(plugin, "b")) < 16 * MiB
    req = create_req("c", required=96 * MiB, cap=cap)
    req.mutable_parameters["iops"] = "3000"
    assert code_of(plugin.controller.CreateVolume, req) == C.INVALID_ARGUMENT
    req = create_req("c", required=96 * MiB, cap=cap)
    req.mutable_parameters["inodeLimit"] = "1000"
    assert code_of(plugin.controller.CreateVolume, req) == C.INVALID_ARGUMENT, "inodeLimit is for dir volumes"
    assert not os.path.exists(os.path.join(plugin.data, "volumes", "c"))
    # ValidateVolumeCapabilities confirms the mutable parameters it was asked about.
    r = plugin.controller.ValidateVolumeCapabilities(csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id="a", volume_capabilities=[cap], mutable_parameters={"provisioning": "thick"}))
    assert dict(r.confirmed.mutable_parameters) == {"provisioning": "thick"}
    r = plugin.controller.ValidateVolumeCapabilities(csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id="a", volume_capabilities=[cap], mutable_parameters={"tier": "gold"}))
    assert not r.HasField("confirmed") and "tier" in r.message


def test_thick_without_the_room_is_resource_exhausted_and_changes_nothing():
    """On a 128 MiB data filesystem with 64 MiB of it taken: a 96 MiB thin volume cannot become
    thick, and stays thin with the blocks it had; with the room back, it can."""
    with plugin_on_a_small_filesystem() as p:
        p.controller.CreateVolume(create_req("big", required=96 * MiB))
        filler = os.path.join(p.data, "filler")
        write_random(filler, 64)
        before = allocated(disk_of(p, "big"))
        with pytest.raises(grpc.RpcError) as err:
            modify(p, "big", provisioning="thick")
        assert err.value.code() == C.RESOURCE_EXHAUSTED and "nothing was changed" in err.value.details()
        assert recorded(p, "big") == "thin" and allocated(disk_of(p, "big")) == before
        os.remove(filler)
        modify(p, "big", provisioning="thick")
        assert recorded(p, "big") == "thick" and allocated(disk_of(p, "big")) >= 96 * MiB


def test_a_crash_after_the_reservation_converges(plugin):
    plugin.controller.CreateVolume(create_req("k", required=128 * MiB))
    plugin.stop()
    plugin.start(failpoints="modify-after-preallocate")
    with pytest.raises(grpc.RpcError) as err:
        modify(plugin, "k", provisioning="thick")
    assert err.value.code() == C.UNAVAILABLE
    assert plugin.wait_dead() == -signal.SIGKILL
    # Reserved but not recorded: the volume still reads as thin until the retry records it.
    assert allocated(disk_of(plugin, "k")) >= 128 * MiB and recorded(plugin, "k") == "thin"
    plugin.start()
    modify(plugin, "k", provisioning="thick")
    assert recorded(plugin, "k") == "thick"
    assert sorted(os.listdir(os.path.join(plugin.data, "volumes"))) == ["k"]
