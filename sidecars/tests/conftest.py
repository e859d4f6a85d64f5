"""Fixtures for the sidecar's tests: the test API server (fakeapi.py) over HTTPS, the real plugin on
loop devices, and the real `swell sidecar` binary between them."""

import http.client
import importlib.util
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# The conformance suite's helpers: grpcio stubs from the official csi.proto, the Plugin runner, and
# the host cleanup. Loaded under another name so that the two conftest modules do not collide.
_spec = importlib.util.spec_from_file_location("csiconf", os.path.join(ROOT, "conformance", "conftest.py"))
csiconf = importlib.util.module_from_spec(_spec)
sys.modules["csiconf"] = csiconf
_spec.loader.exec_module(csiconf)

SWELL = csiconf.SWELL
DRIVER = "swell.csi.dev"
NODE = csiconf.NODE_ID
TOPOLOGY_KEY = csiconf.TOPOLOGY_KEY
GiB = 1 << 30


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return make_certs(str(tmp_path_factory.mktemp("pki")))


def make_certs(d):
    """A CA, a server certificate for 127.0.0.1, and a client certificate, all made with openssl."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", "/CN=swell-test-ca", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=swell-{name}/O=system:masters", cwd=d)
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d


class Api:
    """The test API server, and a small client for the tests' own reads and writes."""

    def __init__(self, root, certs, controller_manager=True):
        self.root = root
        self.certs = certs
        self.token_file = os.path.join(root, "server-token")
        self.client_token_file = os.path.join(root, "client-token")
        self.set_token("token-one")
        port_file = os.path.join(root, "api.port")
        self.log_path = os.path.join(root, "api.log")
        log = open(self.log_path, "w")
        args = [sys.executable, os.path.join(HERE, "fakeapi.py"), "--cert", f"{certs}/server.crt",
                "--key", f"{certs}/server.key", "--client-ca", f"{certs}/ca.crt",
                "--token-file", self.token_file, "--port-file", port_file, "--bookmark-interval", "0.5"]
        if controller_manager:
            args.append("--controller-manager")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 20
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("fakeapi did not start:\n" + open(self.log_path).read())
            time.sleep(0.02)
        self.port = int(open(port_file).read())
        self.url = f"https://127.0.0.1:{self.port}"
        self.ctx = ssl.create_default_context(cafile=f"{certs}/ca.crt")

    def set_token(self, token):
        """Rotates the token: the client's file first, then the one the server accepts."""
        for path in (self.client_token_file, self.token_file):
            with open(path + ".tmp", "w") as f:
                f.write(token + "\n")
            os.rename(path + ".tmp", path)
        self.token = token

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def kubeconfig(self, auth="token"):
        """A kubeconfig in the block YAML that kubectl writes: a token file, or a client certificate."""
        path = os.path.join(self.root, f"kubeconfig-{auth}")
        if auth == "token":
            user = f"    tokenFile: {self.client_token_file}\n"
        else:
            user = (f"    client-certificate: {self.certs}/client.crt\n"
                    f"    client-key: {self.certs}/client.key\n")
        with open(path, "w") as f:
            f.write(
                "apiVersion: v1\nkind: Config\n"
                "clusters:\n- cluster:\n"
                f"    certificate-authority: {self.certs}/ca.crt\n"
                f"    server: {self.url}\n"
                "  name: test\n"
                "contexts:\n- context:\n    cluster: test\n    user: test\n  name: test\n"
                "current-context: test  # the only one\n"
                "preferences: {}\n"
                "users:\n- name: test\n  user:\n" + user)
        return path

    # --- the tests' own client

    def request(self, method, path, body=None):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=30)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        return resp.status, json.loads(payload) if payload else None

    def ok(self, method, path, body=None):
        code, out = self.request(method, path, body)
        assert 200 <= code < 300, f"{method} {path}: {code} {out}"
        return out

    def get(self, path):
        code, out = self.request("GET", path)
        return out if code == 200 else None

    def hook(self, name):
        return self.ok("GET", f"/_test/{name}")

    def pvc_path(self, name, ns="default"):
        return f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}"

    def create_class(self, name, binding="Immediate", expansion=True, params=None, reclaim="Delete", annotations=None):
        return self.ok("POST", "/apis/storage.k8s.io/v1/storageclasses", {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name, "annotations": annotations or {}},
            "provisioner": DRIVER, "reclaimPolicy": reclaim, "volumeBindingMode": binding,
            "allowVolumeExpansion": expansion, "parameters": params or {"csi.storage.k8s.io/fstype": "xfs"}})

    def create_claim(self, name, size="1Gi", sc="swell", ns="default", annotations=None, mode="Filesystem",
                     attributes_class=None, labels=None):
        spec = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}},
                "storageClassName": sc, "volumeMode": mode}
        if attributes_class:
            spec["volumeAttributesClassName"] = attributes_class
        return self.ok("POST", f"/api/v1/namespaces/{ns}/persistentvolumeclaims", {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations or {},
                         **({"labels": labels} if labels else {})}, "spec": spec})

    def update_claim(self, name, change, ns="default"):
        """Read, change, write, retrying on 409 like any client."""
        for _ in range(10):
            pvc = self.ok("GET", self.pvc_path(name, ns))
            change(pvc)
            code, out = self.request("PUT", self.pvc_path(name, ns), pvc)
            if code == 409:
                continue
            assert code == 200, out
            return out
        raise AssertionError("update kept conflicting")

    def create_node(self, name, labels=None):
        """A Node labelled with this driver's topology, and its CSINode naming the plugin's node ID,
        as kubelet and node-driver-registrar leave them."""
        self.ok("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": name, "labels": {TOPOLOGY_KEY: NODE, **(labels or {})}}})
        self.ok("POST", "/apis/storage.k8s.io/v1/csinodes", {
            "apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": name},
            "spec": {"drivers": [{"name": DRIVER, "nodeID": NODE, "topologyKeys": [TOPOLOGY_KEY]}]}})

    # --- snapshots: the test plays the common snapshot-controller, as in a cluster with the CRDs

    SNAP = "/apis/snapshot.storage.k8s.io/v1"

    def create_snapshot_class(self, name, policy="Delete", params=None):
        return self.ok("POST", f"{self.SNAP}/volumesnapshotclasses", {
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass", "metadata": {"name": name},
            "driver": DRIVER, "deletionPolicy": policy, "parameters": params or {}})

    def create_snapshot(self, name, claim, snapshot_class="snapclass", ns="default", volume_handle=None,
                        policy="Delete"):
        """A VolumeSnapshot, and the content the common controller makes for it (07d's shape)."""
        snap = self.ok("POST", f"{self.SNAP}/namespaces/{ns}/volumesnapshots", {
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"source": {"persistentVolumeClaimName": claim}, "volumeSnapshotClassName": snapshot_class}})
        uid = snap["metadata"]["uid"]
        content = self.ok("POST", f"{self.SNAP}/volumesnapshotcontents", {
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": {"name": f"snapcontent-{uid}",
                         "finalizers": ["snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"]},
            "spec": {"deletionPolicy": policy, "driver": DRIVER, "source": {"volumeHandle": volume_handle},
                     "volumeSnapshotClassName": snapshot_class,
                     "volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                                           "name": name, "namespace": ns, "uid": uid,
                                           "resourceVersion": snap["metadata"]["resourceVersion"]}}})
        return snap, content

    def content(self, name):
        return self.get(f"{self.SNAP}/volumesnapshotcontents/{name}")

    def wait_content_ready(self, name, timeout=30):
        return self.wait(f"content {name} ready", lambda: (lambda c: c if c and c.get("status", {}).get("readyToUse")
                                                           else None)(self.content(name)), timeout=timeout)

    def wait_content_finished(self, name, timeout=30):
        """Ready, and the being-created marker gone. Like external-snapshotter, the sidecar writes the
        ready status first and drops the marker in a second write, so a reader can see ready with the
        marker still on for a moment; a marker that never goes makes this time out."""
        marker = "snapshot.storage.kubernetes.io/volumesnapshot-being-created"
        return self.wait(f"content {name} ready and {marker} removed",
                         lambda: (lambda c: c if c and c.get("status", {}).get("readyToUse")
                                  and marker not in (c["metadata"].get("annotations") or {}) else None)(self.content(name)),
                         timeout=timeout)

    def bind_snapshot(self, name, content, ns="default"):
        """The common controller's half: the VolumeSnapshot's status from its ready content."""
        path = f"{self.SNAP}/namespaces/{ns}/volumesnapshots/{name}"
        snap = self.ok("GET", path)
        st = content["status"]
        snap["status"] = {"boundVolumeSnapshotContentName": content["metadata"]["name"], "readyToUse": True,
                          "restoreSize": st["restoreSize"], "creationTime": now_rfc3339()}
        return self.ok("PUT", path + "/status", snap)

    def delete_content_as_controller(self, name):
        """What the common controller does when a VolumeSnapshot goes: mark the content, then delete it."""
        path = f"{self.SNAP}/volumesnapshotcontents/{name}"
        for _ in range(10):
            c = self.ok("GET", path)
            c["metadata"].setdefault("annotations", {})["snapshot.storage.kubernetes.io/volumesnapshot-being-deleted"] = "yes"
            code, out = self.request("PUT", path, c)
            if code == 200:
                break
        self.ok("DELETE", path)

    def create_restore_claim(self, name, kind, source, size, sc="swell", ns="default", annotations=None,
                             ref_namespace=None):
        """A claim with spec.dataSource, copied into dataSourceRef as the API server does (07j, 07k)."""
        group = "snapshot.storage.k8s.io" if kind == "VolumeSnapshot" else None
        ref = {"apiGroup": group, "kind": kind, "name": source}
        ds_ref = dict(ref, **({"namespace": ref_namespace} if ref_namespace else {}))
        return self.ok("POST", f"/api/v1/namespaces/{ns}/persistentvolumeclaims", {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations or {}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}},
                     "storageClassName": sc, "volumeMode": "Filesystem", "dataSource": ref, "dataSourceRef": ds_ref}})

    def events_for(self, name, ns="default"):
        items = self.ok("GET", f"/api/v1/namespaces/{ns}/events")["items"]
        return [e for e in items if e["involvedObject"]["name"] == name]

    def wait(self, what, fn, timeout=30):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = fn()
            if last:
                return last
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last: {last}")


