"""The real-node tier: Swell's image and manifests, installed with `kubectl apply` on a one-node
cluster of real Kubernetes binaries (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet
v1.36 on containerd), driven as a user drives them: claims and pods, `kubectl patch pvc`, snapshots,
the scheduler reading Swell's CSIStorageCapacity, a node-plugin pod replaced under a mounted volume,
the controller pod stopped, and the soak: PostgreSQL's whole life (auto-grow, scheduled snapshots,
a restore drill, restarts, a grow by hand and an upgrade) under a ledger writer and pgbench.

The tests run in this file's order on one cluster: the first ones run before the snapshot CRDs
exist (a cluster without them must still provision), a later one applies them. The kit holds no
snapshot-controller, so the snapshot tests play its part (the content, and the snapshot's status),
as the sidecar suite does. Growth uses xfs: this sandbox withholds CAP_SYS_RESOURCE, without which
ext4 cannot grow while mounted.
"""
import json
import os
import subprocess
import threading
import time
import urllib.request

import yaml

import soak
from conftest import NAMESPACE, ROOT, container_logs, json_stream, node_pod, restarts
from kube import NODE, wait_for

MiB, GiB = 1 << 20, 1 << 30
DRIVER = "swell.csi.dev"
PG_BIN = "/usr/lib/postgresql/15/bin"
SIDECAR_HEALTH = "http://127.0.0.1:9810/healthz"


def apply(c, *docs):
    c.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def claim(name, size, sc="swell-test-xfs", annotations=None, data_source=None):
    spec = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}, "storageClassName": sc}
    if data_source:
        spec["dataSource"] = data_source
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "default", "annotations": annotations or {}}, "spec": spec}


