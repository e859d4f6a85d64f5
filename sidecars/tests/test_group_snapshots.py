"""The sidecar in csi-snapshotter's group role (`--group-snapshots`), against the test API server (which
serves the external-snapshotter v8 group CRDs at v1) and the real plugin. The test plays the common
snapshot-controller as recorded in the 09- samples: it makes the VolumeGroupSnapshotContent of a
VolumeGroupSnapshot and its finalizer, makes one VolumeSnapshotContent and VolumeSnapshot per member from
the status the sidecar wrote, and marks and deletes the contents when the group goes."""

import hashlib
import os

from conftest import DRIVER, now_rfc3339
from test_sidecar import pv_for, reasons, wait_bound

MiB = 1 << 20
GROUP = "/apis/groupsnapshot.storage.k8s.io/v1"
SNAP = "/apis/snapshot.storage.k8s.io/v1"
FINALIZER = "groupsnapshot.storage.kubernetes.io/volumegroupsnapshotcontent-bound-protection"
BEING_CREATED = "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-being-created"
BEING_DELETED = "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-being-deleted"
MEMBER = "groupsnapshot.storage.k8s.io/volumeGroupSnapshotHandle"
# The keys of one volumeSnapshotInfoList entry, as csi-snapshotter v8.6.0 wrote them (09e).
INFO_KEYS = {"creationTime", "readyToUse", "restoreSize", "snapshotHandle", "volumeHandle"}


def write_and_hash(path, name, mib):
    data = os.urandom(mib * MiB)
    with open(os.path.join(path, name), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def hash_of(path, name):
    with open(os.path.join(path, name), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def create_group(api, name, handles, policy="Delete", ns="default"):
    """A VolumeGroupSnapshot over the claims labelled app: db, and the content the common controller
    makes for it (09b, 09d), with the finalizer the controller adds."""
    vgs = api.ok("POST", f"{GROUP}/namespaces/{ns}/volumegroupsnapshots", {
        "apiVersion": "groupsnapshot.storage.k8s.io/v1", "kind": "VolumeGroupSnapshot",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"source": {"selector": {"matchLabels": {"app": "db"}}}, "volumeGroupSnapshotClassName": "groupclass"}})
    uid = vgs["metadata"]["uid"]
    content = api.ok("POST", f"{GROUP}/volumegroupsnapshotcontents", {
        "apiVersion": "groupsnapshot.storage.k8s.io/v1", "kind": "VolumeGroupSnapshotContent",
        "metadata": {"name": f"groupsnapcontent-{uid}", "finalizers": [FINALIZER]},
        "spec": {"deletionPolicy": policy, "driver": DRIVER, "source": {"volumeHandles": handles},
                 "volumeGroupSnapshotClassName": "groupclass",
                 "volumeGroupSnapshotRef": {"apiVersion": "groupsnapshot.storage.k8s.io/v1",
                                            "kind": "VolumeGroupSnapshot", "name": name, "namespace": ns, "uid": uid,
                                            "resourceVersion": vgs["metadata"]["resourceVersion"]}}})
    return vgs, content


def group_content(api, name):
    return api.get(f"{GROUP}/volumegroupsnapshotcontents/{name}")


def wait_group_finished(api, name):
    def finished():
        c = group_content(api, name)
        return c if c and c.get("status", {}).get("readyToUse") and \
            BEING_CREATED not in (c["metadata"].get("annotations") or {}) else None
    return api.wait(f"group content {name} ready, {BEING_CREATED} removed", finished)


def make_member(api, group_handle, info, index, ns="default"):
    """What the common controller makes per member once the group content is ready (09h, 09i, 09g):
    the content with the group's annotation and its own status, then the VolumeSnapshot, bound."""
    snap_name = f"snapshot-member-{index}"
    content_name = f"snapcontent-member-{index}"
    content = api.ok("POST", f"{SNAP}/volumesnapshotcontents", {
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
        "metadata": {"name": content_name, "annotations": {MEMBER: group_handle},
                     "finalizers": ["snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"]},
        "spec": {"deletionPolicy": "Delete", "driver": DRIVER, "source": {"volumeHandle": info["volumeHandle"]},
                 "sourceVolumeMode": "Filesystem",
                 "volumeSnapshotRef": {"kind": "VolumeSnapshot", "name": snap_name, "namespace": ns}}})
    return snap_name, content


def finish_member(api, content, info, group_handle, snap_name, ns="default"):
    path = f"{SNAP}/volumesnapshotcontents/{content['metadata']['name']}"
    c = api.ok("GET", path)
    c["status"] = {"creationTime": info["creationTime"], "readyToUse": True, "restoreSize": info["restoreSize"],
                   "snapshotHandle": info["snapshotHandle"], "volumeGroupSnapshotHandle": group_handle}
    api.ok("PUT", path + "/status", c)
    snap = api.ok("POST", f"{SNAP}/namespaces/{ns}/volumesnapshots", {
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": snap_name, "namespace": ns},
        "spec": {"source": {"volumeSnapshotContentName": content["metadata"]["name"]}}})
    snap["status"] = {"boundVolumeSnapshotContentName": content["metadata"]["name"], "readyToUse": True,
                      "restoreSize": info["restoreSize"], "creationTime": now_rfc3339()}
    api.ok("PUT", f"{SNAP}/namespaces/{ns}/volumesnapshots/{snap_name}/status", snap)


def delete_as_controller(api, path, annotation):
    for _ in range(10):
        c = api.ok("GET", path)
        c["metadata"].setdefault("annotations", {})[annotation] = "yes"
        if api.request("PUT", path, c)[0] == 200:
            break
    api.ok("DELETE", path)


def create_group_class(api, params=None):
    return api.ok("POST", f"{GROUP}/volumegroupsnapshotclasses", {
        "apiVersion": "groupsnapshot.storage.k8s.io/v1", "kind": "VolumeGroupSnapshotClass",
        "metadata": {"name": "groupclass"}, "driver": DRIVER, "deletionPolicy": "Delete", "parameters": params or {}})


def group_snapshot_and_delete(api, handles):
    """Everything the group role calls: a class naming a secret, a group content (whose first write
    meets a conflict, so it is read again) taken and written back, and its deletion."""
    if api.get("/api/v1/namespaces/default/secrets/group-secret") is None:
        api.ok("POST", "/api/v1/namespaces/default/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "group-secret", "namespace": "default"},
            "data": {"token": "c2VjcmV0"}})
    create_group_class(api, {"csi.storage.k8s.io/group-snapshotter-secret-name": "group-secret",
                             "csi.storage.k8s.io/group-snapshotter-secret-namespace": "default"})
    api.hook("conflict?resource=volumegroupsnapshotcontents&count=1")
    _, content = create_group(api, "rbac-group", handles)
    name = content["metadata"]["name"]
    wait_group_finished(api, name)
    delete_as_controller(api, f"{GROUP}/volumegroupsnapshotcontents/{name}", BEING_DELETED)
    api.wait("group content gone", lambda: group_content(api, name) is None)


