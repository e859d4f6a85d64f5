"""A one-node Kubernetes cluster for the real-node tier: etcd (Debian), kube-apiserver,
kube-controller-manager, kube-scheduler and kubelet (the kit named by SWELL_KUBE_KIT), on containerd
and runc (Debian). Everything lives under one temp directory; kubelet's root and the DaemonSet's
host paths (/var/lib/kubelet, /var/lib/swell, /var/lib/swell-iscsi) are bind mounts of folders in it,
so the manifests run unchanged and the host keeps nothing. `stop()` undoes every step and reports
anything it had to force.

No pod here uses the pod network: Swell's pods and the tests' pods all run on the host network, so
no traffic leaves the machine's own addresses. The API server listens on port 443 and the service
range is 127.1.0.0/24, so the `kubernetes` Service (127.1.0.1:443), which in-cluster clients dial,
is the API server itself, with no kube-proxy and no NAT rule.
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import time

HOST_PATHS = ["/var/lib/kubelet", "/var/lib/swell", "/var/lib/swell-iscsi"]
NODE = "swell-node"
SERVICE_CIDR = "127.1.0.0/24"
SERVICE_IP = "127.1.0.1"
ETCD_PORT = 23790
ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KIT_BINARIES = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "csi-node-driver-registrar"]


def host_ip():
    """The machine's own address (kubelet refuses a loopback node IP): the source of its default route."""
    out = subprocess.run(["ip", "-4", "-o", "route", "get", "192.0.2.255"], capture_output=True, text=True).stdout
    words = out.split()
    if "src" in words:
        return words[words.index("src") + 1]
    for line in subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout.splitlines():
        addr = line.split()[3].split("/")[0]
        if not addr.startswith("127."):
            return addr
    raise RuntimeError("no non-loopback IPv4 address on this machine")


def wait_for(what, check, timeout=120, interval=0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - reported on timeout
            last = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def containerd_config(d, sock, cni_conf_dir):
    """containerd's config for one node: its own root, state and sockets under `d`, the CRI plugin
    as this sandbox needs it (restrict_oom_score_adj), CNI confs in `cni_conf_dir`."""
    return f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf_dir}"
