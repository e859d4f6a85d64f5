"""The multi-node tier: three real nodes (each its own kubelet and containerd in its own namespaces)
on one control plane, Swell installed from the dev overlay unchanged, driven as a user drives a
cluster: a StatefulSet spread over the nodes, claims that must wait for a node, two pods that want
one ReadWriteOnce volume from two nodes, a node lost while it holds a volume, a drain, a rolling
update of the node plugin, a node that loses power, and two controller replicas whose leader is
killed in the middle of provisioning (with the rbd overlay and a real Ceph cluster). Before them,
the soak: a database's whole life (cluster/soak.py).

The tests run in this file's order on one cluster. This machine's kernel has no iSCSI initiator, so
a node here cannot stage an iSCSI volume: for those, the attach side is checked (VolumeAttachments,
the target's ACL through an independent initiator, the Multi-Attach event); the data side of a
fence runs in the VM tier.
"""
import os
import signal
import subprocess
import time

import yaml

from conftest import NAMESPACE, rendered_overlay, restarts
from kube import wait_for
import nodes
import rbd_install
import soak

MiB, GiB = 1 << 20, 1 << 30
DRIVER = "swell.csi.dev"
IQN_PREFIX = "iqn.2026-11.dev.swell"
N1, N2, N3 = "swell-n1", "swell-n2", "swell-n3"
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute"
# The shipped swell-iscsi class asks for CHAP (deploy/examples/iscsi-chap); these flows check the
# ACL alone, with a class of their own.
ISCSI = "iscsi-plain"


def apply(c, *docs):
    c.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def claim(name, size, sc="swell-local"):
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}},
                     "storageClassName": sc}}


def pod_spec(claim_name, node=None, command=None, avoid=()):
    """A host-network pod spec with the claim at /data, on `node` when given, never on `avoid`."""
    spec = {"hostNetwork": True, "terminationGracePeriodSeconds": 2, "automountServiceAccountToken": False,
            "containers": [{"name": "app", "image": "swell-test/postgres:15", "imagePullPolicy": "Never",
                            "command": command or ["/bin/bash", "-c", "trap 'exit 0' TERM; sleep infinity & wait"],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim_name}}],
            # A node that dies must give its pods up at once, not after the default 300 s.
            "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": 2},
                            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": 2}]}
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    if avoid:
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn", "values": list(avoid)}]}]}}}
    return spec


def pod(name, claim_name, node=None, avoid=()):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": pod_spec(claim_name, node, avoid=avoid)}


def deployment(name, claim_name, avoid=()):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": pod_spec(claim_name, avoid=avoid)}}}


def pods_of(c, app):
    return [p for p in c.get("pods", "-n", "default", "-l", f"app={app}")["items"]
            if not p["metadata"].get("deletionTimestamp")]


def running_pod(c, app, timeout=180, node=None):
    def check():
        for p in pods_of(c, app):
            if p["status"].get("phase") == "Running" and (node is None or p["spec"].get("nodeName") == node):
                return p
    try:
        return wait_for(f"a Running pod of {app}" + (f" on {node}" if node else ""), check, timeout=timeout)
    except TimeoutError:
        ev = c.kubectl("get", "events", "-n", "default", "--sort-by=.lastTimestamp", check=False).stdout[-3000:]
        raise AssertionError(f"no Running pod of {app}:\n{ev}") from None


def sh(c, pod_name, script):
    r = c.kubectl("exec", "-n", "default", pod_name, "--", "/bin/bash", "-c", script, check=False, timeout=300)
    assert r.returncode == 0, f"in {pod_name}: {script}: exit {r.returncode}: {r.stderr}"
    return r.stdout


def write_and_hash(c, pod_name, name="f", mib=8):
    return sh(c, pod_name, f"head -c {mib}M /dev/urandom > /data/{name} && sync && sha256sum < /data/{name}").split()[0]


def hash_of(c, pod_name, name="f"):
    return sh(c, pod_name, f"sha256sum < /data/{name}").split()[0]


def attachments(c, pv_name):
    return [va for va in c.get("volumeattachments")["items"] if va["spec"]["source"].get("persistentVolumeName") == pv_name]


def pv_of(c, claim_name):
    pvc = c.get("pvc", claim_name, "-n", "default")
    return c.get("pv", pvc["spec"]["volumeName"]) if pvc and pvc["spec"].get("volumeName") else None


