"""The iscsi backend against a real tgtd on 127.0.0.1.

Target side: sizes are read by an independent initiator, libiscsi's iscsi-readcapacity16.
Initiator side: the VM tier, where a stock Debian kernel logs in with open-iscsi and the real
plugin stages, publishes, grows and unstages volumes exported by the host's controller.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time

import grpc
import pytest

from conftest import MiB, Plugin, SWELL, block_cap, clean_host, code_of, create_req, csi_pb2, mount_cap, require_root
import iscsi

IQN = "iqn.2026-11.dev.swell"



@pytest.fixture(autouse=True)
def iscsi_tools():
    """A missing tool fails, as for the LVM and PostgreSQL tests: a skip would go unseen."""
    if shutil.which("tgtd") is None or shutil.which("iscsi-readcapacity16") is None:
        pytest.fail("tgt and libiscsi-bin are not installed (scripts/setup.sh --tests installs them)")


# The nodes the controller knows (its --nodes-file): the host's libiscsi reader, two nodes, the VMs.
NODES = [iscsi.READER, "node-a", "node-b", "vm", "vm-a", "vm-b"]


class Controller:
    """A tgtd plus the plugin with the iscsi backend, both private to one test."""

    def __init__(self, portal_host="127.0.0.1", address="127.0.0.1", prefix=()):
        """`address` and `prefix`: where tgtd listens and what it runs under (a network namespace)."""
        require_root()
        self.root = tempfile.mkdtemp(prefix="swell-iscsi-")
        self.tgtd = iscsi.Tgtd(self.root, address=address, prefix=prefix)
        self.plugin = Plugin(self.root)
        self.storage = os.path.join(self.root, "iscsi")
        self.portal_host = portal_host
        self.nodes_file = os.path.join(self.root, "nodes")
        with open(self.nodes_file, "w") as f:
            f.write("".join(n + "\n" for n in NODES))

    def args(self):
        return self.tgtd.plugin_args(self.storage, self.portal_host, self.nodes_file)

    def start(self, failpoints=None):
        if self.tgtd.proc is None or self.tgtd.proc.poll() is not None:
            self.tgtd.start()
        self.plugin.start(failpoints=failpoints, extra_args=self.args())
        return self

    def create(self, name, size=64 * MiB, cap=None, secrets=None, publish_to=iscsi.READER):
        """CreateVolume, then (unless `publish_to` is None) ControllerPublishVolume to that node, so
        that its initiator, the host's libiscsi by default, is let in."""
        req = create_req(name, size, cap=cap, params={"backend": "iscsi"})
        req.secrets.update(secrets or {})
        volume = self.plugin.controller.CreateVolume(req).volume
        if publish_to:
            self.publish(name, publish_to, cap=cap)
        return volume

    def publish(self, name, node, cap=None):
        return dict(self.plugin.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=name, node_id=node, volume_capability=cap or mount_cap())).publish_context)

    def unpublish(self, name, node=""):
        self.plugin.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=name, node_id=node))

    def acl(self, name):
        """The target's ACL entries, as tgtd shows them."""
        show = self.tgtd.show()
        block = show.split(f": {IQN}:{name}\n", 1)[1].split("\nTarget ", 1)[0]
        return block.split("ACL information:", 1)[1].split()

    def expand(self, name, size):
        return self.plugin.controller.ControllerExpandVolume(
            csi_pb2.ControllerExpandVolumeRequest(volume_id=name, capacity_range=csi_pb2.CapacityRange(required_bytes=size)))

    def delete(self, name):
        self.plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=name))

    def capacity(self, name):
        return iscsi.readcapacity(self.tgtd.port, f"{IQN}:{name}")

    def close(self):
        try:
            self.plugin.stop()
        finally:
            self.tgtd.close()
            clean_host(self.root)


@pytest.fixture
def ctl():
    c = Controller()
    try:
        yield c.start()  # a start that fails half-way still stops the tgtd it began
    finally:
        c.close()


def test_create_exports_a_target_an_independent_initiator_reads(ctl):
    vol = ctl.create("pvc-a1", 64 * MiB)
    assert vol.capacity_bytes == 64 * MiB
    assert dict(vol.volume_context) == {
        "backend": "iscsi", "portal": f"127.0.0.1:{ctl.tgtd.port}", "iqn": f"{IQN}:pvc-a1", "lun": "1"}
    assert len(vol.accessible_topology) == 0, "a network volume is reachable from every node"
    assert ctl.capacity("pvc-a1") == 64 * MiB
    # Idempotent: the same request answers the same volume, and exports nothing twice.
    again = ctl.create("pvc-a1", 64 * MiB)
    assert again == vol
    assert list(ctl.tgtd.targets()) == [f"{IQN}:pvc-a1"]


