#!/usr/bin/env python3
"""Sidecar benchmark: PVC created -> PV created, and PVC edited -> ControllerExpandVolume answered,
over N claims against the test API server, with the real plugin and the real sidecar; then the
sidecar's idle memory.

Usage: bench/bench_sidecar.py [path/to/swell] [--claims 200]   (use a release build; needs root)

The claims are created already annotated for our provisioner, as kube-controller-manager leaves them,
so the clock measures the sidecar, not the test server's controller emulation. Times are taken from
a watch opened by this script: the PV's ADDED event, and the PV MODIFIED event that carries the new
capacity (the sidecar writes it right after ControllerExpandVolume answers, so this includes one API
write after the CSI call)."""

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "sidecars", "tests"))

import conftest  # noqa: E402


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class PVWatch(threading.Thread):
    """Records when each PV first appears and when its capacity first changes."""

    def __init__(self, api):
        super().__init__(daemon=True)
        self.api = api
        self.added = {}
        self.grown = {}
        self.ready = threading.Event()

    def run(self):
        conn = http.client.HTTPSConnection("127.0.0.1", self.api.port, context=self.api.ctx)
        conn.request("GET", "/api/v1/persistentvolumes?watch=1&resourceVersion=0",
                     headers={"Authorization": f"Bearer {self.api.token}"})
        resp = conn.getresponse()
        self.ready.set()
        while True:
            line = resp.readline()
            if not line:
                return
            now = time.monotonic()
            event = json.loads(line)
            pv = event["object"]
            name = pv["metadata"]["name"]
            if event["type"] == "ADDED":
                self.added.setdefault(name, now)
            elif event["type"] == "MODIFIED" and pv["spec"]["capacity"]["storage"] == "2Gi":
                self.grown.setdefault(name, now)


def wait(what, fn, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def healthy(sidecar):
    try:
        return sidecar.http("/healthz")[0] == 200
    except OSError:
        return False


def sidecar_means(sidecar):
    """Mean seconds per operation, from the sidecar's own histogram."""
    sums, counts = {}, {}
    for line in sidecar.http("/metrics")[1].splitlines():
        for table, suffix in ((sums, "_sum{"), (counts, "_count{")):
            if line.startswith("swell_sidecar_operation_duration_seconds" + suffix):
                op = line.split('operation="')[1].split('"')[0]
                table[op] = float(line.split()[-1])
    return {op: sums[op] / counts[op] for op in sums if counts.get(op)}


def plugin_ms(log, method):
    out = []
    for line in log.splitlines():
        if f"method={method} " in line and "code=OK" in line:
            out.append(float(line.split("ms=")[1].split()[0]))
    return out


def memory(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if parts[0] in ("Rss:", "Pss:", "Private_Clean:", "Private_Dirty:", "Anonymous:"):
                out[parts[0][:-1]] = int(parts[1]) / 1024
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("swell", nargs="?", default=os.path.join(ROOT, ".build", "release", "swell"))
    ap.add_argument("--claims", type=int, default=200)
    args = ap.parse_args()
    conftest.SWELL = conftest.csiconf.SWELL = os.path.abspath(args.swell)
    pki = tempfile.mkdtemp(prefix="swell-pki-")
    certs = conftest.make_certs(pki)
    root = tempfile.mkdtemp(prefix="swell-bench-")
    cluster = conftest.Cluster(root, certs)
    try:
        api = cluster.api
        sidecar = cluster.sidecar("--log-level", "warning")
        api.create_class("swell", params={"csi.storage.k8s.io/fstype": "xfs"})
        watch = PVWatch(api)
        watch.start()
        watch.ready.wait()
        wait("the sidecar's caches", lambda: healthy(sidecar))

        created = {}
        for i in range(args.claims):
            t = time.monotonic()
            pvc = api.create_claim(f"b{i}", annotations={
                "volume.kubernetes.io/storage-provisioner": conftest.DRIVER})
            created[f"pvc-{pvc['metadata']['uid']}"] = (t, f"b{i}")
            time.sleep(0.02)  # one claim every 20 ms: latency, not a burst's queueing
        wait("every PV", lambda: len(watch.added) >= args.claims)
        provision = [watch.added[n] - t for n, (t, _) in created.items()]
        wait("every claim bound", lambda: all(
            api.get(api.pvc_path(c))["status"].get("phase") == "Bound" for _, c in created.values()))

        edited = {}
        for name, (_, claim) in created.items():
            pvc = api.get(api.pvc_path(claim))
            pvc["spec"]["resources"]["requests"]["storage"] = "2Gi"
            t = time.monotonic()
            api.ok("PUT", api.pvc_path(claim), pvc)
            edited[name] = t
            time.sleep(0.02)
        wait("every PV grown", lambda: len(watch.grown) >= args.claims)
        expand = [watch.grown[n] - t for n, t in edited.items()]

        means = sidecar_means(sidecar)
        with open(cluster.plugin.log_path) as f:
            plugin_log = f.read()
        time.sleep(5)
        mem = memory(sidecar.proc.pid)
        print(f"claims: {args.claims}")
        for label, values in (("PVC created -> PV created", provision), ("PVC edited -> PV capacity", expand)):
            print(f"{label}: p50 {statistics.median(values) * 1000:.1f} ms, p99 {pct(values, 99) * 1000:.1f} ms, "
                  f"max {max(values) * 1000:.1f} ms")
        print("inside the sidecar, mean: " + ", ".join(f"{op} {v * 1000:.1f} ms" for op, v in sorted(means.items())))
        for method in ("CreateVolume", "ControllerExpandVolume"):
            values = plugin_ms(plugin_log, method)
            if values:
                print(f"inside the plugin, {method}: p50 {statistics.median(values):.1f} ms")
        print("sidecar memory after the run (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in mem.items()))

        # A fresh sidecar with nothing to do: its idle memory.
        for c in list(created.values()):
            api.ok("DELETE", api.pvc_path(c[1]))
        wait("every volume deleted", lambda: not cluster.volumes(), timeout=300)
        sidecar.stop()
        idle = cluster.sidecar("--log-level", "warning", name="idle")
        wait("the idle sidecar's caches", lambda: healthy(idle))
        time.sleep(5)
        mem = memory(idle.proc.pid)
        print("idle sidecar memory (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in mem.items()))
    finally:
        cluster.stop()
        conftest.csiconf.clean_host(root)
        conftest.csiconf.clean_host(pki)


if __name__ == "__main__":
    main()
