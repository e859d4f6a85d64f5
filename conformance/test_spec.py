"""The CSI spec (v1.12.0), RPC by RPC: the error rows and MUST rules that conformance/SPEC-COVERAGE.md
lists and that no other file covers. Every case runs through grpcio stubs made from proto/csi.proto,
against the real plugin on loop devices, in mount and in block mode where the two differ."""
import os
import re
import stat

import grpc
import pytest

from conftest import (csi_pb2, create_req, mount_cap, block_cap, code_of, write_random, sha256, loops_under,
                      host_mounts_under, MiB, NODE_ID, TOPOLOGY_KEY)
from test_node import stage, publish, unpublish, unstage, node_expand

C = grpc.StatusCode
AM = csi_pb2.VolumeCapability.AccessMode
KINDS = ["mount", "block"]


def cap_for(kind, mode=AM.SINGLE_NODE_WRITER, fs="ext4"):
    return block_cap(mode) if kind == "block" else mount_cap(fs, mode)


def staging_path(plugin, name):
    return os.path.join(plugin.root, "kubelet", "plugins", name, "globalmount")


def target_path(plugin, name, pod, kind):
    base = os.path.join(plugin.root, "kubelet", "pods", f"pod{pod}")
    return os.path.join(base, "volumeDevices", name) if kind == "block" else os.path.join(base, "volumes", name, "mount")


def staged(plugin, name, kind, mode=AM.SINGLE_NODE_WRITER):
    """Creates and stages a 32 MiB volume; returns its staging path."""
    cap = cap_for(kind, mode)
    plugin.controller.CreateVolume(create_req(name, required=32 * MiB, cap=cap))
    staging = staging_path(plugin, name)
    stage(plugin, name, staging, cap)
    return staging


def bind_is_read_only(path):
    with open("/proc/self/mountinfo") as f:
        entries = [line.split() for line in f]
    mine = [e for e in entries if e[4] == path]
    assert mine, f"nothing is mounted at {path}"
    return "ro" in mine[-1][5].split(",")


