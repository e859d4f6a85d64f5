import grpc

from conftest import code_of, csi_pb2, NODE_ID, TOPOLOGY_KEY


def test_plugin_info_names_the_driver(plugin):
    info = plugin.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert info.name == "swell.csi.dev"
    assert info.vendor_version


def test_capabilities(plugin):
    caps = plugin.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest()).capabilities
    services = {c.service.type for c in caps if c.HasField("service")}
    expansion = {c.volume_expansion.type for c in caps if c.HasField("volume_expansion")}
    S = csi_pb2.PluginCapability.Service
    # The whole set, each service advertised only where it answers.
    assert services == {S.CONTROLLER_SERVICE, S.GROUP_CONTROLLER_SERVICE, S.VOLUME_ACCESSIBILITY_CONSTRAINTS}
    assert expansion == {csi_pb2.PluginCapability.VolumeExpansion.ONLINE}
    assert len(caps) == 4, caps
    assert code_of(plugin.group.GroupControllerGetCapabilities,
                   csi_pb2.GroupControllerGetCapabilitiesRequest()) == grpc.StatusCode.OK


def test_probe_is_ready_with_an_explicit_value(plugin):
    resp = plugin.identity.Probe(csi_pb2.ProbeRequest())
    assert resp.HasField("ready") and resp.ready.value is True


def test_node_info_and_capabilities(plugin):
    info = plugin.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
    assert info.node_id == NODE_ID
    assert info.max_volumes_per_node > 0
    assert dict(info.accessible_topology.segments) == {TOPOLOGY_KEY: NODE_ID}
    caps = {c.rpc.type for c in plugin.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest()).capabilities}
    R = csi_pb2.NodeServiceCapability.RPC
    assert caps == {R.STAGE_UNSTAGE_VOLUME, R.GET_VOLUME_STATS, R.EXPAND_VOLUME, R.VOLUME_CONDITION,
                    R.SINGLE_NODE_MULTI_WRITER}


def test_controller_capabilities(plugin):
    """The whole set the controller advertises; each RPC it advertises is served (answers something
    other than UNIMPLEMENTED)."""
    caps = [c.rpc.type for c in plugin.controller.ControllerGetCapabilities(
        csi_pb2.ControllerGetCapabilitiesRequest()).capabilities]
    R = csi_pb2.ControllerServiceCapability.RPC
    assert sorted(caps) == sorted({R.CREATE_DELETE_VOLUME, R.EXPAND_VOLUME, R.LIST_VOLUMES, R.GET_CAPACITY,
                                   R.GET_VOLUME, R.VOLUME_CONDITION, R.SINGLE_NODE_MULTI_WRITER,
                                   R.CREATE_DELETE_SNAPSHOT, R.LIST_SNAPSHOTS, R.GET_SNAPSHOT, R.CLONE_VOLUME,
                                   R.MODIFY_VOLUME, R.PUBLISH_UNPUBLISH_VOLUME, R.LIST_VOLUMES_PUBLISHED_NODES})
    c = plugin.controller
    served = {
        R.CREATE_DELETE_VOLUME: [(c.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id="nothing-here"))],
        R.EXPAND_VOLUME: [(c.ControllerExpandVolume, csi_pb2.ControllerExpandVolumeRequest(volume_id="nothing-here"))],
        R.LIST_VOLUMES: [(c.ListVolumes, csi_pb2.ListVolumesRequest())],
        R.GET_CAPACITY: [(c.GetCapacity, csi_pb2.GetCapacityRequest())],
        R.GET_VOLUME: [(c.ControllerGetVolume, csi_pb2.ControllerGetVolumeRequest(volume_id="nothing-here"))],
        R.CREATE_DELETE_SNAPSHOT: [(c.DeleteSnapshot, csi_pb2.DeleteSnapshotRequest(snapshot_id="nothing-here"))],
        R.LIST_SNAPSHOTS: [(c.ListSnapshots, csi_pb2.ListSnapshotsRequest())],
        R.GET_SNAPSHOT: [(c.ListSnapshots, csi_pb2.ListSnapshotsRequest(snapshot_id="nothing-here"))],
        R.MODIFY_VOLUME: [(c.ControllerModifyVolume, csi_pb2.ControllerModifyVolumeRequest(volume_id="nothing-here"))],
        R.PUBLISH_UNPUBLISH_VOLUME: [
            (c.ControllerPublishVolume, csi_pb2.ControllerPublishVolumeRequest(volume_id="v", node_id=NODE_ID)),
            (c.ControllerUnpublishVolume, csi_pb2.ControllerUnpublishVolumeRequest(volume_id="v"))],
    }
    for cap, calls in served.items():
        assert cap in caps
        for call, request in calls:
            assert code_of(call, request) != grpc.StatusCode.UNIMPLEMENTED, cap


def test_the_committed_proto_is_the_official_one():
    """Sources/CSIProto and these stubs are generated from proto/csi.proto, which must be the spec's
    own v1.12.0 text: its SHA-256 is pinned in the repository."""
    import hashlib
    from conftest import PROTO, CSI_PROTO_SHA256
    with open(PROTO, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == CSI_PROTO_SHA256


def test_the_committed_proto_matches_the_reference_copy_when_there_is_one():
    """Where the developers' reference copy of the spec sits beside the repository, the committed
    proto is byte for byte that copy; a clone without it skips this test."""
    import os
    import pytest
    from conftest import PROTO, OFFICIAL_PROTO
    if not os.path.exists(OFFICIAL_PROTO):
        pytest.skip(f"no reference copy at {OFFICIAL_PROTO}")
    with open(PROTO, "rb") as ours, open(OFFICIAL_PROTO, "rb") as official:
        assert ours.read() == official.read()
