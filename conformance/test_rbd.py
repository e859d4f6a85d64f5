"""The rbd backend's controller side against a real Ceph 16 cluster of its own (conformance/ceph.py:
one monitor, one manager, three memstore OSDs on 127.0.0.1; one cluster for the module), through
the plugin's gRPC socket. Bytes are written into images with `rbd import-diff` and read back with
`rbd export`, so snapshots, restores and clones are checked by checksum without mapping (this
kernel has no rbd module; the node side runs in the VM tier).

The plugin's own client (--rbd-user) is limited to the test pools (`profile rbd`); the classes'
secrets carry a second such client, as a provisioner secret would."""
import concurrent.futures
import hashlib
import os
import re
import signal
import subprocess
import tempfile
import threading
import time

import grpc
import pytest

import ceph
from conftest import (MiB, Plugin, block_cap, clean_host, code_of, create_req, csi_pb2, mount_cap,
                      require_root)

POOL = "swell-a"
POOL2 = "swell-b"


def have_ceph():
    from shutil import which
    return all(which(t) for t in ("ceph-mon", "ceph-osd", "ceph-mgr", "rbd", "ceph"))


@pytest.fixture(scope="module")
def cluster():
    require_root()
    if not have_ceph():
        pytest.fail("Ceph is not installed (scripts/setup.sh --tests installs ceph-mon, ceph-osd, ceph-mgr, ceph-common)")
    c = ceph.Cluster(osds=3, pool_size=2)
    c.start()
    try:
        c.create_pool(POOL)
        c.create_pool(POOL2)
        # The plugin's own client and the class's secret: each limited to the two pools.
        c.plugin_key, c.class_key = (c.create_user(name, POOL, POOL2) for name in ("swell-plugin", "swell-class"))
        yield c
    finally:
        c.stop()


class RbdPlugin(Plugin):
    def __init__(self, root, cluster, own_key=True):
        super().__init__(root)
        self.cluster = cluster
        self.own_key = own_key
        self.key_file = os.path.join(root, "plugin.key")
        with open(self.key_file, "w") as f:
            f.write(f"[client.swell-plugin]\n\tkey = {cluster.plugin_key}\n")

    def start(self, failpoints=None, extra_args=()):
        own = ["--rbd-user", "swell-plugin", "--rbd-key-file", self.key_file] if self.own_key else []
        nodes = os.path.join(self.root, "nodes")
        with open(nodes, "w") as f:
            f.write("node-a\nnode-b\n")
        return super().start(failpoints=failpoints, extra_args=[
            "--rbd-monitors", self.cluster.monitors, "--rbd-pool", POOL, "--rbd-pool", POOL2,
            *own, "--nodes-file", nodes, "--log-level", "debug", *extra_args])


def plugin_fixture(cluster, own_key):
    root = tempfile.mkdtemp(prefix="swell-rbd-")
    p = RbdPlugin(root, cluster, own_key=own_key)
    try:
        p.start()
        yield p
    finally:
        p.stop()
        clean_host(root)
        # Every test leaves the pools as it found them, even one that failed half-way.
        for pool in (POOL, POOL2):
            ceph.empty_pool(cluster, pool)


@pytest.fixture
def rbd_plugin(cluster):
    yield from plugin_fixture(cluster, own_key=True)


@pytest.fixture
def keyless_plugin(cluster):
    """A controller started without --rbd-user: it has no Ceph key but what each call carries."""
    yield from plugin_fixture(cluster, own_key=False)


def secrets(cluster):
    return {"userID": "swell-class", "userKey": cluster.class_key}


def rbd_req(name, cluster, required=64 * MiB, params=None, cap=None, source=None):
    req = create_req(name, required=required, cap=cap, params={"backend": "rbd", **(params or {})})
    req.secrets.update(secrets(cluster))
    if source is not None:
        kind, ident = source
        if kind == "snapshot":
            req.volume_content_source.snapshot.snapshot_id = ident
        else:
            req.volume_content_source.volume.volume_id = ident
    return req


def keyless(req):
    """The request without its secrets."""
    req.secrets.clear()
    return req


def images(cluster, pool=POOL):
    return sorted(cluster.run("rbd", "ls", pool).stdout.split())


def snaps(cluster, image, pool=POOL):
    import json
    return sorted(s["name"] for s in json.loads(cluster.run("rbd", "snap", "ls", "--format", "json", f"{pool}/{image}").stdout))


def info(cluster, image, pool=POOL):
    import json
    return json.loads(cluster.run("rbd", "info", "--format", "json", f"{pool}/{image}").stdout)


def digest(cluster, image, pool=POOL):
    return hashlib.sha256(ceph.image_read(cluster, f"{pool}/{image}")).hexdigest()


def write(cluster, image, offset, data, pool=POOL):
    ceph.image_write(cluster, f"{pool}/{image}", offset, data)


# ---- lifecycle ---------------------------------------------------------------------------------