def write_through(path, kind, payload):
    if kind == "block":
        with open(path, "r+b") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
    else:
        with open(os.path.join(path, "shared.bin"), "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())


def read_through(path, kind, n):
    if kind == "block":
        with open(path, "rb") as f:
            return f.read(n)
    with open(os.path.join(path, "shared.bin"), "rb") as f:
        return f.read(n)


def teardown(plugin, name, staging, *targets, last=True):
    """Unpublishes and unstages; after the test's last volume, nothing may be left attached or mounted."""
    for t in targets:
        unpublish(plugin, name, t)
    unstage(plugin, name, staging)
    if last:
        assert loops_under(plugin.root) == [] and host_mounts_under(plugin.root) == []


# ---- Identity ---------------------------------------------------------------------------

def test_plugin_info_name_is_a_domain_name_of_at_most_63_characters(plugin):
    info = plugin.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert len(info.name) <= 63
    assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", info.name), info.name
    assert info.vendor_version, "vendor_version is REQUIRED"


def test_probe_is_failed_precondition_while_the_plugin_is_not_healthy(plugin):
    volumes = os.path.join(plugin.data, "volumes")
    os.rename(volumes, volumes + ".away")
    try:
        with pytest.raises(grpc.RpcError) as err:
            plugin.identity.Probe(csi_pb2.ProbeRequest())
        assert err.value.code() == C.FAILED_PRECONDITION and volumes in err.value.details()
    finally:
        os.rename(volumes + ".away", volumes)
    assert plugin.identity.Probe(csi_pb2.ProbeRequest()).ready.value is True


@pytest.fixture
def path_without_mkfs_xfs(plugin):
    """A PATH with every tool of the standard directories but mkfs.xfs, as on a node without xfsprogs."""
    bindir = os.path.join(plugin.root, "bin-no-xfsprogs")
    os.makedirs(bindir)
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if not os.path.isdir(d) or os.path.islink(d):
            continue
        for name in os.listdir(d):
            link = os.path.join(bindir, name)
            if name != "mkfs.xfs" and not os.path.lexists(link):
                os.symlink(os.path.join(d, name), link)
    return bindir


def test_a_missing_tool_is_failed_precondition_naming_tool_and_package(plugin, path_without_mkfs_xfs):
    plugin.stop()
    plugin.start(env_overrides={"PATH": path_without_mkfs_xfs})
    with pytest.raises(grpc.RpcError) as err:
        plugin.identity.Probe(csi_pb2.ProbeRequest())
    assert err.value.code() == C.FAILED_PRECONDITION
    assert "mkfs.xfs" in err.value.details() and "xfsprogs" in err.value.details()
    # The call that needs it says the same, and leaves no loop device behind.
    plugin.controller.CreateVolume(create_req("nx", required=320 * MiB, cap=mount_cap("xfs")))
    with pytest.raises(grpc.RpcError) as err:
        stage(plugin, "nx", staging_path(plugin, "nx"), mount_cap("xfs"))
    assert err.value.code() == C.FAILED_PRECONDITION
    assert "mkfs.xfs" in err.value.details() and "xfsprogs" in err.value.details()
    assert loops_under(plugin.root) == [] and host_mounts_under(plugin.root) == []
    # Volumes that need only installed tools still work.
    staging = staged(plugin, "e4", "mount")
    unstage(plugin, "e4", staging)


# ---- Every RPC: a missing required field is INVALID_ARGUMENT -----------------------------

def missing_field_requests():
    cap = mount_cap()
    S = "/tmp/swell-never-used/staging"
    T = "/tmp/swell-never-used/target"
    rng = csi_pb2.CapacityRange(required_bytes=64 * MiB)
    no_caps = create_req("exists")
    del no_caps.volume_capabilities[:]
    yield "CreateVolume name", "controller", "CreateVolume", create_req("")
    yield "CreateVolume volume_capabilities", "controller", "CreateVolume", no_caps
    yield "DeleteVolume volume_id", "controller", "DeleteVolume", csi_pb2.DeleteVolumeRequest()
    yield "ValidateVolumeCapabilities volume_id", "controller", "ValidateVolumeCapabilities", \
        csi_pb2.ValidateVolumeCapabilitiesRequest(volume_capabilities=[cap])
    yield "ValidateVolumeCapabilities volume_capabilities", "controller", "ValidateVolumeCapabilities", \
        csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id="exists")
    yield "ControllerExpandVolume volume_id", "controller", "ControllerExpandVolume", \
        csi_pb2.ControllerExpandVolumeRequest(capacity_range=rng)
    yield "ControllerExpandVolume capacity_range", "controller", "ControllerExpandVolume", \
        csi_pb2.ControllerExpandVolumeRequest(volume_id="exists")
    yield "ControllerGetVolume volume_id", "controller", "ControllerGetVolume", csi_pb2.ControllerGetVolumeRequest()
    yield "ControllerPublishVolume volume_id", "controller", "ControllerPublishVolume", \
        csi_pb2.ControllerPublishVolumeRequest(node_id=NODE_ID, volume_capability=cap)
    yield "ControllerPublishVolume node_id", "controller", "ControllerPublishVolume", \
        csi_pb2.ControllerPublishVolumeRequest(volume_id="exists", volume_capability=cap)
    yield "ControllerPublishVolume volume_capability", "controller", "ControllerPublishVolume", \
        csi_pb2.ControllerPublishVolumeRequest(volume_id="exists", node_id=NODE_ID)
    yield "ControllerUnpublishVolume volume_id", "controller", "ControllerUnpublishVolume", \
        csi_pb2.ControllerUnpublishVolumeRequest(node_id=NODE_ID)
    yield "NodeStageVolume volume_id", "node", "NodeStageVolume", \
        csi_pb2.NodeStageVolumeRequest(staging_target_path=S, volume_capability=cap)
    yield "NodeStageVolume staging_target_path", "node", "NodeStageVolume", \
        csi_pb2.NodeStageVolumeRequest(volume_id="exists", volume_capability=cap)
    yield "NodeStageVolume volume_capability", "node", "NodeStageVolume", \
        csi_pb2.NodeStageVolumeRequest(volume_id="exists", staging_target_path=S)
    yield "NodeUnstageVolume volume_id", "node", "NodeUnstageVolume", \
        csi_pb2.NodeUnstageVolumeRequest(staging_target_path=S)
    yield "NodeUnstageVolume staging_target_path", "node", "NodeUnstageVolume", \
        csi_pb2.NodeUnstageVolumeRequest(volume_id="exists")
    yield "NodePublishVolume volume_id", "node", "NodePublishVolume", \
        csi_pb2.NodePublishVolumeRequest(staging_target_path=S, target_path=T, volume_capability=cap)
    yield "NodePublishVolume target_path", "node", "NodePublishVolume", \
        csi_pb2.NodePublishVolumeRequest(volume_id="exists", staging_target_path=S, volume_capability=cap)
    yield "NodePublishVolume volume_capability", "node", "NodePublishVolume", \
        csi_pb2.NodePublishVolumeRequest(volume_id="exists", staging_target_path=S, target_path=T)
    yield "NodeUnpublishVolume volume_id", "node", "NodeUnpublishVolume", \
        csi_pb2.NodeUnpublishVolumeRequest(target_path=T)
    yield "NodeUnpublishVolume target_path", "node", "NodeUnpublishVolume", \
        csi_pb2.NodeUnpublishVolumeRequest(volume_id="exists")
    yield "NodeGetVolumeStats volume_id", "node", "NodeGetVolumeStats", \
        csi_pb2.NodeGetVolumeStatsRequest(volume_path="some/path")
    yield "NodeGetVolumeStats volume_path", "node", "NodeGetVolumeStats", \
        csi_pb2.NodeGetVolumeStatsRequest(volume_id="exists")
    yield "NodeExpandVolume volume_id", "node", "NodeExpandVolume", \
        csi_pb2.NodeExpandVolumeRequest(volume_path=T, volume_capability=cap)
    yield "NodeExpandVolume volume_path", "node", "NodeExpandVolume", \
        csi_pb2.NodeExpandVolumeRequest(volume_id="exists", volume_capability=cap)


