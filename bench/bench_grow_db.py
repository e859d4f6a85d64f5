#!/usr/bin/env python3
"""Many online grows under a real database's commits, on a loop volume (issue 36, goal 2).

For each database, on an xfs loop volume that the plugin made and staged (the default class):
  - MariaDB: conformance/mariadb_stream.lua's writer (batches of 100 rows of 1 KiB, one commit a
    batch, paced at --pace batches a second) beside --readers reader threads;
  - PostgreSQL 15: pgbench tpcb-like, 4 clients, every transaction logged (`pgbench -l`).
While it runs, the volume grows by 64 MiB --grows times through the plugin (ControllerExpandVolume,
then NodeExpandVolume), and as many times by hand with the tools the plugin drives (ftruncate of the
backing file, `losetup -c`, `xfs_growfs`), alternating, with --gap seconds between grows.

Before each, the same load runs as long on a plain directory of the same filesystem, with no
grow: the longest commit there is what the disk alone does to commits under that load.

It reports, for each way of growing: each grow's time (median, p90, max); the longest commit in
flight during a grow, against the longest commit that overlapped no grow; and the commits a second
during grows against the whole run's. For the plugin's grows it adds the plugin's own time and
spans (from its log). At the end the filesystem must show the size of every grow.

Usage: bench/bench_grow_db.py [path/to/swell] [--grows 12] [--gap 1.5] [--pace 40] [--readers 4]
       [--only mariadb|postgres]   (needs root, xfsprogs, mariadb-server, sysbench, postgresql-15:
       scripts/setup.sh --tests installs them)
"""
import argparse
import glob
import re
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "conformance"))
from conftest import Plugin, clean_host, free_port, MiB, GiB  # noqa: E402
import bench_db  # noqa: E402
import mdb  # noqa: E402
import pg  # noqa: E402

STEP = 64 * MiB


