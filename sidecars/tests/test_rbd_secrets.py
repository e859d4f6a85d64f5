"""The sidecar carries a class's Ceph key to every controller call, as kubernetes-csi's sidecars do:
the provisioner secret to CreateVolume and, through the PV's deletion annotations, to DeleteVolume
(even once the class is gone); the controller-expand secret, through the PV's
controllerExpandSecretRef, to ControllerExpandVolume. Against a real Ceph 16 cluster (one monitor,
three memstore OSDs: conformance/ceph.py), with a plugin that has no Ceph client of its own, so
each call works only if its secret reached it."""
import base64
import importlib.util
import json
import os

import pytest

from conftest import ROOT

MiB = 1 << 20
POOL = "swell-k8s"

_spec = importlib.util.spec_from_file_location("swell_ceph", os.path.join(ROOT, "conformance", "ceph.py"))
ceph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ceph)


@pytest.fixture
def ceph_cluster():
    c = ceph.Cluster(osds=3, pool_size=2)
    c.start()
    try:
        c.create_pool(POOL)
        c.class_key = c.create_user("swell-class", POOL)
        yield c
    finally:
        c.stop()


def images(c):
    return c.run("rbd", "ls", POOL).stdout.split()


def size_of(c, image):
    return json.loads(c.run("rbd", "info", "--format", "json", f"{POOL}/{image}").stdout)["size"]


