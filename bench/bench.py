#!/usr/bin/env python3
"""Swell benchmarks: the figures in docs/performance.md come from this script.

Starts the given `swell` binary (use a release build) on a temp socket and measures, through a
Python grpcio client (whose own overhead is included in every latency):
  - CreateVolume+DeleteVolume pairs per second, with p50/p99 of each call, at concurrency 1 and 8,
    against csi-driver-host-path's figures on this machine, and the p50 of each step inside the
    plugin (the `spans=` of its log lines: validate, queue for the I/O pool, lookup, statvfs,
    files, fsync, rename, dir-fsync);
  - ControllerExpandVolume + NodeExpandVolume of a mounted 1 GiB volume to 2 GiB;
  - NodeGetVolumeStats p50;
  - idle RSS, PSS and USS of the plugin, and the time from exec to the first answered Probe.
Needs root. Usage: bench/bench.py [path/to/swell] [--fs xfs|ext4]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conformance"))
from conftest import (Plugin, clean_host, csi_pb2, csi_pb2_grpc, create_req, mount_cap, MiB, GiB,  # noqa: E402
                      HAS_SYS_RESOURCE)
import grpc  # noqa: E402


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def ms(seconds):
    return f"{seconds * 1000:.2f} ms"


def exec_to_probe(swell, root, runs=10):
    times = []
    for i in range(runs):
        sock = os.path.join(root, f"probe{i}.sock")
        start = time.monotonic()
        proc = subprocess.Popen([swell, "plugin", "--endpoint", f"unix://{sock}", "--node-id", "bench",
                                 "--data-dir", os.path.join(root, "probe-data"), "--log-level", "error"])
        try:
            while True:
                if os.path.exists(sock):
                    try:
                        with grpc.insecure_channel(f"unix://{sock}") as ch:
                            csi_pb2_grpc.IdentityStub(ch).Probe(csi_pb2.ProbeRequest(), timeout=1)
                        break
                    except grpc.RpcError:
                        pass
                time.sleep(0.0005)
            times.append(time.monotonic() - start)
        finally:
            proc.terminate()
            proc.wait()
    return times


def anonymous(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def memory(pid):
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return fields.get("Rss", 0), fields.get("Pss", 0), uss


def server_side(plugin, method, since=0):
    """Per-call durations the plugin logged itself (one line per RPC), in seconds."""
    with open(plugin.log_path) as f:
        f.seek(since)
        text = f.read()
    return [float(m) / 1000 for m in re.findall(rf"method={method} ms=([0-9.]+)", text)]


def spans(plugin, method, since=0):
    """{step: [milliseconds per call]} from the `spans=` field of the plugin's log lines."""
    with open(plugin.log_path) as f:
        f.seek(since)
        text = f.read()
    steps = {}
    for field in re.findall(rf"method={method} ms=[0-9.]+ spans=(\S+)", text):
        for part in field.split(","):
            name, value = part.rsplit(":", 1)
            steps.setdefault(name, []).append(float(value))
    return steps


def span_line(steps):
    return ", ".join(f"{name} {statistics.median(v):.3f}" for name, v in steps.items())


# csi-driver-host-path v1.18 on this machine, through the same grpcio client (issue 15's figures).
HOSTPATH_PAIRS_PER_S = {1: 641, 8: 1280}


def log_size(plugin):
    return os.path.getsize(plugin.log_path)


def create_delete(plugin, concurrency, pairs):
    creates, deletes = [], []
    lock = threading.Lock()
    per_worker = pairs // concurrency

    def worker(w):
        for i in range(per_worker):
            name = f"bench-{concurrency}-{w}-{i}"
            t0 = time.monotonic()
            plugin.controller.CreateVolume(create_req(name, required=64 * MiB))
            t1 = time.monotonic()
            plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=name))
            t2 = time.monotonic()
            with lock:
                creates.append(t1 - t0)
                deletes.append(t2 - t1)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    return len(creates) / wall, creates, deletes


