"""Auto-grow end to end: a writer fills a staged volume at a steady rate while the per-node sidecar
raises the claim's request, the sidecar resizes, and this test plays kubelet for the node half."""

import errno
import hashlib
import os
import threading
import time


from conftest import NODE, csiconf
from test_sidecar import pv_for, wait_bound

MiB = 1 << 20
FS = "ext4" if csiconf.HAS_SYS_RESOURCE else "xfs"  # ext4 grows online only with CAP_SYS_RESOURCE


class Kubelet(threading.Thread):
    """The node half of a resize, as kubelet does it: on FileSystemResizePending, NodeExpandVolume,
    then status.capacity and the conditions cleared."""

    def __init__(self, api, plugin, claim, handle, staging):
        super().__init__(daemon=True)
        self.api, self.plugin, self.claim, self.handle, self.staging = api, plugin, claim, handle, staging
        self.stop = threading.Event()
        self.expansions = 0
        self.error = None

    def run(self):
        from csi_pb2 import NodeExpandVolumeRequest
        while not self.stop.is_set():
            try:
                pvc = self.api.get(self.api.pvc_path(self.claim))
                st = pvc.get("status", {})
                if st.get("allocatedResourceStatuses", {}).get("storage") == "NodeResizePending":
                    pv = self.api.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
                    size = pv["spec"]["capacity"]["storage"]
                    req = NodeExpandVolumeRequest(volume_id=self.handle, volume_path=self.staging,
                                                  staging_target_path=self.staging)
                    req.capacity_range.required_bytes = int(size[:-2]) * MiB if size.endswith("Mi") else \
                        int(size[:-2]) << 30
                    req.volume_capability.mount.fs_type = FS
                    req.volume_capability.access_mode.mode = 1
                    self.plugin.node.NodeExpandVolume(req)
                    pvc["status"]["capacity"]["storage"] = size
                    pvc["status"].pop("allocatedResourceStatuses", None)
                    pvc["status"]["conditions"] = [c for c in st.get("conditions", [])
                                                   if c["type"] != "FileSystemResizePending"]
                    code, out = self.api.request("PUT", self.api.pvc_path(self.claim) + "/status", pvc)
                    if code == 200:
                        self.expansions += 1
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.error = e
                return
            time.sleep(0.05)


def write_synced(f, chunk, written):
    """Writes and fsyncs one chunk; ENOSPC fails the test, naming how much had been written."""
    try:
        f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    except OSError as e:
        assert e.errno != errno.ENOSPC, f"ENOSPC after {written // MiB} MiB"
        raise


def staged_autogrow_claim(cluster, name, policy):
    """The plugin with /metrics (its port in `cluster.plugin.metrics_port`), a per-node sidecar that auto-grows, a class with `policy` (its
    annotations), a 320Mi claim `name` provisioned and bound, and its volume staged; returns the
    volume handle and the staging path."""
    api = cluster.api
    metrics_port = csiconf.free_port()
    cluster.plugin.stop()
    cluster.plugin.start(extra_args=("--metrics-address", f"127.0.0.1:{metrics_port}"))
    cluster.plugin.metrics_port = metrics_port
    cluster.sidecar("--per-node", "--node-id", NODE, "--autogrow-plugin-address", f"127.0.0.1:{metrics_port}",
                    "--autogrow-max-interval", "1")
    sc = api.create_class("swell", binding="WaitForFirstConsumer", params={"csi.storage.k8s.io/fstype": FS})
    sc["metadata"]["annotations"] = {"autogrow.swell.dev/enabled": "true", **policy}
    api.ok("PUT", "/apis/storage.k8s.io/v1/storageclasses/swell", sc)
    claim = api.create_claim(name, size="320Mi", annotations={"volume.kubernetes.io/selected-node": NODE})
    pv = api.wait("the PV", lambda: pv_for(api, claim))
    wait_bound(api, name)
    handle = pv["spec"]["csi"]["volumeHandle"]
    return handle, cluster.stage(handle, name, FS)


def test_autogrow_keeps_a_filling_volume_from_enospc(cluster):
    api = cluster.api
    handle, staging = staged_autogrow_claim(cluster, "db", {
        "autogrow.swell.dev/threshold": "30%", "autogrow.swell.dev/increase": "50%",
        "autogrow.swell.dev/min-step": "64Mi", "autogrow.swell.dev/max": "640Mi",
        "autogrow.swell.dev/cooldown": "1s"})
    kubelet = Kubelet(api, cluster.plugin, "db", handle, staging)
    kubelet.start()
    try:
        # 500 MiB at about 20 MiB/s: far past the first size, still short of full at the maximum.
        digest = hashlib.sha256()
        path = os.path.join(staging, "data")
        chunk = os.urandom(4 * MiB)
        with open(path, "wb") as f:
            for i in range(125):
                write_synced(f, chunk, i * len(chunk))
                digest.update(chunk)
                time.sleep(0.2)
        capped = api.wait("AutoGrowCapped", lambda: [e for e in api.events_for("db")
                                                      if e["reason"] == "AutoGrowCapped"], timeout=30)
        assert "640Mi" in capped[0]["message"]
        grows = [e for e in api.events_for("db") if e["reason"] == "AutoGrow"]
        assert len(grows) >= 2, grows
        pvc = api.get(api.pvc_path("db"))
        assert pvc["spec"]["resources"]["requests"]["storage"] == "640Mi"
        api.wait("the last growth on the filesystem", lambda: api.get(api.pvc_path("db"))["status"]["capacity"]
                 ["storage"] == "640Mi")
        assert kubelet.error is None, kubelet.error
        # Bigger than a 480 MiB device's filesystem could be: the last growth reached the filesystem.
        st = os.statvfs(staging)
        assert st.f_blocks * st.f_frsize > 500 * MiB
        with open(path, "rb") as f:
            again = hashlib.sha256()
            for block in iter(lambda: f.read(4 * MiB), b""):
                again.update(block)
        assert again.hexdigest() == digest.hexdigest()
        code, text = cluster.sidecars[0].http("/metrics")
        assert 'swell_sidecar_autogrow_total{result="capped"} 1' in text
    finally:
        kubelet.stop.set()
        kubelet.join(timeout=5)
        cluster.unstage(handle, staging)


