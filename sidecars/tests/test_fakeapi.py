"""The test API server held to the real one: what kube-apiserver adds, refuses and pages, with the
status codes and bodies recorded from a real v1.36 server (the developers' k8s-samples 01-, 02-,
05c, 07i and 07l; the admission and validation messages as the real binary spells them), and the
sidecar listing in small pages while claims come and go."""

import base64
import http.client
import json

from test_sidecar import pv_for, wait_bound

SNAP = "/apis/snapshot.storage.k8s.io/v1"


def watch_events(api, path, since, seconds=1):
    conn = http.client.HTTPSConnection("127.0.0.1", api.port, context=api.ctx, timeout=30)
    conn.request("GET", f"{path}?watch=1&resourceVersion={since}&timeoutSeconds={seconds}",
                 headers={"Authorization": f"Bearer {api.token}"})
    body = conn.getresponse().read().decode()
    conn.close()
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def test_protection_finalizers_come_and_go_as_kube_controller_manager_takes_them(cluster):
    api = cluster.api
    api.create_class("swell")
    claim = api.create_claim("p")
    assert claim["metadata"]["finalizers"] == ["kubernetes.io/pvc-protection"]
    since = claim["metadata"]["resourceVersion"]
    # A pod using the claim holds it while it is being deleted.
    api.ok("POST", "/api/v1/namespaces/default/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user"},
        "spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "p"}}]}, "status": {"phase": "Running"}})
    deleting = api.ok("DELETE", api.pvc_path("p"))
    assert deleting["metadata"]["deletionTimestamp"]
    assert api.get(api.pvc_path("p"))["metadata"]["finalizers"] == ["kubernetes.io/pvc-protection"]
    api.ok("DELETE", "/api/v1/namespaces/default/pods/user")
    api.wait("the claim gone", lambda: api.get(api.pvc_path("p")) is None)
    events = [e for e in watch_events(api, "/api/v1/persistentvolumeclaims", since)
              if e["object"]["metadata"].get("name") == "p"]
    deleted = events[-1]
    assert deleted["type"] == "DELETED"
    # As the real server sends it: the object as it was, finalizer listed, at a new version.
    assert deleted["object"]["metadata"]["finalizers"] == ["kubernetes.io/pvc-protection"]
    assert int(deleted["object"]["metadata"]["resourceVersion"]) > int(events[-2]["object"]["metadata"]["resourceVersion"])


def test_the_real_servers_refusals(cluster):
    api = cluster.api
    api.create_class("swell")
    api.create_class("fixed", expansion=False)
    api.create_claim("unbound", sc="fixed")
    # The claim's validation runs before admission: an unbound claim's spec, requests too, is fixed.
    for change in (lambda c: c["spec"]["resources"]["requests"].update(storage="2Gi"),
                   lambda c: c["spec"].update(accessModes=["ReadWriteMany"])):
        pvc = api.get(api.pvc_path("unbound"))
        change(pvc)
        code, body = api.request("PUT", api.pvc_path("unbound"), pvc)
        assert (code, body["reason"]) == (422, "Invalid")
        assert body["message"].startswith(
            'PersistentVolumeClaim "unbound" is invalid: spec: Forbidden: spec is immutable after creation except '
            "resources.requests and volumeAttributesClassName for bound claims")

    pvc = api.get(api.pvc_path("unbound"))
    pvc["status"] = {"allocatedResourceStatuses": {"storage": "Resizing"}}
    code, body = api.request("PUT", api.pvc_path("unbound") + "/status", pvc)
    assert (code, body["reason"]) == (422, "Invalid")
    assert body["message"] == (
        'PersistentVolumeClaim "unbound" is invalid: status.allocatedResourceStatuses[storage]: Unsupported value: '
        '"Resizing": supported values: "ControllerResizeInProgress", "ControllerResizeInfeasible", '
        '"NodeResizeInProgress", "NodeResizeInfeasible", "NodeResizePending"')
    assert body["details"]["causes"][0]["reason"] == "FieldValueNotSupported"

    # Being deleted (the pvc-protection finalizer holds it for a moment): no finalizer may be added.
    api.ok("POST", "/api/v1/namespaces/default/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "holder"},
        "spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "unbound"}}]}})
    api.ok("DELETE", api.pvc_path("unbound"))
    pvc = api.get(api.pvc_path("unbound"))
    pvc["metadata"]["finalizers"].append("example.com/late")
    code, body = api.request("PUT", api.pvc_path("unbound"), pvc)
    assert (code, body["reason"]) == (422, "Invalid")
    assert body["message"] == ('PersistentVolumeClaim "unbound" is invalid: metadata.finalizers: Forbidden: no new '
                               'finalizers can be added if the object is being deleted, found new finalizers '
                               '[]string{"example.com/late"}')

    # The VolumeSnapshot CRD's schema and CEL rules (07l, byte for byte but for key order).
    code, body = api.request("POST", f"{SNAP}/namespaces/default/volumesnapshots", {
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "db-snap-nosource"}, "spec": {}})
    assert code == 422 and body == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'VolumeSnapshot.snapshot.storage.k8s.io "db-snap-nosource" is invalid: [spec.source: Required value, '
                   "<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; "
                   "correct the existing errors to complete validation]",
        "reason": "Invalid",
        "details": {"name": "db-snap-nosource", "group": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "causes": [
            {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.source"},
            {"reason": "FieldValueInvalid", "message": "Invalid value: null: some validation rules were not checked "
             "because the object was invalid; correct the existing errors to complete validation", "field": "<nil>"}]},
        "code": 422}
    code, body = api.request("POST", f"{SNAP}/namespaces/default/volumesnapshots", {
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": "db-snap-bothsources"},
        "spec": {"source": {"persistentVolumeClaimName": "a", "volumeSnapshotContentName": "b"},
                 "volumeSnapshotClassName": ""}})
    assert code == 422 and body["message"] == (
        'VolumeSnapshot.snapshot.storage.k8s.io "db-snap-bothsources" is invalid: [spec.source: Invalid value: exactly '
        "one of volumeSnapshotContentName and persistentVolumeClaimName must be set, spec.volumeSnapshotClassName: "
        'Invalid value: "": volumeSnapshotClassName must not be the empty string when set]')