# ---- publishing: one node at a time ------------------------------------------------------------

def perf(ctl, name, node):
    """libiscsi's iscsi-perf reading a volume as `node`'s initiator, for as long as it runs: a
    node's session, logged in and busy."""
    return subprocess.Popen(["iscsi-perf", "-i", iscsi.initiator_name(node), "-t", "120",
                             f"iscsi://127.0.0.1:{ctl.tgtd.port}/{IQN}:{name}/1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_sessions(ctl, name, n, proc=None, timeout=20):
    deadline = time.monotonic() + timeout
    while ctl.tgtd.targets().get(f"{IQN}:{name}", 0) != n:
        assert time.monotonic() < deadline, f"{name}: {ctl.tgtd.targets()} sessions, not {n}"
        assert proc is None or proc.poll() is None, proc.stdout.read() if proc else ""
        time.sleep(0.1)


def test_a_target_admits_only_the_node_its_volume_is_published_to(ctl):
    """A target with no publication admits no one; publishing admits that node's initiator, by
    name, and hands the node that name in the publish context; a second node is FAILED_PRECONDITION
    naming the first; unpublishing removes the name and ends the node's session, whose reconnect is
    then refused; the second node gets in after. Unknown and malformed nodes are refused first."""
    c = ctl.plugin.controller
    ctl.create("pvc-one", 16 * MiB, publish_to=None)
    assert ctl.acl("pvc-one") == []
    for node in ("node-a", "node-b", iscsi.READER):
        assert iscsi.readcapacity(ctl.tgtd.port, f"{IQN}:pvc-one", node=node) is None, node
    assert code_of(c.ControllerPublishVolume, csi_pb2.ControllerPublishVolumeRequest(
        volume_id="pvc-one", node_id="no-such-node", volume_capability=mount_cap())) == grpc.StatusCode.NOT_FOUND
    assert code_of(c.ControllerPublishVolume, csi_pb2.ControllerPublishVolumeRequest(
        volume_id="pvc-one", node_id="Node-Upper", volume_capability=mount_cap())) in (
        grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    assert ctl.acl("pvc-one") == []

    context = ctl.publish("pvc-one", "node-a")
    assert context == {"node": "node-a", "initiator": iscsi.initiator_name("node-a")}
    assert ctl.publish("pvc-one", "node-a") == context, "a repeat is the same publication"
    assert ctl.acl("pvc-one") == [iscsi.initiator_name("node-a")], "CHAP aside, the name is the whole ACL"
    assert iscsi.readcapacity(ctl.tgtd.port, f"{IQN}:pvc-one", node="node-a") == 16 * MiB
    assert iscsi.readcapacity(ctl.tgtd.port, f"{IQN}:pvc-one", node="node-b") is None
    with pytest.raises(grpc.RpcError) as err:
        ctl.publish("pvc-one", "node-b")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "node-a" in err.value.details()
    listed = {e.volume.volume_id: list(e.status.published_node_ids)
              for e in c.ListVolumes(csi_pb2.ListVolumesRequest()).entries}
    assert listed["pvc-one"] == ["node-a"]

    # node-a is busy on the volume when it is unpublished: its session ends at once, and its
    # initiator, which keeps trying to log in again, is refused.
    reader = perf(ctl, "pvc-one", "node-a")
    try:
        wait_sessions(ctl, "pvc-one", 1, reader)
        ctl.unpublish("pvc-one", "node-a")
        assert ctl.acl("pvc-one") == []
        wait_sessions(ctl, "pvc-one", 0, timeout=5)
        time.sleep(2)  # iscsi-perf reconnects at once; none of its tries got in
        assert ctl.tgtd.targets()[f"{IQN}:pvc-one"] == 0
        assert reader.poll() is None, "iscsi-perf is still trying to get back in"
    finally:
        os.killpg(reader.pid, signal.SIGKILL)
        reader.wait()
    assert iscsi.readcapacity(ctl.tgtd.port, f"{IQN}:pvc-one", node="node-a") is None
    ctl.unpublish("pvc-one", "node-a")  # a repeat, and a node it is not published to
    ctl.unpublish("pvc-one", "node-b")
    assert ctl.publish("pvc-one", "node-b")["initiator"] == iscsi.initiator_name("node-b")
    assert iscsi.readcapacity(ctl.tgtd.port, f"{IQN}:pvc-one", node="node-b") == 16 * MiB
    assert iscsi.readcapacity(ctl.tgtd.port, f"{IQN}:pvc-one", node="node-a") is None
    ctl.unpublish("pvc-one")  # no node: every node
    assert ctl.acl("pvc-one") == []


def test_an_older_acl_is_replaced_by_the_publications_at_start(ctl):
    """A target an older Swell exported admits every address (`ALL`): the first readiness check
    after the upgrade leaves only the published nodes' names."""
    ctl.create("pvc-old", 16 * MiB, publish_to=None)
    ctl.create("pvc-pub", 16 * MiB, publish_to="node-a")
    for name in ("pvc-old", "pvc-pub"):
        tid = next(line.split()[1].rstrip(":") for line in ctl.tgtd.show().splitlines()
                   if line.startswith("Target ") and line.endswith(f":{name}"))
        subprocess.run(ctl.tgtd.tgtadm("--mode", "target", "--op", "bind", "--tid", tid, "-I", "ALL"), check=True)
    assert iscsi.readcapacity(ctl.tgtd.port, f"{IQN}:pvc-old", node="node-b") == 16 * MiB
    ctl.plugin.stop()
    ctl.start()
    assert ctl.plugin.identity.Probe(csi_pb2.ProbeRequest()).ready.value
    assert ctl.acl("pvc-old") == [] and ctl.acl("pvc-pub") == [iscsi.initiator_name("node-a")]
    assert iscsi.readcapacity(ctl.tgtd.port, f"{IQN}:pvc-old", node="node-b") is None


@pytest.mark.parametrize("point", ["iscsi-publish-after-record", "iscsi-unpublish-after-record"])
def test_a_sigkill_inside_publish_or_unpublish_converges_on_retry(ctl, point):
    """Publish writes its record, then binds; unpublish removes the record, then unbinds and ends
    the sessions. Killed between, the restarted plugin's readiness check derives the ACL from the
    records, and the CO's retry finishes the call: the ACL and the sessions end as they should."""
    ctl.create("pvc-k", 16 * MiB, publish_to=None)
    publishing = point.startswith("iscsi-publish")
    reader = None
    if not publishing:
        ctl.publish("pvc-k", "node-a")
        reader = perf(ctl, "pvc-k", "node-a")
        wait_sessions(ctl, "pvc-k", 1, reader)
    try:
        ctl.plugin.stop()
        ctl.plugin.start(failpoints=point, extra_args=ctl.args())
        with pytest.raises(grpc.RpcError) as err:
            ctl.publish("pvc-k", "node-a") if publishing else ctl.unpublish("pvc-k", "node-a")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ctl.plugin.wait_dead() == -signal.SIGKILL
        ctl.start()
        assert ctl.plugin.identity.Probe(csi_pb2.ProbeRequest()).ready.value
        if publishing:
            assert ctl.acl("pvc-k") == [iscsi.initiator_name("node-a")], "the record was written: the ACL follows it"
            assert ctl.publish("pvc-k", "node-a")["initiator"] == iscsi.initiator_name("node-a")
            assert iscsi.readcapacity(ctl.tgtd.port, f"{IQN}:pvc-k", node="node-a") == 16 * MiB
        else:
            assert ctl.acl("pvc-k") == [], "the record was gone: the restart unbound the name"
            ctl.unpublish("pvc-k", "node-a")  # the CO's retry ends the session the crash left
            wait_sessions(ctl, "pvc-k", 0, timeout=5)
            assert ctl.publish("pvc-k", "node-b")
    finally:
        if reader is not None:
            os.killpg(reader.pid, signal.SIGKILL)
            reader.wait()


def test_a_name_that_cannot_be_an_iqn_is_refused(ctl):
    code = code_of(ctl.plugin.controller.CreateVolume, create_req("PVC_Upper", 16 * MiB, params={"backend": "iscsi"}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert ctl.tgtd.targets() == {}


def test_the_same_name_in_two_backends_is_already_exists(ctl):
    ctl.create("pvc-both", 16 * MiB)
    code = code_of(ctl.plugin.controller.CreateVolume, create_req("pvc-both", 16 * MiB, params={"backend": "loop"}))
    assert code == grpc.StatusCode.ALREADY_EXISTS


def test_grow_is_seen_by_the_initiator_and_never_shrinks(ctl):
    ctl.create("pvc-g1", 64 * MiB)
    assert ctl.capacity("pvc-g1") == 64 * MiB
    resp = ctl.expand("pvc-g1", 100 * MiB)
    assert resp.capacity_bytes == 100 * MiB and resp.node_expansion_required
    assert ctl.capacity("pvc-g1") == 100 * MiB
    # A repeat, and a smaller request, answer the current size and leave the LUN alone.
    assert ctl.expand("pvc-g1", 100 * MiB).capacity_bytes == 100 * MiB
    assert ctl.expand("pvc-g1", 32 * MiB).capacity_bytes == 100 * MiB
    assert ctl.capacity("pvc-g1") == 100 * MiB


def test_modify_reserves_the_targets_file_and_the_initiator_sees_the_same_lun(ctl):
    ctl.create("pvc-m1", 64 * MiB)
    path = os.path.join(ctl.storage, "volumes", "pvc-m1", "disk.img")
    assert os.stat(path).st_blocks * 512 < 8 * MiB
    ctl.plugin.controller.ControllerModifyVolume(csi_pb2.ControllerModifyVolumeRequest(
        volume_id="pvc-m1", mutable_parameters={"provisioning": "thick"}))
    assert os.stat(path).st_blocks * 512 >= 64 * MiB
    assert ctl.capacity("pvc-m1") == 64 * MiB, "the LUN is unchanged"
    assert code_of(ctl.plugin.controller.ControllerModifyVolume, csi_pb2.ControllerModifyVolumeRequest(
        volume_id="pvc-m1", mutable_parameters={"tier": "gold"})) == grpc.StatusCode.INVALID_ARGUMENT
    ctl.expand("pvc-m1", 96 * MiB)
    assert os.stat(path).st_blocks * 512 >= 96 * MiB, "a thick target's grow is reserved too"
    assert ctl.capacity("pvc-m1") == 96 * MiB


def test_a_crash_between_growing_and_reexporting_converges(ctl):
    ctl.create("pvc-c1", 64 * MiB)
    ctl.plugin.stop()
    ctl.plugin.start(failpoints="iscsi-expand-before-reexport",
                     extra_args=ctl.args())
    with pytest.raises(grpc.RpcError):
        ctl.expand("pvc-c1", 96 * MiB)
    ctl.plugin.wait_dead()
    assert ctl.capacity("pvc-c1") == 64 * MiB, "tgt still reports the old size"
    ctl.start()
    # Readiness re-exports stale LUNs; the retried call answers the grown size either way.
    assert ctl.expand("pvc-c1", 96 * MiB).capacity_bytes == 96 * MiB
    assert ctl.capacity("pvc-c1") == 96 * MiB


def test_snapshot_restore_and_clone_of_iscsi_volumes(ctl):
    import hashlib
    ctl.create("pvc-s1", 64 * MiB)
    disk = os.path.join(ctl.storage, "volumes", "pvc-s1", "disk.img")
    payload = os.urandom(MiB)
    with open(disk, "r+b") as f:
        f.seek(8 * MiB)
        f.write(payload)
    snap = ctl.plugin.controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(name="snap-s1", source_volume_id="pvc-s1")).snapshot
    assert snap.ready_to_use and snap.size_bytes == 64 * MiB
    with open(disk, "r+b") as f:
        f.seek(8 * MiB)
        f.write(b"\0" * MiB)  # changed after the snapshot
    req = create_req("pvc-r1", 0, params={"backend": "iscsi"})
    req.volume_content_source.snapshot.snapshot_id = "snap-s1"
    restored = ctl.plugin.controller.CreateVolume(req).volume
    assert restored.capacity_bytes == 64 * MiB and restored.content_source.snapshot.snapshot_id == "snap-s1"
    assert restored.volume_context["iqn"] == f"{IQN}:pvc-r1" and len(restored.accessible_topology) == 0
    ctl.publish("pvc-r1", iscsi.READER)
    assert ctl.capacity("pvc-r1") == 64 * MiB, "the restore is exported, as an independent initiator reads"

    def chunk(name):
        with open(os.path.join(ctl.storage, "volumes", name, "disk.img"), "rb") as f:
            f.seek(8 * MiB)
            return hashlib.sha256(f.read(MiB)).hexdigest()
    assert chunk("pvc-r1") == hashlib.sha256(payload).hexdigest()
    clone = create_req("pvc-k1", 96 * MiB, params={"backend": "iscsi"})
    clone.volume_content_source.volume.volume_id = "pvc-r1"
    assert ctl.plugin.controller.CreateVolume(clone).volume.capacity_bytes == 96 * MiB
    ctl.publish("pvc-k1", iscsi.READER)
    assert ctl.capacity("pvc-k1") == 96 * MiB and chunk("pvc-k1") == chunk("pvc-r1")
    # A copy cannot cross backends: the iSCSI snapshot into a loop volume is refused.
    cross = create_req("pvc-x1", 0, params={"backend": "loop"})
    cross.volume_content_source.snapshot.snapshot_id = "snap-s1"
    assert code_of(ctl.plugin.controller.CreateVolume, cross) == grpc.StatusCode.INVALID_ARGUMENT
    listed = ctl.plugin.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest()).entries
    assert [(e.snapshot.snapshot_id, e.snapshot.source_volume_id) for e in listed] == [("snap-s1", "pvc-s1")]
    # Snapshots are independent of their source: deleting the source leaves the snapshot.
    ctl.delete("pvc-s1")
    ctl.plugin.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id="snap-s1"))
    ctl.plugin.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id="snap-s1"))
    for name in ("pvc-r1", "pvc-k1"):
        ctl.delete(name)
    assert ctl.tgtd.targets() == {}
    assert os.listdir(os.path.join(ctl.storage, "snapshots")) == []


