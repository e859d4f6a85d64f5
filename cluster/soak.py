"""The soak's moving parts (cluster/test_cluster.py::test_soak_a_databases_whole_life): the ledger
writer, pgbench beside it, a sampler of the volume's size, the common snapshot-controller's part for
the scheduled snapshots (the node kit has no snapshot-controller), and the report.

Every part records onto one timeline (seconds since the soak began), which the report draws."""
import glob
import json
import os
import re
import subprocess
import threading
import time

PG_BIN = "/usr/lib/postgresql/15/bin"


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


def psql(port, sql, db="postgres", timeout=60):
    return subprocess.run([f"{PG_BIN}/psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", db,
                           "-v", "ON_ERROR_STOP=1", "-Atc", sql], capture_output=True, text=True, timeout=timeout)


class Ledger(threading.Thread):
    """Appends rows one transaction at a time, and records each id whose COMMIT returned, with the
    wall-clock time it returned. A failed insert is counted with its time and message."""

    def __init__(self, port, timeline):
        super().__init__(daemon=True)
        self.port, self.timeline = port, timeline
        self.committed = []  # (id, wall time the commit returned)
        self.failures = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            r = psql(self.port, "insert into ledger default values returning id", timeout=30)
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

    def __init__(self, port, timeline):
        super().__init__(daemon=True)
        self.port, self.timeline = port, timeline
        self.samples = []  # (t, tps, latency ms)
        self.output = []
        self.rounds = []  # (exit code, failed transactions or None)
        self.halt = threading.Event()
        self.proc = None

    def run(self):
        while not self.halt.is_set():
            start = self.timeline.now()
            self.proc = subprocess.Popen(
                [f"{PG_BIN}/pgbench", "-c", "2", "-j", "2", "-T", "30", "-P", "2", "-h", "127.0.0.1", "-p",
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
    """The claim's capacity, and the mounted filesystem's size and use, every 2 s."""

    def __init__(self, c, claim, timeline):
        super().__init__(daemon=True)
        self.c, self.claim, self.timeline = c, claim, timeline
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
                mounts = glob.glob(f"/var/lib/kubelet/pods/*/volumes/kubernetes.io~csi/{pvc['spec']['volumeName']}/mount")
                if mounts:
                    st = os.statvfs(mounts[0])
                    self.samples.append((round(self.timeline.now(), 2), cap, st.f_blocks * st.f_frsize,
                                         (st.f_blocks - st.f_bfree) * st.f_frsize))
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
              "restart": "tab:brown", "upgrade": "black", "patch": "tab:olive"}
    for t, kind, text in timeline.events:
        if kind in colors:
            for ax in (a, b, v):
                ax.axvline(t, color=colors[kind], alpha=0.5, linewidth=1)
            a.annotate(kind, (t, a.get_ylim()[1]), rotation=90, fontsize=7, va="top", color=colors[kind])
    fig.suptitle("Swell soak: PostgreSQL 15 on a loop (xfs) claim, one timeline")
    fig.tight_layout()
    fig.savefig(path + ".png", dpi=80)
    return path + ".png"
