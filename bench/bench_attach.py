#!/usr/bin/env python3
"""A local volume's pod start time with attach (the CSIDriver's attachRequired: true, Swell's
choice) and without (attachRequired: false, the node plugin started with --stage-unpublished-local,
as a second driver name for local volumes would run), on one real node of the real-node tier's
kind: kube-apiserver, kube-controller-manager (its attach/detach controller), the scheduler,
kubelet and containerd, Swell from the dev overlay.

Each round makes a WaitForFirstConsumer claim of the loop class and a pod that uses it, and times
the pod from its creation to Ready (read from a watch), then deletes both. The modes alternate
A-B-A, so that a drift of the machine shows. Needs root, the node kit (SWELL_KUBE_KIT) and a
release binary (SWELL_RELEASE_BIN, or it is built).

    python3 bench/bench_attach.py [--rounds 6]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cluster"))
import conftest  # noqa: E402
import images  # noqa: E402
import kube  # noqa: E402

NS = conftest.NAMESPACE


def pod(name):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"hostNetwork": True, "terminationGracePeriodSeconds": 1, "automountServiceAccountToken": False,
                     "containers": [{"name": "app", "image": "swell-test/postgres:15", "imagePullPolicy": "Never",
                                     "command": ["/bin/bash", "-c", "trap 'exit 0' TERM; sleep infinity & wait"],
                                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": name}}]}}


def claim(name):
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}},
                     "storageClassName": "swell-local"}}


def start_seconds(c, name, marks):
    """Seconds from the pod's creation to its Ready condition, as a watch sees them; `marks` gets
    when its VolumeAttachment was attached (Swell's attacher done) and when the node's
    volumesAttached listed the volume (the attach/detach controller's record, which kubelet waits
    for), from watches started before the pod."""
    watch = subprocess.Popen(["kubectl", "get", "pods", "-n", "default", "--field-selector", f"metadata.name={name}",
                              "-w", "-o", "json"], stdout=subprocess.PIPE, text=True, env=c.env)
    vas = subprocess.Popen(["kubectl", "get", "volumeattachments", "-w", "-o", "json"], stdout=subprocess.PIPE, text=True,
                           env=c.env)
    node = subprocess.Popen(["kubectl", "get", "node", kube.NODE, "-w", "-o", "json"], stdout=subprocess.PIPE, text=True,
                            env=c.env)
    ready = threading.Event()
    t0 = [None]

    def read():
        for obj in conftest.json_stream(watch):
            if any(x["type"] == "Ready" and x["status"] == "True" for x in obj.get("status", {}).get("conditions", [])):
                ready.set()
                return

    def read_vas():
        for obj in conftest.json_stream(vas):
            if obj.get("status", {}).get("attached") and t0[0] and "attached" not in marks:
                marks["attached"] = time.monotonic() - t0[0]

    def read_node():
        for obj in conftest.json_stream(node):
            listed = obj.get("status", {}).get("volumesAttached") or []
            if listed and t0[0] and "listed" not in marks:
                marks["listed"] = time.monotonic() - t0[0]
    for fn in (read, read_vas, read_node):
        threading.Thread(target=fn, daemon=True).start()
    c.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [claim(name)]}))
    time.sleep(1)  # the watches are connected
    t0[0] = time.monotonic()
    c.kubectl("apply", "-f", "-", input=json.dumps(pod(name)))
    try:
        if not ready.wait(180):
            raise RuntimeError(f"pod {name} not Ready in 180 s")
        return time.monotonic() - t0[0]
    finally:
        for w in (watch, vas, node):
            w.terminate()
        c.kubectl("delete", "pod", name, "-n", "default", "--wait=true", "--timeout=90s", check=False)
        c.kubectl("delete", "pvc", name, "-n", "default", "--wait=true", "--timeout=90s", check=False)
        kube.wait_for("the PV gone", lambda: not [p for p in c.get("pv")["items"]
                                                 if p["spec"]["claimRef"]["name"] == name], 120)


def set_mode(c, attach):
    """The CSIDriver's attachRequired (immutable: deleted and made again), and the node plugin's
    --stage-unpublished-local, rolled out."""
    driver = c.get("csidriver", "swell.csi.dev")
    if driver["spec"]["attachRequired"] != attach:
        c.kubectl("delete", "csidriver", "swell.csi.dev")
        spec = dict(driver["spec"], attachRequired=attach)
        c.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
                                                         "metadata": {"name": "swell.csi.dev"}, "spec": spec}))
    ds = c.get("daemonset", "swell-node", "-n", NS)
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    want = [a for a in args if a != "--stage-unpublished-local"] + ([] if attach else ["--stage-unpublished-local"])
    if want != args:
        c.kubectl("patch", "daemonset", "swell-node", "-n", NS, "--type=json", "-p", json.dumps(
            [{"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": want}]))
        c.kubectl("rollout", "status", "daemonset/swell-node", "-n", NS, "--timeout=180s", timeout=200)
    kube.wait_for("the node's CSINode", lambda: (c.get("csinode", kube.NODE) or {}).get("spec", {}).get("drivers"), 60)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    kit = os.environ.get("SWELL_KUBE_KIT") or os.path.join(HERE, "..", "..", "shared", "kube")
    workdir = tempfile.mkdtemp(prefix="swell-kube-")
    c = kube.Cluster(kit, workdir, log=conftest.log)
    results = {True: [], False: []}
    attached, listed = [], []
    try:
        binary = conftest.release_binary(workdir)
        c.unpack_kit()
        c.start(images.build_all(workdir, binary, os.path.join(c.bin, "csi-node-driver-registrar"), log=conftest.log))
        c.kubectl("label", "node", kube.NODE, "swell.csi.dev/storage-host=true")
        c.kubectl("apply", "-f", "-", input=conftest.rendered_overlay())
        kube.wait_for("the node DaemonSet", lambda: c.get("daemonset", "swell-node", "-n", NS)["status"]
                      .get("numberReady") == 1, 180)
        start_seconds(c, "warm-up", {})
        for block, attach in enumerate((True, False, True)):
            set_mode(c, attach)
            for i in range(args.rounds):
                marks = {}
                s = start_seconds(c, f"p{block}-{i}", marks)
                results[attach].append(s)
                if attach:
                    attached.append(marks.get("attached", float("nan")))
                    listed.append(marks.get("listed", float("nan")))
                detail = (f" (attached {marks.get('attached', float('nan')):.2f} s, node's volumesAttached "
                          f"{marks.get('listed', float('nan')):.2f} s)") if attach else ""
                print(f"attachRequired={str(attach).lower()} round {i}: pod Ready {s:.2f} s{detail}", flush=True)
    finally:
        conftest.uninstall(c)
        c.stop()
    for attach in (True, False):
        xs = sorted(results[attach])
        print(f"attachRequired={str(attach).lower()}: {len(xs)} pods, median {statistics.median(xs):.2f} s, "
              f"min {xs[0]:.2f} s, max {xs[-1]:.2f} s")
    print(f"with attach: the VolumeAttachment attached after median {statistics.median(attached):.2f} s "
          f"(max {max(attached):.2f} s); the node's volumesAttached listed it after median "
          f"{statistics.median(listed):.2f} s (max {max(listed):.2f} s)")


if __name__ == "__main__":
    main()