def test_iscsi_group_snapshots(ctl):
    """LUNs no initiator is logged in to are quiet, so the storage host takes them at one instant: a
    group of two restores each member's bytes. With an initiator logged in to one (libiscsi's
    iscsi-perf reading it), the storage host cannot hold that initiator's writes: a group of two is
    FAILED_PRECONDITION naming it, and leaves no member. A group across backends (a loop volume with
    an iSCSI one) is FAILED_PRECONDITION too."""
    import hashlib
    payloads = {}
    for name in ("pvc-ga", "pvc-gb"):
        ctl.create(name, 16 * MiB)
        payloads[name] = os.urandom(MiB)
        with open(os.path.join(ctl.storage, "volumes", name, "disk.img"), "r+b") as f:
            f.seek(4 * MiB)
            f.write(payloads[name])
    G = ctl.plugin.group
    group = G.CreateVolumeGroupSnapshot(csi_pb2.CreateVolumeGroupSnapshotRequest(
        name="gs", source_volume_ids=["pvc-ga", "pvc-gb"])).group_snapshot
    assert sorted(s.source_volume_id for s in group.snapshots) == ["pvc-ga", "pvc-gb"]
    for s in group.snapshots:
        assert s.group_snapshot_id == "gs"
        req = create_req(f"{s.source_volume_id}-back", 0, params={"backend": "iscsi"})
        req.volume_content_source.snapshot.snapshot_id = s.snapshot_id
        ctl.plugin.controller.CreateVolume(req)
        with open(os.path.join(ctl.storage, "volumes", f"{s.source_volume_id}-back", "disk.img"), "rb") as f:
            f.seek(4 * MiB)
            assert hashlib.sha256(f.read(MiB)).digest() == hashlib.sha256(payloads[s.source_volume_id]).digest()
    reader = subprocess.Popen(["iscsi-perf", "-i", iscsi.initiator_name(iscsi.READER), "-t", "60",
                               f"iscsi://127.0.0.1:{ctl.tgtd.port}/{IQN}:pvc-ga/1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while ctl.tgtd.targets().get(f"{IQN}:pvc-ga", 0) == 0:
            assert reader.poll() is None and time.monotonic() < deadline, "iscsi-perf never logged in"
            time.sleep(0.1)
        with pytest.raises(grpc.RpcError) as err:
            G.CreateVolumeGroupSnapshot(csi_pb2.CreateVolumeGroupSnapshotRequest(
                name="gs2", source_volume_ids=["pvc-ga", "pvc-gb"]))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "pvc-ga" in err.value.details() and "iSCSI initiator" in err.value.details(), err.value.details()
    finally:
        reader.kill()
        reader.wait()
    ctl.plugin.controller.CreateVolume(create_req("loop-g", 16 * MiB, params={"backend": "loop"}))
    with pytest.raises(grpc.RpcError) as err:
        G.CreateVolumeGroupSnapshot(csi_pb2.CreateVolumeGroupSnapshotRequest(
            name="gs3", source_volume_ids=["pvc-gb", "loop-g"]))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "backend" in err.value.details()
    assert sorted(os.listdir(os.path.join(ctl.storage, "snapshots"))) == ["gs.0", "gs.1"], "no member of a refusal"
    G.DeleteVolumeGroupSnapshot(csi_pb2.DeleteVolumeGroupSnapshotRequest(
        group_snapshot_id="gs", snapshot_ids=[s.snapshot_id for s in group.snapshots]))
    assert os.listdir(os.path.join(ctl.storage, "snapshots")) == []


def test_delete_removes_target_and_file_and_is_idempotent(ctl):
    ctl.create("pvc-d1", 16 * MiB)
    ctl.delete("pvc-d1")
    assert ctl.tgtd.targets() == {}
    assert ctl.capacity("pvc-d1") is None
    assert not os.path.exists(os.path.join(ctl.storage, "volumes", "pvc-d1"))
    ctl.delete("pvc-d1")
    ctl.delete("pvc-never")


def test_targets_come_back_after_tgtd_is_killed_and_restarted(ctl):
    ctl.create("pvc-r1", 32 * MiB)
    ctl.create("pvc-r2", 48 * MiB)
    ctl.expand("pvc-r2", 80 * MiB)
    ctl.tgtd.kill()
    probe = csi_pb2.ProbeRequest()
    assert code_of(ctl.plugin.identity.Probe, probe) != grpc.StatusCode.OK, "not ready while tgtd is down"
    ctl.tgtd.start()
    assert ctl.tgtd.targets() == {}
    assert ctl.plugin.identity.Probe(probe).ready.value
    assert sorted(ctl.tgtd.targets()) == [f"{IQN}:pvc-r1", f"{IQN}:pvc-r2"]
    assert ctl.capacity("pvc-r1") == 32 * MiB
    assert ctl.capacity("pvc-r2") == 80 * MiB
    # The ACLs come back from the publication records: the published node only.
    assert ctl.acl("pvc-r1") == ctl.acl("pvc-r2") == [iscsi.initiator_name(iscsi.READER)]


def test_targets_come_back_after_the_plugin_restarts_with_a_fresh_tgtd(ctl):
    ctl.create("pvc-p1", 32 * MiB)
    ctl.plugin.stop()
    ctl.tgtd.kill()
    ctl.start()  # a new tgtd, then the plugin: ready means exported
    assert ctl.plugin.identity.Probe(csi_pb2.ProbeRequest()).ready.value
    assert ctl.capacity("pvc-p1") == 32 * MiB


def test_list_and_get_report_iscsi_volumes_with_their_health(ctl):
    ctl.create("pvc-l1", 16 * MiB)
    entries = ctl.plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest()).entries
    assert [e.volume.volume_id for e in entries] == ["pvc-l1"]
    assert not entries[0].status.volume_condition.abnormal
    # The target vanishes behind the plugin's back: the volume is reported abnormal.
    import subprocess
    subprocess.run(ctl.tgtd.tgtadm("--mode", "target", "--op", "delete", "--tid", "1"), check=True)
    got = ctl.plugin.controller.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id="pvc-l1"))
    assert got.status.volume_condition.abnormal
    assert "not exported" in got.status.volume_condition.message


