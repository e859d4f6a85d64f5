"""The sidecar against the test API server and the real plugin on loop devices."""

import os
import signal
import time

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

    code, text = sidecar.http("/metrics")
    assert code == 200
    assert 'swell_sidecar_operations_total{operation="provision",result="success"} 1' in text
    assert 'swell_sidecar_operations_total{operation="resize",result="success"} 1' in text
    assert 'swell_sidecar_operations_total{operation="delete",result="success"} 1' in text
    assert sidecar.http("/healthz")[0] == 200