def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Sidecar:
    def __init__(self, root, api, plugin, name="sidecar"):
        self.root = root
        self.api = api
        self.plugin = plugin
        self.name = name
        self.proc = None
        self.log_path = os.path.join(root, f"{name}.log")
        self.metrics_port = None

    def start(self, *extra, auth="token"):
        self.metrics_port = csiconf.free_port()
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [SWELL, "sidecar", "--csi-address", f"unix://{self.plugin.socket}", "--driver-name", DRIVER,
             "--kubeconfig", self.api.kubeconfig(auth), "--metrics-address", f"127.0.0.1:{self.metrics_port}",
             "--workers", "4", *extra], stdout=log, stderr=log)
        log.close()
        return self

    def log(self):
        try:
            return open(self.log_path).read()[-6000:]
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def http(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=5)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode()
        conn.close()
        return resp.status, body

    def metric(self, name, **labels):
        """A counter's value from /metrics (0 when the series is not there yet)."""
        want = {k: str(v) for k, v in labels.items()}
        total = 0.0
        for line in self.http("/metrics")[1].splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, value = line.rsplit(" ", 1)
            sname, _, rest = series.partition("{")
            if sname != name:
                continue
            got = dict(kv.split("=", 1) for kv in rest.rstrip("}").split(",") if kv)
            if all(got.get(k, "").strip('"') == v for k, v in want.items()):
                total += float(value)
        return total

    def wait_metric(self, name, above, timeout=30, **labels):
        """Waits until the counter exceeds `above`: the sidecar's positive sign that it looked."""
        def value():
            try:
                return self.metric(name, **labels)
            except ConnectionRefusedError:  # /metrics is not served yet
                return 0.0
        return self.api.wait(f"{name}{labels} above {above}", lambda: (lambda v: v if v > above else None)(value()),
                             timeout)


