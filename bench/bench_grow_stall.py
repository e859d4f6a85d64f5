#!/usr/bin/env python3
"""What each step of an online grow waits for under a commit-heavy load, on a loop volume.

A committer thread writes 8 KiB and fdatasyncs it (a database's WAL commit), round a pre-written
64 MiB file on an xfs loop volume that the plugin staged, and records when every commit started
and ended. Optionally (--readers N) fio runs N random-read jobs on the same volume, to keep the
cores busy as a database's readers do. Then, with quiet gaps between them, each step of a grow
is run by hand, one at a time:

  truncate      the backing file extended (ftruncate), as ControllerExpandVolume does;
  fsync         the backing file fsynced, as ControllerExpandVolume did before this change;
  set-capacity  LOOP_SET_CAPACITY (`losetup -c`), as NodeExpandVolume does;
  growfs        `xfs_growfs`, as NodeExpandVolume does;

and then whole grows through the plugin (ControllerExpandVolume, then NodeExpandVolume).

For each step: how long it took, and the longest commit that overlapped it, against the longest
commit in the quiet windows between steps (each as long as the step). A step that blocks the
volume's I/O shows a longest overlapping commit close to its own duration.

Usage: bench/bench_grow_stall.py [path/to/swell] [--rounds 5] [--readers 0]   (needs root, xfsprogs, fio)
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "conformance"))
from conftest import Plugin, clean_host, csi_pb2, MiB, GiB  # noqa: E402
import bench_db  # noqa: E402

COMMIT = 8192
WAL = 64 * MiB


class Committer(threading.Thread):
    def __init__(self, path):
        super().__init__(daemon=True)
        with open(path, "wb") as f:  # written once, as a database's WAL segments are
            f.write(os.urandom(WAL))
            f.flush()
            os.fsync(f.fileno())
        self.fd = os.open(path, os.O_WRONLY)
        self.spans = []
        self.stop = threading.Event()

    def run(self):
        buf, off = os.urandom(COMMIT), 0
        while not self.stop.is_set():
            t0 = time.monotonic()
            os.pwrite(self.fd, buf, off)
            os.fdatasync(self.fd)
            self.spans.append((t0, time.monotonic()))
            off = (off + COMMIT) % WAL

    def longest(self, start, end):
        """The longest commit that overlapped [start, end], in seconds."""
        return max((e - s for s, e in self.spans if e >= start and s <= end), default=0.0)


def timed(fn):
    t0 = time.monotonic()
    fn()
    return t0, time.monotonic()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("swell", nargs="?", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--readers", type=int, default=0)
    ap.add_argument("--gap", type=float, default=1.0)
    args = ap.parse_args()
    if args.swell:
        import conftest
        conftest.SWELL = os.path.abspath(args.swell)
    root = tempfile.mkdtemp(prefix="swell-benchstall-", dir="/var/tmp")
    plugin = Plugin(root)
    readers = None
    try:
        plugin.start()
        vol = bench_db.Volume(plugin, "stall", size=1 * GiB, fs="xfs")
        disk = os.path.join(plugin.data, "volumes", "stall", "disk.img")
        loop = "/dev/" + vol.loop()
        committer = Committer(os.path.join(vol.target, "wal"))
        if args.readers:
            readers = subprocess.Popen(
                ["fio", "--name=readers", f"--directory={vol.target}", "--size=256m", "--rw=randread", "--bs=4k",
                 "--direct=1", "--ioengine=libaio", "--iodepth=16", f"--numjobs={args.readers}", "--time_based",
                 "--runtime=3600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(5)
        committer.start()
        time.sleep(2)
        size = os.path.getsize(disk)
        steps = {"truncate": [], "fsync": [], "set-capacity": [], "growfs": [], "plugin grow": []}

        def run_step(name, fn):
            step = timed(fn)
            t0 = time.monotonic()
            time.sleep(max(args.gap, step[1] - step[0]))
            steps[name].append((step, t0))

        def fsync_file():
            fd = os.open(disk, os.O_WRONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        def plugin_grow(size):
            plugin.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
                volume_id="stall", capacity_range=csi_pb2.CapacityRange(required_bytes=size)))
            plugin.node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
                volume_id="stall", volume_path=vol.target, staging_target_path=vol.staging,
                capacity_range=csi_pb2.CapacityRange(required_bytes=size), volume_capability=vol.cap))

        for _ in range(args.rounds):
            size += 64 * MiB
            run_step("truncate", lambda: os.truncate(disk, size))
            run_step("fsync", fsync_file)
            run_step("set-capacity", lambda: subprocess.run(["losetup", "-c", loop], check=True))
            run_step("growfs", lambda: subprocess.run(["xfs_growfs", "-d", vol.target], check=True, capture_output=True))
            size += 64 * MiB
            run_step("plugin grow", lambda: plugin_grow(size))
        committer.stop.set()
        committer.join()
        commits = [e - s for s, e in committer.spans]
        print(f"{len(commits)} commits, median {statistics.median(commits) * 1e3:.2f} ms, "
              f"readers: {args.readers}, rounds: {args.rounds}")
        # The quiet baseline for a step: the longest commit in the quiet window after it, over the
        # step's own length, so that both sample the same span of time.
        for name, runs in steps.items():
            durations = [(e - s) * 1e3 for (s, e), _ in runs]
            during = [committer.longest(s, e) * 1e3 for (s, e), _ in runs]
            baseline = [committer.longest(q, q + (e - s)) * 1e3 for (s, e), q in runs]
            print(f"{name:13s} takes median {statistics.median(durations):7.1f} ms (max {max(durations):7.1f}); "
                  f"longest commit during it: median {statistics.median(during):7.1f} ms (max {max(during):7.1f}); "
                  f"in a quiet window as long: median {statistics.median(baseline):6.1f} ms (max {max(baseline):6.1f})",
                  flush=True)
    finally:
        if readers is not None:
            readers.kill()
            readers.wait()
        try:
            plugin.stop()
        finally:
            clean_host(root)
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