@pytest.mark.parametrize("what,service,method,req", list(missing_field_requests()),
                         ids=[w for w, *_ in missing_field_requests()])
def test_every_missing_required_field_is_invalid_argument(plugin, what, service, method, req):
    # The volume exists, so that NOT_FOUND cannot stand in for the missing field.
    plugin.controller.CreateVolume(create_req("exists"))
    stub = plugin.controller if service == "controller" else plugin.node
    assert code_of(getattr(stub, method), req) == C.INVALID_ARGUMENT, what
    assert not os.path.exists("/tmp/swell-never-used")


# ---- CreateVolume ------------------------------------------------------------------------

def test_create_accepts_a_name_of_the_maximum_length(plugin):
    name = "m" * 128
    assert plugin.controller.CreateVolume(create_req(name)).volume.volume_id == name
    plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=name))


@pytest.mark.parametrize("name", ["-rf", "--help", "-"])
def test_a_name_that_reads_as_a_command_flag_is_invalid_argument(plugin, name):
    assert code_of(plugin.controller.CreateVolume, create_req(name)) == C.INVALID_ARGUMENT
    assert code_of(plugin.node.NodeStageVolume, csi_pb2.NodeStageVolumeRequest(
        volume_id=name, staging_target_path=staging_path(plugin, "flag"), volume_capability=mount_cap())) \
        == C.INVALID_ARGUMENT
    assert os.listdir(os.path.join(plugin.data, "volumes")) == []


def test_a_content_source_that_cannot_be_used_is_invalid_argument(plugin):
    plugin.controller.CreateVolume(create_req("src"))
    empty = create_req("copy")
    empty.volume_content_source.SetInParent()  # a source that names nothing
    assert code_of(plugin.controller.CreateVolume, empty) == C.INVALID_ARGUMENT
    for bad in ("../src", "-src", ""):
        req = create_req("copy")
        req.volume_content_source.volume.volume_id = bad
        assert code_of(plugin.controller.CreateVolume, req) == C.INVALID_ARGUMENT, bad
        req = create_req("restore")
        req.volume_content_source.snapshot.snapshot_id = bad
        assert code_of(plugin.controller.CreateVolume, req) == C.INVALID_ARGUMENT, bad
    assert os.listdir(os.path.join(plugin.data, "volumes")) == ["src"]