class Cluster:
    def __init__(self, root, certs):
        self.root = root
        self.api = Api(root, certs)
        self.plugin = csiconf.Plugin(root)
        self.plugin.start()
        self.sidecars = []

    def sidecar(self, *extra, name=None, auth="token"):
        s = Sidecar(self.root, self.api, self.plugin, name or f"sidecar{len(self.sidecars)}")
        self.sidecars.append(s)
        return s.start(*extra, auth=auth)

    def stage(self, handle, name, fs="xfs"):
        """NodeStageVolume to a directory of this cluster's, as kubelet would; returns the path."""
        from csi_pb2 import NodeStageVolumeRequest, VolumeCapability
        staging = os.path.join(self.root, f"stage-{name}")
        os.makedirs(staging)
        req = NodeStageVolumeRequest(volume_id=handle, staging_target_path=staging)
        req.volume_capability.mount.fs_type = fs
        # What kubelet sends for a ReadWriteOnce volume to a node advertising SINGLE_NODE_MULTI_WRITER.
        req.volume_capability.access_mode.mode = VolumeCapability.AccessMode.SINGLE_NODE_MULTI_WRITER
        req.publish_context.update(self.plugin.publish_here(handle, req.volume_capability))
        self.plugin.node.NodeStageVolume(req)
        return staging

    def unstage(self, handle, staging):
        from csi_pb2 import NodeUnstageVolumeRequest
        self.plugin.node.NodeUnstageVolume(NodeUnstageVolumeRequest(volume_id=handle, staging_target_path=staging))
        self.plugin.unpublish_here(handle)

    def snapshots(self):
        from csi_pb2 import ListSnapshotsRequest
        return {e.snapshot.snapshot_id: e.snapshot
                for e in self.plugin.controller.ListSnapshots(ListSnapshotsRequest()).entries}

    def volumes(self):
        from csi_pb2 import ListVolumesRequest
        return {e.volume.volume_id: e.volume for e in self.plugin.controller.ListVolumes(ListVolumesRequest()).entries}

    def stop(self):
        for s in self.sidecars:
            s.stop()
        self.api.stop()
        self.plugin.stop()


@pytest.fixture
def cluster(certs, request):
    csiconf.require_root()
    root = tempfile.mkdtemp(prefix="swell-side-")
    c = Cluster(root, certs)
    try:
        yield c
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            for s in c.sidecars:
                sys.stderr.write(f"--- {s.name} log\n{s.log()}\n")
            sys.stderr.write(f"--- plugin log\n{c.plugin.log()}\n")
            try:
                sys.stderr.write(f"--- test API server log\n{open(c.api.log_path).read()[-4000:]}\n")
            except OSError:
                pass
        c.stop()
        csiconf.clean_host(root)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
