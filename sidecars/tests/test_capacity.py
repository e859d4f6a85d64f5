"""CSIStorageCapacity publishing (--enable-capacity), against the test API server, whose objects
have the shapes recorded from a real kube-apiserver (../shared/k8s-samples/08*): one object per
class of this driver and topology segment, owned by the sidecar's DaemonSet or Deployment, found by
the provisioner's labels, following the free space, and never duplicated."""

import os
import signal

from conftest import NODE, DRIVER, TOPOLOGY_KEY
from fakeapi import quantity
from test_backends import iscsi, tgtd  # noqa: F401 (tgtd is a fixture)
from test_sidecar import pv_for, wait_bound

NS = "swell-system"
CAP = f"/apis/storage.k8s.io/v1/namespaces/{NS}/csistoragecapacities"
MiB = 1 << 20


def owned_pod(api, central=False):
    """The sidecar's pod as the API server has it: owned by a DaemonSet, or by a ReplicaSet that a
    Deployment owns. Returns the pod's name and the object that must own the capacity objects."""
    def make(path, kind, name, owner=None):
        meta = {"name": name, "namespace": NS}
        if owner:
            meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner["kind"], "name": owner["metadata"]["name"],
                                        "uid": owner["metadata"]["uid"], "controller": True,
                                        "blockOwnerDeletion": True}]
        return api.ok("POST", path, {"apiVersion": "apps/v1" if kind != "Pod" else "v1", "kind": kind, "metadata": meta})
    apps = f"/apis/apps/v1/namespaces/{NS}"
    if central:
        top = make(f"{apps}/deployments", "Deployment", "swell-csi-controller")
        rs = make(f"{apps}/replicasets", "ReplicaSet", "swell-csi-controller-7d9f", top)
        pod = make(f"/api/v1/namespaces/{NS}/pods", "Pod", "swell-csi-controller-7d9f-x2k4q", rs)
    else:
        top = make(f"{apps}/daemonsets", "DaemonSet", "swell-node")
        pod = make(f"/api/v1/namespaces/{NS}/pods", "Pod", "swell-node-8bq2z", top)
    return pod["metadata"]["name"], top


def stale_pair(api, storage_class, managed_by, topology):
    """Two objects a crashed sidecar could have left for one class and segment, with a wrong
    capacity: the sidecar must update one and delete the other."""
    labels = {"csi.storage.k8s.io/drivername": DRIVER, "csi.storage.k8s.io/managed-by": managed_by}
    return [api.ok("POST", CAP, {
        "apiVersion": "storage.k8s.io/v1", "kind": "CSIStorageCapacity",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "nodeTopology": {"matchLabels": topology} if topology else {}, "storageClassName": storage_class,
        "capacity": "1Mi"}) for name in ("csisc-aaaaa", "csisc-bbbbb")]


def capacities(api):
    return api.ok("GET", CAP)["items"]


def by_class(api):
    out = {}
    for item in capacities(api):
        out.setdefault(item["storageClassName"], []).append(item)
    return out


def node_sidecar(cluster, pod, *extra, name=None):
    return cluster.sidecar("--per-node", "--node-id", NODE, "--enable-capacity", "--pod-name", pod,
                           "--pod-namespace", NS, *extra, name=name)


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_per_node_objects_carry_the_nodes_free_space_and_follow_creates_and_deletes(cluster):
    api = cluster.api
    pod, daemonset = owned_pod(api)
    api.create_class("thick", binding="WaitForFirstConsumer", params={"provisioning": "thick"})
    api.create_class("net", params={"backend": "iscsi"})  # a network class: not this node's to publish
    api.ok("POST", "/apis/storage.k8s.io/v1/storageclasses", {
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "foreign"},
        "provisioner": "other.csi.example", "volumeBindingMode": "WaitForFirstConsumer"})
    # A long poll: the changes below must be published by the sidecar's own nudges, not by the timer.
    node_sidecar(cluster, pod, "--capacity-poll-interval", "300")

    objects = api.wait("the thick class's object", lambda: by_class(api).get("thick"))
    assert set(by_class(api)) == {"thick"}, "only this driver's local classes"
    assert len(objects) == 1
    obj = objects[0]
    assert obj["metadata"]["name"].startswith("csisc-") and obj["metadata"]["generateName"] == "csisc-"
    assert obj["metadata"]["labels"] == {"csi.storage.k8s.io/drivername": DRIVER,
                                         "csi.storage.k8s.io/managed-by": f"external-provisioner-{NODE}"}
    assert obj["metadata"]["ownerReferences"] == [{
        "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "swell-node", "uid": daemonset["metadata"]["uid"],
        "controller": True}]
    assert obj["nodeTopology"] == {"matchLabels": {TOPOLOGY_KEY: NODE}}
    before = quantity(obj["capacity"])
    assert abs(before - free_bytes(cluster.plugin.data)) < 64 * MiB, (obj["capacity"], free_bytes(cluster.plugin.data))
    assert quantity(obj["maximumVolumeSize"]) <= before

    # A thick volume takes its whole size from the node's free space.
    claim = api.create_claim("big", size="256Mi", sc="thick", annotations={"volume.kubernetes.io/selected-node": NODE})
    wait_bound(api, "big")
    shrunk = api.wait("the capacity to shrink", lambda: (lambda o: o if before - quantity(o["capacity"]) >= 240 * MiB
                                                         else None)(by_class(api)["thick"][0]), timeout=20)
    assert shrunk["metadata"]["uid"] == obj["metadata"]["uid"], "updated in place, not replaced"
    api.ok("DELETE", api.pvc_path("big"))
    api.wait("the PV deleted", lambda: pv_for(api, claim) is None)
    back = api.wait("the capacity to come back", lambda: (lambda o: o if quantity(o["capacity"]) > before - 32 * MiB
                                                           else None)(by_class(api)["thick"][0]), timeout=20)
    assert back["metadata"]["uid"] == obj["metadata"]["uid"] and len(capacities(api)) == 1