def test_create_answers_within_the_capacity_range(plugin):
    v = plugin.controller.CreateVolume(create_req("rng", required=5 * MiB + 7, limit=8 * MiB)).volume
    assert 5 * MiB + 7 <= v.capacity_bytes <= 8 * MiB
    v = plugin.controller.CreateVolume(create_req("lim", required=0, limit=3 * MiB)).volume
    assert 0 < v.capacity_bytes <= 3 * MiB


# ---- ListVolumes -------------------------------------------------------------------------

def list_all(plugin, page):
    seen, token, pages = [], "", 0
    while True:
        r = plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=page, starting_token=token))
        assert len(r.entries) <= page
        seen += [e.volume.volume_id for e in r.entries]
        token, pages = r.next_token, pages + 1
        if not token:
            return seen, pages


def test_list_volumes_pages_while_volumes_come_and_go(plugin):
    for n in ("a1", "a2", "a3", "a4", "a5", "a6"):
        plugin.controller.CreateVolume(create_req(n, required=MiB))
    first = plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=2))
    assert [e.volume.volume_id for e in first.entries] == ["a1", "a2"] and first.next_token
    # Between pages: the last volume of the page, and the one the token points at, are deleted;
    # volumes are added before and after the token.
    for gone in ("a2", "a3"):
        plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=gone))
    for new in ("a0", "a7"):
        plugin.controller.CreateVolume(create_req(new, required=MiB))
    rest, token = [], first.next_token
    while token:
        r = plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=2, starting_token=token))
        rest += [e.volume.volume_id for e in r.entries]
        token = r.next_token
    # Every volume that lived through the whole listing appears exactly once; deleted ones never
    # appear after their deletion. A volume added meanwhile may or may not appear (the spec leaves
    # it open); here the one sorted after the token does.
    assert "a2" not in rest and "a3" not in rest
    assert sorted(set(["a1"] + rest) & {"a1", "a4", "a5", "a6"}) == ["a1", "a4", "a5", "a6"]
    assert len(rest) == len(set(rest)) and "a1" not in rest
    assert "a7" in rest
    assert list_all(plugin, 3)[0] == ["a0", "a1", "a4", "a5", "a6", "a7"]


def test_list_volumes_with_max_entries_zero_returns_everything(plugin):
    for n in ("z1", "z2", "z3"):
        plugin.controller.CreateVolume(create_req(n, required=MiB))
    r = plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=0))
    assert [e.volume.volume_id for e in r.entries] == ["z1", "z2", "z3"] and r.next_token == ""
    r = plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=2))
    assert len(r.entries) == 2 and r.next_token, "a limited page says there is more"


# ---- GetCapacity -------------------------------------------------------------------------

def test_get_capacity_with_and_without_capabilities(plugin):
    bare = plugin.controller.GetCapacity(csi_pb2.GetCapacityRequest())
    assert bare.available_capacity > 0
    for cap in (mount_cap("ext4"), mount_cap("xfs"), block_cap(), mount_cap(mode=AM.SINGLE_NODE_MULTI_WRITER)):
        r = plugin.controller.GetCapacity(csi_pb2.GetCapacityRequest(volume_capabilities=[cap]))
        assert abs(r.available_capacity - bare.available_capacity) < 64 * MiB
    here = csi_pb2.GetCapacityRequest(accessible_topology=csi_pb2.Topology(segments={TOPOLOGY_KEY: NODE_ID}))
    assert plugin.controller.GetCapacity(here).available_capacity > 0
    assert plugin.controller.GetCapacity(csi_pb2.GetCapacityRequest(
        volume_capabilities=[mount_cap("btrfs")])).available_capacity == 0, "no capacity for what we cannot make"


# ---- ControllerExpandVolume --------------------------------------------------------------

def test_controller_expand_with_a_capability_the_volume_does_not_have_is_invalid_argument(plugin):
    plugin.controller.CreateVolume(create_req("cx", required=16 * MiB, cap=mount_cap("ext4")))
    req = csi_pb2.ControllerExpandVolumeRequest(
        volume_id="cx", capacity_range=csi_pb2.CapacityRange(required_bytes=32 * MiB), volume_capability=block_cap())
    assert code_of(plugin.controller.ControllerExpandVolume, req) == C.INVALID_ARGUMENT
    req.volume_capability.CopyFrom(mount_cap(mode=AM.MULTI_NODE_MULTI_WRITER))
    assert code_of(plugin.controller.ControllerExpandVolume, req) == C.INVALID_ARGUMENT
    assert os.path.getsize(os.path.join(plugin.data, "volumes", "cx", "disk.img")) == 16 * MiB, "not grown"
    req.volume_capability.CopyFrom(mount_cap("ext4"))
    assert plugin.controller.ControllerExpandVolume(req).capacity_bytes == 32 * MiB