def test_class_secrets_reach_create_expand_and_delete(cluster, ceph_cluster):
    api, c = cluster.api, ceph_cluster
    cluster.plugin.stop()
    # No --rbd-user: the plugin can reach the cluster only with a call's own secret.
    cluster.plugin.start(extra_args=["--rbd-monitors", c.monitors, "--rbd-pool", POOL])
    sidecar = cluster.sidecar("--backend", "rbd")
    for name, user, key in (("ceph-create", "swell-class", c.class_key), ("ceph-grow", "swell-class", c.class_key)):
        api.ok("POST", "/api/v1/namespaces/default/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in {"userID": user, "userKey": key}.items()}})

    # A class without secrets: the plugin has no client to act as, and says so; nothing is made.
    api.create_class("rbd-bare", params={"backend": "rbd", "pool": POOL})
    api.create_claim("bare", sc="rbd-bare", size="64Mi")
    failed = api.wait("ProvisioningFailed", lambda: [e for e in api.events_for("bare")
                                                      if e["reason"] == "ProvisioningFailed"])
    assert "no Ceph credentials" in failed[0]["message"], failed[0]["message"]
    api.ok("DELETE", api.pvc_path("bare"))

    api.create_class("rbd", params={
        "backend": "rbd", "pool": POOL,
        "csi.storage.k8s.io/provisioner-secret-name": "ceph-create",
        "csi.storage.k8s.io/provisioner-secret-namespace": "default",
        "csi.storage.k8s.io/controller-expand-secret-name": "ceph-grow",
        "csi.storage.k8s.io/controller-expand-secret-namespace": "${pvc.namespace}"})
    claim = api.create_claim("db", sc="rbd", size="64Mi")
    name = f"pvc-{claim['metadata']['uid']}"
    pv = api.wait("the PV", lambda: api.get(f"/api/v1/persistentvolumes/{name}"))
    assert pv["metadata"]["annotations"]["volume.kubernetes.io/provisioner-deletion-secret-name"] == "ceph-create"
    assert pv["metadata"]["annotations"]["volume.kubernetes.io/provisioner-deletion-secret-namespace"] == "default"
    assert pv["spec"]["csi"]["controllerExpandSecretRef"] == {"name": "ceph-grow", "namespace": "default"}
    image = pv["spec"]["csi"]["volumeAttributes"]["image"]
    assert images(c) == [image] and size_of(c, image) == 64 * MiB

    api.update_claim("db", lambda o: o["spec"]["resources"]["requests"].update(storage="128Mi"))
    api.wait("the PV grown", lambda: api.get(f"/api/v1/persistentvolumes/{name}")["spec"]["capacity"]["storage"]
             == "128Mi")
    assert size_of(c, image) == 128 * MiB

    # The class goes first: DeleteVolume still gets its key, from the PV's annotations.
    api.ok("DELETE", "/apis/storage.k8s.io/v1/storageclasses/rbd")
    api.ok("DELETE", api.pvc_path("db"))
    api.wait("the PV deleted", lambda: api.get(f"/api/v1/persistentvolumes/{name}") is None, timeout=60)
    assert images(c) == []
    everything = open(sidecar.log_path).read() + open(cluster.plugin.log_path).read()
    assert c.class_key not in everything


def test_snapshot_class_secrets_reach_create_list_and_delete(cluster, ceph_cluster):
    """Issue 37: the snapshot class's snapshotter secret reaches CreateSnapshot and DeleteSnapshot,
    its list secret reaches ListSnapshots (a pre-provisioned content is read with it), and a restore
    gets the storage class's provisioner secret, as csi-snapshotter and csi-provisioner pass them;
    the plugin has no key of its own, so each step works only if its own secret reached it. Each
    secret is a different Secret object, so one that went to the wrong call would be refused."""
    api, c = cluster.api, ceph_cluster
    cluster.plugin.stop()
    cluster.plugin.start(extra_args=["--rbd-monitors", c.monitors, "--rbd-pool", POOL])
    sidecar = cluster.sidecar("--backend", "rbd", "--snapshots")
    for name in ("ceph-create", "ceph-snap", "ceph-list"):
        api.ok("POST", "/api/v1/namespaces/default/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"},
            "data": {k: base64.b64encode(v.encode()).decode()
                     for k, v in {"userID": "swell-class", "userKey": c.class_key}.items()}})
    api.create_class("rbd", params={
        "backend": "rbd", "pool": POOL,
        "csi.storage.k8s.io/provisioner-secret-name": "ceph-create",
        "csi.storage.k8s.io/provisioner-secret-namespace": "default"})
    api.create_snapshot_class("rbd-snaps", params={
        "csi.storage.k8s.io/snapshotter-secret-name": "ceph-snap",
        "csi.storage.k8s.io/snapshotter-secret-namespace": "default",
        "csi.storage.k8s.io/snapshotter-list-secret-name": "ceph-list",
        "csi.storage.k8s.io/snapshotter-list-secret-namespace": "default"})
    claim = api.create_claim("db", sc="rbd", size="64Mi")
    pv = api.wait("the PV", lambda: api.get(f"/api/v1/persistentvolumes/pvc-{claim['metadata']['uid']}"))
    handle = pv["spec"]["csi"]["volumeHandle"]

    snap, content = api.create_snapshot("db-snap", "db", snapshot_class="rbd-snaps", volume_handle=handle)
    ready = api.wait_content_finished(content["metadata"]["name"], timeout=60)
    snapshot_handle = ready["status"]["snapshotHandle"]
    assert f"swell-snap-{snapshot_handle}" in images(c)

    # A pre-provisioned content of the same snapshot: read with ListSnapshots and the list secret.
    api.ok("POST", f"{api.SNAP}/volumesnapshotcontents", {
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
        "metadata": {"name": "pre-content"},
        "spec": {"deletionPolicy": "Retain", "driver": "swell.csi.dev", "source": {"snapshotHandle": snapshot_handle},
                 "volumeSnapshotClassName": "rbd-snaps",
                 "volumeSnapshotRef": {"name": "pre-snap", "namespace": "default"}}})
    pre = api.wait_content_ready("pre-content", timeout=60)["status"]
    assert pre["snapshotHandle"] == snapshot_handle and pre["restoreSize"] == 64 * MiB

    api.bind_snapshot("db-snap", ready)
    restored = api.create_restore_claim("db-restored", "VolumeSnapshot", "db-snap", "64Mi", sc="rbd")
    rpv = api.wait("the restored PV",
                   lambda: api.get(f"/api/v1/persistentvolumes/pvc-{restored['metadata']['uid']}"), timeout=60)
    assert rpv["spec"]["csi"]["volumeAttributes"]["image"] in images(c)

    api.ok("DELETE", api.pvc_path("db-restored"))
    api.delete_content_as_controller(content["metadata"]["name"])
    api.wait("the dynamic content gone", lambda: api.content(content["metadata"]["name"]) is None, timeout=60)
    assert f"swell-snap-{snapshot_handle}" not in images(c), "DeleteSnapshot acted with the snapshotter secret"
    api.ok("DELETE", api.pvc_path("db"))
    api.wait("every image gone", lambda: images(c) == [], timeout=60)
    assert c.class_key not in open(sidecar.log_path).read() + open(cluster.plugin.log_path).read()
