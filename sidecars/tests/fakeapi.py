"""A test Kubernetes API server that speaks the real HTTP API, shaped on ../shared/k8s-samples.

It serves HTTPS (bearer token or client certificate), and for the resources Swell's sidecar uses:
  - GET of an object; list with limit/continue and the list's resourceVersion;
  - watch as a chunked stream of JSON lines, from a resourceVersion, with BOOKMARK events when
    allowWatchBookmarks is set, ending at timeoutSeconds; a version older than the compaction point
    gets HTTP 200 and one ERROR event with a 410 Status, as kube-apiserver does;
  - POST (409 AlreadyExists), PUT with optimistic concurrency (409 Conflict on a stale resourceVersion),
    the status subresource (status only; the main resource keeps its status), DELETE with finalizers
    (deletionTimestamp first, removal once the finalizers are gone) and uid preconditions.
Objects missing kind/apiVersion are refused with 400, as the real server refuses them. The snapshot
CRDs (VolumeSnapshot, VolumeSnapshotContent, VolumeSnapshotClass) are served as kube-apiserver serves
them with external-snapshotter v8 installed; the test plays the common snapshot-controller.

It can also play kube-controller-manager's persistent-volume controller (--controller-manager): it
annotates claims for their external provisioner, marks new PVs Available, binds a PV to the claim in
its claimRef, and marks a PV Released when its claim is deleted.

Test hooks, without authentication, under /_test/: compact (forget history; old watches get 410),
break-watches (cut every watch stream mid-stream), audit (what the sidecar asked for, as RBAC
verbs), conflict?resource=R&count=N (the next N writes to R
meet a concurrent writer first, so they fail with 409), requests (counts by verb).
"""

import argparse
import base64
import copy
import json
import os
import queue
import socket
import ssl
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

# (group, version, plural) -> (kind, namespaced, has status subresource)
RESOURCES = {
    ("", "v1", "persistentvolumeclaims"): ("PersistentVolumeClaim", True, True),
    ("", "v1", "persistentvolumes"): ("PersistentVolume", False, True),
    ("", "v1", "events"): ("Event", True, False),
    ("", "v1", "nodes"): ("Node", False, True),
    ("storage.k8s.io", "v1", "storageclasses"): ("StorageClass", False, False),
    ("storage.k8s.io", "v1", "csinodes"): ("CSINode", False, False),
    # Made by the attach/detach controller, attached by the attacher (shapes in ../shared/k8s-samples/11*).
    ("storage.k8s.io", "v1", "volumeattachments"): ("VolumeAttachment", False, True),
    # GA since 1.34; shapes in ../shared/k8s-samples/10*.
    ("storage.k8s.io", "v1", "volumeattributesclasses"): ("VolumeAttributesClass", False, False),
    ("coordination.k8s.io", "v1", "leases"): ("Lease", True, False),
    ("", "v1", "secrets"): ("Secret", True, False),
    ("", "v1", "pods"): ("Pod", True, True),
    ("apps", "v1", "replicasets"): ("ReplicaSet", True, True),
    ("apps", "v1", "deployments"): ("Deployment", True, True),
    ("apps", "v1", "daemonsets"): ("DaemonSet", True, True),
    # Shapes in ../shared/k8s-samples/08*: generateName csisc-, the provisioner's labels, an ownerReference.
    ("storage.k8s.io", "v1", "csistoragecapacities"): ("CSIStorageCapacity", True, False),
    # The snapshot CRDs of external-snapshotter v8 (shapes in ../shared/k8s-samples/07*).
    ("snapshot.storage.k8s.io", "v1", "volumesnapshots"): ("VolumeSnapshot", True, True),
    ("snapshot.storage.k8s.io", "v1", "volumesnapshotcontents"): ("VolumeSnapshotContent", False, True),
    ("snapshot.storage.k8s.io", "v1", "volumesnapshotclasses"): ("VolumeSnapshotClass", False, False),
    # The group snapshot CRDs of external-snapshotter v8, served at v1 (shapes in ../shared/k8s-samples/09*).
    ("groupsnapshot.storage.k8s.io", "v1", "volumegroupsnapshots"): ("VolumeGroupSnapshot", True, True),
    ("groupsnapshot.storage.k8s.io", "v1", "volumegroupsnapshotcontents"): ("VolumeGroupSnapshotContent", False, True),
    ("groupsnapshot.storage.k8s.io", "v1", "volumegroupsnapshotclasses"): ("VolumeGroupSnapshotClass", False, False),
}
# Custom resources: their list items keep kind and apiVersion, and the list carries "continue": "".
CUSTOM_GROUPS = {"snapshot.storage.k8s.io", "groupsnapshot.storage.k8s.io"}

BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "": 1}


def quantity(text):
    """Bytes of a Kubernetes quantity (enough of the grammar for storage sizes)."""
    for suffix, mult in BINARY.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * mult)
    for suffix, mult in DECIMAL.items():
        if suffix and text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * mult)
    return int(float(text))


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code, reason, message, details=None, metadata=None):
    body = {"kind": "Status", "apiVersion": "v1", "metadata": metadata or {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new list "
    "without the continue parameter, or use the continue token in this response to retrieve the remainder of the "
    "results. Continuing with the provided token results in an inconsistent list - objects that were created, "
    "modified, or deleted between the time the first chunk was returned and now may show up in the list.")


def continue_token(rv, start):
    """kube-apiserver's continue token: unpadded base64url of {"v","rv","start"} (05c samples)."""
    text = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


class PageNotFound(Exception):
    """A path no API group serves (a custom resource whose CRD is not installed)."""


class ApiError(Exception):
    def __init__(self, code, reason, message, details=None, metadata=None):
        super().__init__(message)
        self.body = status(code, reason, message, details, metadata)
        self.code = code


class Store:
    """Objects, a global resourceVersion, an event history for watches, and the watchers."""

    def __init__(self):
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.rv = 100
        self.objects = {}  # (res, ns, name) -> object
        self.history = []  # (rv, res, ns, type, object)
        self.compacted = 0
        self.watchers = []
        self.conflicts = {}  # plural -> writes that will meet a concurrent writer
        self.snapshots = {}  # (res, ns, rv) -> [(key, object)]: what a paged list's later pages read
        self.requests = {}

    def _bump(self):
        self.rv += 1
        return str(self.rv)

    def _emit(self, res, ns, type_, obj):
        rv = int(obj["metadata"]["resourceVersion"])
        self.history.append((rv, res, ns, type_, copy.deepcopy(obj)))
        if len(self.history) > 20000:
            self.compacted = self.history[10000][0]
            self.history = self.history[10000:]
        for w in list(self.watchers):
            if w.matches(res, ns):
                w.queue.put((type_, copy.deepcopy(obj)))
        self.changed.notify_all()

    def get(self, res, ns, name):
        with self.lock:
            obj = self.objects.get((res, ns, name))
            if obj is None:
                raise not_found(res, name)
            return copy.deepcopy(obj)

    def list(self, res, ns):
        with self.lock:
            items = [copy.deepcopy(o) for (r, n, _), o in sorted(self.objects.items())
                     if r == res and (ns is None or n == ns)]
            return items, str(self.rv)

    def create(self, res, ns, obj):
        kind, namespaced, _ = RESOURCES[res]
        with self.lock:
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            name = meta.get("name")
            if not name:
                raise ApiError(422, "Invalid", f"{kind} is invalid: metadata.name: Required value")
            if kind == "CSIStorageCapacity" and not obj.get("storageClassName"):
                raise ApiError(422, "Invalid", f'CSIStorageCapacity.storage.k8s.io "{name}" is invalid: '
                               "storageClassName: Required value")
            if (res, ns, name) in self.objects:
                raise ApiError(409, "AlreadyExists", f'{res[2]} "{name}" already exists',
                               {"name": name, "kind": res[2]})
            validate_custom(res, name, obj)
            if res[2] in PROTECTION:
                # The StorageObjectInUseProtection admission plugin (01-, 02- samples).
                finalizers = meta.setdefault("finalizers", [])
                if PROTECTION[res[2]] not in finalizers:
                    finalizers.append(PROTECTION[res[2]])
            if namespaced:
                meta["namespace"] = ns
            else:
                meta.pop("namespace", None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            meta["resourceVersion"] = self._bump()
            meta.pop("deletionTimestamp", None)
            self.objects[(res, ns, name)] = obj
            self._emit(res, ns, "ADDED", obj)
            return copy.deepcopy(obj)

    def update(self, res, ns, name, obj, subresource=None):
        kind, _, has_status = RESOURCES[res]
        with self.lock:
            old = self.objects.get((res, ns, name))
            if old is None:
                raise not_found(res, name)
            if self.conflicts.get(res[2], 0) > 0:
                # Another writer gets there first: the object changes under the caller.
                self.conflicts[res[2]] -= 1
                touched = copy.deepcopy(old)
                touched["metadata"].setdefault("annotations", {})["test.swell.dev/touched"] = str(self.rv)
                touched["metadata"]["resourceVersion"] = self._bump()
                self.objects[(res, ns, name)] = touched
                self._emit(res, ns, "MODIFIED", touched)
                old = touched
            given = obj.get("metadata", {}).get("resourceVersion")
            if given and given != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict",
                               f'Operation cannot be fulfilled on {res[2]} "{name}": the object has been '
                               "modified; please apply your changes to the latest version and try again",
                               {"name": name, "kind": res[2]})
            if obj.get("metadata", {}).get("uid") not in (None, "", old["metadata"]["uid"]):
                raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: "
                               f"{obj['metadata']['uid']}, UID in object meta: {old['metadata']['uid']}")
            if subresource == "status":
                new = copy.deepcopy(old)
                new["status"] = obj.get("status", {})
            else:
                new = obj
                meta = new.setdefault("metadata", {})
                for key in ("uid", "creationTimestamp", "deletionTimestamp", "namespace"):
                    if key in old["metadata"]:
                        meta[key] = old["metadata"][key]
                    else:
                        meta.pop(key, None)
                if has_status:
                    new["status"] = old.get("status", {})
                validate_update(res, old, new)
                admit_update(self, res, old, new)
                validate_custom(res, name, new)
            validate_status(res, old, new)
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
                # The write that removes the last finalizer answers with the object at its old version;
                # the DELETED event carries the object as it was before, finalizers listed (07i).
                del self.objects[(res, ns, name)]
                gone = copy.deepcopy(old)
                gone["metadata"]["resourceVersion"] = self._bump()
                self._emit(res, ns, "DELETED", gone)
                new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
                return copy.deepcopy(new)
            new["metadata"]["resourceVersion"] = self._bump()
            self.objects[(res, ns, name)] = new
            self._emit(res, ns, "MODIFIED", new)
            return copy.deepcopy(new)

    def patch(self, res, ns, name, patch, subresource=None):
        """A JSON merge patch (RFC 7386), applied to the object as it is now: no resourceVersion
        precondition unless the patch carries one."""
        with self.lock:
            old = self.objects.get((res, ns, name))
            if old is None:
                raise not_found(res, name)
            merged = merge_patch(copy.deepcopy(old), patch)
            if not (patch.get("metadata") or {}).get("resourceVersion"):
                merged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self.update(res, ns, name, merged, subresource)

    def delete(self, res, ns, name, uid=None):
        with self.lock:
            old = self.objects.get((res, ns, name))
            if old is None:
                raise not_found(res, name)
            if uid and uid != old["metadata"]["uid"]:
                raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: {uid}, "
                               f"UID in object meta: {old['metadata']['uid']}")
            if old["metadata"].get("finalizers"):
                if old["metadata"].get("deletionTimestamp"):
                    return copy.deepcopy(old)
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = now()
                new["metadata"]["resourceVersion"] = self._bump()
                self.objects[(res, ns, name)] = new
                self._emit(res, ns, "MODIFIED", new)
                return copy.deepcopy(new)
            del self.objects[(res, ns, name)]
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = self._bump()
            self._emit(res, ns, "DELETED", gone)
            return gone