# ---- NodeStageVolume ---------------------------------------------------------------------

def test_stage_at_the_same_path_with_another_filesystem_is_already_exists(plugin):
    staging = staged(plugin, "sx", "mount")
    assert code_of(stage, plugin, "sx", staging, mount_cap("xfs")) == C.ALREADY_EXISTS
    unstage(plugin, "sx", staging)


def test_stage_with_a_filesystem_the_volume_does_not_hold_is_failed_precondition(plugin):
    staging = staged(plugin, "fx", "mount")
    target = target_path(plugin, "fx", 1, "mount")
    publish(plugin, "fx", staging, target, mount_cap())
    write_random(os.path.join(target, "keep"), 1)
    digest = sha256(os.path.join(target, "keep"))
    teardown(plugin, "fx", staging, target)
    assert code_of(stage, plugin, "fx", staging, mount_cap("xfs")) == C.FAILED_PRECONDITION, "never reformatted"
    assert loops_under(plugin.root) == []
    stage(plugin, "fx", staging, mount_cap("ext4"))
    publish(plugin, "fx", staging, target, mount_cap())
    assert sha256(os.path.join(target, "keep")) == digest
    teardown(plugin, "fx", staging, target)


# ---- NodeUnstageVolume / NodeUnpublishVolume of a volume that does not exist --------------

def test_unstage_and_unpublish_of_an_unknown_volume_touch_nothing(plugin):
    # The spec gives two answers here: its tables say NOT_FOUND for a volume that does not exist,
    # and its idempotency rules say a volume not staged (not published) at the path MUST be 0 OK.
    # Swell answers OK, so that kubelet's retry after a restart converges; either answer passes.
    staging, target = staging_path(plugin, "ghost"), target_path(plugin, "ghost", 1, "mount")
    os.makedirs(staging)
    for call in (lambda: unstage(plugin, "ghost", staging), lambda: unpublish(plugin, "ghost", target)):
        assert code_of(call) in (C.OK, C.NOT_FOUND)
    assert os.path.isdir(staging), "unstage removes nothing it did not make"


# ---- NodePublishVolume: access modes (the spec's second table) ---------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", [AM.SINGLE_NODE_SINGLE_WRITER, AM.SINGLE_NODE_WRITER],
                         ids=["SINGLE_NODE_SINGLE_WRITER", "SINGLE_NODE_WRITER"])
def test_publish_single_writer_modes_allow_one_target_at_a_time(plugin, kind, mode):
    cap = cap_for(kind, mode)
    staging = staged(plugin, "sw", kind, mode)
    t1, t2 = target_path(plugin, "sw", 1, kind), target_path(plugin, "sw", 2, kind)
    publish(plugin, "sw", staging, t1, cap)
    publish(plugin, "sw", staging, t1, cap)  # T1=T2, P1=P2: OK
    assert code_of(publish, plugin, "sw", staging, t2, cap) == C.FAILED_PRECONDITION  # T1!=T2, P1=P2
    assert code_of(publish, plugin, "sw", staging, t2, cap, readonly=True) == C.FAILED_PRECONDITION  # P1!=P2
    assert not os.path.lexists(t2), "a refused publish makes nothing at its target"
    assert code_of(publish, plugin, "sw", staging, t1, cap, readonly=True) == C.ALREADY_EXISTS  # T1=T2, P1!=P2
    unpublish(plugin, "sw", t1)
    publish(plugin, "sw", staging, t2, cap)  # the one target may move
    teardown(plugin, "sw", staging, t2)