def test_rbd_lifecycle_grow_never_shrink(rbd_plugin, cluster):
    c = rbd_plugin.controller
    vol = c.CreateVolume(rbd_req("pvc-r1", cluster)).volume
    assert vol.volume_id == "pvc-r1" and vol.capacity_bytes == 64 * MiB
    ctx = dict(vol.volume_context)
    assert ctx["backend"] == "rbd" and ctx["pool"] == POOL and ctx["image"] == "swell-vol-pvc-r1", ctx
    assert ctx["monitors"] == cluster.monitors
    assert not vol.accessible_topology, "a network volume is reachable from every node"
    assert info(cluster, "swell-vol-pvc-r1")["size"] == 64 * MiB
    meta = cluster.run("rbd", "image-meta", "get", f"{POOL}/swell-vol-pvc-r1", "swell.record").stdout.strip()
    assert "volume=pvc-r1" in meta and "access=mount" in meta and "fstype=ext4" in meta, meta

    again = c.CreateVolume(rbd_req("pvc-r1", cluster)).volume
    assert again == vol, "a repeated CreateVolume returns the same volume"
    assert code_of(c.CreateVolume, rbd_req("pvc-r1", cluster, required=256 * MiB)) == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(c.CreateVolume, rbd_req("pvc-r1", cluster, cap=block_cap())) == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(c.CreateVolume, rbd_req("pvc-r1", cluster, params={"pool": POOL2})) == grpc.StatusCode.ALREADY_EXISTS

    listed = [e.volume.volume_id for e in c.ListVolumes(csi_pb2.ListVolumesRequest()).entries]
    assert "pvc-r1" in listed
    got = c.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id="pvc-r1"))
    assert got.volume.capacity_bytes == 64 * MiB
    assert not got.status.volume_condition.abnormal, got.status.volume_condition.message

    grown = c.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id="pvc-r1", capacity_range=csi_pb2.CapacityRange(required_bytes=160 * MiB), secrets=secrets(cluster)))
    assert grown.capacity_bytes == 160 * MiB and grown.node_expansion_required
    assert info(cluster, "swell-vol-pvc-r1")["size"] == 160 * MiB
    # Never shrink: a smaller request answers the current size and leaves the image alone.
    smaller = c.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id="pvc-r1", capacity_range=csi_pb2.CapacityRange(required_bytes=32 * MiB)))
    assert smaller.capacity_bytes == 160 * MiB
    assert info(cluster, "swell-vol-pvc-r1")["size"] == 160 * MiB

    c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-r1", secrets=secrets(cluster)))
    assert images(cluster) == []
    c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-r1", secrets=secrets(cluster)))
    assert code_of(c.ControllerExpandVolume, csi_pb2.ControllerExpandVolumeRequest(
        volume_id="pvc-r1", capacity_range=csi_pb2.CapacityRange(required_bytes=MiB))) == grpc.StatusCode.NOT_FOUND


def test_rbd_volume_is_abnormal_while_the_cluster_is_health_err(rbd_plugin, cluster):
    """ControllerGetVolume's condition follows the cluster: abnormal, naming the check, while Ceph
    reports HEALTH_ERR, and normal again once it does not. The HEALTH_ERR is Ceph's own
    OSD_OUT_OF_ORDER_FULL (the nearfull ratio set above the full one), which stops no I/O."""
    c = rbd_plugin.controller
    c.CreateVolume(rbd_req("pvc-h1", cluster))

    def condition():
        return c.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id="pvc-h1")).status.volume_condition

    def status():
        return cluster.ceph_json("health")["status"]

    assert status() != "HEALTH_ERR"
    assert not condition().abnormal, condition().message
    cluster.run("ceph", "osd", "set-nearfull-ratio", "0.97")
    try:
        ceph.Cluster.wait(lambda: status() == "HEALTH_ERR", 60, "the cluster reports HEALTH_ERR")
        got = condition()
        assert got.abnormal and "HEALTH_ERR" in got.message and "OSD_OUT_OF_ORDER_FULL" in got.message, got.message
        listed = {e.volume.volume_id: e.status.volume_condition for e in c.ListVolumes(csi_pb2.ListVolumesRequest()).entries}
        assert listed["pvc-h1"].abnormal
    finally:
        cluster.run("ceph", "osd", "set-nearfull-ratio", "0.85")
    ceph.Cluster.wait(lambda: status() != "HEALTH_ERR", 60, "the cluster leaves HEALTH_ERR")
    assert not condition().abnormal, condition().message
    c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-h1"))


def test_rbd_second_pool_capacity_and_key_hidden(rbd_plugin, cluster):
    c = rbd_plugin.controller
    vol = c.CreateVolume(rbd_req("pvc-p2", cluster, params={"pool": POOL2}, cap=block_cap())).volume
    assert vol.volume_context["pool"] == POOL2 and images(cluster, POOL2) == ["swell-vol-pvc-p2"]
    assert images(cluster, POOL) == []
    import json
    df = {p["name"]: p["stats"]["max_avail"] for p in json.loads(cluster.run("ceph", "df", "--format", "json").stdout)["pools"]}
    cap = c.GetCapacity(csi_pb2.GetCapacityRequest(parameters={"backend": "rbd", "pool": POOL2})).available_capacity
    # max_avail moves as the OSDs' memstore fills; within 8 MiB of what ceph df said a moment ago.
    assert cap > 0 and abs(cap - df[POOL2]) <= 8 * MiB, (cap, df)
    assert code_of(c.GetCapacity, csi_pb2.GetCapacityRequest(parameters={"backend": "rbd", "pool": "nope"})) \
        == grpc.StatusCode.INVALID_ARGUMENT
    c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-p2", secrets=secrets(cluster)))
    assert images(cluster, POOL2) == []
    # The debug log shows every rbd command line; no key is on any of them.
    with open(rbd_plugin.log_path) as f:
        log = f.read()
    assert "rbd" in log and "--keyfile" in log, "the debug log shows the commands"
    assert cluster.class_key not in log and cluster.plugin_key not in log
    assert os.listdir(os.path.join(rbd_plugin.data, ".rbd-keys")) == [], "key files live only for one command"


