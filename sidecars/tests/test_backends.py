"""Two sidecars split one driver by backend, as the manifests deploy them: the per-node sidecar
serves loop classes on its node, the controller's serves iscsi classes, against a real tgtd."""
import importlib.util
import os

import pytest

from conftest import NODE, ROOT, csiconf

_spec = importlib.util.spec_from_file_location("swell_iscsi", os.path.join(ROOT, "conformance", "iscsi.py"))
iscsi = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(iscsi)

MiB = 1 << 20


@pytest.fixture
def tgtd(cluster):
    t = iscsi.Tgtd(cluster.root).start()
    try:
        yield t
    finally:
        t.close()


def attach_to_the_reader(api, pv):
    """A VolumeAttachment of the PV to a node whose initiator is the host's libiscsi reader, as the
    attach/detach controller makes it; the central sidecar attaches it (the target then admits the
    reader). Returns once attached."""
    from test_attach import attachment, create_attachment
    if api.get("/apis/storage.k8s.io/v1/csinodes/reader-node") is None:
        api.ok("POST", "/apis/storage.k8s.io/v1/csinodes", {
            "apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": "reader-node"},
            "spec": {"drivers": [{"name": "swell.csi.dev", "nodeID": iscsi.READER, "topologyKeys": []}]}})
    va = create_attachment(api, pv["metadata"]["name"], pv["spec"]["csi"]["volumeHandle"], node="reader-node")
    return api.wait("attached", lambda: (lambda v: v if v and v["status"].get("attached") else None)(
        attachment(api, va["metadata"]["name"])))


def operations(sidecar, op):
    text = sidecar.http("/metrics")[1]
    for line in text.splitlines():
        if line.startswith(f'swell_sidecar_operations_total{{operation="{op}",result="success"}}'):
            return int(float(line.split()[-1]))
    return 0


def test_per_node_serves_loop_and_central_serves_iscsi(cluster, tgtd):
    api = cluster.api
    cluster.plugin.stop()
    cluster.plugin.start(extra_args=tgtd.plugin_args(os.path.join(cluster.root, "iscsi")))
    node = cluster.sidecar("--per-node", "--node-id", NODE, "--backend", "loop", name="node")
    central = cluster.sidecar("--backend", "iscsi", "--attach", name="central")
    api.create_class("local", binding="WaitForFirstConsumer")
    api.create_class("net", params={"backend": "iscsi"})
    local = api.create_claim("local-data", sc="local", annotations={"volume.kubernetes.io/selected-node": NODE})
    net = api.create_claim("net-data", sc="net", size="64Mi")

    local_pv = api.wait("the local PV", lambda: api.get(f"/api/v1/persistentvolumes/pvc-{local['metadata']['uid']}"))
    net_name = f"pvc-{net['metadata']['uid']}"
    net_pv = api.wait("the iSCSI PV", lambda: api.get(f"/api/v1/persistentvolumes/{net_name}"))
    assert "nodeAffinity" in local_pv["spec"]
    assert "nodeAffinity" not in net_pv["spec"], "an iSCSI volume may follow its pod to any node"
    attrs = net_pv["spec"]["csi"]["volumeAttributes"]
    assert attrs["backend"] == "iscsi" and attrs["lun"] == "1"
    assert attrs["iqn"] == f"iqn.2026-11.dev.swell:{net_name}"
    assert iscsi.readcapacity(tgtd.port, attrs["iqn"]) is None, "no node is published yet"
    va = attach_to_the_reader(api, net_pv)
    assert va["status"]["attachmentMetadata"]["initiator"] == iscsi.initiator_name(iscsi.READER)
    assert iscsi.readcapacity(tgtd.port, attrs["iqn"]) == 64 * MiB

    # kubectl edit pvc on the iSCSI claim: the controller's sidecar grows the exported LUN.
    api.update_claim("net-data", lambda c: c["spec"]["resources"]["requests"].update(storage="128Mi"))
    api.wait("the PV grown", lambda: api.get(f"/api/v1/persistentvolumes/{net_name}")["spec"]["capacity"]["storage"]
             == "128Mi")
    assert iscsi.readcapacity(tgtd.port, attrs["iqn"]) == 128 * MiB

    api.ok("DELETE", f"/apis/storage.k8s.io/v1/volumeattachments/{va['metadata']['name']}")
    api.ok("DELETE", api.pvc_path("net-data"))
    api.wait("the iSCSI PV deleted", lambda: api.get(f"/api/v1/persistentvolumes/{net_name}") is None)
    assert tgtd.targets() == {}

    # Each sidecar did only its own backend's work.
    assert (operations(node, "provision"), operations(central, "provision")) == (1, 1)
    assert (operations(node, "resize"), operations(central, "resize")) == (0, 1)
    assert (operations(node, "delete"), operations(central, "delete")) == (0, 1)


def test_a_chap_class_gives_the_plugin_its_secret_and_the_pv_a_node_stage_secret(cluster, tgtd):
    """csi.storage.k8s.io/provisioner-secret-* reach CreateVolume (the target then asks for CHAP),
    and node-stage-secret-* become the PV's nodeStageSecretRef, templates resolved, as
    external-provisioner does; no secret value reaches the sidecar's log or an Event."""
    import base64
    api = cluster.api
    cluster.plugin.stop()
    cluster.plugin.start(extra_args=tgtd.plugin_args(os.path.join(cluster.root, "iscsi")))
    password = "chap-secret-0042"
    api.ok("POST", "/api/v1/namespaces/default/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-chap", "namespace": "default"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in {"username": "db", "password": password}.items()}})
    sidecar = cluster.sidecar("--backend", "iscsi", "--attach")
    api.create_class("chap", params={
        "backend": "iscsi",
        "csi.storage.k8s.io/provisioner-secret-name": "${pvc.name}-chap",
        "csi.storage.k8s.io/provisioner-secret-namespace": "${pvc.namespace}",
        "csi.storage.k8s.io/node-stage-secret-name": "${pvc.name}-chap",
        "csi.storage.k8s.io/node-stage-secret-namespace": "${pvc.namespace}"})
    claim = api.create_claim("db", sc="chap", size="64Mi")
    name = f"pvc-{claim['metadata']['uid']}"
    pv = api.wait("the PV", lambda: api.get(f"/api/v1/persistentvolumes/{name}"))
    assert pv["spec"]["csi"]["nodeStageSecretRef"] == {"name": "db-chap", "namespace": "default"}
    iqn = pv["spec"]["csi"]["volumeAttributes"]["iqn"]
    attach_to_the_reader(api, pv)
    assert iscsi.readcapacity(tgtd.port, iqn) is None, "the target asks for CHAP"
    assert iscsi.readcapacity(tgtd.port, iqn, chap=("db", password)) == 64 * MiB

    # A class naming a secret that does not exist: refused with an Event, nothing provisioned.
    api.create_class("nochap", params={"backend": "iscsi", "csi.storage.k8s.io/provisioner-secret-name": "absent",
                                       "csi.storage.k8s.io/provisioner-secret-namespace": "default"})
    api.create_claim("orphan", sc="nochap", size="64Mi")
    failed = api.wait("ProvisioningFailed", lambda: [e for e in api.events_for("orphan")
                                                      if e["reason"] == "ProvisioningFailed"])
    assert "provisioner secret default/absent does not exist" in failed[0]["message"]
    everything = open(sidecar.log_path).read() + open(cluster.plugin.log_path).read() + str(api.ok("GET", "/api/v1/namespaces/default/events"))
    assert password not in everything