@pytest.mark.parametrize("kind", KINDS)
def test_publish_multi_writer_allows_many_writable_targets(plugin, kind):
    cap = cap_for(kind, AM.SINGLE_NODE_MULTI_WRITER)
    staging = staged(plugin, "mw", kind, AM.SINGLE_NODE_MULTI_WRITER)
    t1, t2, t3 = (target_path(plugin, "mw", n, kind) for n in (1, 2, 3))
    publish(plugin, "mw", staging, t1, cap)
    publish(plugin, "mw", staging, t2, cap)  # T1!=T2, P1=P2: OK
    publish(plugin, "mw", staging, t3, cap, readonly=True)  # T1!=T2, P1!=P2: OK
    publish(plugin, "mw", staging, t2, cap)  # idempotent
    assert not bind_is_read_only(t1) and not bind_is_read_only(t2) and bind_is_read_only(t3)
    payload = os.urandom(4096)
    write_through(t2, kind, payload)
    assert read_through(t1, kind, 4096) == payload, "both targets are the same volume"
    assert code_of(publish, plugin, "mw", staging, t1, cap, readonly=True) == C.ALREADY_EXISTS
    teardown(plugin, "mw", staging, t1, t2, t3)


@pytest.mark.parametrize("kind", KINDS)
def test_publish_reader_only_allows_only_read_only_targets(plugin, kind):
    cap = cap_for(kind, AM.SINGLE_NODE_READER_ONLY)
    staging = staged(plugin, "ro", kind, AM.SINGLE_NODE_READER_ONLY)
    t1, t2 = target_path(plugin, "ro", 1, kind), target_path(plugin, "ro", 2, kind)
    assert code_of(publish, plugin, "ro", staging, t1, cap) == C.FAILED_PRECONDITION, "a writable publish"
    assert not os.path.lexists(t1)
    publish(plugin, "ro", staging, t1, cap, readonly=True)
    publish(plugin, "ro", staging, t2, cap, readonly=True)  # many readers on one node
    assert bind_is_read_only(t1) and bind_is_read_only(t2)
    if kind == "mount":
        with pytest.raises(OSError):
            open(os.path.join(t2, "w"), "wb")
    teardown(plugin, "ro", staging, t1, t2)


@pytest.mark.parametrize("kind", KINDS)
def test_publish_reader_only_cannot_join_a_writable_target(plugin, kind):
    staging = staged(plugin, "mix", kind, AM.SINGLE_NODE_MULTI_WRITER)
    t1, t2 = target_path(plugin, "mix", 1, kind), target_path(plugin, "mix", 2, kind)
    publish(plugin, "mix", staging, t1, cap_for(kind, AM.SINGLE_NODE_MULTI_WRITER))
    assert code_of(publish, plugin, "mix", staging, t2, cap_for(kind, AM.SINGLE_NODE_READER_ONLY),
                   readonly=True) == C.FAILED_PRECONDITION
    assert code_of(publish, plugin, "mix", staging, t2, cap_for(kind, AM.SINGLE_NODE_SINGLE_WRITER)) \
        == C.FAILED_PRECONDITION, "a single writer cannot join another target either"
    teardown(plugin, "mix", staging, t1)


@pytest.mark.parametrize("kind", KINDS)
def test_publish_without_a_staging_path_is_failed_precondition(plugin, kind):
    cap = cap_for(kind)
    staging = staged(plugin, "nost", kind)
    req = csi_pb2.NodePublishVolumeRequest(volume_id="nost", target_path=target_path(plugin, "nost", 1, kind),
                                           volume_capability=cap)
    assert code_of(plugin.node.NodePublishVolume, req) == C.FAILED_PRECONDITION
    req.staging_target_path = "relative/staging"
    assert code_of(plugin.node.NodePublishVolume, req) == C.INVALID_ARGUMENT
    unstage(plugin, "nost", staging)


@pytest.mark.parametrize("kind", KINDS)
def test_publish_of_an_unknown_volume_is_not_found(plugin, kind):
    cap = cap_for(kind)
    assert code_of(publish, plugin, "nobody", staging_path(plugin, "nobody"), target_path(plugin, "nobody", 1, kind),
                   cap) == C.NOT_FOUND


# ---- NodeGetVolumeStats ------------------------------------------------------------------

def stats(plugin, vid, path):
    return plugin.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=path))


@pytest.mark.parametrize("path", ["some/path", "/not/there", "/", "/a/../b", "./x", "relative/../../etc"])
def test_stats_of_an_unknown_volume_is_not_found_whatever_the_path(plugin, path):
    assert code_of(stats, plugin, "unknown-volume", path) == C.NOT_FOUND