def test_rbd_error_rows(rbd_plugin, cluster):
    c = rbd_plugin.controller
    code = lambda req: code_of(c.CreateVolume, req)
    assert code(rbd_req("pvc-e1", cluster, params={"pool": "other"})) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(rbd_req("pvc-e1", cluster, params={"provisioning": "thick"})) == grpc.StatusCode.INVALID_ARGUMENT
    bad = rbd_req("pvc-e1", cluster)
    bad.secrets["userID"] = "--admin"
    assert code(bad) == grpc.StatusCode.INVALID_ARGUMENT
    half = rbd_req("pvc-e1", cluster)
    del half.secrets["userKey"]
    assert code(half) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(rbd_req("pvc-e1", cluster, source=("snapshot", "snap-none"))) == grpc.StatusCode.NOT_FOUND
    assert code(rbd_req("pvc-e1", cluster, source=("volume", "pvc-none"))) == grpc.StatusCode.NOT_FOUND
    assert code_of(c.CreateSnapshot, csi_pb2.CreateSnapshotRequest(
        name="snap-e1", source_volume_id="pvc-none", secrets=secrets(cluster))) == grpc.StatusCode.NOT_FOUND
    assert images(cluster) == [], "no refused call made an image"

    c.CreateVolume(rbd_req("pvc-e2", cluster))
    # A mapped image has a watcher: `rbd watch` holds one as a node's mapping would.
    # (stdin held open: `rbd watch` ends when it reads EOF.)
    watcher = subprocess.Popen(["rbd", "-c", cluster.conf, "watch", f"{POOL}/swell-vol-pvc-e2"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=cluster.env())
    try:
        ceph.Cluster.wait(lambda: "watcher=" in cluster.run("rbd", "status", f"{POOL}/swell-vol-pvc-e2").stdout, 30,
                          "the watch is registered")
        with pytest.raises(grpc.RpcError) as err:
            c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-e2", secrets=secrets(cluster)))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "mapped by" in err.value.details()
        assert images(cluster) == ["swell-vol-pvc-e2"]
    finally:
        watcher.kill()
        watcher.wait()
    ceph.Cluster.wait(lambda: "watcher=" not in cluster.run("rbd", "status", f"{POOL}/swell-vol-pvc-e2").stdout, 60,
                      "the killed watcher's watch expires")
    c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-e2", secrets=secrets(cluster)))
    assert images(cluster) == []


def test_rbd_refused_key_is_permission_denied(rbd_plugin, cluster):
    """A key that is not one is INVALID_ARGUMENT at once; a real key the cluster does not know is
    PERMISSION_DENIED after the client's mount timeout (15 s, not its default 300 s). Neither key
    is in the message. Create, grow and delete each act with their own call's key."""
    req = rbd_req("pvc-k1", cluster)
    req.secrets["userKey"] = "AQBp" + "A" * 36 + "=="
    with pytest.raises(grpc.RpcError) as err:
        rbd_plugin.controller.CreateVolume(req, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert req.secrets["userKey"] not in err.value.details()
    req.secrets["userKey"] = subprocess.run(["ceph-authtool", "--gen-print-key"], capture_output=True, text=True,
                                            check=True).stdout.strip()
    with pytest.raises(grpc.RpcError) as err:
        rbd_plugin.controller.CreateVolume(req, timeout=60)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
    assert req.secrets["userKey"] not in err.value.details()
    assert images(cluster) == []

    # DeleteVolume and ControllerExpandVolume act with their call's secrets too, not the plugin's
    # own client: a malformed key in them is refused, and the image is left as it was.
    c = rbd_plugin.controller
    c.CreateVolume(rbd_req("pvc-k2", cluster))
    bad = {"userID": "swell-class", "userKey": "AQBp" + "A" * 36 + "=="}
    assert code_of(c.ControllerExpandVolume, csi_pb2.ControllerExpandVolumeRequest(
        volume_id="pvc-k2", capacity_range=csi_pb2.CapacityRange(required_bytes=128 * MiB), secrets=bad)) \
        == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(c.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id="pvc-k2", secrets=bad)) \
        == grpc.StatusCode.INVALID_ARGUMENT
    assert images(cluster) == ["swell-vol-pvc-k2"] and info(cluster, "swell-vol-pvc-k2")["size"] == 64 * MiB
    c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-k2", secrets=secrets(cluster)))
    assert images(cluster) == []


def test_rbd_sixteen_parallel_creates_of_one_name(rbd_plugin, cluster):
    """One call makes the image; the others, arriving while it works, are ABORTED (the spec's
    "operation pending"), and each of them, retried as a CO would, gets the same volume."""
    c = rbd_plugin.controller
    barrier = threading.Barrier(16)

    def create(_):
        barrier.wait()
        try:
            return ("ok", c.CreateVolume(rbd_req("pvc-par", cluster)).volume)
        except grpc.RpcError as e:
            return ("err", e.code())

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(create, range(16)))
    oks = [r[1] for r in results if r[0] == "ok"]
    assert oks and all(r == ("err", grpc.StatusCode.ABORTED) for r in results if r[0] == "err"), results
    assert all(v == oks[0] for v in oks)
    for r in results:
        if r[0] == "err":
            assert c.CreateVolume(rbd_req("pvc-par", cluster)).volume == oks[0]
    assert images(cluster) == ["swell-vol-pvc-par"]
    c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-par"))
    assert images(cluster) == []


# ---- a controller with no key of its own: every call acts with its own secrets ----------------------

