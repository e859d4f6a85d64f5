"""Each sidecar's RBAC matches what its code calls: every request it makes is granted, and every
granted verb is used, snapshots included. The per-node sidecar (loop volumes, auto-grow) and the controller's central,
leader-elected sidecar (iSCSI volumes, against a real tgtd) are checked separately."""

import os

import yaml

from conftest import NODE, ROOT, TOPOLOGY_KEY, csiconf
from test_backends import iscsi, tgtd  # noqa: F401 (tgtd is a fixture)
from test_capacity import NS, capacities, owned_pod, stale_pair
from test_group_snapshots import group_snapshot_and_delete
from test_sidecar import pv_for, repeated_failure, wait_bound
from test_vac import create_vac
from test_attach import attachment, create_attachment, VA
from test_scheduled_snapshots import P, Clock, scheduled, wait_next, wait_snapshot


def granted(path, role, kind="ClusterRole"):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    rules = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == role)["rules"]
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def snapshot_restore_delete(api, claim_name, handle, sc="swell", size="600Mi", annotations=None):
    """Everything the snapshotter calls: a class naming a secret, a content (whose first write meets a
    conflict, so it is read again), a restore from the VolumeSnapshot, and the content's deletion."""
    api.ok("POST", "/api/v1/namespaces/default/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "snap-secret", "namespace": "default"},
        "data": {"token": "c2VjcmV0"}})
    api.create_snapshot_class("snapclass", params={
        "csi.storage.k8s.io/snapshotter-secret-name": "snap-secret",
        "csi.storage.k8s.io/snapshotter-secret-namespace": "${volumesnapshot.namespace}"})
    api.hook("conflict?resource=volumesnapshotcontents&count=1")
    _, content = api.create_snapshot(f"{claim_name}-snap", claim_name, volume_handle=handle)
    ready = api.wait_content_ready(content["metadata"]["name"])
    api.bind_snapshot(f"{claim_name}-snap", ready)
    restored = api.create_restore_claim(f"{claim_name}-restored", "VolumeSnapshot", f"{claim_name}-snap", size, sc=sc,
                                        annotations=annotations)
    wait_bound(api, f"{claim_name}-restored")
    api.ok("DELETE", api.pvc_path(f"{claim_name}-restored"))
    api.wait("the restored PV deleted", lambda: pv_for(api, restored) is None)
    api.delete_content_as_controller(content["metadata"]["name"])
    api.wait("the content gone", lambda: api.content(content["metadata"]["name"]) is None)


def scheduled_and_pruned(api, clock):
    """Everything the scheduler calls: a claim's VolumeSnapshots and a group's VolumeGroupSnapshots,
    each taken twice with keep 1, so that the first is pruned, and the claims' annotations."""
    policy = {P + "schedule": "@every 10s", P + "keep": "1"}
    api.create_claim("sched", sc="net-fresh", size="64Mi", annotations=policy)
    api.create_claim("grouped", sc="net-fresh", size="64Mi", annotations=policy, labels={P + "group": "g"})
    for name in ("sched", "grouped"):
        wait_bound(api, name)
        wait_next(api, name, "2026-12-06T10:00:10Z")
    clock.set("2026-12-06T10:00:10Z")
    wait_snapshot(api, "sched-20261206-100010")
    clock.set("2026-12-06T10:00:20Z")
    wait_snapshot(api, "sched-20261206-100020")
    api.wait("the first pruned", lambda: set(scheduled(api)) == {"sched-20261206-100020"})
    groups = "/apis/groupsnapshot.storage.k8s.io/v1"
    api.wait("the group's first pruned", lambda: set(scheduled(api, resource="volumegroupsnapshots", group=groups))
             == {"g-20261206-100020"})


def attach_and_detach(api, pv, node):
    """Everything the attacher calls: a VolumeAttachment whose first write meets a conflict (so it
    is read again), attached, then deleted and let go."""
    api.hook("conflict?resource=volumeattachments&count=1")
    va = create_attachment(api, pv["metadata"]["name"], pv["spec"]["csi"]["volumeHandle"], node=node)
    api.wait("attached", lambda: (attachment(api, va["metadata"]["name"]) or {}).get("status", {}).get("attached"))
    api.ok("DELETE", f"{VA}/{va['metadata']['name']}")
    api.wait("the attachment gone", lambda: attachment(api, va["metadata"]["name"]) is None)


