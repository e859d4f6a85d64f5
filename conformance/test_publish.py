"""ControllerPublishVolume and ControllerUnpublishVolume on local volumes (loop), row by row of the
spec, and NodeStageVolume's refusal of a volume that is not published to its node. The network
backends' rows (a second node, the iSCSI target's ACL, the rbd owner and its fence) are in
test_iscsi.py and test_rbd.py; the fence drill with two kernels is in the VM tier."""
import os
import signal

import grpc

from conftest import NODE_ID, block_cap, code_of, create_req, csi_pb2, mount_cap, MiB
from test_node import paths

C = grpc.StatusCode
AM = csi_pb2.VolumeCapability.AccessMode.Mode


def pub_req(vid, node=NODE_ID, cap=None, readonly=False):
    return csi_pb2.ControllerPublishVolumeRequest(volume_id=vid, node_id=node, volume_capability=cap or mount_cap(),
                                                  readonly=readonly)


def unpub_req(vid, node=NODE_ID):
    return csi_pb2.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=node)


def published_nodes(plugin, vid):
    listed = {e.volume.volume_id: list(e.status.published_node_ids)
              for e in plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest()).entries}
    got = plugin.controller.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id=vid))
    assert list(got.status.published_node_ids) == listed[vid], "ListVolumes and ControllerGetVolume agree"
    return listed[vid]


def test_capabilities_offer_publish_and_published_nodes(plugin):
    caps = {c.rpc.type for c in plugin.controller.ControllerGetCapabilities(
        csi_pb2.ControllerGetCapabilitiesRequest()).capabilities}
    R = csi_pb2.ControllerServiceCapability.RPC.Type
    assert {R.PUBLISH_UNPUBLISH_VOLUME, R.LIST_VOLUMES_PUBLISHED_NODES} <= caps
    assert R.PUBLISH_READONLY not in caps


def test_publish_errors_on_a_local_volume(plugin):
    c = plugin.controller
    # Required fields, checked before anything is looked up (csi-sanity sends unknown IDs here).
    assert code_of(c.ControllerPublishVolume, csi_pb2.ControllerPublishVolumeRequest()) == C.INVALID_ARGUMENT
    assert code_of(c.ControllerPublishVolume, csi_pb2.ControllerPublishVolumeRequest(volume_id="nope")) \
        == C.INVALID_ARGUMENT
    assert code_of(c.ControllerPublishVolume, csi_pb2.ControllerPublishVolumeRequest(
        volume_id="nope", node_id="some-node")) == C.INVALID_ARGUMENT
    # Volume does not exist; node does not exist (a local volume reaches only this node).
    assert code_of(c.ControllerPublishVolume, pub_req("nope", node="some-fake-node")) == C.NOT_FOUND
    c.CreateVolume(create_req("p1", required=16 * MiB))
    with_fake_node = pub_req("p1", node="some-fake-node")
    assert code_of(c.ControllerPublishVolume, with_fake_node) == C.NOT_FOUND
    # A capability the volume cannot have: block access to a filesystem volume, a multi-node mode,
    # and readonly, which is not offered (PUBLISH_READONLY).
    assert code_of(c.ControllerPublishVolume, pub_req("p1", cap=block_cap())) == C.INVALID_ARGUMENT
    assert code_of(c.ControllerPublishVolume, pub_req("p1", cap=mount_cap(mode=AM.MULTI_NODE_MULTI_WRITER))) \
        == C.INVALID_ARGUMENT
    assert code_of(c.ControllerPublishVolume, pub_req("p1", readonly=True)) == C.INVALID_ARGUMENT
    assert published_nodes(plugin, "p1") == [], "no refused publish left a record"

    # Published, then a repeat with the same capability: OK, the same context.
    first = c.ControllerPublishVolume(pub_req("p1", cap=mount_cap(mode=AM.SINGLE_NODE_MULTI_WRITER)))
    assert dict(first.publish_context) == {"node": NODE_ID}
    again = c.ControllerPublishVolume(pub_req("p1", cap=mount_cap(mode=AM.SINGLE_NODE_MULTI_WRITER)))
    assert again.publish_context == first.publish_context
    # The same node with another capability: published but incompatible.
    assert code_of(c.ControllerPublishVolume, pub_req("p1", cap=mount_cap(mode=AM.SINGLE_NODE_SINGLE_WRITER))) \
        == C.ALREADY_EXISTS
    assert published_nodes(plugin, "p1") == [NODE_ID]

    # Unpublish: of what is not published, of a volume or a node that does not exist, and without a
    # node (every node): all OK.
    assert code_of(c.ControllerUnpublishVolume, csi_pb2.ControllerUnpublishVolumeRequest()) == C.INVALID_ARGUMENT
    c.ControllerUnpublishVolume(unpub_req("nope"))
    c.ControllerUnpublishVolume(unpub_req("p1", node="some-fake-node"))
    assert published_nodes(plugin, "p1") == [NODE_ID], "another node's unpublish leaves this one"
    c.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id="p1"))
    assert published_nodes(plugin, "p1") == []
    c.ControllerUnpublishVolume(unpub_req("p1"))
    # Now another capability is fine: it is a new publication.
    c.ControllerPublishVolume(pub_req("p1", cap=mount_cap(mode=AM.SINGLE_NODE_SINGLE_WRITER)))
    assert published_nodes(plugin, "p1") == [NODE_ID]
    c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="p1"))
    assert os.listdir(os.path.join(plugin.data, "publications")) == [], "a deleted volume's record goes with it"