def test_rbd_every_call_with_secrets_works_without_the_plugins_own_key(keyless_plugin, cluster):
    """Issue 37: a controller without --rbd-user serves every controller RPC that CSI gives a
    secrets field from that field alone: create, validate, expand, modify, snapshots (create, list,
    get, delete), a restore, a clone, delete. The same call without its secrets fails for want of a
    key (FAILED_PRECONDITION), so each success shows the call's own secrets at work. Before the
    fix, the restore and the clone failed (their source was looked up outside the secrets' scope),
    as did validate, list, get and modify, which ignored their secrets."""
    c = keyless_plugin.controller
    s = secrets(cluster)
    no_key = grpc.StatusCode.FAILED_PRECONDITION

    assert code_of(c.CreateVolume, keyless(rbd_req("pvc-n1", cluster, cap=block_cap()))) == no_key
    vol = c.CreateVolume(rbd_req("pvc-n1", cluster, cap=block_cap())).volume
    write(cluster, "swell-vol-pvc-n1", 0, os.urandom(2 * MiB))

    validate = csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id="pvc-n1", volume_capabilities=[block_cap()])
    assert code_of(c.ValidateVolumeCapabilities, validate) == no_key
    validate.secrets.update(s)
    assert c.ValidateVolumeCapabilities(validate).confirmed.volume_capabilities == [block_cap()]

    expand = csi_pb2.ControllerExpandVolumeRequest(volume_id="pvc-n1", capacity_range=csi_pb2.CapacityRange(
        required_bytes=96 * MiB))
    assert code_of(c.ControllerExpandVolume, expand) == no_key
    expand.secrets.update(s)
    assert c.ControllerExpandVolume(expand).capacity_bytes == 96 * MiB

    modify = csi_pb2.ControllerModifyVolumeRequest(volume_id="pvc-n1", mutable_parameters={"provisioning": "thin"})
    assert code_of(c.ControllerModifyVolume, modify) == no_key
    modify.secrets.update(s)
    c.ControllerModifyVolume(modify)

    at_snapshot = digest(cluster, "swell-vol-pvc-n1")
    create_snap = csi_pb2.CreateSnapshotRequest(name="snap-n1", source_volume_id="pvc-n1")
    assert code_of(c.CreateSnapshot, create_snap) == no_key
    create_snap.secrets.update(s)
    snap = c.CreateSnapshot(create_snap).snapshot
    assert snap.ready_to_use and snap.source_volume_id == "pvc-n1"

    listing = csi_pb2.ListSnapshotsRequest(snapshot_id="snap-n1")
    assert code_of(c.ListSnapshots, listing) == no_key
    listing.secrets.update(s)
    assert [e.snapshot.snapshot_id for e in c.ListSnapshots(listing).entries] == ["snap-n1"]
    by_source = csi_pb2.ListSnapshotsRequest(source_volume_id="pvc-n1", secrets=s)
    assert [e.snapshot.snapshot_id for e in c.ListSnapshots(by_source).entries] == ["snap-n1"]
    get = csi_pb2.GetSnapshotRequest(snapshot_id="snap-n1")
    assert code_of(c.GetSnapshot, get) == no_key
    get.secrets.update(s)
    assert c.GetSnapshot(get).snapshot.snapshot_id == "snap-n1"

    write(cluster, "swell-vol-pvc-n1", 0, os.urandom(MiB))
    assert code_of(c.CreateVolume, keyless(rbd_req("pvc-n2", cluster, cap=block_cap(), required=96 * MiB,
                                                   source=("snapshot", "snap-n1")))) == no_key
    restored = c.CreateVolume(rbd_req("pvc-n2", cluster, cap=block_cap(), required=96 * MiB,
                                      source=("snapshot", "snap-n1"))).volume
    assert restored.content_source.snapshot.snapshot_id == "snap-n1"
    assert digest(cluster, "swell-vol-pvc-n2") == at_snapshot
    now = digest(cluster, "swell-vol-pvc-n1")
    clone = c.CreateVolume(rbd_req("pvc-n3", cluster, cap=block_cap(), required=96 * MiB,
                                   source=("volume", "pvc-n1"))).volume
    assert clone.content_source.volume.volume_id == "pvc-n1" and digest(cluster, "swell-vol-pvc-n3") == now

    delete_snap = csi_pb2.DeleteSnapshotRequest(snapshot_id="snap-n1")
    assert code_of(c.DeleteSnapshot, delete_snap) == no_key
    delete_snap.secrets.update(s)
    c.DeleteSnapshot(delete_snap)
    assert "swell-snap-snap-n1" not in images(cluster)
    for name in ("pvc-n3", "pvc-n2", "pvc-n1"):
        assert code_of(c.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id=name)) == no_key
        c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=name, secrets=s))
    assert images(cluster) == [] and vol.volume_id == "pvc-n1"


@pytest.mark.parametrize("own_key", [True, False], ids=["own-key", "keyless"])
def test_rbd_a_missing_source_is_not_found(cluster, own_key):
    """The spec's row for CreateVolume: a source snapshot or volume that does not exist is
    NOT_FOUND, with or without the controller's own key; so is CreateSnapshot of a missing volume.
    Before issue 37's fix, a controller without its own key answered FAILED_PRECONDITION."""
    for p in plugin_fixture(cluster, own_key=own_key):
        c = p.controller
        for source in (("snapshot", "snap-none"), ("volume", "pvc-none")):
            with pytest.raises(grpc.RpcError) as err:
                c.CreateVolume(rbd_req("pvc-m1", cluster, source=source))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
            assert source[1] in err.value.details()
        assert code_of(c.CreateSnapshot, csi_pb2.CreateSnapshotRequest(
            name="snap-m1", source_volume_id="pvc-none", secrets=secrets(cluster))) == grpc.StatusCode.NOT_FOUND
        assert images(cluster) == [] and images(cluster, POOL2) == []


# ---- publishing: one owner at a time, and the fence ---------------------------------------------

def publish(c, vid, node, cluster=None, cap=None):
    req = csi_pb2.ControllerPublishVolumeRequest(volume_id=vid, node_id=node, volume_capability=cap or mount_cap())
    if cluster is not None:
        req.secrets.update(secrets(cluster))
    return dict(c.ControllerPublishVolume(req).publish_context)


def unpublish(c, vid, node, cluster=None):
    req = csi_pb2.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=node)
    if cluster is not None:
        req.secrets.update(secrets(cluster))
    c.ControllerUnpublishVolume(req)


