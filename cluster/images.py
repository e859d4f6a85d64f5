"""Container images for the real-node tier, built with no registry and no Docker engine.

Swell's image follows deploy/Containerfile's recipe: a Debian bookworm root filesystem with the same
packages (made by mmdebstrap), the static release binary that scripts/build-release.sh builds, the
same user and entrypoint. Each image is written as an OCI image-layout archive and imported into
containerd with `ctr images import`. The root filesystems are cached (SWELL_IMAGE_CACHE, by default
/var/tmp/swell-images), keyed by their recipe; Swell's binary layer is made anew every time.
"""
import hashlib
import io
import json
import os
import subprocess
import tarfile

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"

# The recipe of deploy/Containerfile's runtime stage; test_images.py checks that the two agree.
SWELL_PACKAGES = ["e2fsprogs", "xfsprogs", "util-linux", "mount", "lvm2", "open-iscsi", "tgt", "ceph-common", "libstdc++6",
                  "zlib1g"]
SWELL_USER = "65532:65532"
SWELL_ENTRYPOINT = ["/usr/local/bin/swell"]
SWELL_CMD = ["version"]

# The manifests' own images: node-driver-registrar (as the kit's README builds it) and the pause
# image that containerd starts every pod sandbox from. A pod's image for the tests: PostgreSQL 15
# from Debian, with coreutils and util-linux for the flows' shell commands.
REGISTRAR = "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.17.0"
PAUSE = "registry.k8s.io/pause:3.10"
SWELL = "docker.io/swell/swell:dev"
POSTGRES = "docker.io/swell-test/postgres:15"
POSTGRES_PACKAGES = ["postgresql-15", "util-linux", "procps", "xfsprogs"]

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PAUSE_C = r"""
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGTERM, stop); signal(SIGINT, stop); signal(SIGCHLD, reap);
  for (;;) pause();
}
"""


def cache_dir():
    d = os.environ.get("SWELL_IMAGE_CACHE", "/var/tmp/swell-images")
    os.makedirs(d, exist_ok=True)
    return d


def rootfs(packages, log):
    """A bookworm minbase root filesystem with `packages`, as a tar, cached by its recipe."""
    recipe = json.dumps({"suite": SUITE, "mirror": MIRROR, "variant": "minbase", "packages": sorted(packages), "v": 2})
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    out = os.path.join(cache_dir(), f"rootfs-{key}.tar")
    if os.path.exists(out):
        return out
    tmp = out[:-len(".tar")] + ".partial.tar"
    log(f"mmdebstrap: {SUITE} minbase with {' '.join(packages)}")
    subprocess.run(
        ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar", "--include=" + ",".join(packages),
         "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
         "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
         "--aptopt=Acquire::Retries=3", SUITE, tmp, MIRROR],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.rename(tmp, out)
    return out


def pause_binary(workdir):
    src, out = os.path.join(workdir, "pause.c"), os.path.join(workdir, "pause")
    with open(src, "w") as f:
        f.write(PAUSE_C)
    subprocess.run(["gcc", "-static", "-Os", "-s", "-o", out, src], check=True)
    return out


def files_layer(path, files):
    """A layer tar holding `files`: (path in the image, file on disk, mode)."""
    with tarfile.open(path, "w") as tar:
        dirs = set()
        for dest, _, _ in files:
            parts = dest.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for dest, src, mode in files:
            info = tar.gettarinfo(src, arcname=dest.strip("/"))
            info.mode, info.uid, info.gid, info.uname, info.gname = mode, 0, 0, "root", "root"
            with open(src, "rb") as f:
                tar.addfile(info, f)
    return path


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_oci(archive, name, layers, config):
    """An OCI image-layout archive of one image named `name`: uncompressed layers, a config, a
    manifest, and an index whose annotations name the image for containerd."""
    diff_ids, descriptors = [], []
    for layer in layers:
        digest = sha256_file(layer)
        diff_ids.append("sha256:" + digest)
        descriptors.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + digest,
                            "size": os.path.getsize(layer), "path": layer})
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                      "rootfs": {"type": "layers", "diff_ids": diff_ids}}, sort_keys=True).encode()
    cfg_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + hashlib.sha256(cfg).hexdigest(), "size": len(cfg)}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": cfg_desc,
                           "layers": [{k: v for k, v in d.items() if k != "path"} for d in descriptors]}).encode()
    man_desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(), "size": len(manifest),
                "annotations": {"io.containerd.image.name": name,
                                "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]},
                "platform": {"architecture": "amd64", "os": "linux"}}
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [man_desc]}).encode()

    def add_bytes(tar, arcname, data):
        info = tarfile.TarInfo(arcname)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(archive, "w") as tar:
        add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add_bytes(tar, "index.json", index)
        add_bytes(tar, "blobs/sha256/" + cfg_desc["digest"][7:], cfg)
        add_bytes(tar, "blobs/sha256/" + man_desc["digest"][7:], manifest)
        seen = set()
        for d in descriptors:
            if d["digest"] not in seen:
                seen.add(d["digest"])
                tar.add(d["path"], arcname="blobs/sha256/" + d["digest"][7:])
    return archive


def build_all(workdir, swell_binary, registrar_binary, log=print):
    """Every image the tier needs, as (name, archive) pairs."""
    images = []
    base = rootfs(SWELL_PACKAGES, log)
    swell_layer = files_layer(os.path.join(workdir, "swell-layer.tar"), [("/usr/local/bin/swell", swell_binary, 0o755)])
    images.append((SWELL, write_oci(os.path.join(workdir, "swell.oci.tar"), SWELL, [base, swell_layer], {
        "User": SWELL_USER, "Entrypoint": SWELL_ENTRYPOINT, "Cmd": SWELL_CMD, "Env": [PATH_ENV]})))
    reg_layer = files_layer(os.path.join(workdir, "registrar-layer.tar"),
                            [("/csi-node-driver-registrar", registrar_binary, 0o755)])
    images.append((REGISTRAR, write_oci(os.path.join(workdir, "registrar.oci.tar"), REGISTRAR, [reg_layer], {
        "Entrypoint": ["/csi-node-driver-registrar"], "Env": [PATH_ENV]})))
    pause_layer = files_layer(os.path.join(workdir, "pause-layer.tar"), [("/pause", pause_binary(workdir), 0o755)])
    images.append((PAUSE, write_oci(os.path.join(workdir, "pause.oci.tar"), PAUSE, [pause_layer], {
        "Entrypoint": ["/pause"], "User": "65535:65535"})))
    pg = rootfs(POSTGRES_PACKAGES, log)
    images.append((POSTGRES, write_oci(os.path.join(workdir, "postgres.oci.tar"), POSTGRES, [pg], {
        "Env": [PATH_ENV + ":/usr/lib/postgresql/15/bin"], "Cmd": ["/bin/bash"]})))
    return images


def containerfile_recipe(path):
    """The runtime stage of a Containerfile: its apt packages, USER, ENTRYPOINT and CMD."""
    stage = []
    with open(path) as f:
        text = f.read().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            stage = []
        if line and not line.startswith("#"):
            stage.append(line)
    packages, user, entrypoint, cmd = [], None, None, None
    for line in stage:
        word, _, rest = line.partition(" ")
        if word == "RUN" and "apt-get install" in rest:
            after = rest.split("apt-get install", 1)[1].split("&&")[0].split()
            packages = [w for w in after if not w.startswith("-")]
        elif word == "USER":
            user = rest.strip()
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "CMD":
            cmd = json.loads(rest)
    return {"packages": packages, "user": user, "entrypoint": entrypoint, "cmd": cmd}
