#!/usr/bin/env python3
"""Swell at node scale: many volumes on one node, most of them staged (figures in docs/performance.md).

Creates N loop volumes and stages K of them (ext4, a loop device and a mount each), then measures,
with the same volumes and mounts, in two modes of the same binary:
  - `cached`: the default, where loop lookups go through the index of one sysfs pass (checked
    against the kernel's uevent counter) and the mount table is re-read only when the kernel marks
    it changed;
  - `fresh`: SWELL_KERNEL_CACHES=off, where every lookup reads sysfs and mountinfo afresh (what
    every call did before the index).
For each: the time from exec to the first answered Probe, ListVolumes of every volume,
NodeGetVolumeStats, one `/metrics` scrape, one `/volumes` read, DeleteVolume of a volume that is
not attached (its `lookup` step is the loop check), and the plugin's CPU time and memory.
Needs root. Usage: bench/bench_scale.py [path/to/swell] [--volumes 1000] [--staged 1000]
"""
import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conformance"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import Plugin, clean_host, csi_pb2, create_req, mount_cap, free_port  # noqa: E402
from bench import memory, spans  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def timed(fn, runs):
    times = []
    for _ in range(runs):
        start = time.monotonic()
        fn()
        times.append(time.monotonic() - start)
    return statistics.median(times)


def get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def measure(plugin, port, staged, runs):
    out = {}
    pid = plugin.proc.pid
    cpu0 = cpu_seconds(pid)
    out["ListVolumes"] = timed(lambda: plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=60), runs)
    vid, staging = staged[len(staged) // 2]
    out["NodeGetVolumeStats"] = timed(lambda: plugin.node.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=staging)), runs * 4)
    out["/metrics"] = timed(lambda: get(f"http://127.0.0.1:{port}/metrics"), runs)
    out["/volumes"] = timed(lambda: get(f"http://127.0.0.1:{port}/volumes"), runs)
    mark = os.path.getsize(plugin.log_path)
    deletes = []
    for i in range(runs * 4):
        plugin.controller.CreateVolume(create_req(f"extra-{i}", cap=mount_cap("ext4")))
        start = time.monotonic()
        plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=f"extra-{i}"))
        deletes.append(time.monotonic() - start)
    out["DeleteVolume"] = statistics.median(deletes)
    out["DeleteVolume lookup"] = statistics.median(spans(plugin, "DeleteVolume", mark)["lookup"]) / 1000
    out["cpu"] = cpu_seconds(pid) - cpu0
    out["rss"] = memory(pid)[0] / 1024
    return out


def start(plugin, port, env):
    t0 = time.monotonic()
    plugin.start(extra_args=("--metrics-address", f"127.0.0.1:{port}", "--log-level", "info"), env_overrides=env)
    plugin.identity.Probe(csi_pb2.ProbeRequest(), timeout=30)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("swell", nargs="?", default=os.environ.get("SWELL_BIN", ".build/release/swell"))
    ap.add_argument("--volumes", type=int, default=1000)
    ap.add_argument("--staged", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    os.environ["SWELL_BIN"] = os.path.abspath(args.swell)
    import conftest
    conftest.SWELL = os.environ["SWELL_BIN"]

    root = tempfile.mkdtemp(prefix="swell-scale-")
    plugin = Plugin(root)
    port = free_port()
    cap = mount_cap("ext4")
    try:
        start(plugin, port, {})
        ids = [f"scale-{i:04d}" for i in range(args.volumes)]
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda v: plugin.controller.CreateVolume(create_req(v, cap=cap), timeout=120), ids))
        created = time.monotonic() - t0

        def stage(v):
            staging = os.path.join(root, "staging", v)
            plugin.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
                volume_id=v, staging_target_path=staging, volume_capability=cap,
                publish_context=plugin.publish_here(v, cap)), timeout=300)
            return v, staging
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            staged = list(pool.map(stage, ids[:args.staged]))
        staged_s = time.monotonic() - t0
        print(f"{args.volumes} volumes created in {created:.1f} s, {len(staged)} staged (ext4) in {staged_s:.1f} s")
        plugin.stop()

        results = {}
        for mode, env in (("cached", {}), ("fresh", {"SWELL_KERNEL_CACHES": "off"}),
                          ("cached ", {}), ("fresh ", {"SWELL_KERNEL_CACHES": "off"})):
            probe = start(plugin, port, env)
            r = measure(plugin, port, staged, args.runs)
            r["start"] = probe
            results.setdefault(mode.strip(), []).append(r)
            plugin.stop()

        rows = ["start", "ListVolumes", "NodeGetVolumeStats", "/metrics", "/volumes", "DeleteVolume",
                "DeleteVolume lookup"]
        print(f"\n{args.volumes} volumes, {len(staged)} staged; medians of {args.runs}+ calls, "
              f"best of 2 alternating rounds per mode")
        print(f"{'':24} {'cached':>10} {'fresh':>10}  fresh/cached")
        for row in rows:
            c = min(r[row] for r in results["cached"])
            f = min(r[row] for r in results["fresh"])
            print(f"{row:24} {c * 1000:8.2f}ms {f * 1000:8.2f}ms  {f / c:6.1f}x")
        for key, unit in (("cpu", "s"), ("rss", "MiB")):
            c = min(r[key] for r in results["cached"])
            f = min(r[key] for r in results["fresh"])
            print(f"{'plugin ' + key + ' (' + unit + ')':24} {c:10.2f} {f:10.2f}")
    finally:
        plugin.stop()
        clean_host(root)


if __name__ == "__main__":
    main()