def meta(cluster, image, key, pool=POOL):
    r = cluster.run("rbd", "image-meta", "get", f"{pool}/{image}", key, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


class NodeClient:
    """A client writing the image as a node's mapping would (`rbd bench`: a watch and the exclusive
    lock), recorded with the image as the node records its krbd client at stage. Its stderr goes to a
    file, so that what librbd reports can be read while it runs."""

    def __init__(self, cluster, image, node, pool=POOL):
        self.cluster, self.spec = cluster, f"{pool}/{image}"
        self.err_path = os.path.join(cluster.root, f"bench-{image}.err")
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                ["rbd", "-c", cluster.conf, "bench", "--io-type", "write", "--io-size", "4K", "--io-threads", "1",
                 "--io-total", "10G", "--io-pattern", "rand", self.spec],
                stdout=subprocess.DEVNULL, stderr=err, env=cluster.env(), start_new_session=True)
        ceph.Cluster.wait(lambda: "watcher=" in cluster.run("rbd", "status", self.spec).stdout, 60, "the client's watch")
        self.address = re.search(r"watcher=(\S+)", cluster.run("rbd", "status", self.spec).stdout).group(1)
        cluster.run("rbd", "image-meta", "set", self.spec, "swell.client", f"node={node};addr={self.address}")

    def stderr(self):
        with open(self.err_path) as f:
            return f.read()

    def refused(self):
        """The OSDs refused a write: librbd reports ESHUTDOWN (108), Ceph's EBLOCKLISTED."""
        return "(108) Cannot send after transport endpoint shutdown" in self.stderr()

    def wait_fenced(self, timeout=90):
        """Waits until the client's writes are refused and it has lost its watch. Whether `rbd bench`
        then exits is librbd's own shutdown path, which can block behind the lock it can no longer
        release; the fence is what the OSDs do, so that is what is asserted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = self.proc.poll() is not None
            if (self.refused() or (exited and self.proc.returncode != 0)) and \
                    "watcher=" not in self.cluster.run("rbd", "status", self.spec).stdout:
                assert not (exited and self.proc.returncode == 0), "the fenced client finished its writes"
                return
            time.sleep(0.2)
        diag = [self.cluster.run(*argv, check=False, timeout=30).stdout for argv in
                (("ceph", "-s"), ("ceph", "health", "detail"), ("ceph", "osd", "blocklist", "ls"), ("rbd", "status", self.spec))]
        raise AssertionError(f"the fenced client was not refused within {timeout} s (exit {self.proc.poll()}):\n"
                             f"{self.stderr()[-3000:]}\n" + "\n".join(diag))

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def test_rbd_publish_records_one_owner_and_unpublish_fences_its_client(rbd_plugin, cluster):
    """An image has one owner, recorded with it; a second node is FAILED_PRECONDITION naming the
    first, an unknown node NOT_FOUND. Unpublishing the owner blocklists the client it staged with
    before it gives the image up: that client, still writing (a node that hangs, or is cut off),
    fails and loses its watch, and only then may another node publish."""
    c = rbd_plugin.controller
    c.CreateVolume(rbd_req("pvc-o1", cluster))
    assert code_of(c.ControllerPublishVolume, csi_pb2.ControllerPublishVolumeRequest(
        volume_id="pvc-o1", node_id="no-such-node", volume_capability=mount_cap())) == grpc.StatusCode.NOT_FOUND
    assert publish(c, "pvc-o1", "node-a", cluster) == {"node": "node-a"}
    assert publish(c, "pvc-o1", "node-a") == {"node": "node-a"}, "a repeat, with the controller's own key"
    assert meta(cluster, "swell-vol-pvc-o1", "swell.publication") == \
        "version=1;node=node-a;access=mount;mode=SINGLE_NODE_WRITER;readonly=false"
    with pytest.raises(grpc.RpcError) as err:
        publish(c, "pvc-o1", "node-b", cluster)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "node-a" in err.value.details()
    got = c.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id="pvc-o1"))
    assert list(got.status.published_node_ids) == ["node-a"]

    client = NodeClient(cluster, "swell-vol-pvc-o1", "node-a")
    try:
        assert client.proc.poll() is None and not client.refused()
        unpublish(c, "pvc-o1", "node-a", cluster)
        assert client.address in cluster.run("ceph", "osd", "blocklist", "ls").stdout
        client.wait_fenced()
    finally:
        client.kill()
    assert meta(cluster, "swell-vol-pvc-o1", "swell.client") is None
    assert meta(cluster, "swell-vol-pvc-o1", "swell.publication") is None
    unpublish(c, "pvc-o1", "node-a", cluster)  # a repeat
    unpublish(c, "pvc-none", "node-a", cluster)  # a volume that does not exist
    assert publish(c, "pvc-o1", "node-b", cluster) == {"node": "node-b"}
    unpublish(c, "pvc-o1", "", cluster)  # every node
    assert meta(cluster, "swell-vol-pvc-o1", "swell.publication") is None
    c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-o1", secrets=secrets(cluster)))


def test_rbd_a_sigkill_after_the_fence_converges_on_retry(rbd_plugin, cluster):
    """Killed after the blocklist and before the owner is given up, the plugin comes back with the
    image still owned by the fenced node; the CO's retry gives it up, and the next node publishes."""
    c = rbd_plugin.controller
    c.CreateVolume(rbd_req("pvc-o2", cluster))
    publish(c, "pvc-o2", "node-a", cluster)
    client = NodeClient(cluster, "swell-vol-pvc-o2", "node-a")
    try:
        rbd_plugin.stop()
        rbd_plugin.start(failpoints="rbd-unpublish-after-blocklist")
        with pytest.raises(grpc.RpcError) as err:
            unpublish(rbd_plugin.controller, "pvc-o2", "node-a", cluster)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert rbd_plugin.wait_dead() == -signal.SIGKILL
        rbd_plugin.start()
        c = rbd_plugin.controller
        assert client.address in cluster.run("ceph", "osd", "blocklist", "ls").stdout
        assert code_of(c.ControllerPublishVolume, csi_pb2.ControllerPublishVolumeRequest(
            volume_id="pvc-o2", node_id="node-b", volume_capability=mount_cap(), secrets=secrets(cluster))) \
            == grpc.StatusCode.FAILED_PRECONDITION, "still node-a's until the retry"
        unpublish(c, "pvc-o2", "node-a", cluster)
        assert publish(c, "pvc-o2", "node-b", cluster) == {"node": "node-b"}
        client.wait_fenced()
    finally:
        client.kill()
    unpublish(c, "pvc-o2", "node-b", cluster)
    c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-o2", secrets=secrets(cluster)))