def test_a_group_snapshot_of_two_claims_restores_and_deletes(cluster):
    api = cluster.api
    sidecar = cluster.sidecar("--snapshots", "--group-snapshots", "--workers", "1")
    api.create_class("swell")
    create_group_class(api)
    handles, digests, stagings = [], {}, {}
    for name in ("db-data", "db-wal"):
        claim = api.create_claim(name, size="320Mi")
        wait_bound(api, name)
        handle = pv_for(api, claim)["spec"]["csi"]["volumeHandle"]
        handles.append(handle)
        stagings[handle] = cluster.stage(handle, name)
        digests[handle] = write_and_hash(stagings[handle], "data", 3)
    try:
        vgs, content = create_group(api, "db-group", handles)
        uid = vgs["metadata"]["uid"]
        ready = wait_group_finished(api, content["metadata"]["name"])
        st = ready["status"]
        assert st["volumeGroupSnapshotHandle"] == f"groupsnapshot-{uid}", "named from the VolumeGroupSnapshot's UID"
        assert st["readyToUse"] is True and isinstance(st["creationTime"], str) and st["creationTime"].endswith("Z")
        infos = st["volumeSnapshotInfoList"]
        assert [i["volumeHandle"] for i in infos] == handles, "in the order of spec.source.volumeHandles"
        for info in infos:
            assert set(info) == INFO_KEYS and info["readyToUse"] is True and info["restoreSize"] == 320 * MiB
            assert isinstance(info["creationTime"], int) and info["creationTime"] > 1_700_000_000 * 10**9
        assert len({i["creationTime"] for i in infos}) == 1, "one instant"
        in_plugin = cluster.snapshots()
        assert sorted(in_plugin) == sorted(i["snapshotHandle"] for i in infos)
        assert {s.group_snapshot_id for s in in_plugin.values()} == {st["volumeGroupSnapshotHandle"]}
        api.wait("GroupSnapshotCreated", lambda: "GroupSnapshotCreated" in reasons(api, content["metadata"]["name"]))
        for handle in handles:
            write_and_hash(stagings[handle], "data", 1)  # after the group: in no member
    finally:
        for handle, staging in stagings.items():
            cluster.unstage(handle, staging)

    # The controller's half: member contents, made before their status is written. The sidecar makes
    # no snapshot of its own for them; one worker takes keys in order, so once the marker claim made
    # after them is bound, the sidecar has looked at both contents.
    members = [make_member(api, st["volumeGroupSnapshotHandle"], info, i) for i, info in enumerate(infos)]
    api.create_claim("marker", size="64Mi")
    wait_bound(api, "marker")
    assert sorted(cluster.snapshots()) == sorted(i["snapshotHandle"] for i in infos), "no CreateSnapshot for a member"
    for (snap_name, member), info in zip(members, infos):
        assert reasons(api, member["metadata"]["name"]) == [], "the sidecar leaves a member's content to the controller"
        assert "status" not in api.ok("GET", f"{SNAP}/volumesnapshotcontents/{member['metadata']['name']}")
        finish_member(api, member, info, st["volumeGroupSnapshotHandle"], snap_name)

    # Each member restores to what its volume held at the group's instant.
    for index, handle in enumerate(handles):
        restored = api.create_restore_claim(f"restore-{index}", "VolumeSnapshot", members[index][0], "320Mi")
        wait_bound(api, f"restore-{index}")
        back = pv_for(api, restored)["spec"]["csi"]["volumeHandle"]
        staging = cluster.stage(back, f"restore-{index}")
        try:
            assert hash_of(staging, "data") == digests[handle]
        finally:
            cluster.unstage(back, staging)

    # A pre-provisioned content naming the same group: GetVolumeGroupSnapshot fills its status (09m).
    static = api.ok("POST", f"{GROUP}/volumegroupsnapshotcontents", {
        "apiVersion": "groupsnapshot.storage.k8s.io/v1", "kind": "VolumeGroupSnapshotContent",
        "metadata": {"name": "static-group"},
        "spec": {"deletionPolicy": "Retain", "driver": DRIVER,
                 "source": {"groupSnapshotHandles": {"volumeGroupSnapshotHandle": st["volumeGroupSnapshotHandle"],
                                                     "volumeSnapshotHandles": [i["snapshotHandle"] for i in infos]}},
                 "volumeGroupSnapshotClassName": "groupclass",
                 "volumeGroupSnapshotRef": {"name": "static", "namespace": "default"}}})
    got = api.wait("static content ready", lambda: (lambda c: c if c.get("status", {}).get("readyToUse") else None)(
        group_content(api, "static-group")))
    assert got["status"]["volumeGroupSnapshotHandle"] == st["volumeGroupSnapshotHandle"]
    assert "volumeSnapshotInfoList" not in got["status"], "as recorded for a pre-provisioned content"
    api.ok("DELETE", f"{GROUP}/volumegroupsnapshotcontents/{static['metadata']['name']}")

    # Deleting the group: one DeleteVolumeGroupSnapshot with the members' handles, the finalizer
    # removed; then the members' contents are released without a DeleteSnapshot (09l, 09z).
    name = content["metadata"]["name"]
    delete_as_controller(api, f"{GROUP}/volumegroupsnapshotcontents/{name}", BEING_DELETED)
    api.wait("group content gone", lambda: group_content(api, name) is None)
    assert cluster.snapshots() == {}, "the group's members are deleted with it"
    for _, member in members:
        path = f"{SNAP}/volumesnapshotcontents/{member['metadata']['name']}"
        delete_as_controller(api, path, "snapshot.storage.kubernetes.io/volumesnapshot-being-deleted")
        api.wait(f"{path} gone", lambda: api.get(path) is None)
    assert "DeleteSnapshot" not in open(cluster.plugin.log_path).read(), "a member is never deleted alone"
    assert sidecar.proc.poll() is None
