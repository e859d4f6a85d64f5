#!/usr/bin/env python3
"""The sidecar at node scale, against the test API server (sidecars/tests/fakeapi.py, which plays the
PV binder), with the real plugin on loop volumes (figures in docs/performance.md):
  - a burst of N claims posted at once (8 client threads): the time until every one is Bound, and
    the work queue's depth over the burst (the sidecar's own gauge, sampled every 0.2 s), with
    the reconcile retries and 409 conflicts it met;
  - then every volume staged (ext4), with an auto-grow policy that does not trip: the sidecar's and
    the plugin's CPU per second and memory over a quiet minute, with the auto-grow loop looking
    at every volume (NodeGetVolumeStats) and capacity and health published;
  - the plugin's CPU for the same minute, and the sidecar's RSS.
Needs root. Usage: bench/bench_sidecar_scale.py [path/to/swell] [--claims 1000] [--quiet-seconds 60]
"""
import argparse
import concurrent.futures
import os
import re
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "sidecars", "tests"))


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("swell", nargs="?", default=os.environ.get("SWELL_BIN", ".build/release/swell"))
    ap.add_argument("--claims", type=int, default=1000)
    ap.add_argument("--quiet-seconds", type=int, default=60)
    args = ap.parse_args()
    os.environ["SWELL_BIN"] = os.path.abspath(args.swell)
    import conftest  # noqa: E402 (reads SWELL_BIN)
    from conftest import NODE, Cluster, csiconf, make_certs
    conftest.SWELL = csiconf.SWELL = os.environ["SWELL_BIN"]

    pki = tempfile.mkdtemp(prefix="swell-pki-")
    root = tempfile.mkdtemp(prefix="swell-sidescale-")
    cluster = Cluster(root, make_certs(pki))
    try:
        api = cluster.api
        port = csiconf.free_port()
        cluster.plugin.stop()
        cluster.plugin.start(extra_args=("--metrics-address", f"127.0.0.1:{port}", "--log-level", "warning"))
        owner = api.ok("POST", "/apis/apps/v1/namespaces/swell-system/daemonsets", {
            "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "swell-node", "namespace": "swell-system"}})
        api.ok("POST", "/api/v1/namespaces/swell-system/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "swell-node-x", "namespace": "swell-system",
                                                           "ownerReferences": [{
                                                               "apiVersion": "apps/v1", "kind": "DaemonSet",
                                                               "name": "swell-node", "uid": owner["metadata"]["uid"],
                                                               "controller": True}]}})
        sidecar = cluster.sidecar("--per-node", "--node-id", NODE, "--autogrow-plugin-address", f"127.0.0.1:{port}",
                                  "--enable-capacity", "--pod-name", "swell-node-x", "--pod-namespace", "swell-system",
                                  "--log-level", "warning")
        api.create_class("swell", binding="WaitForFirstConsumer", params={"csi.storage.k8s.io/fstype": "ext4"})
        def healthy():
            try:
                return sidecar.http("/healthz")[0] == 200
            except OSError:
                return False
        api.wait("the sidecar's caches", healthy, timeout=60)

        depths, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                m = re.search(r"^swell_sidecar_queue_depth (\S+)$", sidecar.http("/metrics")[1], re.M)
                depths.append((time.monotonic(), float(m.group(1)) if m else 0.0))
                time.sleep(0.2)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        annotations = {"volume.kubernetes.io/selected-node": NODE, "autogrow.swell.dev/enabled": "true",
                       "autogrow.swell.dev/threshold": "90%", "autogrow.swell.dev/max": "1Gi"}
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: api.create_claim(f"c{i:04d}", size="64Mi", annotations=annotations),
                          range(args.claims)))
        posted = time.monotonic() - t0

        def bound():
            items = api.ok("GET", "/api/v1/namespaces/default/persistentvolumeclaims")["items"]
            return sum(1 for c in items if c.get("status", {}).get("phase") == "Bound") == args.claims or None
        api.wait("every claim Bound", bound, timeout=1800)
        all_bound = time.monotonic() - t0
        stop.set()
        sampler.join()
        log = open(sidecar.log_path).read()
        retries = log.count("will retry")
        conflicts = len(re.findall(r"409|Conflict", log))
        peak = max(d for _, d in depths) if depths else 0
        print(f"{args.claims} claims posted in {posted:.1f} s; all Bound {all_bound:.1f} s after the first "
              f"({args.claims / all_bound:.0f} claims/s)")
        print(f"  work queue: peak depth {peak:.0f}, drained {next((t - t0 for t, d in depths if t - t0 > posted and d == 0), float('nan')):.1f} s "
              f"after the first post; {retries} retries, {conflicts} conflict lines in the sidecar log")

        pvs = api.ok("GET", "/api/v1/persistentvolumes")["items"]
        handles = [pv["spec"]["csi"]["volumeHandle"] for pv in pvs]
        from csi_pb2 import NodeStageVolumeRequest
        cap = csiconf.mount_cap("ext4")

        def stage(h):
            path = os.path.join(root, "stage", h)
            cluster.plugin.node.NodeStageVolume(NodeStageVolumeRequest(
                volume_id=h, staging_target_path=path, volume_capability=cap,
                publish_context=cluster.plugin.publish_here(h, cap)), timeout=300)
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(stage, handles))
        print(f"{len(handles)} volumes staged in {time.monotonic() - t0:.1f} s")

        time.sleep(5)
        s0, p0, w0 = cpu_seconds(sidecar.proc.pid), cpu_seconds(cluster.plugin.proc.pid), time.monotonic()
        time.sleep(args.quiet_seconds)
        s1, p1, w1 = cpu_seconds(sidecar.proc.pid), cpu_seconds(cluster.plugin.proc.pid), time.monotonic()
        wall = w1 - w0
        rss, prss = rss_mib(sidecar.proc.pid), rss_mib(cluster.plugin.proc.pid)
        print(f"quiet {wall:.0f} s with {len(handles)} claims synced and staged, auto-grow on every one:")
        print(f"  sidecar: {100 * (s1 - s0) / wall:.1f}% of one core, RSS {rss:.1f} MiB")
        print(f"  plugin:  {100 * (p1 - p0) / wall:.1f}% of one core, RSS {prss:.1f} MiB")
        capacities = api.ok("GET", "/apis/storage.k8s.io/v1/namespaces/swell-system/csistoragecapacities")["items"]
        print(f"  CSIStorageCapacity objects: {len(capacities)}")
    finally:
        cluster.stop()
        csiconf.clean_host(root)
        shutil.rmtree(pki, ignore_errors=True)


if __name__ == "__main__":
    main()