def test_max_volumes_per_node_is_resource_exhausted(plugin):
    plugin.stop()
    plugin.start(extra_args=["--max-volumes-per-node", "2"])
    c = plugin.controller
    for vid in ("m1", "m2", "m3"):
        c.CreateVolume(create_req(vid, required=16 * MiB))
    c.ControllerPublishVolume(pub_req("m1"))
    c.ControllerPublishVolume(pub_req("m2"))
    assert code_of(c.ControllerPublishVolume, pub_req("m3")) == C.RESOURCE_EXHAUSTED
    c.ControllerPublishVolume(pub_req("m2"))  # a repeat of a publication is not a new one
    c.ControllerUnpublishVolume(unpub_req("m1"))
    c.ControllerPublishVolume(pub_req("m3"))
    assert published_nodes(plugin, "m3") == [NODE_ID]


def test_publications_survive_a_sigkill_and_a_restart(plugin):
    c = plugin.controller
    c.CreateVolume(create_req("r1", required=16 * MiB))
    c.ControllerPublishVolume(pub_req("r1"))
    plugin.stop(signal.SIGKILL)
    plugin.start()
    assert published_nodes(plugin, "r1") == [NODE_ID]
    assert code_of(plugin.controller.ControllerPublishVolume, pub_req("r1", cap=block_cap())) == C.INVALID_ARGUMENT
    assert code_of(plugin.controller.ControllerPublishVolume, pub_req("r1", cap=mount_cap(mode=AM.SINGLE_NODE_READER_ONLY))) \
        == C.ALREADY_EXISTS


def test_stage_refuses_a_volume_not_published_to_this_node(plugin):
    cap = mount_cap("ext4")
    staging, _ = paths(plugin, "s1")
    plugin.controller.CreateVolume(create_req("s1", required=64 * MiB, cap=cap))

    def stage(context):
        return csi_pb2.NodeStageVolumeRequest(volume_id="s1", staging_target_path=staging, volume_capability=cap,
                                             publish_context=context)
    with_no_context = stage({})
    try:
        plugin.node.NodeStageVolume(with_no_context)
        raise AssertionError("a stage without a publication succeeded")
    except grpc.RpcError as e:
        assert e.code() == C.FAILED_PRECONDITION and "not published to this node" in e.details(), e.details()
    assert code_of(plugin.node.NodeStageVolume, stage({"node": "another-node"})) == C.FAILED_PRECONDITION
    # A volume that does not exist is NOT_FOUND first, publication or not.
    missing = csi_pb2.NodeStageVolumeRequest(volume_id="nothing", staging_target_path=staging, volume_capability=cap)
    assert code_of(plugin.node.NodeStageVolume, missing) == C.NOT_FOUND
    with open("/proc/self/mountinfo") as f:
        assert staging not in f.read(), "a refused stage mounted nothing"
    context = plugin.publish_here("s1", cap)
    plugin.node.NodeStageVolume(stage(context))
    plugin.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id="s1", staging_target_path=staging))
    plugin.unpublish_here("s1")
    assert code_of(plugin.node.NodeStageVolume, stage({})) == C.FAILED_PRECONDITION


def test_stage_unpublished_local_lets_a_driver_without_attach_stage_local_volumes(plugin):
    """--stage-unpublished-local, for a CSIDriver with attachRequired: false: a local volume stages
    with no publish context; another node's context is still refused."""
    plugin.stop()
    plugin.start(extra_args=["--stage-unpublished-local"])
    cap = mount_cap("ext4")
    staging, _ = paths(plugin, "u1")
    plugin.controller.CreateVolume(create_req("u1", required=64 * MiB, cap=cap))
    other = csi_pb2.NodeStageVolumeRequest(volume_id="u1", staging_target_path=staging, volume_capability=cap,
                                          publish_context={"node": "another-node"})
    assert code_of(plugin.node.NodeStageVolume, other) == C.FAILED_PRECONDITION
    plugin.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(volume_id="u1", staging_target_path=staging,
                                                               volume_capability=cap))
    with open("/proc/self/mountinfo") as f:
        assert staging in f.read()
    plugin.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id="u1", staging_target_path=staging))