def events(c, name, reason=None):
    items = c.get("events", "-n", "default", "--field-selector", f"involvedObject.name={name}")["items"]
    return [e for e in items if reason is None or e["reason"] == reason]


def controller_pod(c):
    return next(p for p in c.get("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/name=swell-controller")["items"]
                if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running")


def target_acl(c, handle):
    """The ACL of a volume's iSCSI target, as tgtd on the storage host shows it."""
    out = c.kubectl("exec", "-n", NAMESPACE, controller_pod(c)["metadata"]["name"], "-c", "tgtd", "--",
                    "tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show").stdout
    block = out.split(f": {IQN_PREFIX}:{handle}\n", 1)[1].split("\nTarget ", 1)[0]
    return block.split("ACL information:", 1)[1].split()


def initiator(node):
    return f"{IQN_PREFIX}.node:{node}"


def reads_as(node, handle):
    """The LUN's size as an independent initiator on the host (libiscsi) logging in as `node`'s
    initiator, through the bridge to the storage host's portal; None when refused."""
    out = subprocess.run(["iscsi-readcapacity16", "-i", initiator(node),
                          f"iscsi://{nodes.SUBNET}.11:3260/{IQN_PREFIX}:{handle}/1"],
                         capture_output=True, text=True, timeout=30)
    for line in out.stdout.splitlines():
        if line.startswith("Total size:"):
            return int(line.split(":")[1])
    return None


def no_restarts(c):
    found = restarts(c)
    assert not found, f"containers restarted in {NAMESPACE}: {found}"


# ---------------------------------------------------------------------------------------------

def test_three_nodes_come_up_with_the_plugin_on_each(multi):
    c = multi
    wait_for("the node DaemonSet on three nodes", lambda: c.get("daemonset", "swell-node", "-n", NAMESPACE)["status"]
             .get("numberReady") == 3, timeout=180)
    wait_for("the controller Available", lambda: any(
        x["type"] == "Available" and x["status"] == "True"
        for x in c.get("deployment", "swell-controller", "-n", NAMESPACE)["status"].get("conditions", [])), 120)
    for n in c.nodes:
        csinode = wait_for(f"{n.name}'s CSINode", lambda n=n: (lambda x: x if x and x["spec"].get("drivers") else None)(
            c.get("csinode", n.name)), 60)
        assert [(d["name"], d["nodeID"]) for d in csinode["spec"]["drivers"]] == [(DRIVER, n.name)]
    assert controller_pod(c)["spec"]["nodeName"] == N1
    apply(c, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": ISCSI},
              "provisioner": DRIVER, "parameters": {"backend": "iscsi"}, "volumeBindingMode": "Immediate",
              "allowVolumeExpansion": True, "reclaimPolicy": "Delete"})
    driver = c.get("csidriver", DRIVER)
    assert driver["spec"]["attachRequired"] is True
    no_restarts(c)


def test_soak_a_databases_whole_life(multi):
    """Issue 38's soak (cluster/soak.py): PostgreSQL on node 2 through auto-grow, scheduled snapshots,
    a restore drill, its node plugin and the controller deleted, a grow by hand, an upgrade, and node
    3 drained and brought back, under a ledger writer and pgbench. SWELL_SOAK_MINUTES makes it longer;
    SWELL_SOAK_FAULT (ledger, restore) breaks one check on purpose; SWELL_SOAK_REPORT names where its
    report goes."""
    c = multi
    site = soak.Site(N2, c.node(N2).ip, N3, lambda node, argv: c.node(node).run(*argv, check=False),
                     lambda src, dst: [n.ctr("images", "tag", "--force", src, dst) for n in c.nodes])
    report = os.environ.get("SWELL_SOAK_REPORT", os.path.join(c.dir, "soak"))
    soak.run(c, site, minutes=float(os.environ.get("SWELL_SOAK_MINUTES", "0")),
             fault=os.environ.get("SWELL_SOAK_FAULT", ""), report=report)
    no_restarts(c)


