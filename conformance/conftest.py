"""Conformance suite: the real `swell` binary on a unix socket, called through Python grpcio
with stubs generated from the CSI spec's own csi.proto, committed as proto/csi.proto and pinned
to the official v1.12.0 text by its SHA-256 (CSI_PROTO_SHA256)."""
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time

import grpc
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GEN = os.path.join(HERE, "gen")
PROTO = os.path.join(ROOT, "proto", "csi.proto")
# The SHA-256 of csi.proto as released in the CSI spec v1.12.0 (github.com/container-storage-interface/spec,
# tag v1.12.0). A test checks the committed file against it, so a hand edit cannot pass unnoticed.
CSI_SPEC_VERSION = "1.12.0"
CSI_PROTO_SHA256 = "5b81236a3809f3ff0b877ff9b82215d0b74a8e291d7f3ec6ee1a44f537c0f86a"
# Reference material kept beside the repository by its developers; never needed. Tests that compare
# with it skip when it is absent. SWELL_SHARED_DIR points the lookup elsewhere (CI points it at an
# empty folder, to prove that nothing needs it).
SHARED_DIR = os.environ.get("SWELL_SHARED_DIR", os.path.normpath(os.path.join(ROOT, "..", "shared")))
OFFICIAL_PROTO = os.path.join(SHARED_DIR, "csi-spec", "csi.proto")


def _generate_stubs():
    """Generates csi_pb2 and csi_pb2_grpc from the committed proto/csi.proto, once per run."""
    os.makedirs(GEN, exist_ok=True)
    from grpc_tools import protoc
    import grpc_tools

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main([
        "protoc", f"-I{os.path.dirname(PROTO)}", f"-I{include}",
        f"--python_out={GEN}", f"--grpc_python_out={GEN}", PROTO,
    ])
    if rc != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    sys.path.insert(0, GEN)


_generate_stubs()
import csi_pb2  # noqa: E402
import csi_pb2_grpc  # noqa: E402

SWELL = os.environ.get("SWELL_BIN", os.path.join(ROOT, ".build", "debug", "swell"))
NODE_ID = "conformance-node"
TOPOLOGY_KEY = "topology.swell.csi.dev/node"
MiB = 1 << 20
GiB = 1 << 30


def _has_cap_sys_resource():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 24))
    return False


# ext4's online resize needs CAP_SYS_RESOURCE, which some sandboxes withhold even from root.
HAS_SYS_RESOURCE = _has_cap_sys_resource()


def require_root():
    if os.geteuid() != 0:
        pytest.fail("the conformance suite needs root: it attaches loop devices and mounts filesystems")


class Plugin:
    """One run of `swell plugin --mode all` in a temp directory, restartable, with stubs."""

    def __init__(self, root):
        self.root = root
        self.socket = os.path.join(root, "csi.sock")
        self.data = os.path.join(root, "data")
        self.proc = None
        self.channel = None
        self.log_path = os.path.join(root, "plugin.log")

    def start(self, failpoints=None, extra_args=(), env_overrides=None, prefix=()):
        env = dict(os.environ)
        env.pop("SWELL_FAILPOINTS", None)
        env.update(env_overrides or {})
        if failpoints:
            env["SWELL_FAILPOINTS"] = failpoints
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [*prefix, SWELL, "plugin", "--endpoint", f"unix://{self.socket}", "--node-id", NODE_ID,
             "--data-dir", self.data, "--mode", "all", "--log-level", "info", *extra_args],
            stdout=log, stderr=log, env=env)
        log.close()
        self._wait_answering(timeout=60)
        # A channel of its own subchannels: none inherits the reconnect backoff of a channel to
        # the plugin this one replaces.
        self.channel = grpc.insecure_channel(f"unix://{self.socket}", options=[("grpc.use_local_subchannel_pool", 1)])
        try:
            grpc.channel_ready_future(self.channel).result(timeout=30)
        except grpc.FutureTimeoutError:
            raise RuntimeError(f"the plugin answers on {self.socket} but gRPC is not ready after 30 s:\n{self.log()}")
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.node = csi_pb2_grpc.NodeStub(self.channel)
        self.group = csi_pb2_grpc.GroupControllerStub(self.channel)
        return self

    def publish_here(self, vid, cap):
        """ControllerPublishVolume to this plugin's own node, as the CO calls it before
        NodeStageVolume; returns the publish context to stage with."""
        return dict(self.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=vid, node_id=NODE_ID, volume_capability=cap)).publish_context)

    def unpublish_here(self, vid):
        """ControllerUnpublishVolume from this plugin's own node, as the CO calls it after NodeUnstageVolume."""
        self.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=NODE_ID))

    def _wait_answering(self, timeout):
        """Waits until this process accepts on the socket. A file at the path is not enough: a
        plugin killed with SIGKILL leaves its socket behind, and gRPC's reconnect backoff (1 s,
        growing 1.6 times per try) would stretch a short wait into a long one."""
        import socket as _socket
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"plugin exited with {self.proc.returncode}:\n{self.log()}")
            with _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM) as s:
                try:
                    s.connect(self.socket)
                    return
                except OSError:
                    pass
            time.sleep(0.01)
        raise RuntimeError(f"the plugin does not answer on {self.socket} after {timeout} s:\n{self.log()}")

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM):
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def wait_dead(self, timeout=10):
        self.proc.wait(timeout=timeout)
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        return self.proc.returncode


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_mounts_under(root):
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp.startswith(root + "/"):
                out.append(mp)
    return out


def loops_under(root):
    found = []
    for name in os.listdir("/sys/block"):
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                backing = f.read().strip()
        except OSError:
            continue
        if backing.startswith(root + "/"):
            found.append(name)
    return found


def clean_host(root):
    for mp in reversed(host_mounts_under(root)):
        # A test that failed mid-snapshot may have left a filesystem frozen: thaw before unmounting.
        subprocess.run(["fsfreeze", "--unfreeze", mp], check=False, capture_output=True)
        subprocess.run(["umount", "-l", mp], check=False, capture_output=True)
    for name in loops_under(root):
        subprocess.run(["losetup", "-d", f"/dev/{name}"], check=False, capture_output=True)
    subprocess.run(["rm", "-rf", "--one-file-system", root], check=False)


@pytest.fixture
def plugin():
    require_root()
    root = tempfile.mkdtemp(prefix="swell-conf-")
    p = Plugin(root)
    try:
        p.start()
        yield p
    finally:
        p.stop()
        clean_host(root)


# ---- request builders -------------------------------------------------------------------

def mount_cap(fs="ext4", mode=None, flags=()):
    mode = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER if mode is None else mode
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(fs_type=fs, mount_flags=list(flags)),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode))


def block_cap(mode=None):
    mode = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER if mode is None else mode
    return csi_pb2.VolumeCapability(
        block=csi_pb2.VolumeCapability.BlockVolume(),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode))


def create_req(name, required=64 * MiB, limit=0, cap=None, params=None):
    return csi_pb2.CreateVolumeRequest(
        name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=required, limit_bytes=limit),
        volume_capabilities=[cap or mount_cap()], parameters=params or {})


def code_of(call, *args, **kwargs):
    """The gRPC status code a call ends with (OK when it succeeds)."""
    try:
        call(*args, **kwargs)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_random(path, mib):
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())