def parse_selector(text):
    """A label selector's equality and existence terms: `k=v`, `k==v`, `k!=v`, `k`, `!k`."""
    terms = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            terms.append((k.strip(), "!=", v.strip()))
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            terms.append((k.strip(), "=", v.strip()))
        elif term.startswith("!"):
            terms.append((term[1:].strip(), "absent", None))
        else:
            terms.append((term, "exists", None))
    for k, _, _ in terms:
        if not k:
            raise ApiError(400, "BadRequest", f'unable to parse requirement: invalid label key "{text}"')
    return terms


def selects(terms, labels):
    for k, op, v in terms:
        if op == "=" and labels.get(k) != v:
            return False
        if op == "!=" and labels.get(k) == v:
            return False
        if op == "exists" and k not in labels:
            return False
        if op == "absent" and k in labels:
            return False
    return True


def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = merge_patch(target.get(key), value)
    return target


def not_found(res, name):
    return ApiError(404, "NotFound", f'{res[2]} "{name}" not found', {"name": name, "kind": res[2]})


# The finalizer kube-apiserver's StorageObjectInUseProtection admission adds, by resource.
PROTECTION = {"persistentvolumeclaims": "kubernetes.io/pvc-protection",
              "persistentvolumes": "kubernetes.io/pv-protection"}
# status.allocatedResourceStatuses values the PVC status validation accepts (sorted, as it lists them).
RESIZE_STATUSES = sorted(["ControllerResizeInProgress", "ControllerResizeInfeasible", "NodeResizeInProgress",
                          "NodeResizeInfeasible", "NodeResizePending"])


