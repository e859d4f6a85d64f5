"""The per-node sidecar's RBAC matches what its code calls: every request it makes is granted, and
every granted verb is used."""

import os

import yaml

from conftest import NODE, ROOT
from test_sidecar import pv_for, wait_bound


def granted(path, role):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    rules = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == role)["rules"]
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_node_rbac_matches_the_calls(cluster):
    api = cluster.api
    sidecar = cluster.sidecar("--per-node", "--node-id", NODE)
    api.create_class("swell", binding="WaitForFirstConsumer")
    claim = api.create_claim("r", annotations={"volume.kubernetes.io/selected-node": NODE})
    wait_bound(api, "r")
    # A resize (status writes, PV update, PVC re-read) and a delete (PV delete, finalizer removal).
    api.update_claim("r", lambda c: c["spec"]["resources"]["requests"].update(storage="2Gi"))
    api.wait("resize", lambda: api.get(api.pvc_path("r"))["status"].get("allocatedResourceStatuses"))
    api.ok("DELETE", api.pvc_path("r"))
    api.wait("the PV deleted", lambda: pv_for(api, claim) is None)
    api.wait("events", lambda: api.events_for("r"))

    used = {tuple(x) for x in api.hook("audit")}
    rules = granted(os.path.join(ROOT, "deploy", "base", "rbac-node.yaml"), "swell-sidecar-node")
    assert used - rules == set(), "calls the role does not grant"
    assert rules - used == set(), "granted but never called"
    assert sidecar.proc.poll() is None
