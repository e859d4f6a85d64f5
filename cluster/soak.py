"""The soak (issue 38): a database's whole life on the multi-node tier, run by
cluster/test_nodes.py::test_soak_a_databases_whole_life and scripts/soak.sh.

PostgreSQL runs as deploy/examples/postgres's StatefulSet on an auto-grow class with one scheduled
snapshot a minute, keeping 3. A ledger writer and pgbench run beside it throughout, while in order:
auto-grow grows the volume twice; the newest snapshot is restored beside the running database and
checked; the node-plugin pod and the controller pod are deleted; another node is drained and
brought back; the claim is grown by hand; and both workloads are rolled to a new image tag. Then
every committed ledger id must be there, amcheck clean, no transaction failed, nothing restarted
that the run did not restart, and nothing left.

Its parts: the ledger writer, pgbench, a sampler of the volume's size, the common
snapshot-controller's part for the scheduled snapshots (the node kit has no snapshot-controller),
and the report. Every part records onto one timeline (seconds since the soak began)."""
import json
import os
import re
import subprocess
import threading
import time

import yaml

from kube import wait_for

PG_BIN = "/usr/lib/postgresql/15/bin"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACE = "swell-system"
DRIVER = "swell.csi.dev"
PORT, RESTORE_PORT = 55433, 55434
CLAIM = "data-postgres-0"
MiB = 1 << 20


class Timeline:
    def __init__(self):
        self.t0 = time.time()
        self.events = []  # (t, kind, text)
        self.lock = threading.Lock()

    def now(self):
        return time.time() - self.t0

    def mark(self, kind, text):
        with self.lock:
            self.events.append((round(self.now(), 2), kind, text))
        print(f"[soak {self.now():7.1f}s] {kind}: {text}", flush=True)


def psql(host, port, sql, db="postgres", timeout=60):
    return subprocess.run([f"{PG_BIN}/psql", "-h", host, "-p", str(port), "-U", "postgres", "-d", db,
                           "-v", "ON_ERROR_STOP=1", "-Atc", sql], capture_output=True, text=True, timeout=timeout)


class Ledger(threading.Thread):
    """Appends rows one transaction at a time, and records each id whose COMMIT returned, with the
    wall-clock time it returned. A failed insert is counted with its time and message."""

    def __init__(self, host, port, timeline):
        super().__init__(daemon=True)
        self.host, self.port, self.timeline = host, port, timeline
        self.committed = []  # (id, wall time the commit returned)
        self.failures = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            r = psql(self.host, self.port, "insert into ledger default values returning id", timeout=30)
            if r.returncode == 0 and r.stdout.strip().split("\n")[0].isdigit():
                self.committed.append((int(r.stdout.strip().split("\n")[0]), time.time()))
            else:
                self.failures.append((round(self.timeline.now(), 2), (r.stderr or r.stdout).strip()[-200:]))
                self.timeline.mark("ledger-error", (r.stderr or r.stdout).strip()[-120:])
                time.sleep(0.5)
            time.sleep(0.02)