# ---- the VM tier: the kernel's initiator -------------------------------------------------

def test_vm_stage_write_grow_online_verify_unstage():
    """Inside a real Debian kernel: stage ext4, xfs and a block volume over iSCSI (the first after
    a plugin crash right after its login), write data, grow each from the host's controller while
    mounted, NodeExpandVolume in the guest, check the checksums and the new sizes, unstage, and
    leave no session or node record behind."""
    artifacts = iscsi.vm_artifacts()
    ctl = Controller(portal_host=iscsi.GUEST_PORTAL_HOST)
    vm = None
    try:
        ctl.start()
        sizes = {"pvc-e4": (64 * MiB, 160 * MiB, "ext4"), "pvc-xf": (320 * MiB, 512 * MiB, "xfs"),
                 "pvc-bk": (32 * MiB, 48 * MiB, "block")}
        volumes = {}
        for vid, (before, _, kind) in sizes.items():
            cap = block_cap() if kind == "block" else mount_cap(kind)
            # pvc-xf needs mutual CHAP: the guest's kernel initiator logs in with the node-stage secrets.
            vol = ctl.create(vid, before, cap=cap, secrets=MUTUAL if vid == "pvc-xf" else None, publish_to=None)
            volumes[vid] = (kind, dict(vol.volume_context))

        def refuse_delete_while_logged_in():
            assert all(n == 1 for n in ctl.tgtd.targets().values()), ctl.tgtd.show()
            code = code_of(ctl.plugin.controller.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id="pvc-e4"))
            assert code == grpc.StatusCode.FAILED_PRECONDITION

        vm, status, results, timings = iscsi.run_vm_scenario(
            ctl.root, artifacts, SWELL, ctl, volumes,
            grow=lambda vid: ctl.expand(vid, sizes[vid][1]).capacity_bytes,
            before_grow=refuse_delete_while_logged_in, crash_first_stage=True,
            secrets={"pvc-xf": (MUTUAL, {**MUTUAL, "password": "wrong-secret-000"})})
        assert status == 0, f"the guest failed:\n{vm.console()}\n{_guest_plugin_log(vm)}"
        assert results["chap_none_pvc-xf"] == "PERMISSION_DENIED", "no credentials: refused"
        assert results["chap_wrong_pvc-xf"] == "PERMISSION_DENIED", "a wrong password: refused"
        assert results["chap_sessions_refused_pvc-xf"] == "1", "only pvc-e4's session; none for the refused logins"
        guest_log = open(os.path.join(vm.share, "guest-plugin.log")).read()
        assert "NodeStageVolume" in guest_log
        for secret in (MUTUAL["password"], MUTUAL["password_in"], "wrong-secret-000"):
            assert secret not in guest_log
        assert results["sessions_after_crash"] == "1", "the crashed stage had logged in"
        assert results["sessions_staged"] == "3", "the retried stage reused that session"
        for vid, (before, after, kind) in sizes.items():
            assert results[f"sha_after_{vid}"] == results[f"sha_before_{vid}"], vid
            assert int(results[f"dev_bytes_after_{vid}"]) == after, vid
            if kind != "block":
                fs_before, fs_after = int(results[f"fs_bytes_before_{vid}"]), int(results[f"fs_bytes_after_{vid}"])
                assert fs_after > fs_before + (after - before) * 0.9, (vid, fs_before, fs_after)
                # NodeGetVolumeStats on the iSCSI-backed mount: the filesystem's size, 16 MiB written.
                stats = results[f"stats_{vid}"].split()
                assert stats[0] == "bytes:" and int(stats[2]) == fs_before and int(stats[4]) >= 16 * MiB, stats
        assert results["sessions_after"] == "0"
        assert results["node_records_after"] == "0"
        assert all(n == 0 for n in ctl.tgtd.targets().values())
        for vid in sizes:
            ctl.delete(vid)
        assert ctl.tgtd.targets() == {}
    finally:
        if vm is not None:
            vm.close()
        ctl.close()


