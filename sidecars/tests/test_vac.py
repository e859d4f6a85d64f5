"""VolumeAttributesClass end to end, as csi-provisioner and csi-resizer handle it (10- samples): a
claim's class reaches CreateVolume as its mutable parameters; a new class name on a bound claim
becomes one ControllerModifyVolume with the whole class, then the PV's class, then the claim's
status, with the recorded conditions and Events; a class the plugin refuses is Infeasible and stays
so until the claim names another; a class that does not exist yet is Pending. The plugin is real:
`provisioning: thick` reserves the volume's file, which the test reads."""
import base64
import os

from conftest import DRIVER
from test_sidecar import pv_for, reasons, wait_bound

MiB = 1 << 20
VAC_PATH = "/apis/storage.k8s.io/v1/volumeattributesclasses"


def create_vac(api, name, params):
    api.ok("POST", VAC_PATH, {"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttributesClass",
                              "metadata": {"name": name}, "driverName": DRIVER, "parameters": params})


def allocated(cluster, handle):
    return os.stat(os.path.join(cluster.plugin.data, "volumes", handle, "disk.img")).st_blocks * 512


def claim_where(api, name, what, check):
    return api.wait(what, lambda: (lambda c: c if check(c) else None)(api.get(api.pvc_path(name))))


def conditions(pvc):
    return {c["type"]: c for c in pvc["status"].get("conditions", [])}


def test_attributes_class_at_create_and_changed_while_bound(cluster):
    api = cluster.api
    sidecar = cluster.sidecar("--resync-seconds", "1")
    api.ok("POST", "/api/v1/namespaces/default/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "modify-secret", "namespace": "default"},
        "data": {"token": base64.b64encode(b"m0dify").decode()}})
    api.create_class("swell", params={"csi.storage.k8s.io/controller-modify-secret-name": "modify-secret",
                                      "csi.storage.k8s.io/controller-modify-secret-namespace": "default"})
    create_vac(api, "thin", {"provisioning": "thin"})
    create_vac(api, "thick", {"provisioning": "thick"})
    create_vac(api, "bad", {"provisioning": "thick", "tier": "platinum"})

    # At create: the class's parameters are CreateVolume's mutable parameters.
    reserved = api.create_claim("reserved", size="128Mi", attributes_class="thick")
    wait_bound(api, "reserved")
    assert allocated(cluster, pv_for(api, reserved)["spec"]["csi"]["volumeHandle"]) >= 128 * MiB

    claim = api.create_claim("db", size="256Mi", attributes_class="thin")
    wait_bound(api, "db")
    pv = pv_for(api, claim)
    handle = pv["spec"]["csi"]["volumeHandle"]
    assert pv["spec"]["volumeAttributesClassName"] == "thin"
    assert pv["metadata"]["annotations"]["volume.kubernetes.io/controller-modify-secret-name"] == "modify-secret"
    assert pv["metadata"]["annotations"]["volume.kubernetes.io/controller-modify-secret-namespace"] == "default"
    assert api.get(api.pvc_path("db"))["status"]["currentVolumeAttributesClassName"] == "thin"
    assert allocated(cluster, handle) < 16 * MiB

    # A new class: modified, the PV's class, then the claim's status, clean.
    api.update_claim("db", lambda c: c["spec"].update(volumeAttributesClassName="thick"))
    pvc = claim_where(api, "db", "thick applied", lambda c: c["status"].get("currentVolumeAttributesClassName") == "thick")
    assert "modifyVolumeStatus" not in pvc["status"] and not conditions(pvc), pvc["status"]
    assert allocated(cluster, handle) >= 256 * MiB
    assert pv_for(api, claim)["spec"]["volumeAttributesClassName"] == "thick"
    assert reasons(api, "db")[-2:] == ["VolumeModify", "VolumeModifySuccessful"]

    # A class the plugin refuses: Infeasible, with csi-resizer's conditions, and sticky.
    api.update_claim("db", lambda c: c["spec"].update(volumeAttributesClassName="bad"))
    pvc = claim_where(api, "db", "infeasible",
                      lambda c: (c["status"].get("modifyVolumeStatus") or {}).get("status") == "Infeasible")
    assert pvc["status"]["modifyVolumeStatus"] == {"targetVolumeAttributesClassName": "bad", "status": "Infeasible"}
    assert pvc["status"]["currentVolumeAttributesClassName"] == "thick"
    cond = conditions(pvc)
    assert cond["ModifyingVolume"]["message"] == 'Modifying volume to "bad" failed. Waiting for retry.'
    assert cond["ModifyVolumeError"]["reason"] == "InvalidArgument" and "tier" in cond["ModifyVolumeError"]["message"]
    seen = sidecar.metric("swell_sidecar_deferred_total", operation="modify", reason="infeasible")
    sidecar.wait_metric("swell_sidecar_deferred_total", seen + 2, operation="modify", reason="infeasible")
    failed = [e for e in api.events_for("db") if e["reason"] == "VolumeModifyFailed"]
    assert len(failed) == 1 and failed[0].get("count", 1) == 1, failed
    assert "code = InvalidArgument" in failed[0]["message"]

    # Back to the current class: modified again with it, and the status is clean.
    api.update_claim("db", lambda c: c["spec"].update(volumeAttributesClassName="thick"))
    pvc = claim_where(api, "db", "rolled back", lambda c: "modifyVolumeStatus" not in c["status"])
    assert pvc["status"]["currentVolumeAttributesClassName"] == "thick" and not conditions(pvc), pvc["status"]

    # A class that does not exist yet: Pending without a target; applied once it exists.
    api.update_claim("db", lambda c: c["spec"].update(volumeAttributesClassName="later"))
    pvc = claim_where(api, "db", "pending", lambda c: c["status"].get("modifyVolumeStatus") == {"status": "Pending"})
    assert any(e["message"] == 'VAC "later" does not exist.' for e in api.events_for("db"))
    create_vac(api, "later", {"provisioning": "thin"})
    pvc = claim_where(api, "db", "later applied",
                      lambda c: c["status"].get("currentVolumeAttributesClassName") == "later")
    assert "modifyVolumeStatus" not in pvc["status"]
    with open(os.path.join(cluster.plugin.data, "volumes", handle, "meta")) as f:
        assert "provisioning=thick" not in f.read(), "thin again: later grows are sparse"