def pod(name, claim_name, command=None, env=None, image="swell-test/postgres:15"):
    """A pod on the host network (no pod traffic leaves the host's addresses) with the claim at /data."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"hostNetwork": True, "terminationGracePeriodSeconds": 5, "automountServiceAccountToken": False,
                     "containers": [{"name": "app", "image": image, "imagePullPolicy": "Never",
                                     "command": command or ["/bin/bash", "-c", "trap 'exit 0' TERM; sleep infinity & wait"],
                                     "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
                                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim_name}}]}}


def sh(c, pod_name, script, check=True):
    r = c.kubectl("exec", "-n", "default", pod_name, "--", "/bin/bash", "-c", script, check=False, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"in {pod_name}: {script}: exit {r.returncode}: {r.stderr}")
    return r.stdout


def running(c, name, timeout=120):
    def check():
        p = c.get("pod", name, "-n", "default")
        if p and p["status"].get("phase") == "Failed":
            raise AssertionError(f"pod {name} failed: {p['status']}")
        return p if p and p["status"].get("phase") == "Running" else None
    try:
        return wait_for(f"pod {name} Running", check, timeout=timeout)
    except TimeoutError:
        events = c.kubectl("get", "events", "-n", "default", "--field-selector", f"involvedObject.name={name}",
                           check=False).stdout
        raise AssertionError(f"pod {name} not Running:\n{events}") from None


def fs_size(c, pod_name):
    return int(sh(c, pod_name, "df -B1 --output=size /data | tail -1").strip())


def pv_of(c, claim_name):
    pvc = c.get("pvc", claim_name, "-n", "default")
    return c.get("pv", pvc["spec"]["volumeName"])


def capacity(c, claim_name):
    pvc = c.get("pvc", claim_name, "-n", "default")
    return pvc.get("status", {}).get("capacity", {}).get("storage")


def delete_and_check_gone(c, pods, claims):
    handles = [pv_of(c, n)["spec"]["csi"]["volumeHandle"] for n in claims
               if (c.get("pvc", n, "-n", "default") or {}).get("spec", {}).get("volumeName")]
    for p in pods:
        c.kubectl("delete", "pod", p, "-n", "default", "--wait=true", "--timeout=90s")
    for n in claims:
        c.kubectl("delete", "pvc", n, "-n", "default", "--wait=true", "--timeout=90s")
    for h in handles:
        wait_for(f"PV of {h} gone", lambda h=h: not [pv for pv in c.get("pv")["items"]
                                                      if pv["spec"].get("csi", {}).get("volumeHandle") == h], 90)
        assert not os.path.exists(f"/var/lib/swell/volumes/{h}"), f"volume {h} left on the node"
        loops = [f for f in os.listdir("/sys/block") if f.startswith("loop")
                 and h in read(f"/sys/block/{f}/loop/backing_file")]
        assert not loops, f"loop devices left for {h}: {loops}"
        with open("/proc/self/mountinfo") as f:
            assert h not in f.read(), f"a mount of {h} is left"


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def sidecar_health():
    try:
        with urllib.request.urlopen(SIDECAR_HEALTH, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def events(c, name, reason=None):
    items = c.get("events", "-n", "default", "--field-selector", f"involvedObject.name={name}")["items"]
    return [e for e in items if reason is None or e["reason"] == reason]


def no_restarts(c):
    found = restarts(c)
    if found:
        logs = "\n".join(f"--- {k} (previous)\n" + container_logs(c, k.split("/")[0], k.split("/")[1], previous=True)
                         for k in found)
        raise AssertionError(f"containers restarted in {NAMESPACE}: {found}\n{logs}")


# ---------------------------------------------------------------------------------------------

def test_the_install_comes_up_as_shipped_without_the_snapshot_crds(cluster):
    c = cluster
    apply(c, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "swell-test-xfs"},
              "provisioner": DRIVER, "parameters": {"backend": "loop", "csi.storage.k8s.io/fstype": "xfs"},
              "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": True, "reclaimPolicy": "Delete"})

    def ds_ready():
        ds = c.get("daemonset", "swell-node", "-n", NAMESPACE)
        no_restarts(c)  # finding 1: the plugin crash-looped on its data directory
        return ds["status"].get("numberReady") == 1
    wait_for("the node DaemonSet Ready", ds_ready, timeout=120)
    wait_for("the controller Available", lambda: any(
        x["type"] == "Available" and x["status"] == "True"
        for x in c.get("deployment", "swell-controller", "-n", NAMESPACE)["status"].get("conditions", [])), 120)
    csinode = wait_for("the CSINode", lambda: (lambda n: n if n and n["spec"].get("drivers") else None)(
        c.get("csinode", NODE)), 60)
    assert [d["name"] for d in csinode["spec"]["drivers"]] == [DRIVER]
    assert csinode["spec"]["drivers"][0]["topologyKeys"] == [f"topology.{DRIVER}/node"]
    # Finding 2: without the snapshot CRDs the sidecar is healthy (the probe keeps it alive), says
    # why snapshots wait, and publishes capacity for the scheduler.
    status, body = wait_for("the sidecar's health", lambda: (lambda r: r if r[0] == 200 else None)(sidecar_health()), 60)
    assert "volumesnapshotcontents.snapshot.storage.k8s.io: not served" in body, body
    def published():
        by_class = {o["storageClassName"]: o for o in c.get("csistoragecapacities", "-n", NAMESPACE)["items"]}
        return by_class if {"swell-local", "swell-test-xfs"} <= set(by_class) else None
    caps = wait_for("CSIStorageCapacity for the local classes", published, 60)
    assert caps["swell-local"]["nodeTopology"]["matchLabels"] == {f"topology.{DRIVER}/node": NODE}
    logs = container_logs(c, node_pod(c)["metadata"]["name"], "sidecar")
    assert logs.count("waiting for it") <= 4, \
        "said once per snapshot and group snapshot resource (contents, classes), not in a loop:\n" + logs
    no_restarts(c)


def test_a_claim_in_a_pod_grows_with_kubectl_patch_and_leaves_nothing(cluster):
    c = cluster
    apply(c, claim("grow", "1Gi"), pod("grow", "grow"))
    running(c, "grow")
    digest = sh(c, "grow", "head -c 32M /dev/urandom > /data/f && sync && sha256sum < /data/f").split()[0]
    before = fs_size(c, "grow")
    assert 0.9 * GiB < before <= GiB
    c.kubectl("patch", "pvc", "grow", "-n", "default", "--type=merge",
              "-p", '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}')
    wait_for("the claim's capacity at 2Gi", lambda: capacity(c, "grow") == "2Gi", timeout=120)
    after = wait_for("the filesystem grown in the pod", lambda: (lambda s: s if s > 1.9 * GiB else None)(
        fs_size(c, "grow")), timeout=60)
    assert after > before
    assert sh(c, "grow", "sha256sum < /data/f").split()[0] == digest
    assert pv_of(c, "grow")["spec"]["capacity"]["storage"] == "2Gi"

    # kubelet's volume stats (NodeGetVolumeStats), through the API server's node proxy.
    def volume_stats():
        summary = json.loads(c.kubectl("get", "--raw", f"/api/v1/nodes/{NODE}/proxy/stats/summary").stdout)
        for p in summary.get("pods", []):
            if p["podRef"]["name"] == "grow":
                for v in p.get("volume", []):
                    if v["name"] == "data" and v.get("capacityBytes", 0) > 1.9 * GiB:
                        return v
    v = wait_for("kubelet's stats for the volume at its new size", volume_stats, timeout=90)
    assert v["usedBytes"] >= 32 * MiB and v["availableBytes"] < v["capacityBytes"]
    assert v["inodes"] > 0 and v["pvcRef"] == {"name": "grow", "namespace": "default"}
    delete_and_check_gone(c, ["grow"], ["grow"])
    no_restarts(c)


def test_the_scheduler_reads_swells_capacity(cluster):
    c = cluster
    apply(c, claim("huge", "100Ti", sc="swell-local"), pod("huge", "huge"),
          claim("fits", "256Mi", sc="swell-local"), pod("fits", "fits"))
    running(c, "fits")

    def refused():
        for e in events(c, "huge", "FailedScheduling"):
            if "did not have enough free storage" in e["message"]:
                return e
    e = wait_for("the scheduler to refuse the claim too large for the node", refused, timeout=60)
    assert c.get("pod", "huge", "-n", "default")["status"]["phase"] == "Pending", e
    assert c.get("pvc", "huge", "-n", "default")["status"]["phase"] == "Pending"
    assert not any(pv["spec"]["claimRef"]["name"] == "huge" for pv in c.get("pv")["items"])
    delete_and_check_gone(c, ["huge", "fits"], ["huge", "fits"])


def install_snapshot_crds(c):
    """The snapshot and group snapshot CRDs from the node kit, and the example VolumeSnapshotClass."""
    crds = os.path.join(os.environ["SWELL_KUBE_KIT"], "crds")
    kinds = [("snapshot.storage.k8s.io", n) for n in ("volumesnapshotclasses", "volumesnapshotcontents", "volumesnapshots")]
    kinds += [("groupsnapshot.storage.k8s.io", n)
              for n in ("volumegroupsnapshotclasses", "volumegroupsnapshotcontents", "volumegroupsnapshots")]
    for group, name in kinds:
        c.kubectl("apply", "-f", os.path.join(crds, f"{group}_{name}.yaml"))
    for group, name in kinds:
        c.kubectl("wait", "--for=condition=Established", f"crd/{name}.{group}", "--timeout=60s")
    # The sidecar notices the CRDs without a restart.
    wait_for("the sidecar serving snapshots", lambda: "not served" not in sidecar_health()[1], timeout=60)
    c.kubectl("apply", "-f", os.path.join(ROOT, "deploy", "examples", "snapshots", "volumesnapshotclass.yaml"))


def test_snapshot_and_restore_once_the_crds_are_applied(cluster):
    c = cluster
    install_snapshot_crds(c)

    apply(c, claim("src", "256Mi", sc="swell-local"), pod("src", "src"))
    running(c, "src")
    digest = sh(c, "src", "head -c 8M /dev/urandom > /data/f && sync && sha256sum < /data/f").split()[0]
    handle = pv_of(c, "src")["spec"]["csi"]["volumeHandle"]
    apply(c, {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
              "metadata": {"name": "snap", "namespace": "default"},
              "spec": {"source": {"persistentVolumeClaimName": "src"}, "volumeSnapshotClassName": "swell-snapshots"}})
    snap = c.get("volumesnapshot", "snap", "-n", "default")
    uid = snap["metadata"]["uid"]
    # The common snapshot-controller's part: the content of a dynamic snapshot, then the binding.
    content_name = f"snapcontent-{uid}"
    apply(c, {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
              "metadata": {"name": content_name,
                           "finalizers": ["snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"]},
              "spec": {"deletionPolicy": "Delete", "driver": DRIVER, "source": {"volumeHandle": handle},
                       "volumeSnapshotClassName": "swell-snapshots",
                       "volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                                             "name": "snap", "namespace": "default", "uid": uid}}})
    content = wait_for("the content ready", lambda: (lambda x: x if x.get("status", {}).get("readyToUse") else None)(
        c.get("volumesnapshotcontent", content_name)), timeout=60)
    assert content["status"]["snapshotHandle"] == f"snapshot-{uid}"
    assert content["status"]["restoreSize"] == 256 * MiB
    c.kubectl("patch", "volumesnapshot", "snap", "-n", "default", "--subresource=status", "--type=merge", "-p",
              json.dumps({"status": {"boundVolumeSnapshotContentName": content_name, "readyToUse": True,
                                     "restoreSize": "256Mi",
                                     "creationTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}))
    sh(c, "src", "head -c 4M /dev/urandom > /data/f && sync")  # changed after the snapshot
    apply(c, claim("restored", "256Mi", sc="swell-local",
                   data_source={"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}),
          pod("restored", "restored"))
    running(c, "restored")
    assert sh(c, "restored", "sha256sum < /data/f").split()[0] == digest
    delete_and_check_gone(c, ["src", "restored"], ["src", "restored"])
    # The snapshot goes as the common controller removes it: marked, then deleted.
    c.kubectl("annotate", "volumesnapshotcontent", content_name,
              "snapshot.storage.kubernetes.io/volumesnapshot-being-deleted=yes")
    c.kubectl("delete", "volumesnapshot", "snap", "-n", "default", "--wait=false")
    c.kubectl("delete", "volumesnapshotcontent", content_name, "--wait=true", "--timeout=60s")
    wait_for("the snapshot gone from the node", lambda: not os.path.exists(f"/var/lib/swell/snapshots/snapshot-{uid}"),
             timeout=60)
    no_restarts(c)


def test_a_group_snapshot_of_two_claims_in_use(cluster):
    """The group role against the real API server and the v1 group CRDs, whose schema checks the
    status the sidecar writes. The test plays the common controller: the content, its finalizer, and
    its deletion."""
    c = cluster
    c.kubectl("apply", "-f", os.path.join(ROOT, "deploy", "examples", "group-snapshots", "volumegroupsnapshotclass.yaml"))
    handles = []
    for name in ("ga", "gb"):
        apply(c, claim(name, "256Mi", sc="swell-local"), pod(name, name))
    for name in ("ga", "gb"):
        running(c, name)
        sh(c, name, "head -c 4M /dev/urandom > /data/f && sync")
        handles.append(pv_of(c, name)["spec"]["csi"]["volumeHandle"])
    apply(c, {"apiVersion": "groupsnapshot.storage.k8s.io/v1", "kind": "VolumeGroupSnapshot",
              "metadata": {"name": "group", "namespace": "default"},
              "spec": {"source": {"selector": {"matchLabels": {"app": "group"}}},
                       "volumeGroupSnapshotClassName": "swell-group-snapshots"}})
    uid = c.get("volumegroupsnapshot", "group", "-n", "default")["metadata"]["uid"]
    content_name = f"groupsnapcontent-{uid}"
    apply(c, {"apiVersion": "groupsnapshot.storage.k8s.io/v1", "kind": "VolumeGroupSnapshotContent",
              "metadata": {"name": content_name,
                           "finalizers": ["groupsnapshot.storage.kubernetes.io/volumegroupsnapshotcontent-bound-protection"]},
              "spec": {"deletionPolicy": "Delete", "driver": DRIVER, "source": {"volumeHandles": handles},
                       "volumeGroupSnapshotClassName": "swell-group-snapshots",
                       "volumeGroupSnapshotRef": {"apiVersion": "groupsnapshot.storage.k8s.io/v1",
                                                  "kind": "VolumeGroupSnapshot", "name": "group",
                                                  "namespace": "default", "uid": uid}}})
    content = wait_for("the group content ready", lambda: (lambda x: x if x.get("status", {}).get("readyToUse") else None)(
        c.get("volumegroupsnapshotcontent", content_name)), timeout=60)
    st = content["status"]
    assert st["volumeGroupSnapshotHandle"] == f"groupsnapshot-{uid}"
    assert [i["volumeHandle"] for i in st["volumeSnapshotInfoList"]] == handles
    for info in st["volumeSnapshotInfoList"]:
        assert info["restoreSize"] == 256 * MiB and os.path.exists(f"/var/lib/swell/snapshots/{info['snapshotHandle']}")
    delete_and_check_gone(c, ["ga", "gb"], ["ga", "gb"])
    c.kubectl("annotate", "volumegroupsnapshotcontent", content_name,
              "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-being-deleted=yes")
    c.kubectl("delete", "volumegroupsnapshot", "group", "-n", "default", "--wait=false")
    c.kubectl("delete", "volumegroupsnapshotcontent", content_name, "--wait=true", "--timeout=60s")
    for info in st["volumeSnapshotInfoList"]:
        assert not os.path.exists(f"/var/lib/swell/snapshots/{info['snapshotHandle']}")
    no_restarts(c)


def test_the_node_plugin_pod_replaced_under_a_mounted_volume(cluster):
    c = cluster
    apply(c, claim("busy", "512Mi"), pod("busy", "busy"))
    running(c, "busy")
    first = sh(c, "busy", "head -c 16M /dev/urandom > /data/a && sync && sha256sum < /data/a").split()[0]
    old = node_pod(c)["metadata"]["name"]
    c.kubectl("delete", "pod", old, "-n", NAMESPACE, "--wait=true", "--timeout=90s")
    wait_for("a new node plugin pod Ready", lambda: (lambda p: p and p["metadata"]["name"] != old and all(
        s.get("ready") for s in p["status"].get("containerStatuses", [])) and len(
        p["status"].get("containerStatuses", [])) == 3)(node_pod(c)), timeout=120)
    # The volume stayed mounted and writable across the replacement.
    second = sh(c, "busy", "head -c 16M /dev/urandom > /data/b && sync && sha256sum < /data/b").split()[0]
    assert sh(c, "busy", "sha256sum < /data/a").split()[0] == first
    # The new plugin serves the volume: grow it, then delete it.
    c.kubectl("patch", "pvc", "busy", "-n", "default", "--type=merge",
              "-p", '{"spec":{"resources":{"requests":{"storage":"1Gi"}}}}')
    wait_for("the filesystem grown by the new plugin", lambda: fs_size(c, "busy") > 900 * MiB, timeout=120)
    assert sh(c, "busy", "sha256sum < /data/b").split()[0] == second
    delete_and_check_gone(c, ["busy"], ["busy"])
    no_restarts(c)


def test_the_controller_pod_stops_tgtd_cleanly(cluster):
    """Finding 3: tgtd ignores SIGTERM, so the pod waited out its 30 s grace period and tgtd was
    SIGKILLed (exit 137). `swell tgtd` stops it (exit 0) as soon as the pod is deleted."""
    c = cluster
    old = c.get("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/name=swell-controller")["items"][0]
    name = old["metadata"]["name"]
    watch = subprocess.Popen(["kubectl", "get", "pod", name, "-n", NAMESPACE, "-w", "-o", "json"],
                             stdout=subprocess.PIPE, text=True, env=c.env)
    seen, first = {}, threading.Event()

    def read():
        for obj in json_stream(watch):
            first.set()
            for s in obj.get("status", {}).get("containerStatuses", []):
                if "terminated" in s.get("state", {}):
                    seen[s["name"]] = s["state"]["terminated"]
        first.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # The watch is connected (it printed the pod) before the delete starts; after the delete, it
        # is read until it shows tgtd's end (kubectl may print the last update after delete returns).
        assert first.wait(30), "the watch printed nothing"
        t0 = time.monotonic()
        c.kubectl("delete", "pod", name, "-n", NAMESPACE, "--wait=true", "--timeout=60s")
        took = time.monotonic() - t0
        deadline = time.monotonic() + 15
        while "tgtd" not in seen and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        watch.terminate()
        reader.join(timeout=10)
    assert "tgtd" in seen, f"the watch saw no end of tgtd: {seen}"
    assert seen["tgtd"]["exitCode"] == 0, f"tgtd ended {seen['tgtd']}"
    assert took < 25, f"the pod took {took:.1f}s to stop: its grace period ran out"
    wait_for("the controller Available again", lambda: any(
        x["type"] == "Available" and x["status"] == "True"
        for x in c.get("deployment", "swell-controller", "-n", NAMESPACE)["status"].get("conditions", [])), 120)
    no_restarts(c)


def postgres_command(data, port):
    """Starts PostgreSQL on `data` (made on the first start) on the host network; a stale
    postmaster.pid, as a restored snapshot of a running server carries, is removed first."""
    return ["/bin/bash", "-c",
            f"set -e; mkdir -p {data}; chown postgres:postgres {data}; chmod 700 {data}; rm -f {data}/postmaster.pid; "
            f"if [ ! -f {data}/PG_VERSION ]; then runuser -u postgres -- initdb -D {data} -A trust -U postgres >/dev/null; fi; "
            f"exec runuser -u postgres -- postgres -D {data} -p {port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories=/tmp -c shared_buffers=64MB -c max_wal_size=128MB"]


def example_statefulset():
    """deploy/examples/postgres's StatefulSet as shipped, with what this tier needs instead: the test
    image (PostgreSQL 15 started by a command, as root, which then drops to postgres), the host
    network, and the soak's class and size."""
    with open(os.path.join(ROOT, "deploy", "examples", "postgres", "postgres.yaml")) as f:
        sts = next(d for d in yaml.safe_load_all(f) if d and d["kind"] == "StatefulSet")
    spec = sts["spec"]["template"]["spec"]
    spec.update(hostNetwork=True, terminationGracePeriodSeconds=10, automountServiceAccountToken=False)
    spec.pop("securityContext", None)
    container = spec["containers"][0]
    mount = container["volumeMounts"][0]["mountPath"]
    container.update(image="swell-test/postgres:15", imagePullPolicy="Never", env=[],
                     command=postgres_command(f"{mount}/pgdata", SOAK_PORT))
    container.pop("securityContext", None)
    template = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    template["storageClassName"] = "swell-soak"
    template["resources"]["requests"]["storage"] = "512Mi"
    sts["metadata"]["namespace"] = "default"
    return sts