def test_a_statefulset_spreads_its_volumes_one_per_node(multi):
    """Flow b: PostgreSQL three times, required anti-affinity; each volume is made on the node its
    pod was scheduled to, its PV's nodeAffinity names that node, and each database answers."""
    c = multi
    script = ("set -e; mkdir -p /data/pg; chown postgres:postgres /data/pg; chmod 700 /data/pg; "
              "[ -f /data/pg/PG_VERSION ] || runuser -u postgres -- initdb -D /data/pg -A trust -U postgres >/dev/null; "
              "exec runuser -u postgres -- postgres -D /data/pg -p 55432 -c listen_addresses=127.0.0.1 "
              "-c unix_socket_directories=/tmp -c shared_buffers=32MB")
    spec = pod_spec("unused", command=["/bin/bash", "-c", script])
    spec["volumes"] = []
    spec["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "pg"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    apply(c, {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "pg", "namespace": "default"},
              "spec": {"serviceName": "pg", "replicas": 3, "selector": {"matchLabels": {"app": "pg"}},
                       "template": {"metadata": {"labels": {"app": "pg"}}, "spec": spec},
                       "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                           "accessModes": ["ReadWriteOnce"], "storageClassName": "swell-local",
                           "resources": {"requests": {"storage": "256Mi"}}}}]}})
    wait_for("three PostgreSQL pods Running", lambda: len([p for p in pods_of(c, "pg")
                                                          if p["status"].get("phase") == "Running"]) == 3, 300)
    seen = set()
    for p in pods_of(c, "pg"):
        node = p["spec"]["nodeName"]
        seen.add(node)
        pv = pv_of(c, f"data-{p['metadata']['name']}")
        term = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
        assert term["key"] == f"topology.{DRIVER}/node" and term["values"] == [node], (p["metadata"]["name"], term)
        va = attachments(c, pv["metadata"]["name"])
        assert [v["spec"]["nodeName"] for v in va] == [node] and va[0]["status"]["attached"] is True
        wait_for(f"PostgreSQL on {node}", lambda p=p: c.kubectl(
            "exec", "-n", "default", p["metadata"]["name"], "--", "pg_isready", "-h", "127.0.0.1", "-p", "55432",
            check=False).returncode == 0, 90)
    assert seen == {N1, N2, N3}
    no_restarts(c)


def test_a_second_node_waits_for_a_readwriteonce_iscsi_volume(multi):
    """Flow d: one RWO iSCSI claim, a pod on node 2, then a pod on node 3. The second waits with
    the Multi-Attach event, no VolumeAttachment is made for node 3, and the target admits node 2's
    initiator alone: an independent initiator on the host logging in as node 3 is refused."""
    c = multi
    apply(c, claim("shared", "64Mi", sc=ISCSI), pod("first", "shared", node=N2))
    pv = wait_for("the iSCSI PV", lambda: pv_of(c, "shared"), 60)
    handle = pv["spec"]["csi"]["volumeHandle"]
    va = wait_for("node 2's attachment attached", lambda: next((
        v for v in attachments(c, pv["metadata"]["name"]) if v["status"].get("attached")), None), 90)
    assert va["spec"]["nodeName"] == N2
    assert va["status"]["attachmentMetadata"] == {"node": N2, "initiator": initiator(N2)}
    assert target_acl(c, handle) == [initiator(N2)]
    apply(c, pod("second", "shared", node=N3))
    multi_attach = wait_for("the Multi-Attach event", lambda: next((
        e for e in events(c, "second", "FailedAttachVolume") if "Multi-Attach" in e["message"]), None), 60)
    assert "first" in multi_attach["message"]
    time.sleep(5)
    assert [v["spec"]["nodeName"] for v in attachments(c, pv["metadata"]["name"])] == [N2], "none for node 3"
    assert target_acl(c, handle) == [initiator(N2)]
    assert reads_as(N3, handle) is None, "node 3's initiator is refused"
    assert reads_as(N2, handle) == 64 * MiB
    assert c.get("pod", "second", "-n", "default")["status"]["phase"] == "Pending"
    # The first goes: the volume is detached from node 2, then attached to node 3.
    c.kubectl("delete", "pod", "first", "-n", "default", "--wait=true", "--timeout=90s")
    wait_for("node 3's attachment attached", lambda: [v["spec"]["nodeName"] for v in attachments(c, pv["metadata"]["name"])
                                                      if v["status"].get("attached")] == [N3], 180)
    assert target_acl(c, handle) == [initiator(N3)]
    assert reads_as(N2, handle) is None
    c.kubectl("delete", "pod", "second", "-n", "default", "--wait=true", "--timeout=90s")
    wait_for("no attachment left", lambda: not attachments(c, pv["metadata"]["name"]), 180)
    assert target_acl(c, handle) == []
    c.kubectl("delete", "pvc", "shared", "-n", "default", "--wait=true", "--timeout=90s")
    wait_for("the PV gone", lambda: c.get("pv", pv["metadata"]["name"]) is None, 90)


