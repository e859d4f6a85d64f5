"""The sidecar against the test API server and the real plugin on loop devices."""

import os
import signal

from conftest import DRIVER, GiB, NODE, TOPOLOGY_KEY, csiconf


def pv_path(name):
    return f"/api/v1/persistentvolumes/{name}"


def wait_bound(api, name):
    return api.wait(f"{name} bound", lambda: (lambda c: c if c and c.get("status", {}).get("phase") == "Bound"
                                                    else None)(api.get(api.pvc_path(name))))


def reasons(api, name):
    return [e["reason"] for e in api.events_for(name)]


def condition_types(pvc):
    return {c["type"] for c in pvc.get("status", {}).get("conditions", [])}


def test_provision_bind_grow_delete(cluster):
    api = cluster.api
    sidecar = cluster.sidecar()
    api.create_class("swell", params={"csi.storage.k8s.io/fstype": "xfs", "csi.storage.k8s.io/foo": "dropped"})
    claim = api.create_claim("data", size="1Gi")
    name = f"pvc-{claim['metadata']['uid']}"

    pv = api.wait("the PV", lambda: api.get(pv_path(name)))
    spec = pv["spec"]
    assert spec["csi"]["driver"] == DRIVER
    assert spec["csi"]["fsType"] == "xfs"
    assert spec["capacity"]["storage"] == "1Gi"
    assert spec["claimRef"]["uid"] == claim["metadata"]["uid"]
    assert spec["claimRef"]["name"] == "data" and spec["claimRef"]["namespace"] == "default"
    assert spec["persistentVolumeReclaimPolicy"] == "Delete"
    assert spec["storageClassName"] == "swell" and spec["volumeMode"] == "Filesystem"
    assert spec["accessModes"] == ["ReadWriteOnce"]
    assert pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == DRIVER
    assert "external-provisioner.volume.kubernetes.io/finalizer" in pv["metadata"]["finalizers"]
    terms = spec["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": TOPOLOGY_KEY, "operator": "In", "values": [NODE]}]}]
    handle = spec["csi"]["volumeHandle"]
    assert handle in cluster.volumes()
    assert cluster.volumes()[handle].capacity_bytes == GiB

    wait_bound(api, "data")
    api.wait("provisioning events", lambda: {"Provisioning", "ProvisioningSucceeded"} <= set(reasons(api, "data")))

    # kubectl edit pvc: raise the request.
    api.update_claim("data", lambda c: c["spec"]["resources"]["requests"].update(storage="2Gi"))
    pvc = api.wait("node resize pending", lambda: (lambda c: c if c["status"].get("allocatedResourceStatuses", {})
                                                   .get("storage") == "NodeResizePending" else None)(
        api.get(api.pvc_path("data"))))
    assert pvc["status"]["allocatedResources"]["storage"] == "2Gi"
    assert condition_types(pvc) == {"FileSystemResizePending"}
    assert pvc["status"]["capacity"]["storage"] == "1Gi"  # the filesystem is kubelet's to grow
    assert api.get(pv_path(name))["spec"]["capacity"]["storage"] == "2Gi"
    assert cluster.volumes()[handle].capacity_bytes == 2 * GiB
    api.wait("resize events", lambda: {"Resizing", "FileSystemResizeRequired"} <= set(reasons(api, "data")))

    # Deleting the claim releases the PV; the sidecar deletes the volume, then the PV.
    api.ok("DELETE", api.pvc_path("data"))
    api.wait("the PV deleted", lambda: api.get(pv_path(name)) is None)
    assert handle not in cluster.volumes()
    assert sidecar.proc.poll() is None

    # The delete is counted just after the finalizer comes off, so the PV may vanish a moment before.
    text = api.wait("the delete counted", lambda: (lambda t: t if 'operation="delete",result="success"' in t else None)(
        sidecar.http("/metrics")[1]))
    assert 'swell_sidecar_operations_total{operation="provision",result="success"} 1' in text
    assert 'swell_sidecar_operations_total{operation="resize",result="success"} 1' in text
    assert 'swell_sidecar_operations_total{operation="delete",result="success"} 1' in text
    assert sidecar.http("/healthz")[0] == 200
    assert sidecar.stop() == 0, "SIGTERM must end the sidecar cleanly"