def ready_pg(port, timeout=120):
    wait_for(f"PostgreSQL on {port}", lambda: subprocess.run(
        [f"{PG_BIN}/pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True).returncode == 0, timeout)


def amcheck(port):
    r = subprocess.run([f"{PG_BIN}/pg_amcheck", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "--install-missing",
                        "--heapallindexed", "postgres"], capture_output=True, text=True, timeout=600)
    return r.returncode, (r.stdout + r.stderr)[-2000:]


def test_soak_a_databases_whole_life(cluster):
    """Issue 38's soak: PostgreSQL as the example StatefulSet on an auto-grow, scheduled-snapshot
    class, a ledger writer and pgbench running throughout, while in order: auto-grow grows the
    volume twice; snapshots are taken every minute and kept to 3; the newest is restored beside the
    running database and checked; the node-plugin pod and the controller pod are deleted; the claim
    is grown by hand; and the DaemonSet and the controller are rolled to a new image tag. Then: every
    committed ledger id is there, amcheck is clean, no transaction failed, nothing restarted that the
    run did not restart, and nothing is left. SWELL_SOAK_MINUTES makes it longer; SWELL_SOAK_FAULT
    (ledger, restore) breaks one check on purpose; SWELL_SOAK_REPORT names where the report goes."""
    c = cluster
    minutes = float(os.environ.get("SWELL_SOAK_MINUTES", "0"))
    fault = os.environ.get("SWELL_SOAK_FAULT", "")
    report = os.environ.get("SWELL_SOAK_REPORT", os.path.join(c.dir, "soak"))
    install_snapshot_crds(c)
    tl = soak.Timeline()
    # Loop volumes with xfs: the node's best local kind here, since dir volumes need project quotas,
    # which this kernel lacks.
    apply(c, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
              "metadata": {"name": "swell-soak", "annotations": {
                  "autogrow.swell.dev/enabled": "true", "autogrow.swell.dev/threshold": "30%",
                  "autogrow.swell.dev/increase": "50%", "autogrow.swell.dev/min-step": "256Mi",
                  "autogrow.swell.dev/max": "4Gi", "snapshot.swell.dev/schedule": "* * * * *",
                  "snapshot.swell.dev/keep": "3", "snapshot.swell.dev/class": "swell-snapshots"}},
              "provisioner": DRIVER, "parameters": {"backend": "loop", "csi.storage.k8s.io/fstype": "xfs"},
              "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": True, "reclaimPolicy": "Delete"})
    apply(c, example_statefulset())
    running(c, "postgres-0", timeout=180)
    ready_pg(SOAK_PORT)
    assert soak.psql(SOAK_PORT, "create table ledger (id bigserial primary key, at timestamptz default clock_timestamp());"
                     "create table fill (x text)").returncode == 0
    subprocess.run([f"{PG_BIN}/pgbench", "-i", "-s", "10", "-q", "-h", "127.0.0.1", "-p", str(SOAK_PORT), "-U", "postgres",
                    "postgres"], check=True, capture_output=True)
    handle = pv_of(c, SOAK_CLAIM)["spec"]["csi"]["volumeHandle"]
    role = soak.SnapshotControllerRole(c, SOAK_CLAIM, handle, DRIVER, "swell-snapshots", tl)
    ledger, bench, sampler = soak.Ledger(SOAK_PORT, tl), soak.Pgbench(SOAK_PORT, tl), soak.Sampler(c, SOAK_CLAIM, tl)
    threads = [role, ledger, bench, sampler]
    for t in threads:
        t.start()
    facts = {}
    try:
        # 1. Fill until auto-grow has grown the volume twice.
        def grown(n):
            return len(events(c, SOAK_CLAIM, "AutoGrow")) >= n
        for round_ in range(60):
            if grown(2):
                break
            r = soak.psql(SOAK_PORT, "insert into fill select repeat(md5(g::text), 60) from generate_series(1, 25000) g")
            assert r.returncode == 0, r.stderr
            wait_for("the filesystem grown", lambda: capacity(c, SOAK_CLAIM) == (c.get("pvc", SOAK_CLAIM, "-n", "default")
                     ["spec"]["resources"]["requests"]["storage"]), timeout=120)
        assert grown(2), "auto-grow did not grow the volume twice"
        first_fs = sampler.samples[0][2]
        wait_for("the filesystem grown in the pod", lambda: sampler.samples[-1][2] > first_fs + 400 * MiB, 60)

        # 2 and 3. The newest ready scheduled snapshot, restored beside the running database.
        newest = wait_for("a ready scheduled snapshot", lambda: max(role.ready) if role.ready else None, timeout=150)
        taken_at = role.ready[newest]["creationTime"] / 1e9
        restore_bytes = role.ready[newest]["restoreSize"]
        apply(c, claim("soak-restore", str(restore_bytes), sc="swell-soak", data_source={
            "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": newest}),
              pod("soak-restore", "soak-restore", command=postgres_command("/data/pgdata", RESTORE_PORT)))
        running(c, "soak-restore", timeout=180)
        ready_pg(RESTORE_PORT, timeout=180)
        if fault == "restore":
            soak.psql(RESTORE_PORT, "delete from ledger where id = (select min(id) from ledger)")
        code, out = amcheck(RESTORE_PORT)
        assert code == 0, f"amcheck on the restored copy: {out}"
        restored = {int(x) for x in soak.psql(RESTORE_PORT, "select id from ledger").stdout.split()}
        before = [i for i, at in ledger.committed if at < taken_at]
        missing = [i for i in before if i not in restored]
        facts["restore"] = {"snapshot": newest, "ids_committed_before": len(before), "missing": len(missing)}
        tl.mark("restore", f"{newest}: {len(before)} ids committed before it, {len(missing)} missing")
        assert before and not missing, f"ids committed before {newest} but not in it: {missing[:10]}"
        delete_and_check_gone(c, ["soak-restore"], ["soak-restore"])

        # 4 and 5. The node-plugin pod, deleted while the volume is in use; then the controller pod.
        for label, what in (("swell-node", "node-plugin pod"), ("swell-controller", "controller pod")):
            old = c.get("pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/name={label}")["items"][0]["metadata"]["name"]
            c.kubectl("delete", "pod", old, "-n", NAMESPACE, "--wait=true", "--timeout=90s")
            tl.mark("restart", f"{what} deleted")
            wait_for(f"a new {what} ready", lambda: [
                p for p in c.get("pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/name={label}")["items"]
                if p["metadata"]["name"] != old and p["status"].get("containerStatuses")
                and all(s.get("ready") for s in p["status"]["containerStatuses"])], 120)

        # 6. A grow by hand.
        wanted = soak.quantity(c.get("pvc", SOAK_CLAIM, "-n", "default")["spec"]["resources"]["requests"]["storage"]) + 256 * MiB
        c.kubectl("patch", "pvc", SOAK_CLAIM, "-n", "default", "--type=merge",
                  "-p", json.dumps({"spec": {"resources": {"requests": {"storage": f"{wanted // MiB}Mi"}}}}))
        tl.mark("patch", f"kubectl patch pvc to {wanted // MiB}Mi")
        wait_for("the claim grown by hand", lambda: soak.quantity(capacity(c, SOAK_CLAIM) or "0") >= wanted, 120)
        # The filesystem too, while pgbench runs (xfs keeps some of the device for itself).
        wait_for("the filesystem grown by hand", lambda: sampler.samples[-1][2] > wanted - 96 * MiB, 60)
        assert bench.is_alive(), "pgbench ran through the grow"

        # 6b. An upgrade: both workloads rolled to a new tag of the image.
        c.ctr("images", "tag", "--force", "docker.io/swell/swell:dev", "docker.io/swell/swell:soak")
        for kind, name in (("daemonset", "swell-node"), ("deployment", "swell-controller")):
            obj = c.get(kind, name, "-n", NAMESPACE)
            patch = [{"op": "replace", "path": f"/spec/template/spec/{group}/{i}/image", "value": "swell/swell:soak"}
                     for group in ("containers", "initContainers")
                     for i, ct in enumerate(obj["spec"]["template"]["spec"].get(group, []))
                     if ct["image"].startswith("swell/swell:")]
            c.kubectl("patch", kind, name, "-n", NAMESPACE, "--type=json", "-p", json.dumps(patch))
        tl.mark("upgrade", "node DaemonSet and controller rolled to swell/swell:soak")
        for kind, name in (("daemonset", "swell-node"), ("deployment", "swell-controller")):
            c.kubectl("rollout", "status", f"{kind}/{name}", "-n", NAMESPACE, "--timeout=180s", timeout=200)

        # The schedule keeps 3: run until a fourth slot has pruned the first, and for the asked length.
        wait_for("a scheduled snapshot pruned", lambda: events(c, SOAK_CLAIM, "ScheduledSnapshotPruned"), timeout=300)
        while tl.now() < minutes * 60:
            time.sleep(5)
    except BaseException:
        stop_soak(c, ledger, bench, sampler, role, handle, strict=False)
        raise
    ledger.halt.set()
    bench.stop()
    sampler.halt.set()
    ledger.join(timeout=60)
    try:
        check_soak(c, tl, ledger, bench, sampler, role, facts, fault, report)
    except BaseException:
        stop_soak(c, ledger, bench, sampler, role, handle, strict=False)
        raise
    stop_soak(c, ledger, bench, sampler, role, handle, strict=True)


def check_soak(c, tl, ledger, bench, sampler, role, facts, fault, report):
    """The soak's end: every committed ledger id there, amcheck clean, no failed transaction, no
    restart the run did not make; and the report."""
    if fault == "ledger":
        soak.psql(SOAK_PORT, f"delete from ledger where id = {ledger.committed[-1][0]}")
    present = {int(x) for x in soak.psql(SOAK_PORT, "select id from ledger").stdout.split()}
    lost = [i for i, _ in ledger.committed if i not in present]
    code, out = amcheck(SOAK_PORT)
    pg = c.get("pod", "postgres-0", "-n", "default")
    facts.update(database_bytes=int(soak.psql(SOAK_PORT, "select pg_database_size('postgres')").stdout or 0),
                 ledger_commits=len(ledger.committed), ledger_lost=len(lost), ledger_failures=len(ledger.failures),
                 pgbench_rounds=len(bench.rounds), pgbench_failed=sum(f or 0 for _, f in bench.rounds),
                 snapshots_taken=len(events(c, SOAK_CLAIM, "SnapshotScheduled")),
                 snapshots_pruned=len(events(c, SOAK_CLAIM, "ScheduledSnapshotPruned")),
                 auto_grows=len(events(c, SOAK_CLAIM, "AutoGrow")), capacity=capacity(c, SOAK_CLAIM),
                 seconds=round(tl.now()))
    png = soak.write_report(report, tl, bench, sampler, ledger, facts)
    print(f"soak report: {report}.json{' and ' + png if png else ''}\nsoak facts: {json.dumps(facts)}", flush=True)
    assert not lost, f"committed ledger ids missing: {lost[:10]} of {len(lost)}"
    assert code == 0, f"amcheck: {out}"
    assert not ledger.failures, f"ledger inserts failed: {ledger.failures[:5]}"
    assert bench.rounds and all(rc == 0 and f == 0 for rc, f in bench.rounds), bench.output[-20:]
    assert not role.errors, role.errors[:5]
    # What the scheduler made, as the real API server and the v1 CRDs' schema took it: named after the
    # claim and the slot, labelled, and kept to 3; the claim shows the last and the next.
    kept = c.get("volumesnapshot", "-n", "default", "-l", f"snapshot.swell.dev/claim={SOAK_CLAIM}")["items"]
    assert 1 <= len(kept) <= 3, [k["metadata"]["name"] for k in kept]
    for item in kept:
        slot = item["metadata"]["annotations"]["snapshot.swell.dev/slot"]
        assert slot.endswith(":00Z"), "every minute, on the minute"
        assert item["metadata"]["name"] == SOAK_CLAIM + "-" + slot.replace("-", "").replace(":", "").replace("T", "-")[:-1]
        assert item["spec"] == {"source": {"persistentVolumeClaimName": SOAK_CLAIM},
                                "volumeSnapshotClassName": "swell-snapshots"}
    notes = c.get("pvc", SOAK_CLAIM, "-n", "default")["metadata"]["annotations"]
    assert notes["snapshot.swell.dev/last-snapshot"] == max(k["metadata"]["name"] for k in kept)
    assert notes["snapshot.swell.dev/next-snapshot-at"] > max(k["metadata"]["annotations"]["snapshot.swell.dev/slot"]
                                                              for k in kept)
    assert all(s.get("restartCount", 0) == 0 for s in pg["status"]["containerStatuses"]), "PostgreSQL restarted"
    no_restarts(c)


def stop_soak(c, ledger, bench, sampler, role, handle, strict):
    """Stops the writers, then removes the database, its claim and every scheduled snapshot (their
    contents go through the role, and the sidecar deletes the snapshots). After a failure it is best
    effort, so that the failure, not the cleanup, is reported."""
    ledger.halt.set()
    bench.stop()
    sampler.halt.set()
    try:
        c.kubectl("delete", "statefulset", "postgres", "-n", "default", "--wait=true", "--timeout=90s", check=strict)
        c.kubectl("delete", "pod", "soak-restore", "-n", "default", "--wait=true", "--timeout=90s", check=False)
        c.kubectl("delete", "pvc", "soak-restore", "-n", "default", "--wait=true", "--timeout=90s", check=False)
        wait_for("the database pod gone", lambda: c.get("pod", "postgres-0", "-n", "default") is None, 90)
        delete_and_check_gone(c, [], [SOAK_CLAIM])
        c.kubectl("delete", "volumesnapshot", "-n", "default", "-l", f"snapshot.swell.dev/claim={SOAK_CLAIM}",
                  "--wait=true", "--timeout=60s")
        wait_for("every snapshot's content gone", lambda: not role.contents and not [
            x for x in c.get("volumesnapshotcontent")["items"] if x["spec"]["source"].get("volumeHandle") == handle], 90)
        wait_for("the snapshots gone from the node", lambda: not [
            d for d in os.listdir("/var/lib/swell/snapshots") if d.startswith("snapshot-")], 60)
    except Exception:
        if strict:
            raise
    finally:
        role.halt.set()


def test_no_container_restarted_in_swells_namespace(cluster):
    no_restarts(cluster)
