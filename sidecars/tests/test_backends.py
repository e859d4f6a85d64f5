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
    central = cluster.sidecar("--backend", "iscsi", name="central")
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
    assert iscsi.readcapacity(tgtd.port, attrs["iqn"]) == 64 * MiB

    # kubectl edit pvc on the iSCSI claim: the controller's sidecar grows the exported LUN.
    api.update_claim("net-data", lambda c: c["spec"]["resources"]["requests"].update(storage="128Mi"))
    api.wait("the PV grown", lambda: api.get(f"/api/v1/persistentvolumes/{net_name}")["spec"]["capacity"]["storage"]
             == "128Mi")
    assert iscsi.readcapacity(tgtd.port, attrs["iqn"]) == 128 * MiB

    api.ok("DELETE", api.pvc_path("net-data"))
    api.wait("the iSCSI PV deleted", lambda: api.get(f"/api/v1/persistentvolumes/{net_name}") is None)
    assert tgtd.targets() == {}

    # Each sidecar did only its own backend's work.
    assert (operations(node, "provision"), operations(central, "provision")) == (1, 1)
    assert (operations(node, "resize"), operations(central, "resize")) == (0, 1)
    assert (operations(node, "delete"), operations(central, "delete")) == (0, 1)