def invalid(kind, name, causes, group=None):
    """A 422 Invalid Status, as kube-apiserver's validation answers: causes are (reason, message, field),
    listed in brackets when there are several."""
    details = {"name": name, "kind": kind,
               "causes": [{"reason": r, "message": m, "field": f} for r, m, f in causes]}
    if group:
        details = {"name": name, "group": group, "kind": kind, "causes": details["causes"]}
    text = ", ".join(f"{f}: {m}" for _, m, f in causes)
    text = f"[{text}]" if len(causes) > 1 else text
    qualified = f"{kind}.{group}" if group else kind
    return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {text}', details)


def validate_update(res, old, new):
    """The checks of the real update validation that a sidecar can trip over."""
    kind = RESOURCES[res][0]
    name = old["metadata"]["name"]
    added = [f for f in new["metadata"].get("finalizers") or [] if f not in (old["metadata"].get("finalizers") or [])]
    if old["metadata"].get("deletionTimestamp") and added:
        quoted = ", ".join(json.dumps(f) for f in added)
        raise invalid(kind, name, [("FieldValueForbidden", "Forbidden: no new finalizers can be added if the object "
                                    f"is being deleted, found new finalizers []string{{{quoted}}}", "metadata.finalizers")])
    if res[2] == "volumeattachments" and old.get("spec") != new.get("spec"):
        # The real server: a VolumeAttachment's spec never changes once made.
        raise invalid(kind, name, [("FieldValueInvalid", "Invalid value: field is immutable", "spec")],
                      group="storage.k8s.io")
    if res[2] != "persistentvolumeclaims":
        return
    cap = old.get("status", {}).get("capacity", {}).get("storage")
    req = new.get("spec", {}).get("resources", {}).get("requests", {}).get("storage")
    if cap and req and quantity(req) < quantity(cap):
        raise invalid(kind, name, [("FieldValueForbidden", "Forbidden: field can not be less than status.capacity",
                                    "spec.resources.requests.storage")])
    # Only the binder's volumeName (once), and for bound claims the requests and the attributes class, change.
    old_spec, new_spec = copy.deepcopy(old.get("spec", {})), copy.deepcopy(new.get("spec", {}))
    if not old_spec.get("volumeName"):
        old_spec.pop("volumeName", None)
        new_spec.pop("volumeName", None)
    if old.get("status", {}).get("phase") == "Bound":
        for spec in (old_spec, new_spec):
            spec.get("resources", {}).pop("requests", None)
            spec.pop("volumeAttributesClassName", None)
    if old_spec != new_spec:
        raise invalid(kind, name, [("FieldValueForbidden", "Forbidden: spec is immutable after creation except "
                                    "resources.requests and volumeAttributesClassName for bound claims", "spec")])


def validate_status(res, old, new):
    if res[2] != "persistentvolumeclaims":
        return
    for key, value in (new.get("status", {}).get("allocatedResourceStatuses") or {}).items():
        if key == "storage" and value not in RESIZE_STATUSES:
            supported = ", ".join(json.dumps(v) for v in RESIZE_STATUSES)
            raise invalid("PersistentVolumeClaim", old["metadata"]["name"], [(
                "FieldValueNotSupported", f"Unsupported value: {json.dumps(value)}: supported values: {supported}",
                "status.allocatedResourceStatuses[storage]")])


def admit_update(store, res, old, new):
    """The PersistentVolumeClaimResize admission plugin: a claim grows only once bound, and only on a class
    that allows expansion."""
    if res[2] != "persistentvolumeclaims":
        return
    before = (old.get("spec", {}).get("resources", {}).get("requests") or {}).get("storage")
    after = (new.get("spec", {}).get("resources", {}).get("requests") or {}).get("storage")
    if not before or not after or quantity(after) <= quantity(before):
        return
    name = old["metadata"]["name"]
    if old.get("status", {}).get("phase") != "Bound":
        raise ApiError(403, "Forbidden", f'persistentvolumeclaims "{name}" is forbidden: Only bound persistent '
                       "volume claims can be expanded", {"name": name, "kind": "persistentvolumeclaims"})
    sc = store.objects.get((("storage.k8s.io", "v1", "storageclasses"), None, new["spec"].get("storageClassName", "")))
    if not sc or sc.get("allowVolumeExpansion") is not True:
        raise ApiError(403, "Forbidden", f'persistentvolumeclaims "{name}" is forbidden: only dynamically provisioned '
                       "pvc can be resized and the storageclass that provisions the pvc must support resize",
                       {"name": name, "kind": "persistentvolumeclaims"})


