#!/usr/bin/env python3
"""Snapshot, restore and clone times: the figures in docs/performance.md come from this script.

For each data-directory filesystem (xfs with reflink=1, and ext4), a sparse image under /tmp is
formatted and loop-mounted as the plugin's data directory. A 10 GiB ext4 volume is staged there
and 1 GiB of random data written into it; then, ROUNDS times each, the server-side durations of:
  - CreateSnapshot of the mounted volume (its filesystem frozen around the copy);
  - CreateVolume from that snapshot (a restore);
  - CreateVolume from the mounted volume (a clone).
For comparison, `cp --sparse=always` (ext4) or `cp --reflink=always` (xfs) of the same backing file
on the same filesystem, followed by `sync` of the copy (the plugin fsyncs its copy too). Needs root. Usage: bench/bench_snapshot.py [path/to/swell] [rounds]
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conformance"))
from conftest import Plugin, clean_host, create_req, csi_pb2, mount_cap, MiB, GiB  # noqa: E402
import conftest  # noqa: E402


def timed(call):
    start = time.monotonic()
    result = call()
    return time.monotonic() - start, result


def run_one(fs, rounds):
    root = tempfile.mkdtemp(prefix="swell-bench-snap-")
    os.chmod(root, 0o755)
    image = os.path.join(root, "datafs.img")
    with open(image, "wb") as f:
        f.truncate(24 * GiB)
    mkfs = ["mkfs.xfs", "-q", "-m", "reflink=1"] if fs == "xfs" else ["mkfs.ext4", "-q", "-F"]
    subprocess.run(mkfs + [image], check=True, capture_output=True)
    plugin = Plugin(root)
    os.makedirs(plugin.data)
    subprocess.run(["mount", "-o", "loop", image, plugin.data], check=True)
    figures = {"snapshot": [], "restore": [], "clone": [], "reference copy": []}
    methods = set()
    try:
        plugin.start()
        cap = mount_cap("ext4")
        plugin.controller.CreateVolume(create_req("big", required=10 * GiB, cap=cap))
        staging = os.path.join(root, "stage", "big")
        plugin.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id="big", staging_target_path=staging, volume_capability=cap,
            publish_context=plugin.publish_here("big", cap)))
        subprocess.run(["dd", "if=/dev/urandom", f"of={staging}/data", "bs=4M", "count=256", "conv=fsync"],
                       check=True, capture_output=True)
        disk = os.path.join(plugin.data, "volumes", "big", "disk.img")
        allocated = os.stat(disk).st_blocks * 512
        for i in range(rounds):
            t, _ = timed(lambda: plugin.controller.CreateSnapshot(
                csi_pb2.CreateSnapshotRequest(name=f"s{i}", source_volume_id="big")))
            figures["snapshot"].append(t)
            meta = open(os.path.join(plugin.data, "snapshots", f"s{i}", "meta")).read()
            methods.add(meta.split("method=")[1].split()[0])
            req = create_req(f"r{i}", required=0, cap=cap)
            req.volume_content_source.snapshot.snapshot_id = f"s{i}"
            figures["restore"].append(timed(lambda: plugin.controller.CreateVolume(req))[0])
            req = create_req(f"c{i}", required=0, cap=cap)
            req.volume_content_source.volume.volume_id = "big"
            figures["clone"].append(timed(lambda: plugin.controller.CreateVolume(req))[0])
            ref = os.path.join(plugin.data, f"reference{i}.img")
            flag = "--reflink=always" if fs == "xfs" else "--sparse=always"
            # The plugin's copy ends with an fsync; so does the reference's, inside its time.
            figures["reference copy"].append(timed(lambda: (subprocess.run(["cp", flag, disk, ref], check=True),
                                                             subprocess.run(["sync", ref], check=True)))[0])
            os.unlink(ref)
            for name in (f"r{i}", f"c{i}"):
                plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=name))
            plugin.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=f"s{i}"))
        plugin.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id="big", staging_target_path=staging))
        return figures, allocated, methods
    finally:
        plugin.stop()
        clean_host(root)


def main():
    swell = sys.argv[1] if len(sys.argv) > 1 else os.path.join(conftest.ROOT, ".build", "release", "swell")
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    conftest.SWELL = swell
    print(f"bench_snapshot: {swell}, {rounds} rounds, a 10 GiB ext4 volume holding 1 GiB, staged (frozen for copies)")
    for fs in ("xfs", "ext4"):
        figures, allocated, methods = run_one(fs, rounds)
        print(f"\ndata directory on {fs} (the plugin's method: {', '.join(sorted(methods))}); "
              f"the backing file has {allocated / MiB:.0f} MiB allocated")
        for what, values in figures.items():
            print(f"  {what:15s} median {statistics.median(values) * 1000:8.1f} ms  "
                  f"(min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f})")


if __name__ == "__main__":
    main()