def now():
    """Seconds on CLOCK_BOOTTIME (the MariaDB stream's clock) and on the wall clock (pgbench's)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME), time.time()


class Grower:
    """Grows one volume, alternating the plugin and the tools by hand; records every grow's window."""

    def __init__(self, vol):
        self.vol = vol
        self.disk = os.path.join(vol.plugin.data, "volumes", vol.name, "disk.img")
        self.size = vol.size
        self.grows = []  # (way, (boot start, wall start), (boot end, wall end))
        self.steps = {}  # a grow by hand's steps: name -> [ms]
        self.stacks = {}  # xfs_growfs's kernel stack (top frames) -> samples, 5 ms apart

    def plugin(self):
        self.size += STEP
        self.vol.grow(self.size)

    def by_hand(self):
        self.size += STEP
        t = [time.monotonic()]
        os.truncate(self.disk, self.size)
        t.append(time.monotonic())
        subprocess.run(["losetup", "-c", "/dev/" + self.vol.loop()], check=True)
        t.append(time.monotonic())
        growfs = subprocess.Popen(["xfs_growfs", "-d", self.vol.target], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        # Where it waits: its kernel stack, sampled every 5 ms while it runs.
        while growfs.poll() is None:
            try:
                with open(f"/proc/{growfs.pid}/stack") as f:
                    frames = [line.split()[-1].split("+")[0] for line in f if line.strip()]
            except OSError:
                frames = []
            if frames:
                self.stacks[" < ".join(frames[:6])] = self.stacks.get(" < ".join(frames[:6]), 0) + 1
            time.sleep(0.005)
        if growfs.returncode != 0:
            raise RuntimeError(f"xfs_growfs failed with {growfs.returncode}")
        t.append(time.monotonic())
        for name, a, b in zip(("ftruncate", "losetup -c", "xfs_growfs"), t, t[1:]):
            self.steps.setdefault(name, []).append((b - a) * 1e3)

    def run(self, count, gap):
        for i in range(2 * count):
            way, fn = ("plugin", self.plugin) if i % 2 == 0 else ("by hand", self.by_hand)
            start = now()
            fn()
            self.grows.append((way, start, now()))
            time.sleep(gap)

    def check(self):
        st = os.statvfs(self.vol.target)
        fs_bytes = st.f_blocks * st.f_frsize
        # xfs keeps its log and metadata out of f_blocks: the filesystem must hold nearly every byte.
        if fs_bytes < self.size - 64 * MiB:
            raise RuntimeError(f"the filesystem shows {fs_bytes} bytes after growing to {self.size}")
        return fs_bytes


def analyse(spans, grows, clock):
    """spans: [(start, end)] of commits, seconds on the clock `clock` (0 boot, 1 wall)."""
    out = {}
    windows_all = [(g[1][clock], g[2][clock]) for g in grows]
    outside = [(s, e) for s, e in spans if not any(s < we and e > ws for ws, we in windows_all)]
    run_start, run_end = min(s for s, _ in spans), max(e for _, e in spans)
    rate = len(spans) / (run_end - run_start)
    for way in ("plugin", "by hand"):
        windows = [(g[1][clock], g[2][clock]) for g in grows if g[0] == way]
        times = sorted((we - ws) * 1e3 for ws, we in windows)
        during = [(s, e) for s, e in spans if any(s < we and e > ws for ws, we in windows)]
        ended = sum(1 for _, e in spans if any(ws <= e < we for ws, we in windows))
        window_seconds = sum(we - ws for ws, we in windows)
        out[way] = {
            "grows": len(times), "median_ms": statistics.median(times),
            "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))], "max_ms": times[-1],
            "longest_commit_during_ms": max((e - s for s, e in during), default=0.0) * 1e3,
            "commits_a_second_during": ended / window_seconds if window_seconds else float("nan"),
        }
    out["longest_commit_outside_ms"] = max((e - s for s, e in outside), default=0.0) * 1e3
    out["median_commit_ms"] = statistics.median(e - s for s, e in spans) * 1e3
    out["commits_a_second"] = rate
    out["commits"] = len(spans)
    return out


def plugin_spans(plugin, since_line):
    """The plugin's own ms and spans for each ControllerExpandVolume and NodeExpandVolume since a line
    (its log's `method=M ms=X spans=a:1,b:2` fields)."""
    found = {"ControllerExpandVolume": [], "NodeExpandVolume": []}
    with open(plugin.log_path) as f:
        lines = f.readlines()[since_line:]
    for line in lines:
        m = re.search(r"code=OK .*method=(\w+) ms=([0-9.]+)(?: spans=(\S+))?", line) or \
            re.search(r"method=(\w+) ms=([0-9.]+)(?: spans=(\S+))?.*code=OK", line)
        if m and m.group(1) in found:
            spans = dict(kv.split(":") for kv in (m.group(3) or "").split(",") if ":" in kv)
            found[m.group(1)].append((float(m.group(2)), {k: float(v) for k, v in spans.items()}))
    return found


def log_lines(plugin):
    with open(plugin.log_path) as f:
        return sum(1 for _ in f)


def mariadb_run(directory, args, work, during):
    """The MariaDB stream on `directory` while `during()` runs; returns each commit's (start, end) in
    seconds of CLOCK_BOOTTIME."""
    datadir = os.path.join(directory, "mysql")
    mdb.make_datadir(datadir)
    readers = writer = None
    with mdb.server(datadir, work) as sock:
        try:
            seconds = int(3 + 2 * args.grows * (args.gap + 0.3) + 5)
            log = os.path.join(work, "commits.log")
            readers = subprocess.Popen(mdb.sysbench_argv(sock, "--role=reader", f"--threads={args.readers}",
                                                         f"--time={seconds + 5}", "run"),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            writer = subprocess.Popen(mdb.sysbench_argv(sock, "--role=writer", "--threads=1", f"--pace={args.pace}",
                                                        f"--log={log}", f"--time={seconds}", "run"),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(3)
            during()
            out, _ = writer.communicate(timeout=seconds + 120)
            if writer.returncode != 0:
                raise RuntimeError(f"the MariaDB writer failed:\n{out[-3000:]}")
            return [(s / 1e3, e / 1e3) for s, e in mdb.commits(open(log).read())]
        finally:
            for p in (writer, readers):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()


def postgres_run(directory, args, work, during):
    """pgbench on `directory` while `during()` runs; returns each transaction's (start, end) in
    seconds of the wall clock."""
    server = pg.Server(os.path.join(directory, "pgdata"), free_port())
    logdir = os.path.join(work, "pgbench")
    os.makedirs(logdir)
    shutil.chown(logdir, "postgres", "postgres")
    pg.open_path_for_postgres(logdir)
    try:
        server.initdb()
        server.start()
        server.pgbench("-i", "-s", "10", "-q", check=True, capture_output=True)
        server.psql("CHECKPOINT")
        seconds = int(3 + 2 * args.grows * (args.gap + 0.3) + 5)
        load = server.pgbench_background("-c", "4", "-j", "2", "-T", str(seconds), "-l",
                                         f"--log-prefix={logdir}/tx")
        time.sleep(3)
        during()
        out, _ = load.communicate(timeout=seconds + 120)
        if load.returncode != 0 or "number of failed transactions: 0" not in out:
            raise RuntimeError(f"pgbench failed:\n{out[-3000:]}")
        spans = []
        for path in glob.glob(f"{logdir}/tx*"):
            with open(path) as f:
                for line in f:
                    fields = line.split()
                    # client, transaction, latency µs, script, end s, end µs
                    end = int(fields[4]) + int(fields[5]) / 1e6
                    spans.append((end - int(fields[2]) / 1e6, end))
        return spans
    finally:
        server.stop()


def report(name, grower, result, spans):
    print(f"{name} on a loop volume: {result['commits']} commits, {result['commits_a_second']:.0f} a second, median "
          f"{result['median_commit_ms']:.2f} ms; longest commit outside every grow "
          f"{result['longest_commit_outside_ms']:.1f} ms; filesystem {grower.check() / MiB:.0f} MiB")
    for way in ("plugin", "by hand"):
        r = result[way]
        print(f"  {way:8s} {r['grows']} grows: median {r['median_ms']:.1f} ms, p90 {r['p90_ms']:.1f}, max "
              f"{r['max_ms']:.1f}; longest commit during them {r['longest_commit_during_ms']:.1f} ms; "
              f"{r['commits_a_second_during']:.0f} commits a second during them")
    for name, ms in grower.steps.items():
        print(f"  by hand, {name}: median {statistics.median(ms):.1f} ms, max {max(ms):.1f}")
    total = sum(grower.stacks.values())
    for stack, n in sorted(grower.stacks.items(), key=lambda kv: -kv[1])[:4]:
        print(f"  xfs_growfs's kernel stack in {n} of {total} samples (5 ms apart): {stack}")
    for method, calls in spans.items():
        if not calls:
            continue
        ms = sorted(c[0] for c in calls)
        keys = sorted({k for _, s in calls for k in s})
        parts = ", ".join(f"{k} {statistics.median(s.get(k, 0.0) for _, s in calls):.2f}" for k in keys)
        print(f"  the plugin's {method}: median {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} "
              f"(median spans, ms: {parts or 'none'})")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("swell", nargs="?", default=None)
    ap.add_argument("--grows", type=int, default=12, help="grows by each way, per database")
    ap.add_argument("--gap", type=float, default=1.5)
    ap.add_argument("--pace", type=int, default=40, help="MariaDB batches of 100 rows a second")
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--only", choices=["mariadb", "postgres"])
    args = ap.parse_args()
    if args.swell:
        import conftest
        conftest.SWELL = os.path.abspath(args.swell)
    root = tempfile.mkdtemp(prefix="swell-benchgrowdb-", dir="/var/tmp")
    plugin = Plugin(root)
    try:
        plugin.start()
        print(f"grows of {STEP // MiB} MiB, {args.grows} by each way per database, {args.gap} s apart; "
              f"MariaDB at {args.pace} batches of 100 rows a second beside {args.readers} readers; "
              f"pgbench -c 4 -j 2 scale 10")
        for name, run, clock in (("MariaDB", mariadb_run, 0), ("PostgreSQL", postgres_run, 1)):
            if args.only and args.only != name.lower():
                continue
            # The same load on a plain directory of the same filesystem, as long, with no grow: what
            # the disk itself does to commits.
            plain = tempfile.mkdtemp(prefix="plain-", dir=root)
            os.chmod(plain, 0o755)
            spans = run(plain, args, tempfile.mkdtemp(prefix="work-", dir=root),
                        lambda: time.sleep(2 * args.grows * (args.gap + 0.05)))
            commits = [e - s for s, e in spans]
            print(f"\n{name} on the host directory, no grow: {len(spans)} commits, "
                  f"{len(spans) / (max(e for _, e in spans) - min(s for s, _ in spans)):.0f} a second, median "
                  f"{statistics.median(commits) * 1e3:.2f} ms, longest {max(commits) * 1e3:.1f} ms")
            shutil.rmtree(plain, ignore_errors=True)
            vol = bench_db.Volume(plugin, f"grow-{name.lower()}", size=1 * GiB, fs="xfs")
            work = tempfile.mkdtemp(prefix="work-", dir=root)
            try:
                grower = Grower(vol)
                first = log_lines(plugin)
                spans = run(vol.target, args, work, lambda: grower.run(args.grows, args.gap))
                report(name, grower, analyse(spans, grower.grows, clock), plugin_spans(plugin, first))
            finally:
                vol.remove()
    finally:
        try:
            plugin.stop()
        finally:
            clean_host(root)
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