def grow(plugin, fs, runs):
    cap = mount_cap(fs)
    totals, controller, node = [], [], []
    for i in range(runs):
        name = f"grow-{i}"
        staging = os.path.join(plugin.root, "staging", name)
        target = os.path.join(plugin.root, "target", name)
        plugin.controller.CreateVolume(create_req(name, required=GiB, cap=cap))
        plugin.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=name, staging_target_path=staging, volume_capability=cap,
            publish_context=plugin.publish_here(name, cap)))
        plugin.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=name, staging_target_path=staging, target_path=target, volume_capability=cap))
        with open(os.path.join(target, "data"), "wb") as f:
            f.write(os.urandom(16 * MiB))
        t0 = time.monotonic()
        plugin.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
            volume_id=name, capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB)))
        t1 = time.monotonic()
        plugin.node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
            volume_id=name, volume_path=target, staging_target_path=staging,
            capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB)))
        t2 = time.monotonic()
        controller.append(t1 - t0)
        node.append(t2 - t1)
        totals.append(t2 - t0)
        stats_times = []
        for _ in range(200):  # 5 volumes x 200 = 1000 calls
            s0 = time.monotonic()
            plugin.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_id=name, volume_path=target))
            stats_times.append(time.monotonic() - s0)
        plugin.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=name, target_path=target))
        plugin.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=name, staging_target_path=staging))
        plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=name))
    return totals, controller, node, stats_times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("swell", nargs="?", default=".build/release/swell")
    ap.add_argument("--fs", default="ext4" if HAS_SYS_RESOURCE else "xfs")
    ap.add_argument("--pairs", type=int, default=800)
    args = ap.parse_args()
    swell = os.path.abspath(args.swell)
    os.environ["SWELL_BIN"] = swell
    import conftest
    conftest.SWELL = swell

    root = tempfile.mkdtemp(prefix="swell-bench-")
    plugin = Plugin(root)
    try:
        plugin.start()
        # Warm up, then read idle memory.
        for i in range(20):
            plugin.controller.CreateVolume(create_req(f"warm{i}", required=MiB))
            plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=f"warm{i}"))
        time.sleep(1)
        rss, pss, uss = memory(plugin.proc.pid)
        anon = anonymous(plugin.proc.pid)
        print(f"binary: {swell} ({os.path.getsize(swell) / 1e6:.1f} MB)")
        print(f"idle memory after warm-up: RSS {rss / 1024:.1f} MiB, PSS {pss / 1024:.1f} MiB, USS {uss / 1024:.1f} MiB, "
              f"anonymous (heap and stacks) {anon / 1024:.1f} MiB")
        probes = []
        for _ in range(500):
            t0 = time.monotonic()
            plugin.identity.Probe(csi_pb2.ProbeRequest())
            probes.append(time.monotonic() - t0)
        print(f"Probe round trip (the client+transport floor): p50 {ms(pct(probes, 50))}")
        for conc in (1, 8):
            mark = log_size(plugin)
            rate, creates, deletes = create_delete(plugin, conc, args.pairs)
            sc, sd = server_side(plugin, "CreateVolume", mark), server_side(plugin, "DeleteVolume", mark)
            print(f"create+delete, concurrency {conc}: {rate:.0f} pairs/s; CreateVolume p50 {ms(pct(creates, 50))} "
                  f"p99 {ms(pct(creates, 99))}; DeleteVolume p50 {ms(pct(deletes, 50))} p99 {ms(pct(deletes, 99))}")
            print(f"  server-side (plugin's own log): CreateVolume p50 {ms(pct(sc, 50))} p99 {ms(pct(sc, 99))}; "
                  f"DeleteVolume p50 {ms(pct(sd, 50))} p99 {ms(pct(sd, 99))}")
            print(f"  against csi-driver-host-path's {HOSTPATH_PAIRS_PER_S[conc]} pairs/s measured here: "
                  f"{rate / HOSTPATH_PAIRS_PER_S[conc]:.2f}x")
            print(f"  CreateVolume steps, p50 ms: {span_line(spans(plugin, 'CreateVolume', mark))}")
            print(f"  DeleteVolume steps, p50 ms: {span_line(spans(plugin, 'DeleteVolume', mark))}")
        totals, controller, node, stats = grow(plugin, args.fs, 5)
        print(f"online grow 1 -> 2 GiB, {args.fs}, mounted, 5 runs: total p50 {ms(statistics.median(totals))} "
              f"(max {ms(max(totals))}); ControllerExpandVolume p50 {ms(statistics.median(controller))}; "
              f"NodeExpandVolume p50 {ms(statistics.median(node))}")
        ss = server_side(plugin, "NodeGetVolumeStats")
        print(f"NodeGetVolumeStats p50 {ms(pct(stats, 50))}, p99 {ms(pct(stats, 99))} (1000 calls); "
              f"server-side p50 {ms(pct(ss, 50))}")
        rss, pss, uss = memory(plugin.proc.pid)
        print(f"memory after the run: RSS {rss / 1024:.1f} MiB, PSS {pss / 1024:.1f} MiB, USS {uss / 1024:.1f} MiB")
    finally:
        plugin.stop()
        clean_host(root)
    probe_root = tempfile.mkdtemp(prefix="swell-bench-")
    try:
        t = exec_to_probe(swell, probe_root)
        print(f"exec to first answered Probe, 10 runs: p50 {ms(statistics.median(t))}, max {ms(max(t))}")
    finally:
        shutil.rmtree(probe_root, ignore_errors=True)


if __name__ == "__main__":
    main()