def test_node_rbac_matches_the_calls(cluster):
    """Provision (with an attributes class), auto-grow, resize and delete: everything the per-node sidecar does."""
    api = cluster.api
    port = csiconf.free_port()
    cluster.plugin.stop()
    cluster.plugin.start(extra_args=("--metrics-address", f"127.0.0.1:{port}"))
    pod, _ = owned_pod(api)
    api.create_class("swell", binding="WaitForFirstConsumer")
    stale_pair(api, "swell", f"external-provisioner-{NODE}", {TOPOLOGY_KEY: NODE})
    api.create_class("fresh", binding="WaitForFirstConsumer")  # no object yet: one is created
    api.create_node(NODE)
    sidecar = cluster.sidecar("--per-node", "--node-id", NODE, "--autogrow-plugin-address", f"127.0.0.1:{port}",
                              "--autogrow-max-interval", "0.5", "--snapshots", "--group-snapshots", "--enable-capacity",
                              "--attach", "--pod-name", pod, "--pod-namespace", NS)
    create_vac(api, "thin", {"provisioning": "thin"})
    claim = api.create_claim("r", size="400Mi", attributes_class="thin", annotations={
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
    attach_and_detach(api, pv, NODE)
    snapshot_restore_delete(api, "r", pv["spec"]["csi"]["volumeHandle"], annotations={
        "volume.kubernetes.io/selected-node": NODE})
    group_snapshot_and_delete(api, [pv["spec"]["csi"]["volumeHandle"]])
    api.ok("DELETE", api.pvc_path("r"))
    api.wait("the PV deleted", lambda: pv_for(api, claim) is None)
    api.wait("events", lambda: api.events_for("r"))
    repeated_failure(api, sc="swell", annotations={"volume.kubernetes.io/selected-node": NODE}, count=2)

    api.wait("capacity published", lambda: len(capacities(api)) == 2 or None)
    used = {tuple(x) for x in api.hook("audit")}
    path = os.path.join(ROOT, "deploy", "base", "rbac-node.yaml")
    rules = granted(path, "swell-sidecar-node") | granted(path, "swell-sidecar-capacity-node", kind="Role")
    assert used - rules == set(), "calls the role does not grant"
    assert rules - used == set(), "granted but never called"
    assert sidecar.proc.poll() is None


def test_controller_rbac_matches_the_calls(cluster, tgtd):  # noqa: F811
    """Leader election, provisioning for a WaitForFirstConsumer claim (the node's CSINode and
    labels), resize and delete: everything the central sidecar does."""
    api = cluster.api
    cluster.plugin.stop()
    cluster.plugin.start(extra_args=tgtd.plugin_args(os.path.join(cluster.root, "iscsi")))
    api.create_node("worker-1")
    pod, _ = owned_pod(api, central=True)
    api.create_class("net", binding="WaitForFirstConsumer", params={"backend": "iscsi"})
    stale_pair(api, "net", "external-provisioner", None)
    api.create_class("net-fresh", params={"backend": "iscsi"})  # no object yet: one is created
    clock = Clock(cluster.root, "2026-12-06T10:00:01Z")
    sidecar = cluster.sidecar("--backend", "iscsi", "--leader-election", "--leader-election-namespace", "swell-system",
                              "--leader-election-lease-duration", "3", "--leader-election-renew-deadline", "2",
                              "--leader-election-retry-period", "0.3", "--snapshots", "--group-snapshots", "--enable-capacity",
                              "--attach", "--nodes-file", os.path.join(cluster.root, "nodes"),
                              "--pod-name", pod, "--pod-namespace", NS, "--scheduled-snapshots",
                              "--schedule-clock-file", clock.path)
    create_vac(api, "thin", {"provisioning": "thin"})
    claim = api.create_claim("c", sc="net", size="64Mi", attributes_class="thin",
                             annotations={"volume.kubernetes.io/selected-node": "worker-1"})
    pv = wait_bound(api, "c") and pv_for(api, claim)
    assert "nodeAffinity" not in pv["spec"]
    api.update_claim("c", lambda c: c["spec"]["resources"]["requests"].update(storage="96Mi"))
    api.wait("the PV grown", lambda: pv_for(api, claim)["spec"]["capacity"]["storage"] == "96Mi")
    attach_and_detach(api, pv, "worker-1")
    snapshot_restore_delete(api, "c", pv["spec"]["csi"]["volumeHandle"], sc="net", size="96Mi",
                            annotations={"volume.kubernetes.io/selected-node": "worker-1"})
    group_snapshot_and_delete(api, [pv["spec"]["csi"]["volumeHandle"]])
    api.ok("DELETE", api.pvc_path("c"))
    api.wait("the PV deleted", lambda: pv_for(api, claim) is None)
    repeated_failure(api, sc="net", annotations={"volume.kubernetes.io/selected-node": "worker-1"}, count=2)
    scheduled_and_pruned(api, clock)
    assert api.get("/apis/coordination.k8s.io/v1/namespaces/swell-system/leases/swell-csi-dev-sidecar")
    api.wait("a lease renewal", lambda: ["coordination.k8s.io", "leases", "update"] in api.hook("audit"))

    path = os.path.join(ROOT, "deploy", "base", "rbac-controller.yaml")
    api.wait("capacity published", lambda: len(capacities(api)) == 2 or None)
    used = {tuple(x) for x in api.hook("audit")}
    rules = (granted(path, "swell-sidecar-controller") | granted(path, "swell-sidecar-leader", kind="Role")
             | granted(path, "swell-sidecar-capacity-controller", kind="Role"))
    assert used - rules == set(), "calls the roles do not grant"
    assert rules - used == set(), "granted but never called"
    assert sidecar.proc.poll() is None