def test_invalid_policy_is_reported_and_ignored(cluster):
    api = cluster.api
    metrics_port = csiconf.free_port()
    cluster.plugin.stop()
    cluster.plugin.start(extra_args=("--metrics-address", f"127.0.0.1:{metrics_port}"))
    sidecar = cluster.sidecar("--per-node", "--node-id", NODE, "--autogrow-plugin-address",
                              f"127.0.0.1:{metrics_port}", "--autogrow-max-interval", "0.5")
    api.create_class("swell", binding="WaitForFirstConsumer")
    claim = api.create_claim("bad", size="320Mi", annotations={
        "volume.kubernetes.io/selected-node": NODE, "autogrow.swell.dev/enabled": "true",
        "autogrow.swell.dev/max": "1Gi", "autogrow.swell.dev/threshold": "150%"})
    pv = api.wait("the PV", lambda: pv_for(api, claim))
    wait_bound(api, "bad")
    staging = cluster.stage(pv["spec"]["csi"]["volumeHandle"], "bad")
    try:
        event = api.wait("AutoGrowInvalidPolicy", lambda: [e for e in api.events_for("bad")
                                                            if e["reason"] == "AutoGrowInvalidPolicy"])
        assert "threshold" in event[0]["message"]
        # The sidecar looks again and again (its count of invalid policies seen grows), and reports once.
        seen = sidecar.metric("swell_sidecar_deferred_total", operation="autogrow", reason="invalid-policy")
        sidecar.wait_metric("swell_sidecar_deferred_total", seen + 2, operation="autogrow", reason="invalid-policy")
        assert len([e for e in api.events_for("bad") if e["reason"] == "AutoGrowInvalidPolicy"]) == 1
        assert api.get(api.pvc_path("bad"))["spec"]["resources"]["requests"]["storage"] == "320Mi"
        assert sidecar.proc.poll() is None
    finally:
        cluster.unstage(pv["spec"]["csi"]["volumeHandle"], staging)


def test_autogrow_sees_through_bursts_and_says_why_it_grew(cluster):
    """A writer that fills in bursts (12 MiB at once, fsynced, every 6 s: 2 MiB/s) on a volume with
    a 30% threshold stays far from it, and no raise comes: the fill rate is the growth over the 30 s
    horizon, so a burst counts once at its size. (Before, the rate from two samples a second apart,
    smoothed, made a burst several MiB/s, projected over the horizon: with bursts of 16 MiB the
    claim was raised at 80% free, and again at once.) Then bursts of 16 MiB come every 1.5 s until the growth over the
    window would cross the threshold: a raise, whose Event gives the rate and the window behind it."""
    api = cluster.api
    handle, staging = staged_autogrow_claim(cluster, "burst", {
        "autogrow.swell.dev/threshold": "30%", "autogrow.swell.dev/increase": "50%",
        "autogrow.swell.dev/min-step": "64Mi", "autogrow.swell.dev/max": "640Mi"})
    kubelet = Kubelet(api, cluster.plugin, "burst", handle, staging)
    kubelet.start()
    grows = lambda: [e for e in api.events_for("burst") if e["reason"] == "AutoGrow"]  # noqa: E731
    try:
        chunk = os.urandom(12 * MiB)
        first = os.statvfs(staging)
        floor = 0.3 * first.f_blocks * first.f_frsize
        for i in range(5):
            with open(os.path.join(staging, f"b{i}"), "wb") as f:
                write_synced(f, chunk, i * len(chunk))
            time.sleep(6)
        time.sleep(3)
        st = os.statvfs(staging)
        free = st.f_bavail * st.f_frsize
        assert free > 2 * floor, f"the bursts left {free // MiB} MiB free, the threshold is {floor // MiB} MiB"
        assert grows() == [], f"raised at {free // MiB} MiB free by bursts of 16 MiB: {grows()}"
        i, chunk = 5, os.urandom(16 * MiB)
        while not grows():
            assert i < 14, "no raise as the bursts came faster"
            with open(os.path.join(staging, f"b{i}"), "wb") as f:
                write_synced(f, chunk, i * len(chunk))
            i += 1
            time.sleep(1.5)
        message = api.wait("the AutoGrow Event", grows)[0]["message"]
        print(f"after {i} bursts: {message}")
        assert "bytes/s" in message and "horizon would cross the threshold" in message, message
        assert kubelet.error is None, kubelet.error
    finally:
        kubelet.stop.set()
        kubelet.join(timeout=5)
        cluster.unstage(handle, staging)