def pv_for(api, claim):
    return api.get(pv_path(f"pvc-{claim['metadata']['uid']}"))


def test_wait_for_first_consumer_per_node(cluster):
    """Per-node mode: only claims whose selected node is this node, and only once it is selected."""
    api = cluster.api
    sidecar = cluster.sidecar("--per-node", "--node-id", NODE)
    api.create_class("swell", binding="WaitForFirstConsumer")
    mine = api.create_claim("mine")
    other = api.create_claim("other", annotations={"volume.kubernetes.io/selected-node": "some-other-node"})
    # The sidecar's sign that it looked at each claim and left it: one waits for its node, one is another's.
    sidecar.wait_metric("swell_sidecar_deferred_total", 0, operation="provision", reason="waiting-for-node")
    sidecar.wait_metric("swell_sidecar_deferred_total", 0, operation="provision", reason="other-node")
    assert pv_for(api, mine) is None, "provisioned before the scheduler chose a node"
    assert pv_for(api, other) is None, "a per-node sidecar provisioned another node's claim"
    api.update_claim("mine", lambda c: c["metadata"]["annotations"].update(
        {"volume.kubernetes.io/selected-node": NODE}))
    pv = api.wait("the PV", lambda: pv_for(api, mine))
    assert pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == [NODE]
    wait_bound(api, "mine")
    # A full resync looks at "other" again after "mine" was made; it is still left alone.
    seen = sidecar.metric("swell_sidecar_deferred_total", operation="provision", reason="other-node")
    api.update_claim("other", lambda c: c["metadata"].setdefault("labels", {}).update({"touched": "yes"}))
    sidecar.wait_metric("swell_sidecar_deferred_total", seen, operation="provision", reason="other-node")
    assert pv_for(api, other) is None, "a per-node sidecar provisioned another node's claim"
    assert len(cluster.volumes()) == 1


def test_wait_for_first_consumer_central_reads_csinode(cluster):
    """Central mode: the selected node's topology comes from its CSINode keys and its labels."""
    api = cluster.api
    api.create_node("worker-1", labels={"kubernetes.io/hostname": "worker-1"})
    cluster.sidecar()
    api.create_class("swell", binding="WaitForFirstConsumer")
    claim = api.create_claim("db", annotations={"volume.kubernetes.io/selected-node": "worker-1"})
    pv = api.wait("the PV", lambda: pv_for(api, claim))
    assert pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": TOPOLOGY_KEY, "operator": "In", "values": [NODE]}]


def test_watch_broken_midstream_and_410_relist(cluster):
    api = cluster.api
    sidecar = cluster.sidecar()
    api.create_class("swell")
    api.wait("three watches", lambda: api.hook("watchers")["watchers"] >= 3)

    # Cut every stream mid-way: the sidecar resumes its watches and still sees new claims.
    assert api.hook("break-watches")["broken"] >= 3
    first = api.create_claim("after-break")
    api.wait("the PV", lambda: pv_for(api, first))

    # Cut them again and compact at once: the resumed watches get a 410 ERROR event, and the
    # sidecar lists again, finding the claim whose ADDED event was compacted away.
    api.hook("break-watches")
    second = api.create_claim("compacted")
    api.hook("compact")
    api.wait("the PV", lambda: pv_for(api, second))
    assert "watch expired; listing again" in sidecar.log()


