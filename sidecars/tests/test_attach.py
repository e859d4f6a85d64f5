"""The sidecar as the attacher (csi-attacher's role), against the test API server and the real
plugin. The test plays the attach/detach controller of kube-controller-manager: it makes the
VolumeAttachment as 11a-va-created.json shows it (name `csi-<sha256(handle, attacher, node)>`,
attached false) and deletes it when the pod is gone. What the sidecar writes is compared with what
the official csi-attacher wrote on a real control plane (11b, 11c, 11e)."""
import hashlib
import os

from conftest import DRIVER, NODE, csiconf
from test_sidecar import pv_path, wait_bound

VA = "/apis/storage.k8s.io/v1/volumeattachments"
FINALIZER = "external-attacher/swell-csi-dev"


def va_name(handle, node):
    return "csi-" + hashlib.sha256(f"{handle}{DRIVER}{node}".encode()).hexdigest()


def create_attachment(api, pv_name, handle, node=NODE):
    """The VolumeAttachment kube-controller-manager makes for a pod's volume on `node` (11a)."""
    return api.ok("POST", VA, {"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
                               "metadata": {"name": va_name(handle, node)},
                               "spec": {"attacher": DRIVER, "source": {"persistentVolumeName": pv_name},
                                        "nodeName": node},
                               "status": {"attached": False}})


def attachment(api, name):
    return api.get(f"{VA}/{name}")


def published(cluster, handle):
    from csi_pb2 import ControllerGetVolumeRequest
    return list(cluster.plugin.controller.ControllerGetVolume(
        ControllerGetVolumeRequest(volume_id=handle)).status.published_node_ids)


def provisioned(api, name="data", size="320Mi"):
    api.create_class("swell")
    claim = api.create_claim(name, size=size)
    pv = api.wait("the PV", lambda: api.get(pv_path(f"pvc-{claim['metadata']['uid']}")))
    wait_bound(api, name)
    return pv, pv["spec"]["csi"]["volumeHandle"]


def test_attach_and_detach_as_csi_attacher_does(cluster):
    api = cluster.api
    api.create_node(NODE)
    cluster.sidecar("--attach")
    pv, handle = provisioned(api)
    va = create_attachment(api, pv["metadata"]["name"], handle)
    name = va["metadata"]["name"]

    done = api.wait("attached", lambda: (lambda v: v if v and v["status"].get("attached") else None)(
        attachment(api, name)))
    # 11b: the finalizer and the node ID on the object, attached in its status; the publish context
    # (Swell's is never empty) as attachmentMetadata.
    assert done["metadata"]["finalizers"] == [FINALIZER]
    assert done["metadata"]["annotations"] == {"csi.alpha.kubernetes.io/node-id": NODE}
    assert done["status"] == {"attached": True, "attachmentMetadata": {"node": NODE}}
    # 11c: the PV carries the attacher's finalizer too, beside the provisioner's.
    assert FINALIZER in api.get(pv_path(pv["metadata"]["name"]))["metadata"]["finalizers"]
    assert published(cluster, handle) == [NODE]

    # Kubelet stages with the attachment's metadata as the publish context.
    from csi_pb2 import NodeStageVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability
    staging = os.path.join(cluster.root, "stage-data")
    req = NodeStageVolumeRequest(volume_id=handle, staging_target_path=staging,
                                 publish_context=done["status"]["attachmentMetadata"])
    req.volume_capability.mount.fs_type = "xfs"
    req.volume_capability.access_mode.mode = VolumeCapability.AccessMode.SINGLE_NODE_MULTI_WRITER
    cluster.plugin.node.NodeStageVolume(req)
    cluster.plugin.node.NodeUnstageVolume(NodeUnstageVolumeRequest(volume_id=handle, staging_target_path=staging))

    # The pod is gone: the controller deletes the attachment; the attacher unpublishes, then lets it go.
    api.ok("DELETE", f"{VA}/{name}")
    api.wait("the attachment gone", lambda: attachment(api, name) is None)
    assert published(cluster, handle) == []
    # The claim goes: the PV keeps the attacher's finalizer only while an attachment names it.
    api.ok("DELETE", api.pvc_path("data"))
    api.wait("the PV gone", lambda: api.get(pv_path(pv["metadata"]["name"])) is None)
    assert handle not in cluster.volumes()


def test_a_claim_deleted_before_its_detach_waits_for_it(cluster):
    """The claim goes while its volume is still attached (the detach waits for kubelet): the volume
    is not deleted until the VolumeAttachment is gone, as external-provisioner waits; then the PV
    goes, the attacher's finalizer with it."""
    api = cluster.api
    api.create_node(NODE)
    cluster.sidecar("--attach")
    pv, handle = provisioned(api)
    va = create_attachment(api, pv["metadata"]["name"], handle)
    name = va["metadata"]["name"]
    api.wait("attached", lambda: (lambda v: v if v and v["status"].get("attached") else None)(attachment(api, name)))
    api.ok("DELETE", api.pvc_path("data"))
    api.wait("the deletion refused while attached", lambda: [
        e for e in api.events_for(pv["metadata"]["name"]) if e["reason"] == "VolumeFailedDelete"
        and "is still attached to node" in e["message"]] or None)
    assert handle in cluster.volumes() and published(cluster, handle) == [NODE]
    api.ok("DELETE", f"{VA}/{name}")
    api.wait("the PV gone", lambda: api.get(pv_path(pv["metadata"]["name"])) is None, timeout=60)
    assert handle not in cluster.volumes()