class Pgbench(threading.Thread):
    """pgbench's TPC-B-like load in rounds of 30 s until halted, its progress (tps and latency every
    2 s) on the timeline, and the failed transactions each round's summary counts."""

    def __init__(self, host, port, timeline):
        super().__init__(daemon=True)
        self.host, self.port, self.timeline = host, port, timeline
        self.samples = []  # (t, tps, latency ms)
        self.output = []
        self.rounds = []  # (exit code, failed transactions or None)
        self.halt = threading.Event()
        self.proc = None

    def run(self):
        while not self.halt.is_set():
            start = self.timeline.now()
            self.proc = subprocess.Popen(
                [f"{PG_BIN}/pgbench", "-c", "2", "-j", "2", "-T", "30", "-P", "2", "-h", self.host, "-p",
                 str(self.port), "-U", "postgres", "postgres"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            failed = None
            for line in self.proc.stdout:
                self.output.append(line.rstrip())
                m = re.match(r"progress: ([\d.]+) s, ([\d.]+) tps, lat ([\d.]+) ms", line)
                if m:
                    self.samples.append((round(start + float(m.group(1)), 2), float(m.group(2)), float(m.group(3))))
                if line.startswith("number of failed transactions"):
                    failed = int(line.split(":")[1].split()[0])
            self.rounds.append((self.proc.wait(), failed))

    def stop(self):
        self.halt.set()
        self.join(timeout=60)


class Sampler(threading.Thread):
    """The claim's capacity, and the mounted filesystem's size and use (`statfs(pv name)`, which
    reads it where the volume is mounted), every 2 s. A capacity that rose is marked a grow."""

    def __init__(self, c, claim, timeline, statfs):
        super().__init__(daemon=True)
        self.c, self.claim, self.timeline, self.statfs = c, claim, timeline, statfs
        self.samples = []  # (t, claim capacity bytes, fs size bytes, fs used bytes)
        self.halt = threading.Event()

    def run(self):
        while not self.halt.wait(2):
            try:
                pvc = self.c.get("pvc", self.claim, "-n", "default")
                text = pvc.get("status", {}).get("capacity", {}).get("storage", "0")
                cap = quantity(text)
                if self.samples and cap > self.samples[-1][1]:
                    self.timeline.mark("grow", f"capacity {text}")
                fs = self.statfs(pvc["spec"]["volumeName"])
                if fs:
                    self.samples.append((round(self.timeline.now(), 2), cap, *fs))
            except Exception:  # noqa: BLE001 - a sample missed while a pod moves is not an error
                pass


def quantity(text):
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    for suffix, mult in units.items():
        if text.endswith(suffix):
            return int(float(text[:-2]) * mult)
    return int(text)


def rfc3339(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class SnapshotControllerRole(threading.Thread):
    """The common snapshot-controller's part, which the node kit lacks: for each VolumeSnapshot of the
    claim, a dynamic VolumeSnapshotContent (which Swell's sidecar takes to the plugin); once that is
    ready, the VolumeSnapshot's status; once the VolumeSnapshot is gone, its content marked and deleted
    (the sidecar then deletes the snapshot)."""

    def __init__(self, c, claim, handle, driver, snapshot_class, timeline):
        super().__init__(daemon=True)
        self.c, self.claim, self.handle, self.driver, self.cls = c, claim, handle, driver, snapshot_class
        self.timeline = timeline
        self.contents = {}  # VolumeSnapshot uid -> content name
        self.ready = {}  # VolumeSnapshot name -> content status
        self.errors = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.wait(1):
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - kept, and asserted empty at the end
                self.errors.append(str(e)[-300:])

    def step(self):
        c = self.c
        items = c.get("volumesnapshot", "-n", "default", "-l", f"snapshot.swell.dev/claim={self.claim}")["items"]
        snaps = {s["metadata"]["uid"]: s for s in items}
        for uid, s in snaps.items():
            name = s["metadata"]["name"]
            content = f"snapcontent-{uid}"
            if uid not in self.contents:
                c.kubectl("apply", "-f", "-", input=json.dumps({
                    "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                    "metadata": {"name": content,
                                 "finalizers": ["snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"]},
                    "spec": {"deletionPolicy": "Delete", "driver": self.driver, "source": {"volumeHandle": self.handle},
                             "volumeSnapshotClassName": self.cls,
                             "volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                                                   "name": name, "namespace": "default", "uid": uid}}}))
                self.contents[uid] = content
            if name in self.ready:
                continue
            got = c.get("volumesnapshotcontent", content) or {}
            st = got.get("status", {})
            if st.get("readyToUse"):
                c.kubectl("patch", "volumesnapshot", name, "-n", "default", "--subresource=status", "--type=merge", "-p",
                          json.dumps({"status": {"boundVolumeSnapshotContentName": content, "readyToUse": True,
                                                 "restoreSize": st["restoreSize"],
                                                 "creationTime": rfc3339(st["creationTime"] / 1e9)}}))
                self.ready[name] = st
                self.timeline.mark("snapshot", name)
        for uid in [u for u in self.contents if u not in snaps]:
            content = self.contents.pop(uid)
            c.kubectl("annotate", "volumesnapshotcontent", content,
                      "snapshot.storage.kubernetes.io/volumesnapshot-being-deleted=yes", check=False)
            c.kubectl("delete", "volumesnapshotcontent", content, "--wait=false", check=False)
            self.timeline.mark("pruned", content)


def write_report(path, timeline, pgbench, sampler, ledger, facts):
    """The soak's figures as JSON, and, where matplotlib is installed, one PNG: TPS and commit latency,
    the volume's size and use, and each event, on one time axis."""
    data = {"events": timeline.events, "pgbench": pgbench.samples, "volume": sampler.samples,
            "ledger_commits": len(ledger.committed), "ledger_failures": ledger.failures, "facts": facts}
    with open(path + ".json", "w") as f:
        json.dump(data, f, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (a, b, v) = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    if pgbench.samples:
        t, tps, lat = zip(*pgbench.samples)
        a.plot(t, tps, color="tab:blue")
        b.plot(t, lat, color="tab:orange")
    a.set_ylabel("pgbench TPS")
    b.set_ylabel("latency (ms)")
    if sampler.samples:
        t, cap, size, used = zip(*sampler.samples)
        v.plot(t, [x / 2**20 for x in cap], label="claim capacity")
        v.plot(t, [x / 2**20 for x in size], label="filesystem size")
        v.plot(t, [x / 2**20 for x in used], label="used")
        v.legend(loc="upper left", fontsize=8)
    v.set_ylabel("MiB")
    v.set_xlabel("seconds since the soak began")
    colors = {"grow": "tab:green", "snapshot": "tab:purple", "pruned": "tab:gray", "restore": "tab:red",
              "restart": "tab:brown", "upgrade": "black", "patch": "tab:olive", "drain": "tab:cyan"}
    for t, kind, text in timeline.events:
        if kind in colors:
            for ax in (a, b, v):
                ax.axvline(t, color=colors[kind], alpha=0.5, linewidth=1)
            a.annotate(kind, (t, a.get_ylim()[1]), rotation=90, fontsize=7, va="top", color=colors[kind])
    fig.suptitle("Swell soak: PostgreSQL 15 on a loop (xfs) claim, one timeline")
    fig.tight_layout()
    fig.savefig(path + ".png", dpi=80)
    return path + ".png"


# ---------------------------------------------------------------------------------------------
# The run


def postgres_command(data, port):
    """Starts PostgreSQL on `data` (made on the first start) on the node's network, reachable from the
    host over the nodes' bridge; a stale postmaster.pid, as a restored copy of a running server
    carries, is removed first."""
    return ["/bin/bash", "-c",
            f"set -e; mkdir -p {data}; chown postgres:postgres {data}; chmod 700 {data}; rm -f {data}/postmaster.pid; "
            f"if [ ! -f {data}/PG_VERSION ]; then runuser -u postgres -- initdb -D {data} -A trust -U postgres >/dev/null; "
            f"echo 'host all all 0.0.0.0/0 trust' >> {data}/pg_hba.conf; fi; "
            f"exec runuser -u postgres -- postgres -D {data} -p {port} -c listen_addresses='*' "
            f"-c unix_socket_directories=/tmp -c shared_buffers=64MB -c max_wal_size=128MB"]


def example_statefulset(node):
    """deploy/examples/postgres's StatefulSet as shipped, with what this tier needs instead: the test
    image (PostgreSQL 15 started by a command, as root, which then drops to postgres), the host
    network, the soak's class and size, and its node."""
    with open(os.path.join(ROOT, "deploy", "examples", "postgres", "postgres.yaml")) as f:
        sts = next(d for d in yaml.safe_load_all(f) if d and d["kind"] == "StatefulSet")
    spec = sts["spec"]["template"]["spec"]
    spec.update(hostNetwork=True, terminationGracePeriodSeconds=10, automountServiceAccountToken=False,
                nodeSelector={"kubernetes.io/hostname": node})
    spec.pop("securityContext", None)
    container = spec["containers"][0]
    mount = container["volumeMounts"][0]["mountPath"]
    container.update(image="swell-test/postgres:15", imagePullPolicy="Never", env=[],
                     command=postgres_command(f"{mount}/pgdata", PORT))
    container.pop("securityContext", None)
    template = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    template["storageClassName"] = "swell-soak"
    template["resources"]["requests"]["storage"] = "512Mi"
    sts["metadata"]["namespace"] = "default"
    return sts


def soak_class():
    """Loop volumes with xfs: the best local kind these nodes can serve, since dir volumes need
    project quotas, which this host's kernel lacks."""
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "swell-soak", "annotations": {
                "autogrow.swell.dev/enabled": "true", "autogrow.swell.dev/threshold": "30%",
                "autogrow.swell.dev/increase": "50%", "autogrow.swell.dev/min-step": "256Mi",
                "autogrow.swell.dev/max": "4Gi", "snapshot.swell.dev/schedule": "* * * * *",
                "snapshot.swell.dev/keep": "3", "snapshot.swell.dev/class": "swell-snapshots"}},
            "provisioner": DRIVER, "parameters": {"backend": "loop", "csi.storage.k8s.io/fstype": "xfs"},
            "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": True, "reclaimPolicy": "Delete"}


def install_snapshot_crds(c):
    crds = os.path.join(os.environ["SWELL_KUBE_KIT"], "crds")
    kinds = [("snapshot.storage.k8s.io", n) for n in ("volumesnapshotclasses", "volumesnapshotcontents", "volumesnapshots")]
    kinds += [("groupsnapshot.storage.k8s.io", n)
              for n in ("volumegroupsnapshotclasses", "volumegroupsnapshotcontents", "volumegroupsnapshots")]
    for group, name in kinds:
        c.kubectl("apply", "-f", os.path.join(crds, f"{group}_{name}.yaml"))
    for group, name in kinds:
        c.kubectl("wait", "--for=condition=Established", f"crd/{name}.{group}", "--timeout=60s")
    c.kubectl("apply", "-f", os.path.join(ROOT, "deploy", "examples", "snapshots", "volumesnapshotclass.yaml"))


def apply(c, *docs):
    c.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def events(c, name, reason):
    items = c.get("events", "-n", "default", "--field-selector", f"involvedObject.name={name}")["items"]
    return [e for e in items if e["reason"] == reason]


def capacity(c, claim):
    return quantity(((c.get("pvc", claim, "-n", "default") or {}).get("status", {}).get("capacity", {}))
                    .get("storage", "0"))


def running(c, pod, timeout=180):
    def check():
        p = c.get("pod", pod, "-n", "default")
        if p and p["status"].get("phase") == "Failed":
            raise AssertionError(f"pod {pod} failed: {p['status']}")
        return p if p and p["status"].get("phase") == "Running" else None
    return wait_for(f"pod {pod} Running", check, timeout=timeout)


def ready_pg(host, port, timeout=120):
    wait_for(f"PostgreSQL on {host}:{port}", lambda: subprocess.run(
        [f"{PG_BIN}/pg_isready", "-h", host, "-p", str(port)], capture_output=True).returncode == 0, timeout)


def amcheck(host, port):
    r = subprocess.run([f"{PG_BIN}/pg_amcheck", "-h", host, "-p", str(port), "-U", "postgres", "--install-missing",
                        "--heapallindexed", "postgres"], capture_output=True, text=True, timeout=600)
    return r.returncode, (r.stdout + r.stderr)[-2000:]


def restarts(c, namespace, **selector):
    out = {}
    labels = ["-l", ",".join(f"{k}={v}" for k, v in selector.items())] if selector else []
    for p in c.get("pods", "-n", namespace, *labels)["items"]:
        for s in p.get("status", {}).get("containerStatuses", []):
            if s.get("restartCount"):
                out[f"{p['metadata']['name']}/{s['name']}"] = s["restartCount"]
    return out


class Site:
    """Where the soak runs: the database's node and its address, the node to drain, how to run a
    command on a node, and how to tag an image on every node."""

    def __init__(self, db_node, db_host, drain_node, node_run, tag_image):
        self.db_node, self.db_host, self.drain_node = db_node, db_host, drain_node
        self.node_run, self.tag_image = node_run, tag_image

    def statfs(self, pv):
        path = f"/var/lib/kubelet/pods/*/volumes/kubernetes.io~csi/{pv}/mount"
        r = self.node_run(self.db_node, ["sh", "-c", f"stat -f -c '%b %f %S' {path}"])
        if r.returncode != 0 or not r.stdout.split():
            return None
        blocks, free, size = (int(x) for x in r.stdout.split()[:3])
        return blocks * size, (blocks - free) * size

    def listdir(self, path):
        r = self.node_run(self.db_node, ["sh", "-c", f"ls {path} 2>/dev/null || true"])
        return r.stdout.split()


def run(c, site, minutes=0.0, fault="", report=None):
    """The soak on cluster `c`; raises on the first check that fails, after cleaning up."""
    install_snapshot_crds(c)
    tl = Timeline()
    host = site.db_host
    apply(c, soak_class())
    apply(c, example_statefulset(site.db_node))
    running(c, "postgres-0")
    ready_pg(host, PORT)
    assert psql(host, PORT, "create table ledger (id bigserial primary key, at timestamptz default clock_timestamp());"
                "create table fill (x text)").returncode == 0
    subprocess.run([f"{PG_BIN}/pgbench", "-i", "-s", "10", "-q", "-h", host, "-p", str(PORT), "-U", "postgres",
                    "postgres"], check=True, capture_output=True)
    pv = c.get("pv", c.get("pvc", CLAIM, "-n", "default")["spec"]["volumeName"])
    handle = pv["spec"]["csi"]["volumeHandle"]
    role = SnapshotControllerRole(c, CLAIM, handle, DRIVER, "swell-snapshots", tl)
    ledger, bench, sampler = Ledger(host, PORT, tl), Pgbench(host, PORT, tl), Sampler(c, CLAIM, tl, site.statfs)
    for t in (role, ledger, bench, sampler):
        t.start()
    facts = {}
    try:
        steps(c, site, tl, role, ledger, bench, sampler, facts, fault, minutes)
        ledger.halt.set()
        bench.stop()
        sampler.halt.set()
        ledger.join(timeout=60)
        check(c, site, tl, ledger, bench, sampler, role, facts, fault, report)
    except BaseException:
        cleanup(c, site, ledger, bench, sampler, role, handle, strict=False)
        raise
    cleanup(c, site, ledger, bench, sampler, role, handle, strict=True)
    return facts


def steps(c, site, tl, role, ledger, bench, sampler, facts, fault, minutes):
    host = site.db_host

    # 1. Fill until auto-grow has grown the volume twice, and the filesystem with it.
    for _ in range(60):
        if len(events(c, CLAIM, "AutoGrow")) >= 2:
            break
        r = psql(host, PORT, "insert into fill select repeat(md5(g::text), 60) from generate_series(1, 25000) g")
        assert r.returncode == 0, r.stderr
        wait_for("the claim at its request", lambda: capacity(c, CLAIM) >= quantity(
            c.get("pvc", CLAIM, "-n", "default")["spec"]["resources"]["requests"]["storage"]), timeout=120)
    assert len(events(c, CLAIM, "AutoGrow")) >= 2, "auto-grow did not grow the volume twice"
    wait_for("samples of the filesystem", lambda: sampler.samples, 30)
    first_fs = sampler.samples[0][2]
    wait_for("the filesystem grown in the pod", lambda: sampler.samples[-1][2] > first_fs + 400 * MiB, 60)

    # 2 and 3. The newest ready scheduled snapshot, restored beside the running database on its node.
    newest = wait_for("a ready scheduled snapshot", lambda: max(role.ready) if role.ready else None, timeout=150)
    taken_at = role.ready[newest]["creationTime"] / 1e9
    apply(c, {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
              "metadata": {"name": "soak-restore", "namespace": "default"},
              "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "swell-soak",
                       "resources": {"requests": {"storage": str(role.ready[newest]["restoreSize"])}},
                       "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": newest}}},
          {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "soak-restore", "namespace": "default"},
           "spec": {"hostNetwork": True, "terminationGracePeriodSeconds": 5, "automountServiceAccountToken": False,
                    "nodeSelector": {"kubernetes.io/hostname": site.db_node},
                    "containers": [{"name": "app", "image": "swell-test/postgres:15", "imagePullPolicy": "Never",
                                    "command": postgres_command("/data/pgdata", RESTORE_PORT),
                                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "soak-restore"}}]}})
    running(c, "soak-restore")
    ready_pg(host, RESTORE_PORT, timeout=180)
    if fault == "restore":
        psql(host, RESTORE_PORT, "delete from ledger where id = (select min(id) from ledger)")
    code, out = amcheck(host, RESTORE_PORT)
    assert code == 0, f"amcheck on the restored copy: {out}"
    restored = {int(x) for x in psql(host, RESTORE_PORT, "select id from ledger").stdout.split()}
    before = [i for i, at in ledger.committed if at < taken_at]
    missing = [i for i in before if i not in restored]
    facts["restore"] = {"snapshot": newest, "ids_committed_before": len(before), "missing": len(missing)}
    tl.mark("restore", f"{newest}: {len(before)} ids committed before it, {len(missing)} missing")
    assert before and not missing, f"ids committed before {newest} but not in it: {missing[:10]}"
    c.kubectl("delete", "pod", "soak-restore", "-n", "default", "--wait=true", "--timeout=90s")
    c.kubectl("delete", "pvc", "soak-restore", "-n", "default", "--wait=true", "--timeout=90s")

    # 4 and 5. The database node's plugin pod, deleted while the volume is in use; then the controller pod.
    for label, what, field in (("swell-node", "node-plugin pod", f"spec.nodeName={site.db_node}"),
                               ("swell-controller", "controller pod", None)):
        selector = ["-l", f"app.kubernetes.io/name={label}"] + (["--field-selector", field] if field else [])
        old = c.get("pods", "-n", NAMESPACE, *selector)["items"][0]["metadata"]["name"]
        c.kubectl("delete", "pod", old, "-n", NAMESPACE, "--wait=true", "--timeout=90s")
        tl.mark("restart", f"{what} deleted")
        wait_for(f"a new {what} ready", lambda: [
            p for p in c.get("pods", "-n", NAMESPACE, *selector)["items"]
            if p["metadata"]["name"] != old and p["status"].get("containerStatuses")
            and all(s.get("ready") for s in p["status"]["containerStatuses"])], 120)

    # 6. A grow by hand, while pgbench runs.
    wanted = quantity(c.get("pvc", CLAIM, "-n", "default")["spec"]["resources"]["requests"]["storage"]) + 256 * MiB
    c.kubectl("patch", "pvc", CLAIM, "-n", "default", "--type=merge",
              "-p", json.dumps({"spec": {"resources": {"requests": {"storage": f"{wanted // MiB}Mi"}}}}))
    tl.mark("patch", f"kubectl patch pvc to {wanted // MiB}Mi")
    wait_for("the claim grown by hand", lambda: capacity(c, CLAIM) >= wanted, 120)
    # The filesystem too (xfs keeps some of the device for itself).
    wait_for("the filesystem grown by hand", lambda: sampler.samples[-1][2] > wanted - 96 * MiB, 60)
    assert bench.is_alive(), "pgbench ran through the grow"

    # 6b. An upgrade: both workloads rolled to a new tag of the image.
    site.tag_image("docker.io/swell/swell:dev", "docker.io/swell/swell:soak")
    for kind, name in (("daemonset", "swell-node"), ("deployment", "swell-controller")):
        obj = c.get(kind, name, "-n", NAMESPACE)
        patch = [{"op": "replace", "path": f"/spec/template/spec/{group}/{i}/image", "value": "swell/swell:soak"}
                 for group in ("containers", "initContainers")
                 for i, ct in enumerate(obj["spec"]["template"]["spec"].get(group, []))
                 if ct["image"].startswith("swell/swell:")]
        c.kubectl("patch", kind, name, "-n", NAMESPACE, "--type=json", "-p", json.dumps(patch))
    tl.mark("upgrade", "node DaemonSet and controller rolled to swell/swell:soak")
    for kind, name in (("daemonset", "swell-node"), ("deployment", "swell-controller")):
        c.kubectl("rollout", "status", f"{kind}/{name}", "-n", NAMESPACE, "--timeout=300s", timeout=320)
    def upgraded():
        pods = c.get("pods", "-n", NAMESPACE)["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return live and all(
            ct["image"] == "swell/swell:soak" for p in live for ct in p["spec"]["containers"]
            if ct["image"].startswith("swell/swell:")) and all(
            s.get("ready") for p in live for s in p["status"].get("containerStatuses", [])) and len(live) == len(pods)
    wait_for("every Swell pod on the new tag, and ready", upgraded, 300)
    tl.mark("upgrade", "rolled out")

    # 7. Another node drained and brought back while the database runs.
    c.kubectl("drain", site.drain_node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=120s", timeout=180)
    tl.mark("drain", f"{site.drain_node} drained")
    c.kubectl("uncordon", site.drain_node)
    tl.mark("drain", f"{site.drain_node} back")

    # The schedule keeps 3: run until a fourth slot has pruned the first, and for the asked length.
    wait_for("a scheduled snapshot pruned", lambda: events(c, CLAIM, "ScheduledSnapshotPruned"), timeout=300)
    while tl.now() < minutes * 60:
        time.sleep(5)


def check(c, site, tl, ledger, bench, sampler, role, facts, fault, report):
    """The end: every committed ledger id there, amcheck clean, no failed transaction, no restart the
    run did not make, the scheduled snapshots as the real CRDs took them; and the report."""
    host = site.db_host
    if fault == "ledger":
        psql(host, PORT, f"delete from ledger where id = {ledger.committed[-1][0]}")
    present = {int(x) for x in psql(host, PORT, "select id from ledger").stdout.split()}
    lost = [i for i, _ in ledger.committed if i not in present]
    code, out = amcheck(host, PORT)
    facts.update(database_bytes=int(psql(host, PORT, "select pg_database_size('postgres')").stdout or 0),
                 ledger_commits=len(ledger.committed), ledger_lost=len(lost), ledger_failures=len(ledger.failures),
                 pgbench_rounds=len(bench.rounds), pgbench_failed=sum(f or 0 for _, f in bench.rounds),
                 snapshots_taken=len(events(c, CLAIM, "SnapshotScheduled")),
                 snapshots_pruned=len(events(c, CLAIM, "ScheduledSnapshotPruned")),
                 auto_grows=len(events(c, CLAIM, "AutoGrow")), capacity_mib=capacity(c, CLAIM) // MiB,
                 seconds=round(tl.now()))
    if report:
        png = write_report(report, tl, bench, sampler, ledger, facts)
        print(f"soak report: {report}.json{' and ' + png if png else ''}", flush=True)
    print(f"soak facts: {json.dumps(facts)}", flush=True)
    assert not lost, f"committed ledger ids missing: {lost[:10]} of {len(lost)}"
    assert code == 0, f"amcheck: {out}"
    assert not ledger.failures, f"ledger inserts failed: {ledger.failures[:5]}"
    assert bench.rounds and all(rc == 0 and f == 0 for rc, f in bench.rounds), bench.output[-20:]
    assert not role.errors, role.errors[:5]
    kept = c.get("volumesnapshot", "-n", "default", "-l", f"snapshot.swell.dev/claim={CLAIM}")["items"]
    assert 1 <= len(kept) <= 3, [k["metadata"]["name"] for k in kept]
    for item in kept:
        slot = item["metadata"]["annotations"]["snapshot.swell.dev/slot"]
        assert slot.endswith(":00Z"), "every minute, on the minute"
        assert item["metadata"]["name"] == CLAIM + "-" + slot.replace("-", "").replace(":", "").replace("T", "-")[:-1]
        assert item["spec"] == {"source": {"persistentVolumeClaimName": CLAIM}, "volumeSnapshotClassName": "swell-snapshots"}
    notes = c.get("pvc", CLAIM, "-n", "default")["metadata"]["annotations"]
    assert notes["snapshot.swell.dev/last-snapshot"] == max(k["metadata"]["name"] for k in kept)
    assert notes["snapshot.swell.dev/next-snapshot-at"] > max(k["metadata"]["annotations"]["snapshot.swell.dev/slot"]
                                                              for k in kept)
    assert not restarts(c, "default", app="postgres"), "PostgreSQL restarted"
    assert not restarts(c, NAMESPACE), f"Swell's containers restarted: {restarts(c, NAMESPACE)}"


def cleanup(c, site, ledger, bench, sampler, role, handle, strict):
    """Stops the writers, then removes the database, its claim and every scheduled snapshot (their
    contents go through the role, and the sidecar deletes the snapshots). After a failure it is best
    effort, so that the failure, not the cleanup, is reported."""
    ledger.halt.set()
    bench.stop()
    sampler.halt.set()
    try:
        c.kubectl("uncordon", site.drain_node, check=False)
        c.kubectl("delete", "statefulset", "postgres", "-n", "default", "--wait=true", "--timeout=90s", check=strict)
        c.kubectl("delete", "pod", "soak-restore", "-n", "default", "--wait=true", "--timeout=90s", check=False)
        c.kubectl("delete", "pvc", "soak-restore", "-n", "default", "--wait=true", "--timeout=90s", check=False)
        wait_for("the database pod gone", lambda: c.get("pod", "postgres-0", "-n", "default") is None, 90)
        c.kubectl("delete", "pvc", CLAIM, "-n", "default", "--wait=true", "--timeout=90s")
        wait_for("its volume gone", lambda: not [pv for pv in c.get("pv")["items"]
                                                 if pv["spec"].get("csi", {}).get("volumeHandle") == handle], 90)
        c.kubectl("delete", "volumesnapshot", "-n", "default", "-l", f"snapshot.swell.dev/claim={CLAIM}",
                  "--wait=true", "--timeout=60s")
        wait_for("every snapshot's content gone", lambda: not role.contents and not [
            x for x in c.get("volumesnapshotcontent")["items"] if x["spec"]["source"].get("volumeHandle") == handle], 90)
        wait_for("nothing of it left on the node", lambda: not [
            d for d in site.listdir("/var/lib/swell/snapshots") + site.listdir("/var/lib/swell/volumes")
            if d.startswith("snapshot-") or d == handle], 60)
    except Exception:
        if strict:
            raise
    finally:
        role.halt.set()