def test_conflicts_are_retried(cluster):
    api = cluster.api
    cluster.sidecar()
    api.create_class("swell")
    claim = api.create_claim("busy")
    wait_bound(api, "busy")
    # The next three writes to PVCs meet a concurrent writer and fail with 409 Conflict.
    api.ok("GET", "/_test/conflict?resource=persistentvolumeclaims&count=3")
    api.update_claim("busy", lambda c: c["spec"]["resources"]["requests"].update(storage="2Gi"))
    api.wait("resize done", lambda: (api.get(api.pvc_path("busy"))["status"].get("allocatedResourceStatuses", {})
                                     .get("storage") == "NodeResizePending"))
    assert api.hook("conflict?resource=persistentvolumeclaims&count=0") == {"remaining": 0}
    assert api.get(pv_path(f"pvc-{claim['metadata']['uid']}"))["spec"]["capacity"]["storage"] == "2Gi"


def test_sidecar_killed_mid_provision(cluster):
    """SIGKILL while CreateVolume runs; the restarted sidecar makes one volume and one PV."""
    api = cluster.api
    cluster.plugin.stop()
    cluster.plugin.start(failpoints="create-after-sparse-file:pause")
    first = cluster.sidecar()
    api.create_class("swell")
    claim = api.create_claim("crash")
    api.wait("the Provisioning event", lambda: "Provisioning" in reasons(api, "crash"))
    first.stop(signal.SIGKILL)
    assert pv_for(api, claim) is None
    cluster.sidecar()
    pv = api.wait("the PV", lambda: pv_for(api, claim))
    wait_bound(api, "crash")
    assert list(cluster.volumes()) == [pv["spec"]["csi"]["volumeHandle"]]
    api.ok("DELETE", api.pvc_path("crash"))
    api.wait("the PV deleted", lambda: pv_for(api, claim) is None)
    assert cluster.volumes() == {}
    assert os.listdir(os.path.join(cluster.plugin.data, "volumes")) == []


def test_infeasible_resize_then_recovery(cluster):
    api = cluster.api
    cluster.sidecar()
    api.create_class("swell")
    claim = api.create_claim("big")
    wait_bound(api, "big")
    api.update_claim("big", lambda c: c["spec"]["resources"]["requests"].update(storage="20Ti"))
    pvc = api.wait("infeasible", lambda: (lambda c: c if c["status"].get("allocatedResourceStatuses", {})
                                          .get("storage") == "ControllerResizeInfeasible" else None)(
        api.get(api.pvc_path("big"))))
    assert "ControllerResizeError" in condition_types(pvc)
    error = next(c for c in pvc["status"]["conditions"] if c["type"] == "ControllerResizeError")
    assert "OutOfRange" in error["message"]
    assert "VolumeResizeFailed" in reasons(api, "big")
    assert api.get(pv_path(f"pvc-{claim['metadata']['uid']}"))["spec"]["capacity"]["storage"] == "1Gi"

    # The user lowers the request to something the driver can do, and the resize goes through.
    api.update_claim("big", lambda c: c["spec"]["resources"]["requests"].update(storage="2Gi"))
    pvc = api.wait("recovered", lambda: (lambda c: c if c["status"].get("allocatedResourceStatuses", {})
                                         .get("storage") == "NodeResizePending" else None)(
        api.get(api.pvc_path("big"))))
    assert condition_types(pvc) == {"FileSystemResizePending"}
    assert pvc["status"]["allocatedResources"]["storage"] == "2Gi"
    assert api.get(pv_path(f"pvc-{claim['metadata']['uid']}"))["spec"]["capacity"]["storage"] == "2Gi"


def test_resize_back_to_capacity_clears_the_error(cluster):
    api = cluster.api
    cluster.sidecar()
    api.create_class("swell")
    api.create_claim("undo")
    wait_bound(api, "undo")
    api.update_claim("undo", lambda c: c["spec"]["resources"]["requests"].update(storage="20Ti"))
    api.wait("infeasible", lambda: (api.get(api.pvc_path("undo"))["status"].get("allocatedResourceStatuses") or {})
             .get("storage") == "ControllerResizeInfeasible")
    api.update_claim("undo", lambda c: c["spec"]["resources"]["requests"].update(storage="1Gi"))
    pvc = api.wait("cleared", lambda: (lambda c: c if not c["status"].get("allocatedResourceStatuses") else None)(
        api.get(api.pvc_path("undo"))))
    assert condition_types(pvc) == set()