def _guest_plugin_log(vm):
    try:
        with open(os.path.join(vm.share, "guest-plugin.log")) as f:
            return f.read()[-4000:]
    except OSError:
        return ""


# ---- CHAP ----------------------------------------------------------------------------------

ALICE = {"username": "alice", "password": "alice-secret-123"}
MUTUAL = {**ALICE, "username_in": "target-swell", "password_in": "target-secret-456"}


def chap_files(root):
    """Every file under `root` that holds one of the test's passwords, with its mode."""
    found = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            path = os.path.join(dirpath, n)
            try:
                data = open(path, "rb").read()
            except OSError:
                continue
            if any(p.encode() in data for p in (ALICE["password"], MUTUAL["password_in"], "rotated-secret-789")):
                found[path] = os.stat(path).st_mode & 0o777
    return found


def test_a_chap_volume_refuses_initiators_without_the_right_credentials(ctl):
    ctl.create("pvc-chap1", secrets=ALICE)
    iqn = f"{IQN}:pvc-chap1"
    port = ctl.tgtd.port
    assert iscsi.readcapacity(port, iqn) is None, "no credentials"
    assert iscsi.readcapacity(port, iqn, chap=("alice", "wrong-secret-000")) is None, "a wrong password"
    assert iscsi.readcapacity(port, iqn, chap=("mallory", ALICE["password"])) is None, "a wrong user"
    assert iscsi.readcapacity(port, iqn, chap=("alice", ALICE["password"])) == 64 * MiB
    # A volume without CHAP is still open to the allowed initiators, as before.
    ctl.create("pvc-open")
    assert iscsi.readcapacity(port, f"{IQN}:pvc-open") == 64 * MiB