def test_a_node_lost_while_it_holds_a_volume_is_fenced(multi):
    """Flow e: a Deployment's pod holds an iSCSI volume on node 2; node 2's kubelet and containerd
    are SIGKILLed (its containers keep running, as on a node cut off). The node goes NotReady; the
    operator taints it out-of-service; the attachment goes at once, ControllerUnpublishVolume takes
    node 2 out of the target's ACL (its sessions ended), and the pod is made again on node 3 and
    attached there."""
    c = multi
    # Node 1 is the storage host, kept out of it; node 3 is cordoned until the pod is on node 2.
    c.kubectl("cordon", N3)
    try:
        apply(c, claim("db", "64Mi", sc=ISCSI), deployment("db", "db", avoid=(N1,)))
        pv = wait_for("the iSCSI PV", lambda: pv_of(c, "db"), 60)
        handle = pv["spec"]["csi"]["volumeHandle"]
        wait_for("attached to node 2", lambda: [v["spec"]["nodeName"] for v in attachments(c, pv["metadata"]["name"])
                                                if v["status"].get("attached")] == [N2], 120)
    finally:
        c.kubectl("uncordon", N3)
    assert target_acl(c, handle) == [initiator(N2)]
    n2 = c.node(N2)
    n2.kill("kubelet", "containerd")
    t0 = time.monotonic()
    try:
        wait_for("node 2 NotReady", lambda: not c.node_ready(N2), 90)
        c.kubectl("taint", "node", N2, OUT_OF_SERVICE)
        tainted = time.monotonic()
        wait_for("node 2's attachment gone", lambda: N2 not in [v["spec"]["nodeName"] for v in attachments(
            c, pv["metadata"]["name"])], 120)
        detached = time.monotonic() - tainted
        assert N2 not in "".join(target_acl(c, handle)), "node 2 is fenced out of the target"
        assert reads_as(N2, handle) is None
        wait_for("attached to node 3", lambda: [v["spec"]["nodeName"] for v in attachments(c, pv["metadata"]["name"])
                                                if v["status"].get("attached")] == [N3], 180)
        assert target_acl(c, handle) == [initiator(N3)]
        print(f"node lost: NotReady and tainted after {tainted - t0:.1f} s; detached {detached:.1f} s after the taint")
    finally:
        n2.kill("kubelet", "containerd")
        n2.start_containerd()
        n2.start_kubelet()
        wait_for("node 2 Ready again", lambda: c.node_ready(N2), 120)
        c.kubectl("taint", "node", N2, OUT_OF_SERVICE.split("=")[0] + ":NoExecute-", check=False)
    c.kubectl("delete", "deployment", "db", "-n", "default", "--wait=true", "--timeout=90s")
    wait_for("no attachment left", lambda: not attachments(c, pv["metadata"]["name"]), 180)
    c.kubectl("delete", "pvc", "db", "-n", "default", "--wait=true", "--timeout=90s")
    wait_for("the PV gone", lambda: c.get("pv", pv["metadata"]["name"]) is None, 90)
    wait_for("the node DaemonSet on three nodes again", lambda: c.get("daemonset", "swell-node", "-n", NAMESPACE)[
        "status"].get("numberReady") == 3, 180)