def test_no_expansion_without_allow_volume_expansion(cluster):
    api = cluster.api
    cluster.sidecar()
    api.create_class("fixed", expansion=False)
    claim = api.create_claim("fixed", sc="fixed")
    wait_bound(api, "fixed")
    # kube-apiserver's PersistentVolumeClaimResize admission refuses the edit: it never reaches the sidecar.
    pvc = api.get(api.pvc_path("fixed"))
    pvc["spec"]["resources"]["requests"]["storage"] = "2Gi"
    code, body = api.request("PUT", api.pvc_path("fixed"), pvc)
    assert code == 403 and body["reason"] == "Forbidden", (code, body)
    assert body["message"] == ('persistentvolumeclaims "fixed" is forbidden: only dynamically provisioned pvc can '
                               "be resized and the storageclass that provisions the pvc must support resize")
    assert api.get(api.pvc_path("fixed"))["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert api.get(pv_path(f"pvc-{claim['metadata']['uid']}"))["spec"]["capacity"]["storage"] == "1Gi"


def test_pv_deleted_while_sidecar_down_keeps_no_volume(cluster):
    """The finalizer holds the PV until the volume is gone, even if the PV is deleted while we are down."""
    api = cluster.api
    sidecar = cluster.sidecar()
    api.create_class("swell")
    claim = api.create_claim("gone")
    wait_bound(api, "gone")
    sidecar.stop()
    name = f"pvc-{claim['metadata']['uid']}"
    api.ok("DELETE", api.pvc_path("gone"))
    api.wait("released", lambda: api.get(pv_path(name))["status"]["phase"] == "Released")
    api.ok("DELETE", pv_path(name))
    assert api.get(pv_path(name))["metadata"]["deletionTimestamp"]
    assert len(cluster.volumes()) == 1
    cluster.sidecar()
    api.wait("the PV gone", lambda: api.get(pv_path(name)) is None)
    assert cluster.volumes() == {}


def test_retain_policy_keeps_the_volume(cluster):
    api = cluster.api
    sidecar = cluster.sidecar()
    api.create_class("keep", reclaim="Retain")
    claim = api.create_claim("keep", sc="keep")
    wait_bound(api, "keep")
    name = f"pvc-{claim['metadata']['uid']}"
    # Only kube-apiserver's pv-protection: no finalizer of the provisioner's under Retain.
    assert api.get(pv_path(name))["metadata"].get("finalizers") == ["kubernetes.io/pv-protection"]
    api.ok("DELETE", api.pvc_path("keep"))
    api.wait("released", lambda: api.get(pv_path(name))["status"]["phase"] == "Released")
    sidecar.wait_metric("swell_sidecar_deferred_total", 0, operation="delete", reason="retained")
    assert api.get(pv_path(name)) is not None
    assert len(cluster.volumes()) == 1


def test_block_claim_and_client_certificate(cluster):
    api = cluster.api
    cluster.sidecar(auth="cert")
    api.create_class("swell")
    claim = api.create_claim("raw", mode="Block")
    pv = api.wait("the PV", lambda: pv_for(api, claim))
    assert pv["spec"]["volumeMode"] == "Block"
    assert "fsType" not in pv["spec"]["csi"]


def test_token_rotation(cluster):
    api = cluster.api
    cluster.sidecar()
    api.create_class("swell")
    first = api.create_claim("before")
    api.wait("the PV", lambda: pv_for(api, first))
    api.set_token("token-two")
    # New connections need the new token: the sidecar meets a 401, re-reads its token file, goes on.
    api.hook("break-watches")
    second = api.create_claim("after")
    api.wait("the PV", lambda: pv_for(api, second))


def test_leader_election(cluster):
    api = cluster.api
    flags = ("--leader-election", "--leader-election-namespace", "default", "--leader-election-lease-duration", "3",
             "--leader-election-renew-deadline", "2", "--leader-election-retry-period", "0.5")
    a = cluster.sidecar(*flags, name="replica-a")
    lease_path = "/apis/coordination.k8s.io/v1/namespaces/default/leases/swell-csi-dev-sidecar"
    holder = api.wait("a lease", lambda: (api.get(lease_path) or {}).get("spec", {}).get("holderIdentity"))
    b = cluster.sidecar(*flags, name="replica-b")
    api.create_class("swell")
    for i in range(5):
        api.create_claim(f"c{i}")
    for i in range(5):
        wait_bound(api, f"c{i}")
    assert len(cluster.volumes()) == 5
    assert api.get(lease_path)["spec"]["holderIdentity"] == holder
    assert "became leader" in a.log() and "became leader" not in b.log()

    a.stop(signal.SIGKILL)
    api.wait("b to lead", lambda: "became leader" in b.log(), timeout=20)
    assert api.get(lease_path)["spec"]["holderIdentity"] != holder
    claim = api.create_claim("after-failover")
    api.wait("the PV", lambda: pv_for(api, claim))


def test_claim_with_a_data_source_gets_no_empty_volume(cluster):
    api = cluster.api
    cluster.sidecar()
    api.create_class("swell")
    code, claim = api.request("POST", "/api/v1/namespaces/default/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "clone"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                 "storageClassName": "swell", "dataSource": {"kind": "PersistentVolumeClaim", "name": "data"}}})
    assert code == 201
    failed = api.wait("ProvisioningFailed", lambda: [e for e in api.events_for("clone")
                                                      if e["reason"] == "ProvisioningFailed"])
    # The source claim does not exist: refused, never provisioned empty.
    assert "source claim default/data does not exist" in failed[0]["message"] and failed[0]["type"] == "Warning"
    assert pv_for(api, claim) is None and cluster.volumes() == {}


def repeated_failure(api, name="orphan-clone", sc="swell", annotations=None, count=3):
    """A claim whose provisioning fails on every retry (its source claim does not exist); returns its
    ProvisioningFailed Events once one of them counts `count` attempts."""
    code, claim = api.request("POST", "/api/v1/namespaces/default/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}},
                 "storageClassName": sc, "dataSource": {"kind": "PersistentVolumeClaim", "name": "absent"}}})
    assert code == 201, claim
    failed = lambda: [e for e in api.events_for(name) if e["reason"] == "ProvisioningFailed"]  # noqa: E731
    api.wait(f"ProvisioningFailed counted {count} times", lambda: any(e.get("count", 1) >= count for e in failed()))
    return claim, failed()


def test_repeated_events_are_aggregated_into_one_with_a_count(cluster):
    """As client-go's correlator does: the same reason and message on the same object within the
    window raise one Event's count and lastTimestamp instead of posting a new Event each retry."""
    api = cluster.api
    cluster.sidecar()
    api.create_class("swell")
    claim, failed = repeated_failure(api)
    assert len(failed) == 1, [e["metadata"]["name"] for e in failed]
    event = failed[0]
    assert event["type"] == "Warning" and "source claim default/absent does not exist" in event["message"]
    assert event["lastTimestamp"] >= event["firstTimestamp"]
    assert event["involvedObject"]["uid"] == claim["metadata"]["uid"]
    # A different object gets its own Event, counted from one.
    api.ok("DELETE", api.pvc_path("orphan-clone"))
    _, again = repeated_failure(api, name="orphan-2", count=2)
    assert len(again) == 1 and again[0]["metadata"]["name"] != event["metadata"]["name"]
    assert api.get(f"/api/v1/namespaces/default/events/{event['metadata']['name']}")["count"] >= 3
