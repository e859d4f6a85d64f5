#!/usr/bin/env python3
"""The database benchmark: a Swell loop volume against a plain directory on the host filesystem
(what csi-driver-host-path hands a pod), on the same disk, in one run.

For each place, the same jobs with the same settings:
  - fio `commit`: 8 KiB sequential writes, each followed by fdatasync (a database's commit);
  - fio `randread` and `randwrite`: 4 KiB, O_DIRECT, libaio, queue depth 16 after a warm-up ramp
    (and randread at queue depth 1);
  - PostgreSQL 15 under pgbench (tpcb-like, scale 10, 4 clients, 2 threads), fsync on.
The Swell places: xfs and ext4 volumes as the plugin stages them (direct-I/O loop device, sparse
file), xfs provisioned thick, xfs made with a 128 MiB log (the class's `mkfsOptions`), and xfs
with its loop device switched to buffered I/O (what Swell
did before direct I/O), to show what each choice is worth. Every place is measured once per
round (in reverse order on even rounds, against drift), and the ratios are the median over rounds
of each place against the host directory of the same round. Last, pgbench runs again on the
default volume while it is grown online twice, and each grow's time is reported.

Needs root, fio, and postgresql-15 (`scripts/setup.sh --tests` installs both).
Usage: bench/bench_db.py [path/to/swell] [--seconds 10] [--pgbench-seconds 20] [--rounds 2]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import statistics
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "conformance"))
from conftest import Plugin, clean_host, csi_pb2, create_req, mount_cap, free_port, GiB  # noqa: E402
import pg  # noqa: E402

FILE_SIZE = "512m"


def fio(directory, name, seconds, **job):
    argv = ["fio", "--output-format=json", f"--name={name}", f"--directory={directory}", f"--size={FILE_SIZE}",
            f"--runtime={seconds}", "--time_based", "--group_reporting", "--randrepeat=0"]
    argv += [f"--{k}={v}" for k, v in job.items()]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out[out.index("{"):])["jobs"][0]


def p99_ms(section):
    pcts = section.get("clat_ns", section.get("lat_ns", {})).get("percentile", {})
    value = pcts.get("99.000000")
    return value / 1e6 if value else float("nan")


def fio_suite(directory, seconds):
    commit = fio(directory, "commit", seconds, rw="write", bs="8k", ioengine="sync", fdatasync=1)
    # The ramp (not measured) warms whatever caches lie below the guest's disk, for every place alike.
    ramp = max(2, seconds // 2)
    read = fio(directory, "randread", seconds, rw="randread", bs="4k", direct=1, ioengine="libaio", iodepth=16,
               ramp_time=ramp)
    read1 = fio(directory, "randread", seconds, rw="randread", bs="4k", direct=1, ioengine="libaio", iodepth=1)
    write = fio(directory, "randwrite", seconds, rw="randwrite", bs="4k", direct=1, ioengine="libaio", iodepth=16,
                ramp_time=ramp)
    for name in ("commit.0.0", "randread.0.0", "randwrite.0.0"):
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
    return {
        "commit_iops": commit["write"]["iops"],
        "commit_p99_ms": p99_ms(commit["sync"]) if "sync" in commit else float("nan"),
        "write_p99_ms": p99_ms(commit["write"]),
        "read_iops": read["read"]["iops"],
        "read_p99_ms": p99_ms(read["read"]),
        "read_qd1_iops": read1["read"]["iops"],
        "randwrite_iops": write["write"]["iops"],
        "randwrite_p99_ms": p99_ms(write["write"]),
    }


def pgbench_tps(directory, seconds, during=None):
    server = pg.Server(os.path.join(directory, "pgdata"), free_port())
    try:
        server.initdb()
        server.start()
        server.pgbench("-i", "-s", "10", "-q", check=True, capture_output=True)
        server.psql("CHECKPOINT")
        load = server.pgbench_background("-c", "4", "-j", "2", "-T", str(seconds))
        extra = during() if during else None
        out, _ = load.communicate(timeout=seconds + 120)
        if load.returncode != 0 or "number of failed transactions: 0" not in out:
            raise RuntimeError(out)
        tps = float(out.split("tps = ")[1].split()[0])
        latency = float(out.split("latency average = ")[1].split()[0])
        return tps, latency, extra
    finally:
        server.stop()
        shutil.rmtree(os.path.join(directory, "pgdata"), ignore_errors=True)


class Volume:
    def __init__(self, plugin, name, params=None, size=2 * GiB, fs="xfs"):
        self.plugin, self.name = plugin, name
        self.cap = mount_cap(fs)
        self.staging = os.path.join(plugin.root, "staging", name)
        self.target = os.path.join(plugin.root, "target", name)
        self.size = size
        made = plugin.controller.CreateVolume(create_req(name, required=size, cap=self.cap, params=params)).volume
        plugin.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=name, staging_target_path=self.staging, volume_capability=self.cap,
            volume_context=made.volume_context, publish_context=plugin.publish_here(name, self.cap)))
        plugin.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=name, staging_target_path=self.staging, target_path=self.target, volume_capability=self.cap))
        os.chmod(self.target, 0o755)

    def loop(self):
        disk = os.path.realpath(os.path.join(self.plugin.data, "volumes", self.name, "disk.img"))
        for name in os.listdir("/sys/block"):
            try:
                with open(f"/sys/block/{name}/loop/backing_file") as f:
                    if f.read().strip() == disk:
                        return name
            except OSError:
                continue
        raise RuntimeError(f"{self.name} is not attached")

    def direct_io(self):
        with open(f"/sys/block/{self.loop()}/loop/dio") as f:
            return f.read().strip() == "1"

    def grow(self, size):
        t0 = time.monotonic()
        self.plugin.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
            volume_id=self.name, capacity_range=csi_pb2.CapacityRange(required_bytes=size)))
        t1 = time.monotonic()
        self.plugin.node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
            volume_id=self.name, volume_path=self.target, staging_target_path=self.staging,
            capacity_range=csi_pb2.CapacityRange(required_bytes=size)))
        t2 = time.monotonic()
        self.size = size
        return t1 - t0, t2 - t1

    def remove(self):
        self.plugin.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=self.name, target_path=self.target))
        self.plugin.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
            volume_id=self.name, staging_target_path=self.staging))
        self.plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=self.name))


def row(label, f, tps, lat):
    return (f"| {label} | {f['commit_iops']:.0f}/s, p99 {f['commit_p99_ms']:.2f} ms | {f['read_iops']:.0f}/s "
            f"(QD1 {f['read_qd1_iops']:.0f}/s) | {f['randwrite_iops']:.0f}/s | {tps:.0f} tps, {lat:.2f} ms |")


PLACES = [  # label, class parameters (None: the host directory), filesystem, direct I/O
    ("host directory", None, None, None),
    ("Swell xfs, direct I/O (default)", {}, "xfs", True),
    ("Swell ext4, direct I/O (default)", {}, "ext4", True),
    ("Swell xfs, direct I/O, thick", {"provisioning": "thick"}, "xfs", True),
    ("Swell xfs, direct I/O, 128 MiB log (mkfsOptions)", {"mkfsOptions": "-l size=128m"}, "xfs", True),
    ("Swell xfs, buffered loop (before)", {}, "xfs", False),
]
HOST = PLACES[0][0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("swell", nargs="?", default=".build/release/swell")
    ap.add_argument("--seconds", type=int, default=10, help="each fio job's run time")
    ap.add_argument("--pgbench-seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2,
                    help="every place is measured once per round, in reverse order on even rounds")
    args = ap.parse_args()
    if shutil.which("fio") is None or not pg.available():
        sys.exit("needs fio and postgresql-15: run scripts/setup.sh --tests")
    import conftest
    conftest.SWELL = os.path.abspath(args.swell)

    root = tempfile.mkdtemp(prefix="swell-benchdb-")
    pg.open_path_for_postgres(root)
    plugin = Plugin(root)
    rounds = []
    try:
        plugin.start()
        host = os.path.join(root, "hostdir")
        os.makedirs(host)
        os.chmod(host, 0o755)
        fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", host], capture_output=True, text=True).stdout.strip()
        print(f"host directory: {host} ({fs}); Swell volumes: loop devices backed by files in the same filesystem")
        print("| Round | Where | fio commit (8k write + fdatasync) | fio 4k random read, O_DIRECT, QD16 (QD1) | "
              "fio 4k random write, O_DIRECT, QD16 | pgbench (scale 10, 4 clients) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in range(args.rounds):
            results = {}
            order = PLACES if r % 2 == 0 else list(reversed(PLACES))
            for i, (label, params, fstype, dio) in enumerate(order):
                vol = None
                if params is None:
                    directory = host
                else:
                    vol = Volume(plugin, f"db{r}-{i}", params, fs=fstype)
                    if not dio:
                        subprocess.run(["losetup", "--direct-io=off", f"/dev/{vol.loop()}"], check=True)
                    assert vol.direct_io() == dio, label
                    directory = vol.target
                f = fio_suite(directory, args.seconds)
                tps, lat, _ = pgbench_tps(directory, args.pgbench_seconds)
                results[label] = (f, tps, lat)
                print(f"| {r + 1} " + row(label, f, tps, lat), flush=True)
                if vol:
                    vol.remove()
            rounds.append(results)

        # pgbench while the default volume grows online twice.
        vol = Volume(plugin, "dbgrow", {}, size=1 * GiB)
        grows = []

        def grow_twice():
            for size in (int(1.5 * GiB), 2 * GiB):
                time.sleep(args.pgbench_seconds / 3)
                grows.append(vol.grow(size))
        tps, lat, _ = pgbench_tps(vol.target, args.pgbench_seconds, during=grow_twice)
        vol.remove()
    finally:
        plugin.stop()
        clean_host(root)

    print()
    print(f"Ratios to the host directory of the same round, median of {args.rounds} rounds:")
    for label, _, _, _ in PLACES[1:]:
        def ratio(key):
            return statistics.median(rd[label][0][key] / rd[HOST][0][key] for rd in rounds)
        tps_ratio = statistics.median(rd[label][1] / rd[HOST][1] for rd in rounds)
        print(f"{label}: commits {ratio('commit_iops'):.2f}x, reads {ratio('read_iops'):.2f}x "
              f"(QD1 {ratio('read_qd1_iops'):.2f}x), writes {ratio('randwrite_iops'):.2f}x, pgbench {tps_ratio:.2f}x")
    print(f"pgbench during two online grows (1 -> 1.5 -> 2 GiB, xfs): {tps:.0f} tps, {lat:.2f} ms; each grow: " +
          "; ".join(f"ControllerExpandVolume {c * 1000:.1f} ms + NodeExpandVolume {n * 1000:.1f} ms" for c, n in grows))


if __name__ == "__main__":
    main()