def test_mutual_chap_makes_the_target_prove_itself(ctl):
    ctl.create("pvc-mutual", secrets=MUTUAL)
    iqn, port = f"{IQN}:pvc-mutual", ctl.tgtd.port
    login = ("alice", ALICE["password"])
    assert iscsi.readcapacity(port, iqn, chap=login, mutual=("target-swell", MUTUAL["password_in"])) == 64 * MiB
    assert iscsi.readcapacity(port, iqn, chap=login, mutual=("target-swell", "not-the-target-1")) is None
    assert iscsi.readcapacity(port, iqn) is None


def test_chap_secrets_never_reach_a_log_an_error_or_a_file_others_can_read(ctl):
    ctl.create("pvc-chap2", secrets=MUTUAL)
    # Malformed secrets are refused by key, never echoing a value.
    for bad, key in (({"username": "alice"}, "password"), ({"username": "alice", "password": "short-pw"}, "password"),
                     ({**ALICE, "username_in": "t"}, "username_in"),
                     ({"username": "bad user", "password": "leaky-secret-999"}, "username")):
        req = create_req("pvc-bad", params={"backend": "iscsi"})
        req.secrets.update(bad)
        try:
            ctl.plugin.controller.CreateVolume(req)
            raise AssertionError(f"accepted {sorted(bad)}")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and key in e.details(), e.details()
            for value in bad.values():
                if len(value) > 6:
                    assert value not in e.details()
    ctl.plugin.stop()
    ctl.plugin.start(extra_args=ctl.args() + ["--log-level", "trace"])
    ctl.create("pvc-chap3", secrets=MUTUAL)  # every command logged at trace level
    log = open(ctl.plugin.log_path).read()
    assert "tgtadm" in log, "the commands are in the log at trace level, so the check below means something"
    for secret in (ALICE["password"], MUTUAL["password_in"]):
        assert secret not in log
        assert secret not in open(ctl.tgtd.log_path).read()
    files = chap_files(ctl.root)
    assert files and all(mode == 0o600 for mode in files.values()), files
    for path in files:
        parent = os.path.dirname(path)
        assert os.stat(parent).st_mode & 0o077 == 0, f"{parent} is open to others"


