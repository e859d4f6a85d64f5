"""Ceph RBD for the multi-node tier: a private Ceph cluster on the bridge's address (the same
harness as the rbd conformance tests, conformance/ceph.py), and the rbd overlay's controller
Deployment, Secret and class as `kubectl kustomize deploy/overlays/rbd` renders them, with only
what a user fills in changed: the monitors, the client's key, the image. This host kernel has no
rbd, so nothing here maps an image: the controller's side (provision, delete) is what runs."""
import os
import subprocess
import sys

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conformance"))
import ceph  # noqa: E402

OVERLAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "overlays", "rbd")
POOL = "kubernetes"  # the overlay's --rbd-pool and its class's pool
USER = "swell"       # the overlay's --rbd-user and its Secret's userID
LEASE = "swell-csi-dev-sidecar"


def start_ceph(address):
    """A Ceph cluster listening on `address`, with the overlay's pool and client; returns it and
    the client's key."""
    cluster = ceph.Cluster(address=address).start()
    try:
        cluster.create_pool(POOL)
        return cluster, cluster.create_user(USER, POOL)
    except BaseException:
        cluster.stop()
        raise


def rendered(monitors, key, image, replicas=1, failpoints=None):
    """The overlay's controller Deployment, Secret and StorageClass, filled in."""
    out = subprocess.run(["kubectl", "kustomize", OVERLAY], capture_output=True, text=True, check=True).stdout
    wanted = {("Deployment", "swell-controller"), ("Secret", "swell-ceph"), ("StorageClass", "swell-rbd")}
    docs = [d for d in yaml.safe_load_all(out) if d and (d["kind"], d["metadata"]["name"]) in wanted]
    assert len(docs) == len(wanted), f"the rbd overlay no longer renders {wanted}"
    for d in docs:
        if d["kind"] == "Secret":
            d["stringData"]["userKey"] = key
        if d["kind"] == "Deployment":
            d["spec"]["replicas"] = replicas
            for c in d["spec"]["template"]["spec"]["containers"]:
                c["image"], c["imagePullPolicy"] = image, "Never"
                c["args"] = [f"--rbd-monitors={monitors}" if a.startswith("--rbd-monitors=") else a for a in c["args"]]
                if c["name"] == "swell" and failpoints:
                    c.setdefault("env", []).append({"name": "SWELL_FAILPOINTS", "value": failpoints})
    return yaml.safe_dump_all(docs)


def images(cluster):
    """The images in the pool."""
    out = cluster.run("rbd", "ls", "--format", "json", POOL).stdout
    return sorted(yaml.safe_load(out) or [])


def lease_holder(c):
    lease = c.get("lease", LEASE, "-n", "swell-system")
    return (lease or {}).get("spec", {}).get("holderIdentity", "")


def leader_pod(c, namespace, identity):
    """The controller pod whose sidecar took the lease as `identity`, read from its log. Each
    pod, on the host network, must also see its node's host name (the identity's first part):
    the tier once let a node's `hostname` race its namespace's creation and rename the host, so
    that a pod on node 1 saw node 2's name."""
    found = []
    for p in c.get("pods", "-n", namespace, "-l", "app.kubernetes.io/name=swell-controller")["items"]:
        if p["metadata"].get("deletionTimestamp"):
            continue
        name = p["metadata"]["name"]
        seen = c.kubectl("exec", "-n", namespace, name, "-c", "sidecar", "--", "cat", "/proc/sys/kernel/hostname",
                         check=False).stdout.strip()
        assert seen == p["spec"].get("nodeName"), f"{name} on {p['spec'].get('nodeName')} sees the host name {seen!r}"
        log = c.kubectl("logs", "-n", namespace, name, "-c", "sidecar", check=False).stdout
        if f'"identity":"{identity}"' in log and "became leader" in log:
            found.append(p)
    assert len(found) == 1, f"one pod's sidecar took the lease as {identity}: {[p['metadata']['name'] for p in found]}"
    return found[0]