def validate_custom(res, name, obj):
    """The snapshot CRDs' schema and CEL rules (07l samples): a VolumeSnapshot needs exactly one source,
    and a class name, when set, is not empty."""
    if res[2] != "volumesnapshots":
        return
    spec = obj.get("spec") or {}
    source = spec.get("source")
    causes = []
    if not source:
        causes = [("FieldValueRequired", "Required value", "spec.source"),
                  ("FieldValueInvalid", "Invalid value: null: some validation rules were not checked because the "
                   "object was invalid; correct the existing errors to complete validation", "<nil>")]
    else:
        if bool(source.get("volumeSnapshotContentName")) == bool(source.get("persistentVolumeClaimName")):
            causes.append(("FieldValueInvalid", "Invalid value: exactly one of volumeSnapshotContentName and "
                           "persistentVolumeClaimName must be set", "spec.source"))
        if "volumeSnapshotClassName" in spec and spec["volumeSnapshotClassName"] == "":
            causes.append(("FieldValueInvalid", 'Invalid value: "": volumeSnapshotClassName must not be the empty '
                           "string when set", "spec.volumeSnapshotClassName"))
    if causes:
        raise invalid("VolumeSnapshot", name, causes, group="snapshot.storage.k8s.io")


class Watcher:
    def __init__(self, res, ns):
        self.res = res
        self.ns = ns
        self.queue = queue.Queue()
        self.broken = threading.Event()

    def matches(self, res, ns):
        return res == self.res and (self.ns is None or self.ns == ns)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakeapi"

    def setup(self):
        super().setup()
        # Go's net/http (and so kube-apiserver) sets TCP_NODELAY; without it, a response written as
        # headers then body waits on the client's delayed ACK (about 40 ms).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("fakeapi: " + fmt % args + "\n")

    # --- plumbing

    def send_json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length == 0:
            return None
        try:
            return json.loads(self.rfile.read(length))
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"invalid JSON: {e}")

    def authenticated(self):
        cert = self.connection.getpeercert() if hasattr(self.connection, "getpeercert") else None
        if cert:
            return True
        token_file = self.server.token_file
        if token_file is None:
            return True
        header = self.headers.get("Authorization", "")
        with open(token_file) as f:
            token = f.read().strip()
        return header == f"Bearer {token}"

    def route(self):
        url = urlparse(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        res = (group, version, rest[0])
        if group in CUSTOM_GROUPS and not self.server.crds_installed:
            raise PageNotFound()
        if res not in RESOURCES:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        _, namespaced, has_status = RESOURCES[res]
        if namespaced is False and ns is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and (sub != "status" or not has_status):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if namespaced and name is not None and ns is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return res, ns, name, sub, query

    def handle_any(self, verb):
        self.server.count(verb)
        try:
            if self.path.startswith("/_test/"):
                return self.test_hook()
            if not self.authenticated():
                self.send_json(401, status(401, "Unauthorized", "Unauthorized"))
                return
            res, ns, name, sub, query = self.route()
            store = self.server.store
            if self.headers.get("User-Agent", "").startswith("swell-sidecar"):
                k8s_verb = {"GET": "get", "POST": "create", "PUT": "update", "DELETE": "delete",
                            "PATCH": "patch"}[verb]
                if verb == "GET" and name is None:
                    k8s_verb = "watch" if query.get("watch") in ("1", "true") else "list"
                resource = res[2] + (f"/{sub}" if sub else "")
                with self.server.count_lock:
                    self.server.audit.add((res[0], resource, k8s_verb))
            if verb == "GET" and name is None:
                if query.get("watch") in ("1", "true"):
                    return self.watch(res, ns, query)
                return self.list(res, ns, query)
            if verb == "GET":
                return self.send_json(200, store.get(res, ns, name))
            body = self.read_body()
            kind, _, _ = RESOURCES[res]
            if verb in ("POST", "PUT"):
                if not isinstance(body, dict) or not body.get("kind") or not body.get("apiVersion"):
                    raise ApiError(400, "BadRequest", f"Object 'Kind' is missing in '{json.dumps(body)[:200]}'")
                if body["kind"] != kind:
                    raise ApiError(400, "BadRequest", f"the kind {body['kind']} does not match {kind}")
            if verb == "POST" and name is None:
                return self.send_json(201, store.create(res, ns, body))
            if verb == "PUT" and name is not None:
                if body.get("metadata", {}).get("name") != name:
                    raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
                return self.send_json(200, store.update(res, ns, name, body, sub))
            if verb == "PATCH" and name is not None:
                ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
                if ctype != "application/merge-patch+json":
                    # What the real API server answers for a media type it does not take for patches.
                    raise ApiError(415, "UnsupportedMediaType",
                                   f"the body of the request was in an unknown format - accepted media types "
                                   f"include: application/json-patch+json, application/merge-patch+json, "
                                   f"application/apply-patch+yaml")
                return self.send_json(200, store.patch(res, ns, name, body, sub))
            if verb == "DELETE" and name is not None:
                uid = ((body or {}).get("preconditions") or {}).get("uid")
                return self.send_json(200, store.delete(res, ns, name, uid))
            raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported here")
        except ApiError as e:
            self.send_json(e.code, e.body)
        except PageNotFound:
            # What kube-apiserver answers for a group no CRD serves: not a Status, plain text.
            data = b"404 page not found\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_DELETE(self):
        self.handle_any("DELETE")

    def do_PATCH(self):
        self.handle_any("PATCH")

    # --- list and watch

    def list(self, res, ns, query):
        """A list, paged as kube-apiserver pages one: a first page with `limit` reads the store at one
        resourceVersion, and every continue token (base64 JSON: version, revision, the last key served)
        reads the rest of that same snapshot, whatever was written since (05c samples). A token older than
        the compaction point is 410 Expired."""
        store = self.server.store
        limit = int(query.get("limit") or 0)
        if query.get("continue"):
            self.server.count("LIST-CONTINUE")
            try:
                text = query["continue"]
                token = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
                rv, after = int(token["rv"]), token["start"]
            except (ValueError, KeyError, TypeError):
                raise ApiError(400, "BadRequest", "continue key is not valid: incorrect encoded start resourceVersion")
            with store.lock:
                keyed = store.snapshots.get((res, ns, rv))
            if keyed is None or rv < store.compacted:
                raise ApiError(410, "Expired", CONTINUE_EXPIRED, None,
                               {"continue": continue_token(-1, after)})
        else:
            with store.lock:
                items, rv = store.list(res, ns)
                rv = int(rv)
                keyed = [(f'{o["metadata"].get("namespace")}/{o["metadata"]["name"]}' if ns is None and
                          o["metadata"].get("namespace") else o["metadata"]["name"], o) for o in items]
                keyed.sort(key=lambda kv: kv[0])  # etcd's key order
                if limit and len(keyed) > limit:
                    store.snapshots[(res, ns, rv)] = keyed
                    while len(store.snapshots) > 64:
                        store.snapshots.pop(next(iter(store.snapshots)))
            after = None
        rest = [(k, copy.deepcopy(o)) for k, o in keyed if after is None or k >= after]
        if query.get("labelSelector"):
            wanted = parse_selector(query["labelSelector"])
            rest = [(k, o) for k, o in rest if selects(wanted, o["metadata"].get("labels") or {})]
        page = rest[:limit] if limit else rest
        meta = {"resourceVersion": str(rv)}
        if limit and len(rest) > limit:
            meta["continue"] = continue_token(rv, page[-1][0] + "\u0000")
            if not query.get("labelSelector"):
                meta["remainingItemCount"] = len(rest) - limit
        page = [o for _, o in page]
        kind = RESOURCES[res][0]
        if res[0] in CUSTOM_GROUPS:
            meta.setdefault("continue", "")
        else:
            for item in page:
                # Built-in list items carry neither kind nor apiVersion, as in the real server's lists.
                item.pop("kind", None)
                item.pop("apiVersion", None)
        self.send_json(200, {"kind": kind + "List", "apiVersion": res[1] if not res[0] else f"{res[0]}/{res[1]}",
                             "metadata": meta, "items": page})

    def chunk(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def watch(self, res, ns, query):
        store = self.server.store
        kind = RESOURCES[res][0]
        api_version = res[1] if not res[0] else f"{res[0]}/{res[1]}"
        since = query.get("resourceVersion", "")
        timeout = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        watcher = Watcher(res, ns)
        backlog = []
        expired = False
        with store.lock:
            if since in ("", "0"):
                for (r, n, _), o in sorted(store.objects.items()):
                    if r == res and (ns is None or n == ns):
                        backlog.append(("ADDED", copy.deepcopy(o)))
            elif int(since) < store.compacted:
                expired = True
            else:
                backlog = [(t, copy.deepcopy(o)) for rv, r, n, t, o in store.history
                           if rv > int(since) and r == res and (ns is None or n == ns)]
            if not expired:
                store.watchers.append(watcher)
                self.server.watchers.add(watcher)
            last_rv = store.rv
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if expired:
                self.chunk({"type": "ERROR", "object": status(
                    410, "Expired", f"too old resource version: {since} ({store.compacted})")})
                self.wfile.write(b"0\r\n\r\n")
                return
            for type_, obj in backlog:
                self.chunk({"type": type_, "object": obj})
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + self.server.bookmark_interval
            while time.monotonic() < deadline:
                if watcher.broken.is_set():
                    # Cut the stream mid-way: no terminating chunk, the connection just closes.
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                try:
                    type_, obj = watcher.queue.get(timeout=0.05)
                    self.chunk({"type": type_, "object": obj})
                    last_rv = int(obj["metadata"]["resourceVersion"])
                except queue.Empty:
                    pass
                if bookmarks and time.monotonic() >= next_bookmark:
                    with store.lock:
                        last_rv = max(last_rv, store.rv) if watcher.queue.empty() else last_rv
                    self.chunk({"type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": str(last_rv)}}})
                    next_bookmark = time.monotonic() + self.server.bookmark_interval
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True
        finally:
            with store.lock:
                if watcher in store.watchers:
                    store.watchers.remove(watcher)
            self.server.watchers.discard(watcher)

    # --- test hooks

    def test_hook(self):
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        store = self.server.store
        if url.path == "/_test/crds":
            # The snapshot CRDs installed (the default) or not: their group answers 404 without them.
            self.server.crds_installed = query.get("installed") in ("1", "true")
            return self.send_json(200, {"installed": self.server.crds_installed})
        if url.path == "/_test/compact":
            with store.lock:
                store.compacted = store.rv
                store.history = []
            return self.send_json(200, {"compacted": store.compacted})
        if url.path == "/_test/break-watches":
            n = 0
            for w in list(self.server.watchers):
                w.broken.set()
                n += 1
            return self.send_json(200, {"broken": n})
        if url.path == "/_test/conflict":
            with store.lock:
                remaining = store.conflicts.get(query["resource"], 0)
                store.conflicts[query["resource"]] = int(query.get("count", "1"))
            return self.send_json(200, {"remaining": remaining})
        if url.path == "/_test/requests":
            return self.send_json(200, dict(self.server.requests))
        if url.path == "/_test/audit":
            with self.server.count_lock:
                return self.send_json(200, sorted(self.server.audit))
        if url.path == "/_test/watchers":
            return self.send_json(200, {"watchers": len(self.server.watchers)})
        self.send_json(404, status(404, "NotFound", "no such hook"))


