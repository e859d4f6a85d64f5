"""deploy/: every overlay renders, validates against Kubernetes 1.33 (strict) and passes yamllint;
the image's build stage (scripts/build-release.sh) produces a runnable static binary."""
import os
import re
import subprocess

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGETS = ["base", "overlays/dev", "overlays/production", "overlays/lvm", "overlays/dir", "overlays/rbd"]


def render(target):
    return subprocess.run(["kubectl", "kustomize", os.path.join(HERE, target)],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates(target, tmp_path):
    out = tmp_path / "rendered.yaml"
    out.write_text(render(target))
    r = subprocess.run(["kubernetes-validate", "-k", "1.33.0", "--strict", "--quiet", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out.read_text()) if d)
    classes = {"overlays/lvm": 4, "overlays/dir": 3, "overlays/rbd": 3}.get(target, 2)
    secrets = ["Secret"] if target == "overlays/rbd" else []
    assert kinds == ["CSIDriver", "ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding",
                     "DaemonSet", "Deployment", "Namespace", "PriorityClass", "Role", "Role", "Role", "RoleBinding",
                     "RoleBinding", "RoleBinding"] + secrets + ["ServiceAccount", "ServiceAccount"] + ["StorageClass"] * classes


def test_examples_validate():
    for path in (os.path.join(HERE, "examples", "postgres", "postgres.yaml"),
                 os.path.join(HERE, "examples", "iscsi-chap", "secret.yaml")):
        r = subprocess.run(["kubernetes-validate", "-k", "1.33.0", "--strict", "--quiet", path],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_attributes_class_example_validates_and_names_only_mutable_parameters():
    """VolumeAttributesClass is storage.k8s.io/v1 from Kubernetes 1.34; its parameters must be ones
    the plugin can change on a live volume (Validation.mutableKeys)."""
    path = os.path.join(HERE, "examples", "attributes-classes", "attributes-classes.yaml")
    r = subprocess.run(["kubernetes-validate", "-k", "1.34.0", "--strict", "--quiet", path],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(os.path.join(ROOT, "Sources", "SwellDriver", "Validation.swift")) as f:
        mutable = re.findall(r'"([a-zA-Z]+)"', re.search(r"static let mutableKeys = \[([^\]]+)\]", f.read()).group(1))
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    classes = [d for d in docs if d["kind"] == "VolumeAttributesClass"]
    assert len(classes) == 2
    for vac in classes:
        assert vac["driverName"] == "swell.csi.dev" and set(vac["parameters"]) <= set(mutable), vac
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["volumeAttributesClassName"] in {v["metadata"]["name"] for v in classes}


def test_snapshot_examples_match_the_plugin():
    """The snapshot CRDs are not in kubernetes-validate's schemas: the examples are checked here
    against the v1 API's required fields and against what the plugin accepts."""
    d = os.path.join(HERE, "examples", "snapshots")
    with open(os.path.join(d, "volumesnapshotclass.yaml")) as f:
        classes = [c for c in yaml.safe_load_all(f) if c]
    assert {c["deletionPolicy"] for c in classes} == {"Delete", "Retain"}
    for c in classes:
        assert c["apiVersion"] == "snapshot.storage.k8s.io/v1" and c["kind"] == "VolumeSnapshotClass"
        assert c["driver"] == "swell.csi.dev"
        # The plugin refuses snapshot parameters other than the snapshotter's csi.storage.k8s.io/* keys.
        assert all(k.startswith("csi.storage.k8s.io/") for k in c.get("parameters", {}))
    defaults = [c for c in classes if c["metadata"].get("annotations", {}).get(
        "snapshot.storage.kubernetes.io/is-default-class") == "true"]
    assert len(defaults) == 1
    with open(os.path.join(d, "snapshot-and-restore.yaml")) as f:
        snap, claim = [o for o in yaml.safe_load_all(f) if o]
    assert snap["spec"]["volumeSnapshotClassName"] in {c["metadata"]["name"] for c in classes}
    assert list(snap["spec"]["source"]) == ["persistentVolumeClaimName"]
    assert claim["spec"]["dataSource"] == {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                           "name": snap["metadata"]["name"]}
    r = subprocess.run(["kubernetes-validate", "-k", "1.33.0", "--strict", "--quiet", "-"], input=yaml.safe_dump(claim),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    objs = objects("overlays/production")
    for kind, name in [("DaemonSet", "swell-node"), ("Deployment", "swell-controller")]:
        sidecar = next(c for c in objs[(kind, name)]["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar")
        assert "--snapshots" in sidecar["args"], name


def test_group_snapshot_examples_match_the_plugin():
    """The group snapshot CRDs are not in kubernetes-validate's schemas either: the v1 fields the
    examples use, and what the plugin's GroupController accepts (only the sidecar's own
    csi.storage.k8s.io/* parameters). Both sidecars serve group snapshots."""
    d = os.path.join(HERE, "examples", "group-snapshots")
    with open(os.path.join(d, "volumegroupsnapshotclass.yaml")) as f:
        (cls,) = [c for c in yaml.safe_load_all(f) if c]
    assert cls["apiVersion"] == "groupsnapshot.storage.k8s.io/v1" and cls["kind"] == "VolumeGroupSnapshotClass"
    assert cls["driver"] == "swell.csi.dev" and cls["deletionPolicy"] in {"Delete", "Retain"}
    assert all(k.startswith("csi.storage.k8s.io/") for k in cls.get("parameters", {}))
    with open(os.path.join(d, "group-snapshot.yaml")) as f:
        (vgs,) = [o for o in yaml.safe_load_all(f) if o]
    assert vgs["apiVersion"] == "groupsnapshot.storage.k8s.io/v1" and vgs["kind"] == "VolumeGroupSnapshot"
    assert vgs["spec"]["volumeGroupSnapshotClassName"] == cls["metadata"]["name"]
    assert list(vgs["spec"]["source"]) == ["selector"] and vgs["spec"]["source"]["selector"]["matchLabels"]
    objs = objects("overlays/production")
    for kind, name in [("DaemonSet", "swell-node"), ("Deployment", "swell-controller")]:
        sidecar = next(c for c in objs[(kind, name)]["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar")
        assert "--group-snapshots" in sidecar["args"], name


def test_yamllint():
    r = subprocess.run(["yamllint", "-c", os.path.join(ROOT, ".yamllint"), HERE], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def objects(target):
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(render(target)) if d}


def test_driver_and_class_match_the_plugin():
    objs = objects("overlays/production")
    driver = objs[("CSIDriver", "swell.csi.dev")]["spec"]
    assert driver["attachRequired"] is True and driver["podInfoOnMount"] is False
    local, net = objs[("StorageClass", "swell-local")], objs[("StorageClass", "swell-iscsi")]
    assert local["volumeBindingMode"] == "WaitForFirstConsumer" and local["parameters"]["backend"] == "loop"
    assert net["volumeBindingMode"] == "Immediate" and net["parameters"]["backend"] == "iscsi"
    for sc in (local, net):
        assert sc["provisioner"] == "swell.csi.dev" and sc["allowVolumeExpansion"] is True
        # Every class parameter is one the plugin accepts (it rejects unknown keys), or the sidecar's own.
        assert {k for k in sc["parameters"] if not k.startswith("csi.storage.k8s.io/")} <= {"backend"}
    chap = {k: v for k, v in net["parameters"].items() if "-secret-" in k}
    assert chap == {f"csi.storage.k8s.io/{kind}-secret-{part}": value for kind in ("provisioner", "node-stage")
                    for part, value in (("name", "swell-iscsi-chap"), ("namespace", "swell-system"))}
    secret = yaml.safe_load(open(os.path.join(HERE, "examples", "iscsi-chap", "secret.yaml")))
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == ("swell-iscsi-chap", "swell-system")
    assert {"username", "password", "username_in", "password_in"} == set(secret["stringData"])


def test_lvm_overlay_configures_the_node_plugin():
    objs = objects("overlays/lvm")
    sc = objs[("StorageClass", "swell-lvm")]
    assert sc["parameters"]["backend"] == "lvm" and sc["volumeBindingMode"] == "WaitForFirstConsumer"
    plugin = objs[("DaemonSet", "swell-node")]["spec"]["template"]["spec"]["containers"][0]
    assert plugin["name"] == "swell"
    assert "--lvm-vg=swell" in plugin["args"] and "--lvm-thin-pool=pool0" in plugin["args"]


def test_lvm_overlay_offers_a_thick_class():
    sc = objects("overlays/lvm")[("StorageClass", "swell-lvm-thick")]
    assert sc["parameters"]["backend"] == "lvm" and sc["parameters"]["provisioning"] == "thick"
    assert sc["allowVolumeExpansion"] is True and sc["volumeBindingMode"] == "WaitForFirstConsumer"


def test_dir_overlay_gives_the_plugin_its_quota_filesystem_at_the_host_path():
    objs = objects("overlays/dir")
    sc = objs[("StorageClass", "swell-dir")]
    assert sc["parameters"] == {"backend": "dir", "overcommit": "false"} and sc["allowVolumeExpansion"] is True
    pod = objs[("DaemonSet", "swell-node")]["spec"]["template"]["spec"]
    plugin = pod["containers"][0]
    assert "--dir-root=/var/lib/swell-dirs" in plugin["args"]
    mount = next(m for m in plugin["volumeMounts"] if m["name"] == "dirs")
    volume = next(v for v in pod["volumes"] if v["name"] == "dirs")
    assert mount["mountPath"] == volume["hostPath"]["path"] == "/var/lib/swell-dirs"
    assert volume["hostPath"]["type"] == "Directory", "never made on demand, where it would have no quotas"


def test_rbd_overlay_gives_the_controller_its_cluster_and_the_nodes_their_modules():
    """The class's pool is one the controller was given; every secret the class names is the
    overlay's Secret, with ceph-csi's keys; the controller reads that Secret's key as the file its
    --rbd-key-file names; nodes can load the rbd module."""
    objs = objects("overlays/rbd")
    sc = objs[("StorageClass", "swell-rbd")]
    assert sc["volumeBindingMode"] == "Immediate" and sc["allowVolumeExpansion"] is True
    assert {k for k in sc["parameters"] if not k.startswith("csi.storage.k8s.io/")} == {"backend", "pool"}
    refs = {k: v for k, v in sc["parameters"].items() if "-secret-" in k}
    assert refs == {f"csi.storage.k8s.io/{kind}-secret-{part}": value
                    for kind in ("provisioner", "node-stage", "controller-expand", "controller-modify",
                                 "controller-publish")
                    for part, value in (("name", "swell-ceph"), ("namespace", "swell-system"))}
    secret = objs[("Secret", "swell-ceph")]
    # The snapshot calls' secrets (issue 37): the example class names the same Secret for each.
    with open(os.path.join(HERE, "examples", "rbd-snapshots", "volumesnapshotclass.yaml")) as f:
        snapclass = yaml.safe_load(f)
    assert snapclass["driver"] == "swell.csi.dev" and snapclass["kind"] == "VolumeSnapshotClass"
    assert snapclass["parameters"] == {f"csi.storage.k8s.io/{kind}-secret-{part}": value
                                       for kind in ("snapshotter", "snapshotter-list")
                                       for part, value in (("name", "swell-ceph"), ("namespace", "swell-system"))}
    assert secret["metadata"]["namespace"] == "swell-system" and set(secret["stringData"]) == {"userID", "userKey"}
    pod = objs[("Deployment", "swell-controller")]["spec"]["template"]["spec"]
    plugin = next(c for c in pod["containers"] if c["name"] == "swell")
    args = dict(a.split("=", 1) for a in plugin["args"] if a.startswith("--rbd-"))
    assert args["--rbd-pool"] == sc["parameters"]["pool"] and args["--rbd-user"] == secret["stringData"]["userID"]
    assert all(":" in m for m in args["--rbd-monitors"].split(","))
    mount = next(m for m in plugin["volumeMounts"] if m["name"] == "ceph-client")
    volume = next(v for v in pod["volumes"] if v["name"] == "ceph-client")
    assert volume["secret"]["secretName"] == "swell-ceph"
    assert args["--rbd-key-file"] == mount["mountPath"] + "/" + volume["secret"]["items"][0]["path"]
    assert volume["secret"]["items"][0]["key"] == "userKey"
    node = objs[("DaemonSet", "swell-node")]["spec"]["template"]["spec"]
    modules = next(m for m in node["containers"][0]["volumeMounts"] if m["name"] == "lib-modules")
    assert modules["mountPath"] == "/lib/modules" and modules["readOnly"] is True


@pytest.mark.parametrize("target", ["overlays/production", "overlays/rbd"])
def test_every_volume_has_an_attacher_and_the_controller_its_node_list(target):
    """attachRequired: true needs an attacher for every volume: both sidecars attach (each serves
    its own backends). The controller plugin reads the node list its sidecar writes, in a folder
    both containers mount."""
    objs = objects(target)
    assert objs[("CSIDriver", "swell.csi.dev")]["spec"]["attachRequired"] is True
    for kind, name in [("DaemonSet", "swell-node"), ("Deployment", "swell-controller")]:
        sidecar = next(c for c in objs[(kind, name)]["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar")
        assert "--attach" in sidecar["args"], name
    pod = objs[("Deployment", "swell-controller")]["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in pod["containers"]}
    args = {c: dict(a.split("=", 1) for a in by_name[c]["args"] if a.startswith("--nodes-file=")) for c in ("swell", "sidecar")}
    path = args["swell"]["--nodes-file"]
    assert args["sidecar"]["--nodes-file"] == path
    for c in ("swell", "sidecar"):
        mounts = [m for m in by_name[c]["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
        assert [m["name"] for m in mounts] == ["socket-dir"], (c, mounts)
    assert not any(a.startswith("--iscsi-allowed-initiator") for a in by_name["swell"]["args"]), "deprecated, ignored"


@pytest.mark.parametrize("target", ["overlays/production", "overlays/lvm", "overlays/dir", "overlays/rbd"])
def test_each_backend_has_exactly_one_sidecar_serving_it(target):
    """Per-node sidecars serve loop, lvm and dir classes, the controller's serves iscsi ones: no backend
    is served twice (two provisioners racing), no class by nobody."""
    objs = objects(target)
    served = []
    for kind, name in [("DaemonSet", "swell-node"), ("Deployment", "swell-controller")]:
        for c in objs[(kind, name)]["spec"]["template"]["spec"]["containers"]:
            if c["name"] == "sidecar":
                served += [a.split("=", 1)[1] for a in c["args"] if a.startswith("--backend=")]
    classes = {d["parameters"]["backend"] for (k, _), d in objs.items() if k == "StorageClass"}
    assert len(served) == len(set(served)) and classes <= set(served), (served, classes)


@pytest.mark.parametrize("workload", [("DaemonSet", "swell-node"), ("Deployment", "swell-controller")])
def test_pods_are_pinned_limited_and_tight(workload):
    ds = objects("overlays/production")[workload]["spec"]["template"]["spec"]
    assert ds["priorityClassName"] == "swell-node"
    for c in ds["containers"]:
        image = c["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
        assert "limits" in c["resources"] and "requests" in c["resources"], c["name"]
        assert "livenessProbe" in c, c["name"]
        sec = c["securityContext"]
        if c["name"] == "swell" and workload[0] == "DaemonSet":
            assert sec["privileged"] is True
            mounts = {m["name"]: m for m in c["volumeMounts"]}
            assert mounts["kubelet-dir"]["mountPropagation"] == "Bidirectional"
            assert mounts["dev"]["mountPath"] == "/dev"
        else:
            assert sec["allowPrivilegeEscalation"] is False and sec["capabilities"]["drop"] == ["ALL"]
            assert sec["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("workload,account,role,mode_args", [
    (("DaemonSet", "swell-node"), "swell-node", "swell-sidecar-node", ["--per-node", "--node-id=$(NODE_NAME)"]),
    (("Deployment", "swell-controller"), "swell-controller", "swell-sidecar-controller", ["--leader-election"]),
])
def test_only_the_sidecar_holds_an_api_token(workload, account, role, mode_args):
    objs = objects("overlays/production")
    pod = objs[workload]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == account
    holders = [c["name"] for c in pod["containers"]
               if any(m["name"] == "kube-api-access" for m in c.get("volumeMounts", []))]
    assert holders == ["sidecar"]
    sidecar = next(c for c in pod["containers"] if c["name"] == "sidecar")
    assert all(a in sidecar["args"] for a in mode_args)
    binding = objs[("ClusterRoleBinding", role)]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "swell-system"}]


@pytest.mark.parametrize("workload,account,role", [
    (("DaemonSet", "swell-node"), "swell-node", "swell-sidecar-capacity-node"),
    (("Deployment", "swell-controller"), "swell-controller", "swell-sidecar-capacity-controller"),
])
def test_capacity_is_published_by_both_sidecars_with_the_pods_identity(workload, account, role):
    """storageCapacity: true makes the scheduler read CSIStorageCapacity; each sidecar publishes it,
    knowing its own pod from the downward API, under a Role in the driver's namespace."""
    objs = objects("overlays/production")
    assert objs[("CSIDriver", "swell.csi.dev")]["spec"]["storageCapacity"] is True
    sidecar = next(c for c in objs[workload]["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar")
    assert "--enable-capacity" in sidecar["args"]
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in sidecar["env"]}
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"
    role_obj, binding = objs[("Role", role)], objs[("RoleBinding", role)]
    assert role_obj["metadata"]["namespace"] == binding["metadata"]["namespace"] == "swell-system"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "swell-system"}]


@pytest.mark.skipif(os.environ.get("SWELL_SKIP_RELEASE_BUILD") == "1", reason="SWELL_SKIP_RELEASE_BUILD=1")
def test_image_build_stage(tmp_path):
    """The image's binary: built here, or the one scripts/test.sh built with the same script for the
    real-node tier (SWELL_RELEASE_BIN), so that CI builds it once."""
    binary = os.environ.get("SWELL_RELEASE_BIN")
    if not binary:
        out = tmp_path / "out"
        r = subprocess.run([os.path.join(ROOT, "scripts", "build-release.sh"), str(out)], cwd=ROOT,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        binary = str(out / "swell")
    version = subprocess.run([binary, "version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("swell 0.1.0")


def test_the_tiers_image_builder_follows_the_containerfile():
    """cluster/images.py builds the image the real-node tier runs without Docker: it must install
    the same packages and keep the same user, entrypoint and command as deploy/Containerfile."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "cluster"))
    import images
    recipe = images.containerfile_recipe(os.path.join(HERE, "Containerfile"))
    assert recipe["packages"], "no apt-get install found in the Containerfile's runtime stage"
    assert sorted(recipe["packages"]) == sorted(images.SWELL_PACKAGES)
    assert recipe["user"] == images.SWELL_USER
    assert recipe["entrypoint"] == images.SWELL_ENTRYPOINT and recipe["cmd"] == images.SWELL_CMD


@pytest.mark.parametrize("target", TARGETS)
def test_containers_that_need_root_say_so(target):
    """The image runs as 65532 by default. A container of Swell's image that is privileged, or that
    must write root-owned host paths (the data directory, the plugin socket, tgtd's files), sets
    runAsUser: 0; without it the node plugin crash-looped on `mkdir /var/lib/swell/volumes`."""
    objs = objects(target)
    checked = 0
    for kind, name in [("DaemonSet", "swell-node"), ("Deployment", "swell-controller")]:
        spec = objs[(kind, name)]["spec"]["template"]["spec"]
        pod_user = spec.get("securityContext", {}).get("runAsUser")
        for c in spec["containers"]:
            if not c["image"].startswith("swell/swell"):
                continue
            user = c.get("securityContext", {}).get("runAsUser", pod_user)
            assert user == 0, f"{name}/{c['name']} runs as the image's user 65532"
            checked += 1
    assert checked == 5
