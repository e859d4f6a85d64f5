"""The real-node tier: Swell's image and manifests, installed with `kubectl apply` on a one-node
cluster of real Kubernetes binaries (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet
v1.36 on containerd), driven as a user drives them: claims and pods, `kubectl patch pvc`, snapshots,
the scheduler reading Swell's CSIStorageCapacity, a node-plugin pod replaced under a mounted volume,
auto-grow, the controller pod stopped, and PostgreSQL under pgbench grown online.

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

from conftest import NAMESPACE, ROOT, container_logs, json_stream, node_pod, restarts
from kube import NODE, wait_for

MiB, GiB = 1 << 20, 1 << 30
DRIVER = "swell.csi.dev"
PG_PORT = 55432
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


def test_auto_grow_follows_a_pod_that_fills_its_volume(cluster):
    c = cluster
    policy = {"autogrow.swell.dev/enabled": "true", "autogrow.swell.dev/threshold": "25%",
              "autogrow.swell.dev/increase": "256Mi", "autogrow.swell.dev/min-step": "256Mi",
              "autogrow.swell.dev/max": "2Gi"}
    apply(c, claim("fill", "512Mi", annotations=policy), pod("fill", "fill"))
    running(c, "fill")
    # Written as an application fills a volume: steadily (16 MiB every half second), not in one burst.
    sh(c, "fill", "for i in $(seq 1 26); do head -c 16M /dev/zero > /data/a$i; sync; sleep 0.5; done")
    wait_for("auto-grow to raise the claim", lambda: capacity(c, "fill") not in (None, "512Mi"), timeout=120)
    grown = wait_for("the filesystem grown in the pod", lambda: (lambda s: s if s > 600 * MiB else None)(
        fs_size(c, "fill")), timeout=60)
    assert grown > 600 * MiB
    assert events(c, "fill", "AutoGrow"), "an AutoGrow Event on the claim"
    delete_and_check_gone(c, ["fill"], ["fill"])


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


def test_postgres_in_a_pod_grows_under_pgbench(cluster):
    c = cluster
    script = (f"set -e; mkdir -p /data/pg; chown postgres:postgres /data/pg; chmod 700 /data/pg; "
              f"if [ ! -f /data/pg/PG_VERSION ]; then runuser -u postgres -- initdb -D /data/pg -A trust -U postgres >/dev/null; fi; "
              f"exec runuser -u postgres -- postgres -D /data/pg -p {PG_PORT} -c listen_addresses=127.0.0.1 "
              f"-c unix_socket_directories=/tmp -c shared_buffers=64MB -c max_wal_size=256MB")
    apply(c, claim("pg", "1Gi"), pod("pg", "pg", command=["/bin/bash", "-c", script]))
    running(c, "pg")
    conn = ["-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres"]
    wait_for("PostgreSQL ready", lambda: subprocess.run([f"{PG_BIN}/pg_isready", *conn],
                                                        capture_output=True).returncode == 0, timeout=90)
    subprocess.run([f"{PG_BIN}/pgbench", "-i", "-s", "5", "-q", *conn, "postgres"], check=True, capture_output=True)
    before = fs_size(c, "pg")
    bench = subprocess.Popen([f"{PG_BIN}/pgbench", "-c", "4", "-j", "2", "-T", "40", "-P", "5", *conn, "postgres"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(8)
        c.kubectl("patch", "pvc", "pg", "-n", "default", "--type=merge",
                  "-p", '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}')
        wait_for("the claim at 2Gi", lambda: capacity(c, "pg") == "2Gi", timeout=60)
        grown_while_running = bench.poll() is None
        out, _ = bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 0, out
    assert grown_while_running, "the grow finished only after pgbench"
    failed = [line for line in out.splitlines() if line.startswith("number of failed transactions")]
    assert failed and failed[0].split(":")[1].strip().startswith("0 "), out
    processed = int(next(line for line in out.splitlines() if "number of transactions actually processed" in line)
                    .split(":")[1].split("/")[0])
    assert processed > 0, out
    assert fs_size(c, "pg") > before + 900 * MiB
    delete_and_check_gone(c, ["pg"], ["pg"])


def test_no_container_restarted_in_swells_namespace(cluster):
    no_restarts(cluster)
