#!/usr/bin/env python3
"""Auto-grow benchmark, with the real plugin and sidecar against the test API server, and kubelet's
node half played by sidecars/tests/test_autogrow.py's Kubelet thread (it polls every 50 ms).

1. Reaction time: an idle 1 GiB volume is filled in one burst, as fast as the disk takes it; from the
   write that takes free space under the threshold to the filesystem showing the new size (statvfs),
   over 5 volumes (0 when the volume grew before the threshold was reached). The sidecar runs with
   its defaults (--autogrow-max-interval 2 s, --autogrow-horizon 30 s).
2. Sustained rate: with the default policy (10 % free, +20 %, at least 1 GiB, no cooldown) on a
   1 GiB volume and a 16 GiB maximum, the highest steady write rate that never meets ENOSPC while
   3 GiB are written.

Usage: bench/bench_autogrow.py [path/to/swell]   (use a release build; needs root)"""

import errno
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "sidecars", "tests"))

import conftest  # noqa: E402
import test_autogrow  # noqa: E402

MiB = 1 << 20
CHUNK = 4 * MiB


def start(swell, *flags):
    conftest.SWELL = conftest.csiconf.SWELL = os.path.abspath(swell)
    test_autogrow.FS = "xfs"
    pki = tempfile.mkdtemp(prefix="swell-pki-")
    certs = conftest.make_certs(pki)
    root = tempfile.mkdtemp(prefix="swell-agbench-")
    cluster = conftest.Cluster(root, certs)
    port = conftest.csiconf.free_port()
    cluster.plugin.stop()
    cluster.plugin.start(extra_args=("--metrics-address", f"127.0.0.1:{port}"))
    cluster.sidecar("--per-node", "--node-id", conftest.NODE, "--autogrow-plugin-address", f"127.0.0.1:{port}",
                    "--log-level", "warning", *flags)
    api = cluster.api
    sc = api.create_class("swell", binding="WaitForFirstConsumer", params={"csi.storage.k8s.io/fstype": "xfs"})
    sc["metadata"]["annotations"] = {"autogrow.swell.dev/enabled": "true", "autogrow.swell.dev/max": "16Gi"}
    api.ok("PUT", "/apis/storage.k8s.io/v1/storageclasses/swell", sc)
    return cluster, pki, root


def staged_volume(cluster, name):
    api = cluster.api
    claim = api.create_claim(name, size="1Gi", annotations={"volume.kubernetes.io/selected-node": conftest.NODE})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pvc = api.get(api.pvc_path(name))
        if pvc.get("status", {}).get("phase") == "Bound":
            break
        time.sleep(0.02)
    pv = api.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
    handle = pv["spec"]["csi"]["volumeHandle"]
    staging = cluster.stage(handle, name)
    kubelet = test_autogrow.Kubelet(api, cluster.plugin, name, handle, staging)
    kubelet.start()
    return claim, handle, staging, kubelet


def unstage(cluster, name, handle, staging, kubelet):
    kubelet.stop.set()
    kubelet.join(timeout=5)
    cluster.unstage(handle, staging)
    cluster.api.ok("DELETE", cluster.api.pvc_path(name))


def size_and_free(path):
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def write_at(path, rate, total, until=None):
    """Writes `total` bytes at `rate` bytes/s; returns (bytes written, ENOSPC met, crossing, open file).

    With until="crossed" it stops 16 MiB past the write that took free space under 10 %, and leaves the
    file open: xfs returns its speculative preallocation when a file is closed, which would lift free
    space back over the threshold (a database keeps its files open too)."""
    chunk = os.urandom(CHUNK)
    written = 0
    crossed = None
    start = time.monotonic()
    f = open(os.path.join(path, "data"), "wb")
    while written < total:
        try:
            f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            if e.errno == errno.ENOSPC:
                f.close()
                return written, True, crossed, None
            raise
        written += CHUNK
        size, free = size_and_free(path)
        if crossed is None and free < size // 10:
            crossed = (time.monotonic(), size, written)
        if until == "crossed" and crossed and written >= crossed[2] + 16 * MiB:
            return written, False, crossed, f
        if until == "crossed" and crossed is None and written > 64 * MiB and size > (1 << 30):
            return written, False, None, f  # grew before the threshold
        delay = start + written / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    f.close()
    return written, False, crossed, None


def reactions(cluster, label):
    out = []
    for i in range(5):
        name = f"react{i}"
        claim, handle, staging, kubelet = staged_volume(cluster, name)
        time.sleep(3)  # idle: the sidecar has seen the volume and no fill rate
        size_start = size_and_free(staging)[0]
        _, _, crossed, f = write_at(staging, 1 << 40, 2 << 30, until="crossed")
        if crossed is None or crossed[1] > size_start:
            out.append(0.0)  # grew before free space reached the threshold
        else:
            while size_and_free(staging)[0] <= crossed[1]:
                time.sleep(0.005)
            out.append(time.monotonic() - crossed[0])
        if f:
            f.close()
        unstage(cluster, name, handle, staging, kubelet)
    early = sum(1 for r in out if r == 0)
    print(f"reaction, threshold crossed -> filesystem grown ({label}; 5 idle 1 GiB volumes, each filled in one "
          f"burst): p50 {statistics.median(out) * 1000:.0f} ms, max {max(out) * 1000:.0f} ms; "
          f"grew before the threshold: {early} of 5")


def main():
    swell = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".build", "release", "swell")
    cluster, pki, root = start(swell, "--autogrow-horizon", "0")
    try:
        reactions(cluster, "--autogrow-horizon 0: the threshold alone")
    finally:
        cluster.stop()
        conftest.csiconf.clean_host(root)
        conftest.csiconf.clean_host(pki)
    cluster, pki, root = start(swell)
    try:
        reactions(cluster, "defaults")
        best = None
        for rate in (50, 100, 200, 400):
            name = f"rate{rate}"
            claim, handle, staging, kubelet = staged_volume(cluster, name)
            t = time.monotonic()
            written, enospc, _, _ = write_at(staging, rate * MiB, 3 << 30)
            took = time.monotonic() - t
            size, _ = size_and_free(staging)
            print(f"  {rate} MiB/s asked, {written / MiB / took:.0f} MiB/s achieved: "
                  f"{'ENOSPC after ' + str(written // MiB) + ' MiB' if enospc else 'no ENOSPC'}, "
                  f"filesystem {size // MiB} MiB")
            unstage(cluster, name, handle, staging, kubelet)
            if enospc:
                break
            best = written / MiB / took
        print(f"highest sustained write rate that never filled the volume: {best:.0f} MiB/s" if best else
              "the volume filled at every rate tried")
    finally:
        cluster.stop()
        conftest.csiconf.clean_host(root)
        conftest.csiconf.clean_host(pki)


if __name__ == "__main__":
    main()