def test_rbd_records_of_every_format_are_read_and_a_newer_one_is_refused(rbd_plugin, cluster):
    """The records kept with images carry a format version (issue 38, part 3). A record written
    before versions existed (format 1, no field) is served. One in a newer format (a downgrade) is
    FAILED_PRECONDITION naming the image and the format, and changes nothing: above all, an image
    whose record cannot be read is not taken for the leftover of an interrupted create and removed."""
    c = rbd_plugin.controller
    s = secrets(cluster)
    c.CreateVolume(rbd_req("pvc-f1", cluster))
    spec = f"{POOL}/swell-vol-pvc-f1"
    record = meta(cluster, "swell-vol-pvc-f1", "swell.record")
    assert record.startswith("version=1;") and "volume=pvc-f1" in record, record
    old = record[len("version=1;"):]

    def set_meta(image, key, value):
        cluster.run("rbd", "image-meta", "set", f"{POOL}/{image}", key, value)

    # Format 1 as the builds before versions wrote it: served, grown, snapshotted.
    set_meta("swell-vol-pvc-f1", "swell.record", old)
    assert c.CreateVolume(rbd_req("pvc-f1", cluster)).volume.capacity_bytes == 64 * MiB
    c.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id="pvc-f1", capacity_range=csi_pb2.CapacityRange(required_bytes=128 * MiB), secrets=s))
    snap = c.CreateSnapshot(csi_pb2.CreateSnapshotRequest(name="snap-f1", source_volume_id="pvc-f1", secrets=s)).snapshot
    snap_image = f"swell-snap-{snap.snapshot_id}"
    snap_record = meta(cluster, snap_image, "swell.record")
    assert snap_record.startswith("version=1;"), snap_record
    set_meta(snap_image, "swell.record", snap_record[len("version=1;"):])
    assert c.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
        name="snap-f1", source_volume_id="pvc-f1", secrets=s)).snapshot.snapshot_id == snap.snapshot_id

    # A newer format: every call that meets it refuses, and the images stay as they were.
    set_meta("swell-vol-pvc-f1", "swell.record", "version=2;" + old)
    set_meta(snap_image, "swell.record", "version=2;" + snap_record[len("version=1;"):])

    def state():
        images = sorted(cluster.run("rbd", "ls", POOL).stdout.split())
        return images, [info(cluster, i)["size"] for i in images], meta(cluster, "swell-vol-pvc-f1", "swell.record"), \
            meta(cluster, snap_image, "swell.record"), meta(cluster, "swell-vol-pvc-f1", "swell.publication")
    before = state()

    def refused(call, request, image):
        with pytest.raises(grpc.RpcError) as e:
            call(request)
        details = e.value.details()
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, details
        assert "newer Swell" in details and "format 2" in details and image in details, details

    refused(c.CreateVolume, rbd_req("pvc-f1", cluster, required=128 * MiB), "swell-vol-pvc-f1")
    refused(c.ControllerGetVolume, csi_pb2.ControllerGetVolumeRequest(volume_id="pvc-f1"), "swell-vol-pvc-f1")
    refused(c.ControllerExpandVolume, csi_pb2.ControllerExpandVolumeRequest(
        volume_id="pvc-f1", capacity_range=csi_pb2.CapacityRange(required_bytes=256 * MiB), secrets=s), "swell-vol-pvc-f1")
    refused(c.ControllerPublishVolume, csi_pb2.ControllerPublishVolumeRequest(
        volume_id="pvc-f1", node_id="node-a", volume_capability=mount_cap(), secrets=s), "swell-vol-pvc-f1")
    refused(c.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id="pvc-f1", secrets=s), "swell-vol-pvc-f1")
    refused(c.CreateSnapshot, csi_pb2.CreateSnapshotRequest(name="snap-f1", source_volume_id="pvc-f1", secrets=s),
            snap_image)
    refused(c.DeleteSnapshot, csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id, secrets=s), snap_image)
    refused(c.CreateVolume, rbd_req("pvc-f2", cluster, source=("snapshot", snap.snapshot_id)), snap_image)
    assert state() == before, "a refused call changed the pool"

    # The node's client record, newer: the unpublish refuses before it blocklists anyone.
    set_meta("swell-vol-pvc-f1", "swell.record", record)
    set_meta(snap_image, "swell.record", snap_record)
    assert publish(c, "pvc-f1", "node-a", cluster) == {"node": "node-a"}
    set_meta("swell-vol-pvc-f1", "swell.client", "version=2;node=node-a;addr=127.0.0.1:0/4242")
    refused(c.ControllerUnpublishVolume, csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id="pvc-f1", node_id="node-a", secrets=s), "swell-vol-pvc-f1")
    assert "127.0.0.1:0/4242" not in cluster.run("ceph", "osd", "blocklist", "ls").stdout
    assert meta(cluster, "swell-vol-pvc-f1", "swell.publication") is not None

    cluster.run("rbd", "image-meta", "remove", spec, "swell.client")
    unpublish(c, "pvc-f1", "node-a", cluster)
    c.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id, secrets=s))
    c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-f1", secrets=s))
    assert "swell-vol-pvc-f1" not in cluster.run("rbd", "ls", POOL).stdout


