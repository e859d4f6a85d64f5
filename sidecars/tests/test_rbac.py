"""The per-node sidecar's RBAC matches what its code calls: every request it makes is granted, and
every granted verb is used."""

import os

import yaml

from conftest import NODE, ROOT, csiconf
from test_sidecar import pv_for, wait_bound


def granted(path, role):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    rules = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == role)["rules"]
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_node_rbac_matches_the_calls(cluster):
    """Provision, auto-grow, resize and delete: everything the per-node sidecar does."""
    api = cluster.api
    port = csiconf.free_port()
    cluster.plugin.stop()
    cluster.plugin.start(extra_args=("--metrics-address", f"127.0.0.1:{port}"))
    sidecar = cluster.sidecar("--per-node", "--node-id", NODE, "--autogrow-plugin-address", f"127.0.0.1:{port}",
                              "--autogrow-max-interval", "0.5")
    api.create_class("swell", binding="WaitForFirstConsumer")
    claim = api.create_claim("r", size="400Mi", annotations={
        "volume.kubernetes.io/selected-node": NODE, "autogrow.swell.dev/enabled": "true",
        "autogrow.swell.dev/threshold": "99%", "autogrow.swell.dev/max": "600Mi"})
    pv = wait_bound(api, "r") and pv_for(api, claim)
    staging = cluster.stage(pv["spec"]["csi"]["volumeHandle"], "r")
    try:
        # The policy's 99% threshold trips at once: auto-grow raises the request, the resizer grows.
        api.wait("resize", lambda: api.get(api.pvc_path("r"))["status"].get("allocatedResourceStatuses"))
        assert api.get(api.pvc_path("r"))["spec"]["resources"]["requests"]["storage"] == "600Mi"
    finally:
        cluster.unstage(pv["spec"]["csi"]["volumeHandle"], staging)
    api.ok("DELETE", api.pvc_path("r"))
    api.wait("the PV deleted", lambda: pv_for(api, claim) is None)
    api.wait("events", lambda: api.events_for("r"))

    used = {tuple(x) for x in api.hook("audit")}
    rules = granted(os.path.join(ROOT, "deploy", "base", "rbac-node.yaml"), "swell-sidecar-node")
    assert used - rules == set(), "calls the role does not grant"
    assert rules - used == set(), "granted but never called"
    assert sidecar.proc.poll() is None