def test_a_paged_list_reads_one_snapshot(cluster):
    api = cluster.api
    api.create_class("fixed", expansion=False)
    for i in range(5):
        api.create_claim(f"c{i}", sc="fixed")
    first = api.ok("GET", "/api/v1/namespaces/default/persistentvolumeclaims?limit=2")
    assert [o["metadata"]["name"] for o in first["items"]] == ["c0", "c1"]
    assert first["metadata"]["remainingItemCount"] == 3
    text = first["metadata"]["continue"]
    token = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    assert token == {"v": "meta.k8s.io/v1", "rv": int(first["metadata"]["resourceVersion"]), "start": "c1\u0000"}
    # Written between pages: the rest of the list is still as of the first page's version.
    api.ok("DELETE", api.pvc_path("c0"))
    api.ok("DELETE", api.pvc_path("c2"))
    api.create_claim("c2b", sc="fixed")
    api.update_claim("c3", lambda c: c["metadata"].setdefault("labels", {}).update(changed="yes"))
    second = api.ok("GET", f"/api/v1/namespaces/default/persistentvolumeclaims?limit=2&continue={text}")
    assert [o["metadata"]["name"] for o in second["items"]] == ["c2", "c3"]
    assert "labels" not in second["items"][1]["metadata"]
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    third = api.ok("GET", "/api/v1/namespaces/default/persistentvolumeclaims?limit=2&continue="
                   + second["metadata"]["continue"])
    assert [o["metadata"]["name"] for o in third["items"]] == ["c4"] and "continue" not in third["metadata"]
    # Compacted past the first page's version: 410 Expired, as 05c.
    api.hook("compact")
    code, body = api.request("GET", f"/api/v1/namespaces/default/persistentvolumeclaims?limit=2&continue={text}")
    assert (code, body["reason"]) == (410, "Expired")
    assert body["message"].startswith("The provided continue parameter is too old to display a consistent list result.")


def test_the_sidecar_lists_in_small_pages_while_claims_come_and_go(cluster):
    api = cluster.api
    api.create_class("swell")
    for i in range(7):
        api.create_claim(f"pre{i}", size="64Mi")
    sidecar = cluster.sidecar("--list-page-size", "2")
    api.ok("DELETE", api.pvc_path("pre1"))
    api.ok("DELETE", api.pvc_path("pre4"))
    api.create_claim("late", size="64Mi")
    live = [f"pre{i}" for i in (0, 2, 3, 5, 6)] + ["late"]
    for name in live:
        wait_bound(api, name)
    # Listed again from scratch after a compaction, in pages: nothing is made twice or lost.
    continued = api.hook("requests").get("LIST-CONTINUE", 0)
    assert continued >= 2, "at least five claims, in pages of two"
    api.hook("break-watches")
    api.create_claim("after", size="64Mi")
    api.hook("compact")
    wait_bound(api, "after")
    api.wait("a new list", lambda: "watch expired; listing again" in sidecar.log())
    handles = {pv_for(api, api.get(api.pvc_path(n)))["spec"]["csi"]["volumeHandle"] for n in live + ["after"]}
    api.wait("the deleted claims' volumes gone", lambda: set(cluster.volumes()) == handles or None)
    # The lists really were paged: later pages were asked for with continue tokens.
    assert api.hook("requests").get("LIST-CONTINUE", 0) >= continued + 3, api.hook("requests")
    assert sidecar.proc.poll() is None