def test_the_scheduler_puts_a_claim_only_where_its_pool_can_hold_it(multi):
    """Flow a: node 3's pool is a 400 MiB filesystem, the others the host's disk. Each node publishes
    its own CSIStorageCapacity; a 1 GiB WaitForFirstConsumer claim whose pod may go anywhere but
    node 1 lands on node 2, and one that must go to node 3 is refused there by the scheduler."""
    c = multi
    def caps():
        found = {}
        for o in c.get("csistoragecapacities", "-n", NAMESPACE)["items"]:
            if o["storageClassName"] == "swell-local" and o.get("nodeTopology"):
                found[o["nodeTopology"]["matchLabels"][f"topology.{DRIVER}/node"]] = o.get("capacity")
        return found if set(found) == {N1, N2, N3} else None
    found = wait_for("capacity from every node", caps, 120)
    small = _quantity(found[N3])
    assert small < 400 * MiB and _quantity(found[N2]) > 2 * GiB, found
    apply(c, claim("big", "1Gi"), pod("big", "big", avoid=(N1,)),
          claim("big3", "1Gi"), pod("big3", "big3", node=N3),
          claim("small3", "64Mi"), pod("small3", "small3", node=N3))
    placed = running_pod(c, "big")
    assert placed["spec"]["nodeName"] == N2, "node 3's pool cannot hold 1 GiB"
    running_pod(c, "small3", node=N3)
    refused = wait_for("the scheduler's refusal on node 3", lambda: next((
        e for e in events(c, "big3", "FailedScheduling") if "did not have enough free storage" in e["message"]), None), 90)
    assert c.get("pvc", "big3", "-n", "default")["status"]["phase"] == "Pending", refused
    for name in ("big", "big3", "small3"):
        c.kubectl("delete", "pod", name, "-n", "default", "--wait=true", "--timeout=90s")
        c.kubectl("delete", "pvc", name, "-n", "default", "--wait=true", "--timeout=90s")
    wait_for("their PVs gone", lambda: not [pv for pv in c.get("pv")["items"]
                                          if pv["spec"]["claimRef"]["name"] in ("big", "big3", "small3")], 120)


def _quantity(text):
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    for suffix, mult in units.items():
        if text.endswith(suffix):
            return int(float(text[:-2]) * mult)
    return int(text)