def test_chap_survives_restarts_and_a_new_password_applies_to_every_volume_of_the_user(ctl):
    ctl.create("pvc-r1", secrets=ALICE)
    ctl.create("pvc-r2", secrets=ALICE)
    port = ctl.tgtd.port
    old = ("alice", ALICE["password"])
    # tgtd loses every target and account; the plugin's readiness check rebuilds them.
    ctl.tgtd.kill()
    ctl.tgtd.start()
    ctl.plugin.stop()
    ctl.start()
    ctl.plugin.identity.Probe(csi_pb2.ProbeRequest())
    for v in ("pvc-r1", "pvc-r2"):
        assert iscsi.readcapacity(port, f"{IQN}:{v}") is None
        assert iscsi.readcapacity(port, f"{IQN}:{v}", chap=old) == 64 * MiB
    # The class's secret changed: a CreateVolume retry (or a new volume) carries the new password.
    ctl.create("pvc-r1", secrets={"username": "alice", "password": "rotated-secret-789"})
    for v in ("pvc-r1", "pvc-r2"):
        assert iscsi.readcapacity(port, f"{IQN}:{v}", chap=old) is None, v
        assert iscsi.readcapacity(port, f"{IQN}:{v}", chap=("alice", "rotated-secret-789")) == 64 * MiB, v
    # The account goes with its last volume.
    ctl.delete("pvc-r1")
    accounts = lambda: subprocess.run(ctl.tgtd.tgtadm("--mode", "account", "--op", "show"),  # noqa: E731
                                      capture_output=True, text=True, check=True).stdout.split()
    assert "alice" in accounts()
    ctl.delete("pvc-r2")
    assert "alice" not in accounts()
    assert chap_files(ctl.root) == {}