def test_attach_and_detach_errors_are_written_as_csi_attacher_writes_them(cluster):
    """A publish the plugin refuses (the volume does not exist) is attachError with the gRPC code
    (11e-va-attach-error.json), retried; a failed unpublish (the plugin down) is detachError with no
    code (11e-va-detach-error.json), and the attachment stays until the retry succeeds."""
    api = cluster.api
    api.create_node(NODE)
    sidecar = cluster.sidecar("--attach")
    pv = api.ok("POST", "/api/v1/persistentvolumes", {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-gone"},
        "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
                 "csi": {"driver": DRIVER, "volumeHandle": "no-such-volume", "fsType": "xfs"},
                 "persistentVolumeReclaimPolicy": "Retain", "volumeMode": "Filesystem"}})
    va = create_attachment(api, pv["metadata"]["name"], "no-such-volume")
    name = va["metadata"]["name"]
    failed = api.wait("attachError", lambda: (lambda v: v if v and v["status"].get("attachError") else None)(
        attachment(api, name)))
    error = failed["status"]["attachError"]
    assert error["errorCode"] == 5 and error["message"].startswith("rpc error: code = NotFound desc = "), error
    assert set(error) == {"errorCode", "message", "time"} and failed["status"]["attached"] is False
    assert failed["metadata"]["finalizers"] == [FINALIZER], "the finalizer went on before the call"

    # A volume that is there: attached, and the earlier error is gone.
    pv2, handle = provisioned(api, "ok")
    va2 = create_attachment(api, pv2["metadata"]["name"], handle)
    ok = api.wait("attached", lambda: (lambda v: v if v and v["status"].get("attached") else None)(
        attachment(api, va2["metadata"]["name"])))
    assert "attachError" not in ok["status"]

    # The plugin is down when the attachment goes: detachError, no code; then it comes back.
    cluster.plugin.stop()
    api.ok("DELETE", f"{VA}/{va2['metadata']['name']}")
    stuck = api.wait("detachError", lambda: (lambda v: v if v and v["status"].get("detachError") else None)(
        attachment(api, va2["metadata"]["name"])), timeout=60)
    assert set(stuck["status"]["detachError"]) == {"message", "time"}
    assert stuck["metadata"]["finalizers"] == [FINALIZER]
    cluster.plugin.start()
    api.wait("the attachment gone", lambda: attachment(api, va2["metadata"]["name"]) is None, timeout=90)
    assert published(cluster, handle) == []
    # The failed one goes too: unpublishing a volume that does not exist succeeds.
    api.ok("DELETE", f"{VA}/{name}")
    api.wait("the failed attachment gone", lambda: attachment(api, name) is None, timeout=60)
    assert sidecar.proc.poll() is None


def test_a_repeated_publish_and_a_late_one_are_the_same_attachment(cluster):
    """ControllerPublishVolume arrives more than once for one attachment (11z: twice within 14 ms,
    and a call the attacher timed out delivered later): each answers the same, and the attachment
    is attached once."""
    api = cluster.api
    api.create_node(NODE)
    cluster.sidecar("--attach")
    pv, handle = provisioned(api)
    from csi_pb2 import ControllerPublishVolumeRequest, VolumeCapability
    cap = VolumeCapability()
    cap.mount.fs_type = "xfs"
    cap.access_mode.mode = VolumeCapability.AccessMode.SINGLE_NODE_MULTI_WRITER
    first = cluster.plugin.controller.ControllerPublishVolume(ControllerPublishVolumeRequest(
        volume_id=handle, node_id=NODE, volume_capability=cap))
    va = create_attachment(api, pv["metadata"]["name"], handle)
    done = api.wait("attached", lambda: (lambda v: v if v and v["status"].get("attached") else None)(
        attachment(api, va["metadata"]["name"])))
    late = cluster.plugin.controller.ControllerPublishVolume(ControllerPublishVolumeRequest(
        volume_id=handle, node_id=NODE, volume_capability=cap))
    assert dict(first.publish_context) == dict(late.publish_context) == done["status"]["attachmentMetadata"]
    assert published(cluster, handle) == [NODE]


def test_the_node_list_follows_the_csinodes(cluster):
    """--nodes-file: the node IDs CSINodes register for this driver, one a line, rewritten when
    one comes or goes; a CSINode of another driver does not count."""
    api = cluster.api
    path = os.path.join(cluster.root, "nodes")
    api.create_node(NODE)
    cluster.sidecar("--nodes-file", path)
    read = lambda: open(path).read() if os.path.exists(path) else None  # noqa: E731
    api.wait("the node list", lambda: read() == f"{NODE}\n")
    api.ok("POST", "/apis/storage.k8s.io/v1/csinodes", {
        "apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": "node-b"},
        "spec": {"drivers": [{"name": DRIVER, "nodeID": "node-b-id", "topologyKeys": []},
                             {"name": "other.csi.dev", "nodeID": "other-id"}]}})
    api.ok("POST", "/apis/storage.k8s.io/v1/csinodes", {
        "apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": "node-c"},
        "spec": {"drivers": [{"name": "other.csi.dev", "nodeID": "node-c"}]}})
    api.wait("node-b listed", lambda: read() == "".join(f"{n}\n" for n in sorted([NODE, "node-b-id"])))
    api.ok("DELETE", "/apis/storage.k8s.io/v1/csinodes/node-b")
    api.wait("node-b gone", lambda: read() == f"{NODE}\n")
    assert csiconf.NODE_ID == NODE