def test_a_deleted_class_takes_its_object_and_a_restarted_sidecar_adds_none(cluster):
    api = cluster.api
    pod, _ = owned_pod(api)
    api.create_class("a", binding="WaitForFirstConsumer")
    api.create_class("b", binding="WaitForFirstConsumer")
    first = node_sidecar(cluster, pod, "--capacity-poll-interval", "0.3")
    api.wait("two objects", lambda: sorted(by_class(api)) == ["a", "b"] or None)
    api.ok("DELETE", "/apis/storage.k8s.io/v1/storageclasses/b")
    api.wait("b's object gone", lambda: sorted(by_class(api)) == ["a"] or None)
    kept = by_class(api)["a"][0]["metadata"]["uid"]

    first.stop(signal.SIGKILL)
    second = node_sidecar(cluster, pod, "--capacity-poll-interval", "0.3", name="second")
    api.wait("the second sidecar publishing", lambda: "publishing capacity" in second.log())
    second.wait_metric("swell_sidecar_passes_total", 3, loop="capacity")  # several whole passes
    objects = capacities(api)
    assert [o["metadata"]["uid"] for o in objects] == [kept], "the object adopted, not made again"


def test_stale_and_duplicate_objects_are_corrected_and_a_conflict_is_read_again(cluster):
    api = cluster.api
    pod, daemonset = owned_pod(api)
    api.create_class("a", binding="WaitForFirstConsumer")
    labels = {"csi.storage.k8s.io/drivername": DRIVER, "csi.storage.k8s.io/managed-by": f"external-provisioner-{NODE}"}
    first, second = stale_pair(api, "a", labels["csi.storage.k8s.io/managed-by"], {TOPOLOGY_KEY: NODE})
    # Another node's object is not this sidecar's: its managed-by label differs.
    other = api.ok("POST", CAP, {
        "apiVersion": "storage.k8s.io/v1", "kind": "CSIStorageCapacity",
        "metadata": {"name": "csisc-other", "namespace": NS, "labels": {**labels, "csi.storage.k8s.io/managed-by":
                                                                         "external-provisioner-node-b"}},
        "nodeTopology": {"matchLabels": {TOPOLOGY_KEY: "node-b"}}, "storageClassName": "a", "capacity": "5Gi"})
    api.hook("conflict?resource=csistoragecapacities&count=1")
    node_sidecar(cluster, pod, "--capacity-poll-interval", "0.3")
    fixed = api.wait("the stale object updated", lambda: [o for o in capacities(api)
                                                          if o["metadata"]["name"] == "csisc-aaaaa"
                                                          and quantity(o["capacity"]) > 64 * MiB])
    names = sorted(o["metadata"]["name"] for o in capacities(api))
    assert names == ["csisc-aaaaa", "csisc-other"], "the duplicate deleted, the other node's left alone"
    assert fixed[0]["metadata"]["uid"] == first["metadata"]["uid"]
    assert fixed[0]["metadata"]["annotations"]["test.swell.dev/touched"], "re-read after the 409, then written"
    assert api.get(f"{CAP}/csisc-other")["capacity"] == other["capacity"]
    assert api.get(f"{CAP}/{second['metadata']['name']}") is None


def test_the_central_sidecar_publishes_network_classes_for_every_node(cluster, tgtd):  # noqa: F811
    api = cluster.api
    cluster.plugin.stop()
    cluster.plugin.start(extra_args=tgtd.plugin_args(os.path.join(cluster.root, "iscsi")))
    pod, deployment = owned_pod(api, central=True)
    api.create_class("net", params={"backend": "iscsi"})
    api.create_class("local", binding="WaitForFirstConsumer")  # a per-node class: not the central sidecar's
    cluster.sidecar("--backend", "iscsi", "--enable-capacity", "--pod-name", pod, "--pod-namespace", NS)
    objects = api.wait("the network class's object", lambda: by_class(api).get("net"))
    assert set(by_class(api)) == {"net"} and len(objects) == 1
    obj = objects[0]
    assert obj["nodeTopology"] == {}, "an empty selector: every node reaches the target"
    assert obj["metadata"]["labels"]["csi.storage.k8s.io/managed-by"] == "external-provisioner"
    assert obj["metadata"]["ownerReferences"] == [{
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "swell-csi-controller",
        "uid": deployment["metadata"]["uid"], "controller": True}]
    assert quantity(obj["capacity"]) > 0


def test_capacity_needs_the_pods_identity(cluster):
    sidecar = cluster.sidecar("--per-node", "--node-id", NODE, "--enable-capacity")
    assert sidecar.proc.wait(timeout=20) != 0
    assert "--pod-name" in sidecar.log()
