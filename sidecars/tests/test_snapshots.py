"""The sidecar as the snapshotter, and the provisioner restoring from snapshots and cloning claims,
against the test API server (which serves the external-snapshotter v8 CRDs) and the real plugin.
The test plays the common snapshot-controller: it makes the VolumeSnapshotContent of a
VolumeSnapshot, binds the VolumeSnapshot once the content is ready, and marks and deletes the
content when the snapshot goes."""

import hashlib
import os
import signal

from conftest import DRIVER, NODE, csiconf
from test_sidecar import pv_for, reasons, wait_bound

MiB = 1 << 20


def write_and_hash(path, mib=4):
    data = os.urandom(mib * MiB)
    with open(os.path.join(path, "data"), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def hash_of(path):
    with open(os.path.join(path, "data"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def bound_volume(api, name, claim):
    wait_bound(api, name)
    return pv_for(api, claim)["spec"]["csi"]["volumeHandle"]


def test_snapshot_restore_and_delete(cluster):
    api = cluster.api
    sidecar = cluster.sidecar("--snapshots")
    api.create_class("swell")
    api.create_snapshot_class("snapclass")
    claim = api.create_claim("db", size="320Mi")
    handle = bound_volume(api, "db", claim)
    staging = cluster.stage(handle, "db")
    try:
        digest = write_and_hash(staging)
        snap, content = api.create_snapshot("db-snap", "db", volume_handle=handle)
        name = content["metadata"]["name"]
        ready = api.wait_content_finished(name)
        st = ready["status"]
        assert st["snapshotHandle"] == f"snapshot-{snap['metadata']['uid']}", "named from the VolumeSnapshot's UID"
        assert st["readyToUse"] is True and st["restoreSize"] == 320 * MiB
        assert isinstance(st["creationTime"], int) and st["creationTime"] > 1_700_000_000 * 10**9, "nanoseconds"
        assert list(cluster.snapshots()) == [st["snapshotHandle"]]
        api.wait("SnapshotCreated", lambda: "SnapshotCreated" in reasons(api, name))
    finally:
        cluster.unstage(handle, staging)

    api.bind_snapshot("db-snap", ready)
    restored = api.create_restore_claim("db-restored", "VolumeSnapshot", "db-snap", "320Mi")
    restored_handle = bound_volume(api, "db-restored", restored)
    meta = open(os.path.join(cluster.plugin.data, "volumes", restored_handle, "meta")).read()
    assert f"source=snapshot:{st['snapshotHandle']}" in meta
    staging = cluster.stage(restored_handle, "db-restored")
    try:
        assert hash_of(staging) == digest
    finally:
        cluster.unstage(restored_handle, staging)

    # The VolumeSnapshot goes (policy Delete): the snapshot is deleted, then the finalizer removed.
    api.delete_content_as_controller(name)
    api.wait("the content gone", lambda: api.content(name) is None)
    assert cluster.snapshots() == {}
    assert sidecar.proc.poll() is None


def test_retain_keeps_the_snapshot_and_releases_the_content(cluster):
    api = cluster.api
    cluster.sidecar("--snapshots")
    api.create_class("swell")
    api.create_snapshot_class("keep", policy="Retain")
    claim = api.create_claim("k", size="64Mi")
    handle = bound_volume(api, "k", claim)
    _, content = api.create_snapshot("k-snap", "k", snapshot_class="keep", volume_handle=handle, policy="Retain")
    name = content["metadata"]["name"]
    handle_snap = api.wait_content_ready(name)["status"]["snapshotHandle"]
    api.delete_content_as_controller(name)
    api.wait("the content gone", lambda: api.content(name) is None)
    assert list(cluster.snapshots()) == [handle_snap], "Retain keeps the snapshot in the storage"


def test_a_clone_of_a_claim_and_what_the_provisioner_refuses(cluster):
    api = cluster.api
    cluster.sidecar("--snapshots")
    api.create_class("swell")
    api.create_class("other")
    claim = api.create_claim("orig", size="320Mi")
    handle = bound_volume(api, "orig", claim)
    staging = cluster.stage(handle, "orig")
    digest = write_and_hash(staging)
    cluster.unstage(handle, staging)
    clone = api.create_restore_claim("copy", "PersistentVolumeClaim", "orig", "320Mi")
    clone_handle = bound_volume(api, "copy", clone)
    staging = cluster.stage(clone_handle, "copy")
    try:
        assert hash_of(staging) == digest
    finally:
        cluster.unstage(clone_handle, staging)
    # What external-provisioner refuses, with an event: smaller than the source, another class,
    # another namespace, an unknown kind, a snapshot that does not exist.
    api.create_restore_claim("small", "PersistentVolumeClaim", "orig", "64Mi")
    api.create_restore_claim("cross", "PersistentVolumeClaim", "orig", "320Mi", sc="other")
    api.create_restore_claim("elsewhere", "VolumeSnapshot", "s", "320Mi", ref_namespace="prod")
    api.create_restore_claim("nosnap", "VolumeSnapshot", "missing", "320Mi")
    for name, words in [("small", "less than the size"), ("cross", "same class"), ("elsewhere", "ReferenceGrant"),
                        ("nosnap", "does not exist")]:
        ev = api.wait(f"{name} refused", lambda n=name: [e for e in api.events_for(n) if e["reason"] == "ProvisioningFailed"])
        assert words in ev[0]["message"], ev[0]["message"]
        assert api.get(api.pvc_path(name))["status"].get("phase") != "Bound"
    assert sorted(cluster.volumes()) == sorted([handle, clone_handle]), "nothing empty was made for them"


def test_the_sidecar_killed_during_create_snapshot_makes_one_snapshot(cluster):
    api = cluster.api
    # The plugin holds each CreateSnapshot for a second after the copy, to be caught in flight.
    cluster.plugin.stop()
    cluster.plugin.start(failpoints="snapshot-after-thaw:pause")
    first = cluster.sidecar("--snapshots")
    api.create_class("swell")
    api.create_snapshot_class("snapclass")
    claim = api.create_claim("kill", size="64Mi")
    handle = bound_volume(api, "kill", claim)
    _, content = api.create_snapshot("kill-snap", "kill", volume_handle=handle)
    name = content["metadata"]["name"]
    api.wait("CreateSnapshot in flight", lambda: "snapshot.storage.kubernetes.io/volumesnapshot-being-created"
             in (api.content(name)["metadata"].get("annotations") or {}))
    first.stop(signal.SIGKILL)
    cluster.sidecar("--snapshots", name="second")
    ready = api.wait_content_finished(name)
    assert list(cluster.snapshots()) == [ready["status"]["snapshotHandle"]], "one snapshot, not two"


def test_a_conflict_on_the_status_write_is_retried(cluster):
    api = cluster.api
    cluster.sidecar("--snapshots")
    api.create_class("swell")
    api.create_snapshot_class("snapclass")
    claim = api.create_claim("c", size="64Mi")
    handle = bound_volume(api, "c", claim)
    api.hook("conflict?resource=volumesnapshotcontents&count=2")
    _, content = api.create_snapshot("c-snap", "c", volume_handle=handle)
    ready = api.wait_content_ready(content["metadata"]["name"])
    assert ready["metadata"]["annotations"]["test.swell.dev/touched"], "a concurrent writer changed it meanwhile"
    assert len(cluster.snapshots()) == 1


def test_a_snapshot_of_a_pending_claim_waits_for_its_volume(cluster):
    api = cluster.api
    # The central sidecar learns the selected node's topology from its Node and CSINode.
    api.create_node(NODE)
    cluster.sidecar("--snapshots")
    api.create_class("late", binding="WaitForFirstConsumer")
    api.create_snapshot_class("snapclass")
    claim = api.create_claim("p", sc="late", size="64Mi")
    handle = f"pvc-{claim['metadata']['uid']}"
    _, content = api.create_snapshot("p-snap", "p", volume_handle=handle)
    name = content["metadata"]["name"]
    # The class and the content reach the sidecar on two watch streams: a first attempt may find the
    # class not cached yet (an error it retries), so wait for the plugin's NotFound itself.
    def not_found():
        error = (api.content(name).get("status") or {}).get("error")
        return error if error and "NotFound" in error["message"] else None
    failed = api.wait("the content's NotFound error", not_found)
    assert "SnapshotCreationFailed" in reasons(api, name)
    # The scheduler picks a node: the volume is made, and the retried snapshot succeeds.
    api.update_claim("p", lambda c: c["metadata"]["annotations"].update({"volume.kubernetes.io/selected-node": NODE}))
    wait_bound(api, "p")
    ready = api.wait_content_ready(name, timeout=60)
    assert "error" not in ready["status"]


def test_a_pre_provisioned_content_is_read_from_the_plugin(cluster):
    api = cluster.api
    cluster.sidecar("--snapshots")
    api.create_class("swell")
    claim = api.create_claim("pre", size="64Mi")
    handle = bound_volume(api, "pre", claim)
    from csi_pb2 import CreateSnapshotRequest
    made = cluster.plugin.controller.CreateSnapshot(CreateSnapshotRequest(name="made-by-hand", source_volume_id=handle))
    api.ok("POST", f"{api.SNAP}/volumesnapshotcontents", {
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
        "metadata": {"name": "pre-content"},
        "spec": {"deletionPolicy": "Retain", "driver": DRIVER, "source": {"snapshotHandle": "made-by-hand"},
                 "volumeSnapshotRef": {"name": "pre-snap", "namespace": "default"}}})
    st = api.wait_content_ready("pre-content")["status"]
    assert st["snapshotHandle"] == "made-by-hand" and st["restoreSize"] == made.snapshot.size_bytes
    assert csiconf.MiB * 64 == st["restoreSize"]


def test_without_the_snapshot_crds_everything_else_works_and_snapshots_start_when_they_arrive(cluster):
    """external-provisioner keeps provisioning without the snapshot CRDs, and so must Swell: the
    sidecar runs with --snapshots (as deploy/ ships it) on a server whose snapshot group answers
    404, as kube-apiserver does before the CRDs are applied. Provisioning and resizing work, /healthz
    stays 200 and names what waits, the log says it once; once the CRDs exist, snapshots work
    without a restart."""
    api = cluster.api
    api.hook("crds?installed=false")
    sidecar = cluster.sidecar("--snapshots")
    api.create_class("swell")
    claim = api.create_claim("plain", size="64Mi")
    handle = bound_volume(api, "plain", claim)
    api.update_claim("plain", lambda c: c["spec"]["resources"]["requests"].update({"storage": "128Mi"}))
    api.wait("the PV grown", lambda: pv_for(api, claim)["spec"]["capacity"]["storage"] == "128Mi")
    code, body = sidecar.http("/healthz")
    assert code == 200, body
    assert "volumesnapshotcontents.snapshot.storage.k8s.io: not served by the API server" in body, body
    assert "volumesnapshotclasses.snapshot.storage.k8s.io: not served by the API server" in body, body
    # A restore asked for meanwhile is refused with the reason, not retried in silence.
    api.create_restore_claim("early", "VolumeSnapshot", "nothing", "64Mi")
    ev = api.wait("early refused", lambda: [e for e in api.events_for("early") if e["reason"] == "ProvisioningFailed"])
    assert "snapshot CRDs" in ev[0]["message"], ev[0]["message"]

    api.hook("crds?installed=true")
    api.wait("the snapshot caches filled", lambda: "not served" not in sidecar.http("/healthz")[1], timeout=30)
    log = sidecar.log()
    for resource in ("volumesnapshotcontents", "volumesnapshotclasses"):
        said = [line for line in log.splitlines() if "is its CRD installed" in line and resource in line]
        assert len(said) == 1, f"said once per resource, not at every retry: {said}"
    assert "list failed" not in log, "a missing CRD is not a failure to warn about in a loop"
    api.create_snapshot_class("snapclass")
    _, content = api.create_snapshot("late", "plain", volume_handle=handle)
    assert api.wait_content_ready(content["metadata"]["name"])["status"]["readyToUse"] is True
    assert sidecar.proc.poll() is None