class ControllerManager(threading.Thread):
    """The parts of kube-controller-manager's persistent-volume controller that a CSI sidecar meets."""

    PVC = ("", "v1", "persistentvolumeclaims")
    PV = ("", "v1", "persistentvolumes")
    SC = ("storage.k8s.io", "v1", "storageclasses")
    POD = ("", "v1", "pods")

    def __init__(self, store, protection_delay=0.5):
        super().__init__(daemon=True)
        self.store = store
        self.protection_delay = protection_delay
        self.deleting_since = {}  # uid -> when the protection controllers first saw it being deleted

    def run(self):
        while True:
            with self.store.lock:
                self.store.changed.wait(timeout=0.2)
                for _ in range(20):
                    before = self.store.rv
                    try:
                        self.sync()
                    except ApiError:
                        break
                    if self.store.rv == before:
                        break

    def protect(self):
        """The pvc-protection and pv-protection controllers: a claim's finalizer goes once no running pod
        uses it, a volume's once it is no longer Bound."""
        s = self.store
        pods = [o for k, o in s.objects.items() if k[0] == self.POD
                and o.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
        for (res, ns, name), obj in list(s.objects.items()):
            meta = obj["metadata"]
            if res not in (self.PVC, self.PV) or not meta.get("deletionTimestamp"):
                continue
            finalizer = PROTECTION[res[2]]
            if finalizer not in (meta.get("finalizers") or []):
                continue
            # They run on their own informers and queues: a real cluster was seen to keep a deleted PV
            # for a moment after the provisioner removed its own finalizer.
            first = self.deleting_since.setdefault(meta["uid"], time.monotonic())
            if time.monotonic() - first < self.protection_delay:
                continue
            if res == self.PVC and any(
                    p["metadata"].get("namespace") == ns and any(
                        (v.get("persistentVolumeClaim") or {}).get("claimName") == name
                        for v in p.get("spec", {}).get("volumes") or []) for p in pods):
                continue
            if res == self.PV and obj.get("status", {}).get("phase") == "Bound":
                continue
            new = copy.deepcopy(obj)
            new["metadata"]["finalizers"] = [f for f in meta["finalizers"] if f != finalizer]
            s.update(res, ns, name, new)
        live = {o["metadata"]["uid"] for o in s.objects.values()}
        self.deleting_since = {uid: t for uid, t in self.deleting_since.items() if uid in live}

    def sync(self):
        s = self.store
        self.protect()
        claims = {k: o for k, o in s.objects.items() if k[0] == self.PVC}
        volumes = {k: o for k, o in s.objects.items() if k[0] == self.PV}
        claims_by_uid = {o["metadata"]["uid"]: o for o in claims.values()}
        for (_, ns, name), pvc in claims.items():
            if pvc["spec"].get("volumeName") or pvc["metadata"].get("deletionTimestamp"):
                continue
            ann = pvc["metadata"].get("annotations", {})
            sc = s.objects.get((self.SC, None, pvc["spec"].get("storageClassName", "")))
            if sc and "volume.kubernetes.io/storage-provisioner" not in ann:
                wffc = sc.get("volumeBindingMode") == "WaitForFirstConsumer"
                if not wffc or "volume.kubernetes.io/selected-node" in ann:
                    new = copy.deepcopy(pvc)
                    new["metadata"].setdefault("annotations", {}).update({
                        "volume.kubernetes.io/storage-provisioner": sc["provisioner"],
                        "volume.beta.kubernetes.io/storage-provisioner": sc["provisioner"]})
                    s.update(self.PVC, ns, name, new)
                    continue
            for (_, _, pv_name), pv in volumes.items():
                ref = pv["spec"].get("claimRef") or {}
                if ref.get("uid") == pvc["metadata"]["uid"] and pv.get("status", {}).get("phase") in ("Available", "Bound"):
                    self.bind(ns, name, pvc, pv_name, pv)
                    break
        for (_, _, pv_name), pv in volumes.items():
            phase = pv.get("status", {}).get("phase")
            ref = pv["spec"].get("claimRef") or {}
            if not phase:
                new = copy.deepcopy(pv)
                new["status"] = {"phase": "Available", "lastPhaseTransitionTime": now()}
                s.update(self.PV, None, pv_name, new, "status")
            elif phase in ("Available", "Bound") and ref.get("uid") and ref["uid"] not in claims_by_uid:
                new = copy.deepcopy(pv)
                new["status"] = {"phase": "Released", "lastPhaseTransitionTime": now()}
                s.update(self.PV, None, pv_name, new, "status")

    def bind(self, ns, name, pvc, pv_name, pv):
        s = self.store
        if pv["status"].get("phase") != "Bound":
            new = copy.deepcopy(pv)
            new["status"] = {"phase": "Bound", "lastPhaseTransitionTime": now()}
            s.update(self.PV, None, pv_name, new, "status")
        new = copy.deepcopy(pvc)
        new["spec"]["volumeName"] = pv_name
        new["metadata"].setdefault("annotations", {}).update({
            "pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes"})
        new = s.update(self.PVC, ns, name, new)
        new["status"] = {"phase": "Bound", "accessModes": pv["spec"]["accessModes"],
                         "capacity": dict(pv["spec"]["capacity"])}
        # kube-controller-manager sets the current attributes class when it binds (10b samples).
        if pvc["spec"].get("volumeAttributesClassName"):
            new["status"]["currentVolumeAttributesClassName"] = pvc["spec"]["volumeAttributesClassName"]
        s.update(self.PVC, ns, name, new, "status")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, store, token_file, bookmark_interval, verbose):
        super().__init__(addr, Handler)
        self.store = store
        self.token_file = token_file
        self.bookmark_interval = bookmark_interval
        self.verbose = verbose
        self.watchers = set()
        self.requests = {}
        self.audit = set()  # (group, resource[/subresource], verb) the sidecar has asked for
        self.crds_installed = True
        self.count_lock = threading.Lock()

    def count(self, verb):
        with self.count_lock:
            self.requests[verb] = self.requests.get(verb, 0) + 1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--client-ca", help="accept client certificates signed by this CA")
    p.add_argument("--token-file", help="accept this bearer token (re-read on every request)")
    p.add_argument("--controller-manager", action="store_true")
    p.add_argument("--bookmark-interval", type=float, default=1.0)
    p.add_argument("--port-file", help="write the chosen port here once listening")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    store = Store()
    server = Server(("127.0.0.1", args.port), store, args.token_file, args.bookmark_interval, args.verbose)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    if args.client_ca:
        ctx.load_verify_locations(args.client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    if args.controller_manager:
        ControllerManager(store).start()
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(server.server_address[1]))
        os.rename(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