# ---- snapshots, restores, clones ----------------------------------------------------------------

def test_rbd_snapshots_restores_and_clones_by_checksum(rbd_plugin, cluster):
    c = rbd_plugin.controller
    s = secrets(cluster)
    c.CreateVolume(rbd_req("pvc-src", cluster, cap=block_cap()))
    write(cluster, "swell-vol-pvc-src", 0, os.urandom(3 * MiB))
    write(cluster, "swell-vol-pvc-src", 40 * MiB, os.urandom(MiB))
    at_snapshot = digest(cluster, "swell-vol-pvc-src")
    snap = c.CreateSnapshot(csi_pb2.CreateSnapshotRequest(name="snap-1", source_volume_id="pvc-src", secrets=s)).snapshot
    assert snap.ready_to_use and snap.size_bytes == 64 * MiB and snap.source_volume_id == "pvc-src"
    assert c.CreateSnapshot(csi_pb2.CreateSnapshotRequest(name="snap-1", source_volume_id="pvc-src")).snapshot == snap
    c.CreateVolume(rbd_req("pvc-other", cluster, cap=block_cap()))
    assert code_of(c.CreateSnapshot, csi_pb2.CreateSnapshotRequest(name="snap-1", source_volume_id="pvc-other")) \
        == grpc.StatusCode.ALREADY_EXISTS
    listed = [e.snapshot.snapshot_id for e in c.ListSnapshots(csi_pb2.ListSnapshotsRequest(source_volume_id="pvc-src")).entries]
    assert listed == ["snap-1"]
    # Writes after the snapshot are in the volume and its clone, not in the snapshot's restore.
    write(cluster, "swell-vol-pvc-src", MiB, os.urandom(2 * MiB))
    now = digest(cluster, "swell-vol-pvc-src")
    assert now != at_snapshot
    restored = c.CreateVolume(rbd_req("pvc-rest", cluster, cap=block_cap(), source=("snapshot", "snap-1"))).volume
    assert restored.content_source.snapshot.snapshot_id == "snap-1"
    assert digest(cluster, "swell-vol-pvc-rest") == at_snapshot
    clone = c.CreateVolume(rbd_req("pvc-clone", cluster, cap=block_cap(), required=96 * MiB, source=("volume", "pvc-src"))).volume
    assert clone.capacity_bytes == 96 * MiB
    data = ceph.image_read(cluster, f"{POOL}/swell-vol-pvc-clone")
    assert hashlib.sha256(data[:64 * MiB]).hexdigest() == now and data[64 * MiB:] == bytes(32 * MiB)
    assert code_of(c.CreateVolume, rbd_req("pvc-small", cluster, required=32 * MiB, source=("volume", "pvc-src"))) \
        == grpc.StatusCode.OUT_OF_RANGE

    # The source goes while its snapshot and clone live on: they are flattened first and keep their bytes.
    c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-src", secrets=s))
    assert "swell-vol-pvc-src" not in images(cluster)
    assert "parent" not in info(cluster, "swell-snap-snap-1") and "parent" not in info(cluster, "swell-vol-pvc-clone")
    assert digest(cluster, "swell-vol-pvc-rest") == at_snapshot
    again = c.CreateVolume(rbd_req("pvc-rest2", cluster, cap=block_cap(), source=("snapshot", "snap-1"))).volume
    assert digest(cluster, "swell-vol-pvc-rest2") == at_snapshot and again.capacity_bytes == 64 * MiB
    # Deleting the snapshot flattens its restores; its RBD snapshots go with it.
    c.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id="snap-1", secrets=s))
    c.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id="snap-1", secrets=s))
    assert "swell-snap-snap-1" not in images(cluster)
    assert digest(cluster, "swell-vol-pvc-rest") == at_snapshot and digest(cluster, "swell-vol-pvc-rest2") == at_snapshot
    for name in ("pvc-rest", "pvc-rest2", "pvc-clone", "pvc-other"):
        c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=name, secrets=s))
    assert images(cluster) == []


def test_rbd_clone_chains_are_flattened_past_the_depth(rbd_plugin, cluster):
    """Each clone of a clone adds a parent; past --rbd-max-clone-depth (4) the new image is flattened."""
    c = rbd_plugin.controller
    c.CreateVolume(rbd_req("pvc-d0", cluster, cap=block_cap()))
    write(cluster, "swell-vol-pvc-d0", 0, os.urandom(MiB))
    first = digest(cluster, "swell-vol-pvc-d0")
    depths = []
    for i in range(1, 6):
        c.CreateVolume(rbd_req(f"pvc-d{i}", cluster, cap=block_cap(), source=("volume", f"pvc-d{i - 1}")))
        depth, image = 0, info(cluster, f"swell-vol-pvc-d{i}")
        while "parent" in image:
            depth += 1
            image = info(cluster, image["parent"]["image"], image["parent"]["pool"])
        depths.append(depth)
        assert digest(cluster, f"swell-vol-pvc-d{i}") == first
    assert depths == [1, 2, 3, 4, 0], depths  # the fifth would have had 5 parents: flattened, it has none
    # The flattened clone let go of its parent's snapshot.
    assert snaps(cluster, "swell-vol-pvc-d4") == []
    for i in reversed(range(6)):
        c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=f"pvc-d{i}"))
    assert images(cluster) == []