def test_swell_tgtd_stops_tgtd_on_sigterm_which_tgtd_alone_ignores():
    """The controller pod's tgtd container runs `swell tgtd`: tgtd catches SIGTERM and does nothing,
    so a pod stop waited out its grace period and ended in SIGKILL. The wrapper takes tgtd offline,
    drops its targets (their sessions with them) and stops it: exit 0, no tgtd left. A plugin
    started afterwards with a fresh tgtd exports the volume again."""
    c = Controller()
    bare = iscsi.Tgtd(c.root)
    try:
        bare.start()
        bare.proc.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            bare.proc.wait(2)
        bare.close()

        c.tgtd.start(wrapper=SWELL)
        c.start()
        c.create("wrapped", 64 * MiB)
        assert c.capacity("wrapped") == 64 * MiB
        assert c.tgtd.daemon_pids(), "tgtd runs as the wrapper's child"
        c.tgtd.proc.send_signal(signal.SIGTERM)
        assert c.tgtd.proc.wait(10) == 0, c.tgtd.log()
        assert c.tgtd.daemon_pids() == [], "tgtd stopped with its wrapper"
        assert "tgtd offline, targets removed" in c.tgtd.log()
        assert c.capacity("wrapped") is None, "nothing is served once stopped"

        c.plugin.stop()
        c.tgtd.start(wrapper=SWELL)
        c.start()  # as the next controller pod: a fresh tgtd, then the plugin; ready means exported
        assert c.plugin.identity.Probe(csi_pb2.ProbeRequest()).ready.value
        assert c.capacity("wrapped") == 64 * MiB, "re-exported by the next plugin"
        c.delete("wrapped")
    finally:
        bare.close()
        c.close()