@pytest.mark.parametrize("kind", KINDS)
def test_stats_at_a_path_where_the_volume_is_not_is_not_found(plugin, kind):
    staging = staged(plugin, "here", kind)
    other_staging = staged(plugin, "other", kind)
    mine, theirs = target_path(plugin, "here", 1, kind), target_path(plugin, "other", 1, kind)
    publish(plugin, "here", staging, mine, cap_for(kind))
    publish(plugin, "other", other_staging, theirs, cap_for(kind))
    empty = os.path.join(plugin.root, "empty-dir")
    os.makedirs(empty)
    for path in ("some/path", "/not/there", empty, plugin.root, theirs, "/", mine + "/../x"):
        assert code_of(stats, plugin, "here", path) == C.NOT_FOUND, path
    usage = stats(plugin, "here", mine).usage
    assert usage and all(u.total > 0 for u in usage)
    assert all(u.used >= 0 and u.available >= 0 for u in usage), "no figure is negative"
    teardown(plugin, "other", other_staging, theirs, last=False)
    teardown(plugin, "here", staging, mine)


# ---- NodeExpandVolume --------------------------------------------------------------------

@pytest.mark.parametrize("path", ["some/path", "/not/there", "/"])
def test_node_expand_of_an_unknown_volume_is_not_found(plugin, path):
    assert code_of(node_expand, plugin, "unknown-volume", path) == C.NOT_FOUND
    assert code_of(node_expand, plugin, "unknown-volume", path, cap=block_cap()) == C.NOT_FOUND


@pytest.mark.parametrize("kind", KINDS)
def test_node_expand_at_a_path_where_the_volume_is_not_is_not_found(plugin, kind):
    cap = cap_for(kind)
    staging = staged(plugin, "nx1", kind)
    other_staging = staged(plugin, "nx2", kind)
    mine, theirs = target_path(plugin, "nx1", 1, kind), target_path(plugin, "nx2", 1, kind)
    publish(plugin, "nx1", staging, mine, cap)
    publish(plugin, "nx2", other_staging, theirs, cap)
    for path in ("some/path", "/not/there", theirs):
        assert code_of(node_expand, plugin, "nx1", path, cap=cap) == C.NOT_FOUND, path
    assert node_expand(plugin, "nx1", mine, 32 * MiB, cap=cap).capacity_bytes == 32 * MiB
    teardown(plugin, "nx2", other_staging, theirs, last=False)
    teardown(plugin, "nx1", staging, mine)


# ---- NodeGetInfo -------------------------------------------------------------------------

def test_node_info_max_volumes_is_not_negative_and_topology_names_this_node(plugin):
    info = plugin.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
    assert info.node_id == NODE_ID and info.max_volumes_per_node >= 0
    assert dict(info.accessible_topology.segments) == {TOPOLOGY_KEY: NODE_ID}
    v = plugin.controller.CreateVolume(create_req("topo")).volume
    assert [dict(t.segments) for t in v.accessible_topology] == [dict(info.accessible_topology.segments)], \
        "a local volume is accessible from the node that reported this topology"


def test_block_publish_target_is_a_device_node_of_the_volume(plugin):
    staging = staged(plugin, "bdev", "block")
    target = target_path(plugin, "bdev", 1, "block")
    publish(plugin, "bdev", staging, target, block_cap())
    st = os.stat(target)
    assert stat.S_ISBLK(st.st_mode)
    # This volume's device, not any block device: its loop device is backed by this volume's file,
    # and bytes written through the target land in that file.
    disk = os.path.join(plugin.data, "volumes", "bdev", "disk.img")
    sysfs = f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/loop/backing_file"
    with open(sysfs) as f:
        assert os.path.realpath(f.read().strip()) == os.path.realpath(disk)
    marker = os.urandom(4096)
    fd = os.open(target, os.O_WRONLY)
    try:
        os.pwrite(fd, marker, 8192)
        os.fsync(fd)
    finally:
        os.close(fd)
    with open(disk, "rb") as f:
        f.seek(8192)
        assert f.read(4096) == marker
    teardown(plugin, "bdev", staging, target)
    assert not os.path.lexists(target), "unpublish removes the file it made"
