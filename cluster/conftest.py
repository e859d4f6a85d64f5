"""The real-node tier's fixtures: the images, a one-node cluster, and Swell installed from the dev
overlay exactly as a user would (`kubectl apply -k`), with only `imagePullPolicy: Never` added."""
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import images  # noqa: E402
import kube  # noqa: E402
import nodes  # noqa: E402

NAMESPACE = "swell-system"
OVERLAY = os.path.join(ROOT, "deploy", "overlays", "dev")


def require_kit():
    kit = os.environ.get("SWELL_KUBE_KIT", "")
    missing = [f"{b}.xz" for b in kube.KIT_BINARIES if not os.path.exists(os.path.join(kit, f"{b}.xz"))] if kit else []
    if kit and os.path.isdir(kit) and not missing:
        return kit
    why = ("SWELL_KUBE_KIT is not set" if not kit else
           f"SWELL_KUBE_KIT={kit} is not a folder" if not os.path.isdir(kit) else
           f"SWELL_KUBE_KIT={kit} lacks {', '.join(missing)}")
    msg = (f"the real-node tier needs a Kubernetes node kit (kube-apiserver, kube-controller-manager, "
           f"kube-scheduler, kubelet v1.36 and csi-node-driver-registrar, each .xz): {why}")
    if os.environ.get("CI") == "true" or os.environ.get("SWELL_REQUIRE_KUBE_KIT") == "1":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def release_binary(workdir):
    path = os.environ.get("SWELL_RELEASE_BIN")
    if path:
        return path
    out = os.path.join(workdir, "release")
    subprocess.run([os.path.join(ROOT, "scripts", "build-release.sh"), out], cwd=ROOT, check=True)
    return os.path.join(out, "swell")


def rendered_overlay():
    """The dev overlay as kustomize renders it, with `imagePullPolicy: Never` on every container."""
    out = subprocess.run(["kubectl", "kustomize", OVERLAY], capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    for d in docs:
        spec = d.get("spec", {}).get("template", {}).get("spec")
        if spec:
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                c["imagePullPolicy"] = "Never"
    return yaml.safe_dump_all(docs)


def log(msg):
    print(f"[cluster {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@pytest.fixture(scope="module")
def cluster():
    kit = require_kit()
    workdir = tempfile.mkdtemp(prefix="swell-kube-")
    c = kube.Cluster(kit, workdir, log=log)
    try:
        binary = release_binary(workdir)
        registrar = os.path.join(c.bin, "csi-node-driver-registrar")
        c.unpack_kit()
        t0 = time.monotonic()
        built = images.build_all(workdir, binary, registrar, log=log)
        log(f"images ready in {time.monotonic() - t0:.1f}s")
        c.start(built)
        c.kubectl("label", "node", kube.NODE, "swell.csi.dev/storage-host=true")
        c.kubectl("apply", "-f", "-", input=rendered_overlay())
        yield c
    finally:
        try:
            dump_on_failure(c)
            uninstall(c)
        finally:
            forced = c.stop()
            if forced:
                log("forced at teardown: " + "; ".join(forced))
            c.forced = forced


@pytest.fixture(scope="module")
def multi():
    """Three real nodes on one control plane, with Swell's dev overlay applied unchanged (only
    `imagePullPolicy: Never`): the DaemonSet on all three, the controller on the first."""
    kit = require_kit()
    workdir = tempfile.mkdtemp(prefix="swell-kube-")
    # Node 3's pool is a 400 MiB filesystem of its own: the scheduler must keep larger claims off it.
    c = nodes.MultiCluster(kit, workdir, count=3, log=log, pools={3: 400 * 1024 * 1024})
    # A node that stops answering is marked unknown after 16 s, not 50 (the non-graceful flow).
    c.controller_flags = ["--node-monitor-grace-period=16s"]
    try:
        binary = release_binary(workdir)
        c.unpack_kit()
        built = images.build_all(workdir, binary, os.path.join(c.bin, "csi-node-driver-registrar"), log=log)
        c.start(built)
        c.kubectl("label", "node", c.nodes[0].name, "swell.csi.dev/storage-host=true")
        c.kubectl("apply", "-f", "-", input=rendered_overlay())
        yield c
    finally:
        try:
            dump_on_failure(c)
            uninstall(c)
        finally:
            forced = c.stop()
            if forced:
                log("forced at teardown: " + "; ".join(forced))
            c.forced = forced


def uninstall(c):
    """What a user does to remove Swell: claims first (their volumes go with them), then the install."""
    if "kube-apiserver" not in c.procs:
        return
    try:
        c.kubectl("delete", "statefulsets,deployments", "--all", "-n", "default", "--wait=true", "--timeout=60s",
                  check=False)
        c.kubectl("delete", "pods", "--all", "-n", "default", "--wait=true", "--timeout=60s", check=False)
        c.kubectl("delete", "volumesnapshots", "--all", "-n", "default", "--wait=false", check=False)
        c.kubectl("delete", "pvc", "--all", "-n", "default", "--wait=true", "--timeout=60s", check=False)
        kube.wait_for("every PV gone", lambda: not c.get("pv")["items"], timeout=150)
    except Exception as e:  # noqa: BLE001
        log(f"uninstall: {e}")
    c.kubectl("delete", "-f", "-", "--wait=true", "--timeout=60s", input=rendered_overlay(), check=False)


def dump_on_failure(c):
    if "kube-apiserver" not in c.procs:
        return
    r = c.kubectl("get", "pods", "-A", "-o", "wide", check=False)
    log("pods at teardown:\n" + r.stdout)


def node_pod(c):
    pods = c.get("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/name=swell-node")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return live[0] if live else None


def restarts(c):
    out = {}
    for p in c.get("pods", "-n", NAMESPACE)["items"]:
        for s in p.get("status", {}).get("containerStatuses", []):
            if s.get("restartCount"):
                out[f"{p['metadata']['name']}/{s['name']}"] = s["restartCount"]
    return out


def container_logs(c, pod, container, previous=False):
    args = ["logs", "-n", NAMESPACE, pod, "-c", container, "--tail=60"] + (["--previous"] if previous else [])
    return c.kubectl(*args, check=False).stdout


def json_stream(proc):
    """Objects from `kubectl get -w -o json`, which writes them one after another."""
    decoder, buf = json.JSONDecoder(), ""
    for line in proc.stdout:
        buf += line
        while buf.strip():
            try:
                obj, end = decoder.raw_decode(buf.lstrip())
            except json.JSONDecodeError:
                break
            buf = buf.lstrip()[end:]
            yield obj


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    c = item.funcargs.get("cluster") or item.funcargs.get("multi")
    if rep.when == "call" and rep.failed and c is not None:
        try:
            text = c.kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", check=False).stdout[-6000:]
            pods = c.get("pods", "-n", NAMESPACE)["items"]
            for p in pods[:4]:
                for container in ("swell", "sidecar"):
                    text += f"\n--- {p['metadata']['name']}/{container}\n" + container_logs(c, p["metadata"]["name"], container)
            rep.sections.append(("cluster state", text))
        except Exception as e:  # noqa: BLE001
            rep.sections.append(("cluster state", f"could not read: {e}"))