"""


def kubelet_config(pki, sock, pod_logs, volume_plugins, address=None):
    """A KubeletConfiguration for this sandbox (the kit's README): cgroup v1, no CAP_SYS_RESOURCE,
    imported images never collected, NodeExpandVolume at the next 10 s sync."""
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": f"{pki}/ca.crt"}},
        "authorization": {"mode": "Webhook"},
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [], "oomScoreAdj": 0, "failSwapOn": False,
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "syncFrequency": "10s", "volumeStatsAggPeriod": "10s", "readOnlyPort": 0,
        "containerRuntimeEndpoint": f"unix://{sock}",
        "podLogsDir": pod_logs, "volumePluginDir": volume_plugins,
        "resolvConf": "/etc/resolv.conf", "serializeImagePulls": False,
    }
    if address:
        config["address"] = address
    return config


class Cluster:
    def __init__(self, kit, workdir, log=print, api_ip=None, service_cidr=SERVICE_CIDR, etcd_port=ETCD_PORT):
        self.kit, self.dir, self.log = kit, workdir, log
        self.ip = host_ip()
        # Where the API server listens (every address when None) and what clients dial.
        self.api_ip = api_ip
        self.service_cidr, self.etcd_port = service_cidr, etcd_port
        self.procs = {}
        self.created_dirs = []
        self.mounted = []
        self.bin = os.path.join(workdir, "bin")
        self.pki = os.path.join(workdir, "pki")
        self.kubeconfig = os.path.join(workdir, "admin.kubeconfig")
        self.containerd_sock = os.path.join(workdir, "containerd", "containerd.sock")
        # Extra kube-controller-manager flags (the multi-node tier's shorter node-monitor grace period).
        self.controller_flags = []
        self.env = dict(os.environ, PATH=ENV_PATH + ":" + os.environ.get("PATH", ""), KUBECONFIG=self.kubeconfig)
        self.env.pop("KUBERNETES_SERVICE_HOST", None)
        for d in ("bin", "pki", "logs", "etcd", "containerd", "cni/net.d", "kubelet-conf", "pod-logs",
                  "volume-plugins", "host"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)

    # ---------- helpers ----------

    def kubectl(self, *args, check=True, input=None, timeout=120):
        r = subprocess.run(["kubectl", *args], capture_output=True, text=True, env=self.env, input=input, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
        return r

    def get(self, *args):
        r = self.kubectl("get", *args, "-o", "json", check=False)
        if r.returncode != 0:
            if "NotFound" in r.stderr or "not found" in r.stderr:
                return None
            raise RuntimeError(r.stderr)
        return json.loads(r.stdout)

    def ctr(self, *args, check=True):
        return subprocess.run(["ctr", "--address", self.containerd_sock, "-n", "k8s.io", *args],
                              capture_output=True, text=True, env=self.env, check=check)

    def spawn(self, name, argv):
        logf = open(os.path.join(self.dir, "logs", f"{name}.log"), "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        logf.close()

    def tail(self, name, lines=40):
        path = os.path.join(self.dir, "logs", f"{name}.log")
        if not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def check_alive(self):
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}:\n{self.tail(name)}")

    # ---------- start ----------

    def start(self, images):
        if not os.path.exists(os.path.join(self.bin, "kubelet")):
            self.unpack_kit()
        self.bind_host_paths()
        self.make_pki()
        t0 = time.monotonic()
        self.start_etcd()
        self.start_apiserver()
        self.start_containerd()
        for name, archive in images:
            self.ctr("images", "import", "--no-unpack=false", archive)
            self.log(f"imported {name}")
        self.start_controllers()
        self.start_kubelet()
        wait_for("the node Ready", self.node_ready, timeout=120)
        wait_for("the default ServiceAccount", lambda: self.get("serviceaccount", "default", "-n", "default"), 60)
        self.log(f"cluster up in {time.monotonic() - t0:.1f}s")

    def unpack_kit(self):
        for name in KIT_BINARIES:
            src = os.path.join(self.kit, name + ".xz")
            if not os.path.exists(src):
                raise FileNotFoundError(f"the kit at {self.kit} lacks {name}.xz")
            dest = os.path.join(self.bin, name)
            with open(dest, "wb") as out:
                subprocess.run(["xz", "-dc", src], stdout=out, check=True)
            os.chmod(dest, 0o755)

    def bind_host_paths(self):
        """Each host path the manifests name becomes a bind mount of a temp folder (shared, for
        kubelet's and the plugin's mount propagation). A host path that already holds something is
        not ours to cover: refuse."""
        for path in HOST_PATHS:
            if os.path.exists(path):
                if os.listdir(path) or os.path.ismount(path):
                    raise RuntimeError(f"{path} exists and is not empty: this machine runs a node already")
            else:
                os.makedirs(path)
                self.created_dirs.append(path)
            src = os.path.join(self.dir, "host", path.strip("/").replace("/", "_"))
            os.makedirs(src, exist_ok=True)
            subprocess.run(["mount", "--bind", src, path], check=True)
            self.mounted.append(path)
            subprocess.run(["mount", "--make-rshared", path], check=True)
        for path in ["/run/containerd", "/var/log/containers", "/var/lib/cni", "/etc/iscsi", "/run/lock/iscsi",
                     "/usr/libexec/kubernetes", "/etc/kubernetes"]:
            if not os.path.exists(path):
                self.created_dirs.append(path)

    def openssl(self, *args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=self.pki)

    def make_cert(self, name, subject, ca, ext):
        self.openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        with open(os.path.join(self.pki, f"{name}.ext"), "w") as f:
            f.write(ext)
        self.openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                     "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext")

    def make_pki(self):
        for ca in ("ca", "front-proxy-ca"):
            self.openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                         "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN=swell-test-{ca}")
        client = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n"
        sans = ",".join([f"IP:{self.ip}", "IP:127.0.0.1", f"IP:{SERVICE_IP}"] + ([f"IP:{self.api_ip}"] if self.api_ip else [])
                        + ["DNS:localhost", "DNS:kubernetes",
                         "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
                         "DNS:kubernetes.default.svc.cluster.local"])
        self.make_cert("apiserver", "/CN=kube-apiserver", "ca",
                       "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
                       f"subjectAltName={sans}\n")
        self.make_cert("admin", "/O=system:masters/CN=swell-test-admin", "ca", client)
        self.make_cert("front-proxy-client", "/CN=front-proxy-client", "front-proxy-ca", client)
        self.openssl("genrsa", "-out", "sa.key", "2048")
        self.openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        p = self.pki
        with open(self.kubeconfig, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config",
                       "clusters": [{"name": "swell-test", "cluster": {"server": f"https://{self.api_ip or self.ip}:443",
                                                                       "certificate-authority": f"{p}/ca.crt"}}],
                       "users": [{"name": "admin", "user": {"client-certificate": f"{p}/admin.crt",
                                                            "client-key": f"{p}/admin.key"}}],
                       "contexts": [{"name": "swell-test", "context": {"cluster": "swell-test", "user": "admin"}}],
                       "current-context": "swell-test"}, f)

    def start_etcd(self):
        port = self.etcd_port
        self.spawn("etcd", ["etcd", "--name", "swell-test", "--data-dir", os.path.join(self.dir, "etcd"),
                            "--listen-client-urls", f"http://127.0.0.1:{port}",
                            "--advertise-client-urls", f"http://127.0.0.1:{port}",
                            "--listen-peer-urls", f"http://127.0.0.1:{port + 10}",
                            "--initial-advertise-peer-urls", f"http://127.0.0.1:{port + 10}",
                            "--initial-cluster", f"swell-test=http://127.0.0.1:{port + 10}",
                            "--quota-backend-bytes", str(1 << 30)])

    def start_apiserver(self):
        p = self.pki
        self.spawn("kube-apiserver", [
            f"{self.bin}/kube-apiserver", f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--bind-address={self.api_ip or '0.0.0.0'}", "--secure-port=443",
            f"--advertise-address={self.api_ip or self.ip}",
            f"--service-cluster-ip-range={self.service_cidr}", f"--cert-dir={self.dir}/pki",
            f"--tls-cert-file={p}/apiserver.crt", f"--tls-private-key-file={p}/apiserver.key",
            f"--client-ca-file={p}/ca.crt", f"--service-account-key-file={p}/sa.pub",
            f"--service-account-signing-key-file={p}/sa.key",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            f"--kubelet-client-certificate={p}/admin.crt", f"--kubelet-client-key={p}/admin.key",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--requestheader-client-ca-file={p}/front-proxy-ca.crt",
            "--requestheader-allowed-names=front-proxy-client", "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--requestheader-group-headers=X-Remote-Group", "--requestheader-username-headers=X-Remote-User",
            f"--proxy-client-cert-file={p}/front-proxy-client.crt",
            f"--proxy-client-key-file={p}/front-proxy-client.key", "--profiling=false", "--v=1"])
        wait_for("the API server", lambda: self.check_alive() or
                 self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0, timeout=90)

    def start_containerd(self):
        d = os.path.join(self.dir, "containerd")
        with open(os.path.join(d, "config.toml"), "w") as f:
            f.write(containerd_config(d, self.containerd_sock, f"{self.dir}/cni/net.d"))
        # A bridge network makes the node Ready; no pod of the tier uses it (all run on the host network).
        with open(os.path.join(self.dir, "cni", "net.d", "10-swell-test.conflist"), "w") as f:
            json.dump({"cniVersion": "1.0.0", "name": "swell-test", "plugins": [
                {"type": "bridge", "bridge": "swelltest0", "isGateway": False, "ipMasq": False,
                 "ipam": {"type": "host-local", "dataDir": f"{self.dir}/cni/ipam",
                          "ranges": [[{"subnet": "10.244.250.0/24"}]]}}]}, f)
        self.spawn("containerd", ["containerd", "--config", os.path.join(d, "config.toml")])
        wait_for("containerd", lambda: self.check_alive() or self.ctr("version", check=False).returncode == 0, 60)

    def start_controllers(self):
        p = self.pki
        self.spawn("kube-controller-manager", [
            f"{self.bin}/kube-controller-manager", f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
            f"--service-account-private-key-file={p}/sa.key", f"--root-ca-file={p}/ca.crt",
            f"--cluster-signing-cert-file={p}/ca.crt", f"--cluster-signing-key-file={p}/ca.key",
            "--use-service-account-credentials=true", "--leader-elect=false", "--bind-address=127.0.0.1",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--controllers=*,-service-ca-certificate-publisher-controller", "--v=1", *self.controller_flags])
        self.spawn("kube-scheduler", [
            f"{self.bin}/kube-scheduler", f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1", "--v=1"])

    def start_kubelet(self):
        conf = os.path.join(self.dir, "kubelet-conf", "config.json")
        with open(conf, "w") as f:
            json.dump(kubelet_config(self.pki, self.containerd_sock, f"{self.dir}/pod-logs",
                                     f"{self.dir}/volume-plugins"), f)
        self.spawn("kubelet", [
            f"{self.bin}/kubelet", f"--config={conf}", f"--kubeconfig={self.kubeconfig}",
            "--root-dir=/var/lib/kubelet", f"--cert-dir={self.dir}/kubelet-conf", f"--node-ip={self.ip}",
            f"--hostname-override={NODE}", "--v=1"])

    def node_ready(self):
        self.check_alive()
        node = self.get("node", NODE)
        return node and any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])

    # ---------- stop ----------

    def stop(self):
        """Stops everything and removes every trace; returns what had to be forced (for the tier's
        leftovers check)."""
        forced = []
        self.stop_proc("kubelet")
        # Every pod's containers and sandboxes, through containerd, before containerd stops.
        if "containerd" in self.procs and self.procs["containerd"].poll() is None:
            tasks = self.ctr("tasks", "list", "-q", check=False).stdout.split()
            for task in tasks:
                self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
            for task in tasks:
                for _ in range(50):
                    if self.ctr("tasks", "delete", task, check=False).returncode == 0:
                        break
                    time.sleep(0.1)
            for c in self.ctr("containers", "list", "-q", check=False).stdout.split():
                self.ctr("containers", "delete", c, check=False)
        for name in ["kube-scheduler", "kube-controller-manager", "containerd", "kube-apiserver", "etcd"]:
            self.stop_proc(name)
        # containerd's shims outlive it: stop those that served this containerd, by PID.
        for pid in shims(self.containerd_sock):
            forced.append(f"containerd shim {pid}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        forced += self.unmount_all()
        # A device attached from a pod's mount namespace that is gone prints its file relative to the
        # detached mount ("/volumes/..."): those are this cluster's too.
        forced += detach_loops("/var/lib/swell/") + detach_loops("/volumes/") + detach_loops("/snapshots/")
        for path in reversed(self.mounted):
            subprocess.run(["umount", "-l", path], check=False)
        subprocess.run(["ip", "link", "delete", "swelltest0"], capture_output=True, check=False)
        for path in glob.glob("/var/log/containers/*"):
            if os.path.islink(path) and os.readlink(path).startswith(self.dir):
                os.unlink(path)
        for path in sorted(self.created_dirs, key=len, reverse=True):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
        for _ in range(3):
            mounts = [m for m in mounts_under(self.dir)]
            if not mounts:
                break
            for m in reversed(mounts):
                subprocess.run(["umount", "-l", m], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        return forced

    def stop_proc(self, name):
        p = self.procs.get(name)
        if not p or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)

    def unmount_all(self):
        """Unmounts what is still mounted under kubelet's root, the data directory and containerd's
        state (deepest first); each one is reported."""
        left = []
        for base in HOST_PATHS + [os.path.join(self.dir, "containerd")]:
            for m in sorted(mounts_under(base), key=len, reverse=True):
                if m in HOST_PATHS:
                    continue
                left.append(f"mount {m}")
                subprocess.run(["umount", "-l", m], check=False)
        return left


def mounts_under(base):
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == base or point.startswith(base.rstrip("/") + "/"):
                out.append(point)
    return out


def detach_loops(prefix):
    left = []
    for f in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            backing = open(f).read().strip()
        except OSError:
            continue
        if backing.startswith(prefix):
            dev = "/dev/" + f.split("/")[3]
            left.append(f"loop device {dev} -> {backing}")
            subprocess.run(["losetup", "-d", dev], check=False)
    return left


def shims(address):
    pids = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            cmd = open(os.path.join(d, "cmdline"), "rb").read().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"containerd-shim-runc-v2") and address.encode() in cmd:
            pids.append(int(d.split("/")[2]))
    return pids

