#!/usr/bin/env python3
"""Loop volumes on a busy node: the host directory against Swell loop volumes, idle and with the
CPUs kept busy, in one run (issue 36, goals 3 and 4).

For each place (the host directory, a default xfs loop volume, a thick xfs loop volume), with no
load and then with `--hogs` busy processes (default: two per core, so that every core has a queue),
the same jobs:
  - fio `commit`: 8 KiB sequential writes, each followed by fdatasync (a database's commit);
  - fio `randwrite`: 4 KiB, O_DIRECT, libaio, queue depth 16;
  - PostgreSQL 15 under pgbench (tpcb-like, scale 10, 4 clients, 2 threads), fsync on.
For the commits it also counts what reached the disk under the data directory (/proc/diskstats):
writes and flushes per commit, which show what a commit costs each place.

Every place is measured once per round (in reverse order on even rounds, against drift); the
ratios are medians over rounds of each place against the host directory of the same round and
load. Needs root, fio and postgresql-15 (`scripts/setup.sh --tests`).
Usage: bench/bench_busy.py [path/to/swell] [--seconds 8] [--pgbench-seconds 15] [--rounds 2] [--hogs N]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "conformance"))
sys.path.insert(0, HERE)
from conftest import Plugin, clean_host  # noqa: E402
import pg  # noqa: E402
from bench_db import Volume, fio, pgbench_tps  # noqa: E402

PLACES = [  # label, class parameters (None: the host directory)
    ("host directory", None),
    ("Swell loop, xfs (default)", {}),
    ("Swell loop, xfs, thick", {"provisioning": "thick"}),
]
HOST = PLACES[0][0]


def disk_of(path):
    """The /proc/diskstats name of the block device holding `path`."""
    dev = os.stat(path).st_dev
    return os.path.basename(os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"))


def disk_counts(name):
    """(writes completed, flushes completed) of a block device."""
    with open("/proc/diskstats") as f:
        for line in f:
            fields = line.split()
            if fields[2] == name:
                return int(fields[7]), int(fields[19]) if len(fields) > 19 else 0
    raise RuntimeError(f"{name} is not in /proc/diskstats")


class Hogs:
    """`n` processes that only spin, at the default priority, as a node's other pods would."""

    def __init__(self, n):
        self.procs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(n)]

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


def measure(directory, seconds, pgbench_seconds, disk):
    w0, f0 = disk_counts(disk)
    commit = fio(directory, "commit", seconds, rw="write", bs="8k", fdatasync=1, size="64m")
    w1, f1 = disk_counts(disk)
    n = max(1, commit["write"]["total_ios"])
    write = fio(directory, "randwrite", seconds, rw="randwrite", bs="4k", direct=1, ioengine="libaio", iodepth=16,
                ramp_time=2)
    for name in ("commit.0.0", "randwrite.0.0"):
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
    tps, _, _ = pgbench_tps(directory, pgbench_seconds)
    return {"commits": commit["write"]["iops"], "writes_per_commit": (w1 - w0) / n,
            "flushes_per_commit": (f1 - f0) / n, "randwrite": write["write"]["iops"], "tps": tps}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("swell", nargs="?", default=".build/release/swell")
    ap.add_argument("--seconds", type=int, default=8, help="each fio job's run time")
    ap.add_argument("--pgbench-seconds", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--hogs", type=int, default=2 * os.cpu_count())
    args = ap.parse_args()
    if shutil.which("fio") is None or not pg.available():
        sys.exit("needs fio and postgresql-15: run scripts/setup.sh --tests")
    import conftest
    conftest.SWELL = os.path.abspath(args.swell)

    root = tempfile.mkdtemp(prefix="swell-benchbusy-")
    pg.open_path_for_postgres(root)
    plugin = Plugin(root)
    results = []  # (round, load, label, figures)
    try:
        plugin.start()
        host = os.path.join(root, "hostdir")
        os.makedirs(host)
        os.chmod(host, 0o755)
        disk = disk_of(host)
        fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", host], capture_output=True, text=True).stdout.strip()
        print(f"host directory: {host} ({fs}, on {disk}); Swell volumes: loop devices backed by files in the same "
              f"filesystem; busy: {args.hogs} spinning processes on {os.cpu_count()} cores")
        print("| Round | Load | Where | fio commits/s | disk writes / flushes per commit | fio 4k random writes/s (QD16) "
              "| pgbench TPS |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in range(args.rounds):
            for load in ("idle", "busy"):
                order = PLACES if r % 2 == 0 else list(reversed(PLACES))
                for i, (label, params) in enumerate(order):
                    vol = None if params is None else Volume(plugin, f"busy{r}-{load}-{i}", params)
                    hogs = Hogs(args.hogs) if load == "busy" else None
                    try:
                        f = measure(host if vol is None else vol.target, args.seconds, args.pgbench_seconds, disk)
                    finally:
                        if hogs:
                            hogs.stop()
                        if vol:
                            vol.remove()
                    results.append((r, load, label, f))
                    print(f"| {r + 1} | {load} | {label} | {f['commits']:.0f} | {f['writes_per_commit']:.2f} / "
                          f"{f['flushes_per_commit']:.2f} | {f['randwrite']:.0f} | {f['tps']:.0f} |", flush=True)
    finally:
        plugin.stop()
        clean_host(root)

    print()
    print(f"Ratios to the host directory under the same load in the same round, median of {args.rounds} rounds:")
    for load in ("idle", "busy"):
        for label, _ in PLACES[1:]:
            def ratio(key):
                pairs = [(f, next(h for (r2, l2, lab2, h) in results if r2 == r and l2 == load and lab2 == HOST))
                         for (r, l, lab, f) in results if l == load and lab == label]
                return statistics.median(f[key] / h[key] for f, h in pairs)
            print(f"{load}, {label}: commits {ratio('commits'):.2f}x, random writes {ratio('randwrite'):.2f}x, "
                  f"pgbench {ratio('tps'):.2f}x")
    for load in ("idle", "busy"):
        for label, _ in PLACES:
            got = [f for (_, l, lab, f) in results if l == load and lab == label]
            print(f"{load}, {label}: {statistics.median(f['commits'] for f in got):.0f} commits/s, "
                  f"{statistics.median(f['tps'] for f in got):.0f} TPS")


if __name__ == "__main__":
    main()