def test_a_drain_leaves_a_local_volume_waiting_for_its_node(multi):
    """Flow c: `kubectl drain` of node 2 while a StatefulSet pod holds a local volume there: the pod
    is evicted and made again, and waits (Pending, with the scheduler's reason) since its volume
    lives on node 2; uncordoned, it runs there again with its data."""
    c = multi
    spec = pod_spec("unused")
    spec["volumes"] = []
    spec["nodeSelector"] = {"kubernetes.io/hostname": N2}
    apply(c, {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "keep", "namespace": "default"},
              "spec": {"serviceName": "keep", "replicas": 1, "selector": {"matchLabels": {"app": "keep"}},
                       "template": {"metadata": {"labels": {"app": "keep"}}, "spec": spec},
                       "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                           "accessModes": ["ReadWriteOnce"], "storageClassName": "swell-local",
                           "resources": {"requests": {"storage": "128Mi"}}}}]}})
    first = running_pod(c, "keep", node=N2)
    digest = write_and_hash(c, first["metadata"]["name"])
    # Unpin it: only the volume now holds it to node 2.
    c.kubectl("patch", "statefulset", "keep", "-n", "default", "--type=json",
              "-p", '[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]')
    c.kubectl("drain", N2, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=120s", timeout=180)
    try:
        def waiting():
            for p in pods_of(c, "keep"):
                if p["status"].get("phase") == "Pending":
                    for e in events(c, p["metadata"]["name"], "FailedScheduling"):
                        if "volume node affinity conflict" in e["message"] or "unschedulable" in e["message"]:
                            return e
        e = wait_for("the pod waiting for node 2, and saying why", waiting, 120)
        assert "node affinity" in e["message"], e["message"]
    finally:
        c.kubectl("uncordon", N2)
    again = running_pod(c, "keep", node=N2)
    assert hash_of(c, again["metadata"]["name"]) == digest
    c.kubectl("delete", "statefulset", "keep", "-n", "default", "--wait=true", "--timeout=90s")
    c.kubectl("delete", "pvc", "data-keep-0", "-n", "default", "--wait=true", "--timeout=90s")


def test_a_rolling_update_of_the_node_plugin_keeps_every_mount(multi):
    """Flow f: the PostgreSQL StatefulSet of flow b runs on all three nodes; the node DaemonSet is
    rolled (`kubectl rollout restart`), one node at a time. Every database keeps its mount and
    answers throughout, its data intact, and no container restarts."""
    c = multi
    wait_for("three databases Running and ready", lambda: len([
        p for p in pods_of(c, "pg") if p["status"].get("phase") == "Running"
        and all(s.get("ready") for s in p["status"].get("containerStatuses", []))]) == 3, 300)
    pods = {p["metadata"]["name"]: p for p in pods_of(c, "pg")}
    digests = {name: write_and_hash(c, name, "before") for name in pods}
    old = {p["metadata"]["name"] for p in c.get("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/name=swell-node")["items"]}
    c.kubectl("rollout", "restart", "daemonset/swell-node", "-n", NAMESPACE)
    c.kubectl("rollout", "status", "daemonset/swell-node", "-n", NAMESPACE, "--timeout=300s", timeout=320)
    wait_for("the old plugin pods gone", lambda: not old & {
        p["metadata"]["name"] for p in c.get("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/name=swell-node")["items"]},
        120)
    for name in pods:
        assert hash_of(c, name, "before") == digests[name]
        write_and_hash(c, name, "after")
        assert c.kubectl("exec", "-n", "default", name, "--", "pg_isready", "-h", "127.0.0.1", "-p", "55432",
                         check=False).returncode == 0
    assert {p["metadata"]["uid"] for p in pods_of(c, "pg")} == {p["metadata"]["uid"] for p in pods.values()}
    no_restarts(c)


def test_a_node_that_loses_power_comes_back_with_its_volumes(multi):
    """Flow h: node 3 stops whole, as after a power cut: every process, mount and loop device of
    it gone. Started again (new namespaces, the same disk), kubelet brings its pods back, their
    local volumes are staged again from their publications, and their data is intact."""
    c = multi
    pod3 = next(p for p in pods_of(c, "pg") if p["spec"]["nodeName"] == N3)
    name = pod3["metadata"]["name"]
    digest = write_and_hash(c, name, "power")
    handle = pv_of(c, f"data-{name}")["spec"]["csi"]["volumeHandle"]
    n3 = c.node(N3)
    n3.stop(graceful=False)
    assert handle not in open("/proc/self/mountinfo").read()
    # Detached at the stop; the kernel lets each go once the namespace's mounts are released.
    try:
        wait_for("no loop device of node 3 left", lambda: nodes.loops_under(n3.dir) == [], 30)
    except TimeoutError:
        left = {dev: nodes.loop_holders(dev) for dev in nodes.loops_under(n3.dir)}
        raise AssertionError(f"loop devices of node 3 still held after its power cut: {left}") from None
    wait_for("node 3 NotReady", lambda: not c.node_ready(N3), 90)
    n3.restart()
    wait_for("node 3 Ready", lambda: c.node_ready(N3), 120)
    def back():
        # The status from before the cut can still say Running: the container answering is the test.
        for p in pods_of(c, "pg"):
            if p["spec"]["nodeName"] == N3 and any(
                    x["type"] == "Ready" and x["status"] == "True" for x in p["status"].get("conditions", [])):
                ok = c.kubectl("exec", "-n", "default", p["metadata"]["name"], "--", "true", check=False).returncode == 0
                return p if ok else None
    wait_for("node 3's database back", back, 300)
    assert hash_of(c, name, "power") == digest
    wait_for("PostgreSQL on node 3 again", lambda: c.kubectl(
        "exec", "-n", "default", name, "--", "pg_isready", "-h", "127.0.0.1", "-p", "55432", check=False).returncode == 0, 120)
    wait_for("the node DaemonSet on three nodes", lambda: c.get("daemonset", "swell-node", "-n", NAMESPACE)[
        "status"].get("numberReady") == 3, 180)
    c.kubectl("delete", "statefulset", "pg", "-n", "default", "--wait=true", "--timeout=120s")
    for i in range(3):
        c.kubectl("delete", "pvc", f"data-pg-{i}", "-n", "default", "--wait=true", "--timeout=120s")
    wait_for("every PV gone", lambda: not c.get("pv")["items"], 180)


def test_two_controller_replicas_and_the_leader_killed_in_the_middle_of_provisioning(multi):
    """Flow g: the rbd overlay's controller, two replicas on two storage hosts (nodes 1 and 2), a
    real Ceph cluster behind them. The leader's plugin is held inside CreateVolume just after it
    made the image (a failpoint: `rbd-create-after-create:pause=30`, on both replicas); there the
    leader's sidecar and plugin are SIGKILLed. Once the lease lapses a new sidecar takes it (the
    other replica's, or the killed pod's restarted one: whichever asks first), the claim is
    provisioned once with the one image, and deleting the claim leaves the pool empty."""
    c = multi
    cl, key = rbd_install.start_ceph(nodes.API_IP)
    dev = next(d for d in yaml.safe_load_all(rendered_overlay()) if d and d["kind"] == "Deployment")
    image = dev["spec"]["template"]["spec"]["containers"][0]["image"]
    c.kubectl("label", "node", N2, "swell.csi.dev/storage-host=true")
    try:
        before = rbd_install.lease_holder(c)
        c.kubectl("apply", "-f", "-", input=rbd_install.rendered(cl.monitors, key, image, replicas=2,
                                                                  failpoints="rbd-create-after-create:pause=30"))
        wait_for("two controller replicas on nodes 1 and 2", lambda: sorted(
            p["spec"].get("nodeName", "") for p in c.get("pods", "-n", NAMESPACE, "-l",
                                                         "app.kubernetes.io/name=swell-controller")["items"]
            if not p["metadata"].get("deletionTimestamp") and all(
                s.get("ready") for s in p["status"].get("containerStatuses", [{}]))) == [N1, N2], 240)
        wait_for("a new replica holding the lease", lambda: rbd_install.lease_holder(c) not in ("", before), 120)
        killed_identity = rbd_install.lease_holder(c)
        # The leader's pod: the one whose sidecar logged that identity.
        leader_pod = rbd_install.leader_pod(c, NAMESPACE, killed_identity)
        leader = leader_pod["spec"]["nodeName"]
        apply(c, claim("ha", "64Mi", sc="swell-rbd"))
        made = wait_for("the leader's image in the pool", lambda: rbd_install.images(cl), 120)
        assert len(made) == 1 and pv_of(c, "ha") is None
        killed = [pid for pid in c.node(leader).processes() if is_controller_process(pid)]
        assert len(killed) == 2, f"the leader's sidecar and plugin on {leader}: {killed}"
        restarts_before = pod_restarts(leader_pod)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        pv = wait_for("the claim bound", lambda: pv_of(c, "ha"), 180)
        # The lease lapses and the first sidecar to ask after it takes it: the other replica's, or
        # the killed one's container that kubelet restarted; either way a new holder.
        holder = rbd_install.lease_holder(c)
        print(f"leader on {leader} killed mid-provision; bound {time.monotonic() - t0:.1f} s later, "
              f"the lease now {holder}")
        assert holder not in ("", killed_identity)
        wait_for("the leader's pod restarting what was killed", lambda: pod_restarts(
            c.get("pod", leader_pod["metadata"]["name"], "-n", NAMESPACE)) >= restarts_before + 2, 60)
        handle = pv["spec"]["csi"]["volumeHandle"]
        assert rbd_install.images(cl) == [f"swell-vol-{handle}"], "one image, the PV's, and nothing duplicated"
        assert len(events(c, "ha", "ProvisioningSucceeded")) == 1
        c.kubectl("delete", "pvc", "ha", "-n", "default", "--wait=true", "--timeout=90s")
        wait_for("the PV gone", lambda: c.get("pv", pv["metadata"]["name"]) is None, 120)
        assert rbd_install.images(cl) == [], "nothing leaked in the pool"
    finally:
        c.kubectl("delete", "pvc", "ha", "-n", "default", "--wait=true", "--timeout=90s", check=False)
        # The dev overlay's controller again, one replica, on node 1.
        c.kubectl("label", "node", N2, "swell.csi.dev/storage-host-", check=False)
        c.kubectl("apply", "-f", "-", input=yaml.safe_dump(dev))
        c.kubectl("delete", "storageclass", "swell-rbd", check=False)
        c.kubectl("delete", "secret", "swell-ceph", "-n", NAMESPACE, check=False)
        cl.stop()


def pod_restarts(pod):
    return sum(s.get("restartCount", 0) for s in pod["status"].get("containerStatuses", []))


def is_controller_process(pid):
    """The controller pod's sidecar or plugin (the node pod's run with --per-node, --mode=node)."""
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return ("sidecar" in argv and "--leader-election" in argv) or ("plugin" in argv and "--mode=controller" in argv)
