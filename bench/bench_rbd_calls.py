#!/usr/bin/env python3
"""What a call to Ceph costs the rbd backend: the `rbd` CLI as Swell runs it, against librbd in
the process (what calling librbd through Swift's C interop would give). The figures in
docs/performance.md come from this script.

A private cluster (conformance/ceph.py: one monitor, one manager, three memstore OSDs, pool size 2)
on 127.0.0.1. ROUNDS times each, the time of one image's life in five steps (create, info, resize,
image-meta set, remove):
  - `rbd` as Swell runs it: a new process per step, with `-c /dev/null -m MON --id USER --keyfile F
    --client_mount_timeout 15`;
  - librbd through python3-rbd (a thin Cython layer over librbd's C API) with one cluster connection
    kept open, as a long-lived C-interop client would hold it;
  - the same with a connection made and shut down for each step;
and then through the plugin's gRPC socket (a Python grpcio client): CreateVolume,
ControllerExpandVolume and DeleteVolume of an rbd volume, each of which runs three to eight `rbd`
commands. Needs root. Usage: bench/bench_rbd_calls.py [path/to/swell] [rounds]
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "conformance"))
import ceph  # noqa: E402
import conftest  # noqa: E402
from conftest import Plugin, clean_host, create_req, csi_pb2, mount_cap, MiB  # noqa: E402

POOL = "bench"
STEPS = ("create", "info", "resize", "meta", "remove")


def median_p90(values):
    values = sorted(values)
    return statistics.median(values), values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]


def cli_round(cluster, key_file, i):
    base = ["rbd", "-c", "/dev/null", "-m", cluster.monitors, "--id", "bench", "--keyfile", key_file,
            "--client_mount_timeout", "15"]
    spec = f"{POOL}/cli-{i}"
    argvs = {
        "create": ["create", "--size", "64M", "--image-feature", "layering,exclusive-lock", spec],
        "info": ["info", "--format", "json", spec],
        "resize": ["resize", "--size", "128M", "--no-progress", spec],
        "meta": ["image-meta", "set", spec, "swell.record", "volume=x"],
        "remove": ["rm", "--no-progress", spec],
    }
    times = {}
    for step in STEPS:
        start = time.monotonic()
        subprocess.run(base + argvs[step], check=True, capture_output=True)
        times[step] = time.monotonic() - start
    return times


def connect(rados, monitors, key):
    cluster = rados.Rados(rados_id="bench", conffile="/dev/null", conf={"mon_host": monitors, "key": key})
    cluster.connect(timeout=15)
    return cluster


def lib_steps(rbd, ioctx, name):
    def create():
        rbd.RBD().create(ioctx, name, 64 * MiB, old_format=False,
                         features=rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK)

    def info():
        with rbd.Image(ioctx, name, read_only=True) as image:
            image.stat()

    def resize():
        with rbd.Image(ioctx, name) as image:
            image.resize(128 * MiB)

    def meta():
        with rbd.Image(ioctx, name) as image:
            image.metadata_set("swell.record", "volume=x")

    def remove():
        rbd.RBD().remove(ioctx, name)
    return {"create": create, "info": info, "resize": resize, "meta": meta, "remove": remove}


def lib_round(rados, rbd, monitors, key, i, held=None):
    times = {}
    for step in STEPS:
        start = time.monotonic()
        if held is not None:
            lib_steps(rbd, held[1], f"lib-{i}")[step]()
        else:
            cluster = connect(rados, monitors, key)
            try:
                with cluster.open_ioctx(POOL) as ioctx:
                    lib_steps(rbd, ioctx, f"libc-{i}")[step]()
            finally:
                cluster.shutdown()
        times[step] = time.monotonic() - start
    return times


def grpc_round(plugin, i):
    c = plugin.controller
    times = {}
    start = time.monotonic()
    c.CreateVolume(create_req(f"pvc-b{i}", 64 * MiB, cap=mount_cap("ext4"), params={"backend": "rbd"}))
    times["CreateVolume"] = time.monotonic() - start
    start = time.monotonic()
    c.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id=f"pvc-b{i}", capacity_range=csi_pb2.CapacityRange(required_bytes=128 * MiB)))
    times["ControllerExpandVolume"] = time.monotonic() - start
    start = time.monotonic()
    c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=f"pvc-b{i}"))
    times["DeleteVolume"] = time.monotonic() - start
    return times


def report(title, rows):
    print(f"\n{title} (ms, median / p90 of {len(rows)})")
    for step in rows[0]:
        med, p90 = median_p90([r[step] for r in rows])
        print(f"  {step:24s} {med * 1000:8.1f} / {p90 * 1000:8.1f}")
    total = [sum(r.values()) for r in rows]
    med, p90 = median_p90(total)
    print(f"  {'all steps':24s} {med * 1000:8.1f} / {p90 * 1000:8.1f}")


def main():
    swell = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", ".build", "release", "swell")
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    try:
        import rados
        import rbd
    except ImportError:  # Debian's python3-rbd (installed with ceph-common) is in the system's dist-packages
        sys.path.append("/usr/lib/python3/dist-packages")
        import rados
        import rbd
    root = tempfile.mkdtemp(prefix="swell-bench-rbd-")
    cluster = ceph.Cluster(osds=3, pool_size=2).start()
    plugin = None
    try:
        cluster.create_pool(POOL)
        key = cluster.create_user("bench", POOL)
        key_file = os.path.join(root, "bench.key")
        with open(key_file, "w") as f:
            f.write(key + "\n")
        os.chmod(key_file, 0o600)

        report("rbd CLI, a process per step (as Swell runs it)", [cli_round(cluster, key_file, i) for i in range(rounds)])

        held = connect(rados, cluster.monitors, key)
        try:
            with held.open_ioctx(POOL) as ioctx:
                report("librbd in the process, one connection held",
                       [lib_round(rados, rbd, cluster.monitors, key, i, held=(held, ioctx)) for i in range(rounds)])
        finally:
            held.shutdown()
        report("librbd in the process, a connection per step", [lib_round(rados, rbd, cluster.monitors, key, i) for i in range(rounds)])

        conftest.SWELL = os.path.abspath(swell)
        plugin = Plugin(root)
        plugin.start(extra_args=["--rbd-monitors", cluster.monitors, "--rbd-pool", POOL, "--rbd-user", "bench",
                                 "--rbd-key-file", key_file, "--log-level", "error"])
        report(f"Swell's controller over gRPC ({os.path.basename(os.path.dirname(os.path.abspath(swell)))} build)",
               [grpc_round(plugin, i) for i in range(rounds)])
    finally:
        if plugin is not None:
            plugin.stop()
        cluster.stop()
        clean_host(root)


if __name__ == "__main__":
    main()