def test_rbd_group_snapshots_are_refused(rbd_plugin, cluster):
    c = rbd_plugin.controller
    c.CreateVolume(rbd_req("pvc-g1", cluster))
    c.CreateVolume(rbd_req("pvc-g2", cluster))
    with pytest.raises(grpc.RpcError) as err:
        rbd_plugin.group.CreateVolumeGroupSnapshot(csi_pb2.CreateVolumeGroupSnapshotRequest(
            name="group-1", source_volume_ids=["pvc-g1", "pvc-g2"]))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "rbd" in err.value.details()
    for name in ("pvc-g1", "pvc-g2"):
        c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=name))
    assert images(cluster) == []


# ---- crashes and a monitor restart ---------------------------------------------------------------

def crash_at(p, point, call):
    """Restarts the plugin armed at `point`, makes the call (the plugin dies: UNAVAILABLE), and
    restarts it unarmed."""
    p.stop()
    p.start(failpoints=point)
    with pytest.raises(grpc.RpcError) as err:
        call(p.controller)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert p.wait_dead() == -signal.SIGKILL, f"the plugin died at {point}"
    p.start()


def test_rbd_sigkill_inside_create_snapshot_grow_delete_then_retry(rbd_plugin, cluster):
    p, s = rbd_plugin, secrets(cluster)
    create = lambda name, **kw: (lambda c: c.CreateVolume(rbd_req(name, cluster, cap=block_cap(), **kw)))

    crash_at(p, "rbd-create-after-create", create("pvc-c1"))
    assert images(cluster) == ["swell-vol-pvc-c1"], "the crash left a half-made image"
    assert code_of(p.controller.ControllerGetVolume, csi_pb2.ControllerGetVolumeRequest(volume_id="pvc-c1")) \
        == grpc.StatusCode.NOT_FOUND, "an image without its record is no volume"
    vol = create("pvc-c1")(p.controller).volume
    assert vol.capacity_bytes == 64 * MiB
    write(cluster, "swell-vol-pvc-c1", 0, os.urandom(2 * MiB))
    before = digest(cluster, "swell-vol-pvc-c1")

    # A snapshot: the crash after the RBD snapshot, after the clone, and before the record.
    for i, point in enumerate(("rbd-clone-after-snap", "rbd-clone-after-clone", "rbd-snapshot-before-record")):
        name = f"snap-c{i}"
        crash_at(p, point, lambda c: c.CreateSnapshot(csi_pb2.CreateSnapshotRequest(name=name, source_volume_id="pvc-c1", secrets=s)))
        snap = p.controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(name=name, source_volume_id="pvc-c1", secrets=s)).snapshot
        assert snap.ready_to_use
        assert digest(cluster, f"swell-snap-{name}") == before
    assert snaps(cluster, "swell-vol-pvc-c1") == ["swell-snap-snap-c0", "swell-snap-snap-c1", "swell-snap-snap-c2"]

    # A restore that dies after its clone: the retry remakes it, and one RBD snapshot backs it.
    crash_at(p, "rbd-clone-after-clone", create("pvc-c2", source=("snapshot", "snap-c0")))
    create("pvc-c2", source=("snapshot", "snap-c0"))(p.controller)
    assert digest(cluster, "swell-vol-pvc-c2") == before
    assert snaps(cluster, "swell-snap-snap-c0") == ["swell-vol-pvc-c2"]

    crash_at(p, "rbd-expand-after-resize", lambda c: c.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id="pvc-c1", capacity_range=csi_pb2.CapacityRange(required_bytes=128 * MiB), secrets=s)))
    grown = p.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id="pvc-c1", capacity_range=csi_pb2.CapacityRange(required_bytes=128 * MiB), secrets=s))
    assert grown.capacity_bytes == 128 * MiB and info(cluster, "swell-vol-pvc-c1")["size"] == 128 * MiB

    # The source's delete dies after flattening one child, then after its rm (before its parent's
    # snapshot is released): each retry finishes, and the children keep their bytes.
    crash_at(p, "rbd-delete-after-flatten", lambda c: c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-c1", secrets=s)))
    p.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-c1", secrets=s))
    assert "swell-vol-pvc-c1" not in images(cluster)
    for i in range(3):
        assert digest(cluster, f"swell-snap-snap-c{i}") == before
    crash_at(p, "rbd-delete-after-rm", lambda c: c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-c2", secrets=s)))
    assert "swell-vol-pvc-c2" not in images(cluster)
    assert snaps(cluster, "swell-snap-snap-c0") == ["swell-vol-pvc-c2"], "the crash left the parent's snapshot"
    p.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-c2", secrets=s))
    # That snapshot goes with its image: a delete removes every snapshot an image holds.
    for i in range(3):
        p.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=f"snap-c{i}", secrets=s))
    assert images(cluster) == []


def test_rbd_monitor_restarted_in_the_middle_of_a_call(rbd_plugin, cluster):
    """The create is held at a failpoint after `rbd create`; the monitor is SIGKILLed and started
    again 3 s later; the call's next commands find it again and the call succeeds."""
    p = rbd_plugin
    p.stop()
    p.start(failpoints="rbd-create-after-create:pause")
    result = {}

    def call():
        try:
            result["volume"] = p.controller.CreateVolume(rbd_req("pvc-m1", cluster), timeout=120).volume
        except grpc.RpcError as e:
            result["error"] = e

    t = threading.Thread(target=call)
    t.start()
    ceph.Cluster.wait(lambda: "swell-vol-pvc-m1" in images(cluster), 30, "the image is made")
    cluster.kill("mon.a")
    time.sleep(3)
    cluster._spawn("mon.a", ["ceph-mon", "-i", "a"])
    t.join(timeout=150)
    assert not t.is_alive()
    assert "error" not in result, result.get("error") and result["error"].details()
    assert result["volume"].capacity_bytes == 64 * MiB
    assert "volume=pvc-m1" in cluster.run("rbd", "image-meta", "get", f"{POOL}/swell-vol-pvc-m1", "swell.record").stdout
    p.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="pvc-m1"))
    assert images(cluster) == []
