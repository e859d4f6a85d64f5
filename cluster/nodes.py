"""Several real nodes on one machine, for the multi-node tier: one control plane (etcd,
kube-apiserver, kube-controller-manager, kube-scheduler on the host) and N nodes, each its own
kubelet and containerd in its own mount, network and UTS namespaces, as kind makes nodes out of
containers (the node kit's README, "Several nodes on one machine").

A node is a long-lived `unshare` holder whose namespaces everything of the node runs in (through
`nsenter`). Inside, a folder of the node's own is bound over /var/lib (so /var/lib/kubelet,
/var/lib/swell and /var/lib/swell-iscsi are the node's) and over /var/log, /run is a fresh tmpfs,
and /var/lib/kubelet is a shared mount for Bidirectional propagation. The network is a host bridge
(10.77.0.1/24) with one veth per node (10.77.0.1K); the API server listens on the bridge address,
which is also the first address of the service range, so the `kubernetes` Service that in-cluster
clients dial is the API server itself, with no kube-proxy and no NAT. Nothing here sends traffic
anywhere but that bridge.

Loop devices and /dev are the machine's: a node's loop devices are told apart by their backing
files' device and inode. `stop()` undoes everything and reports what it had to force.
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import time

import kube

BRIDGE = "swellk0"
SUBNET = "10.77.0"
API_IP = f"{SUBNET}.1"
SERVICE_CIDR = f"{SUBNET}.0/24"  # its first address, the `kubernetes` Service, is API_IP
ETCD_PORT = 23800


def ns_inode(pid, kind):
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


class Node:
    """One node: its namespaces' holder, its folders, its containerd and its kubelet."""

    def __init__(self, cluster, index, pool_bytes=None):
        self.cluster, self.index = cluster, index
        # A data filesystem of its own for /var/lib/swell (a small pool), or the host's disk.
        self.pool_bytes = pool_bytes
        self.name = f"swell-n{index}"
        self.ip = f"{SUBNET}.1{index}"
        self.dir = os.path.join(cluster.dir, "nodes", self.name)
        self.holder = None
        self.procs = {}
        self.veth = f"swk{index}"
        self.containerd_sock = os.path.join(self.dir, "containerd", "containerd.sock")
        for d in ("varlib", "varlog", "etc-iscsi", "cni/net.d", "containerd", "kubelet-conf", "pod-logs",
                  "volume-plugins", "logs"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)

    # ---------- namespaces ----------

    @property
    def pid(self):
        return self.holder.pid

    def nsenter(self, *argv):
        return ["nsenter", "-t", str(self.pid), "-m", "-n", "-u", "--", *argv]

    def run(self, *argv, check=True):
        r = subprocess.run(self.nsenter(*argv), capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
        return r

    def start_holder(self):
        self.holder = subprocess.Popen(["unshare", "--mount", "--net", "--uts", "--propagation", "slave", "--",
                                        "sleep", "infinity"], start_new_session=True)
        # Until `unshare` has made them, the holder is in this process's namespaces, and whatever
        # entered it would act on the host (PID 1's namespaces cannot be read here: comparing with
        # them let `hostname` and the first mounts race the unshare, and renamed the host).
        mine = {k: ns_inode(os.getpid(), k) for k in ("mnt", "net", "uts")}
        kube.wait_for(f"{self.name}'s namespaces", lambda: all(
            ns_inode(self.pid, k) not in (None, mine[k]) for k in mine), timeout=10, interval=0.02)
        self.run("hostname", self.name)
        self.run("ip", "link", "set", "lo", "up")
        v = lambda *p: os.path.join(self.dir, *p)  # noqa: E731
        os.makedirs(v("varlib", "kubelet"), exist_ok=True)
        iscsi_etc = "/etc/iscsi" if os.path.isdir("/etc/iscsi") else None
        script = (f"set -e; mount --bind {v('varlib')} /var/lib; mount --bind {v('varlog')} /var/log; "
                  "mount --bind /var/lib/kubelet /var/lib/kubelet; mount --make-rshared /var/lib/kubelet; "
                  "mount -t tmpfs -o mode=755 tmpfs /run; mkdir -p /run/lock /run/containerd; "
                  + (f"mount --bind {v('etc-iscsi')} {iscsi_etc}; " if iscsi_etc else ""))
        self.run("sh", "-c", script)
        if self.pool_bytes:
            image = v("pool.img")
            if not os.path.exists(image):
                with open(image, "wb") as f:
                    f.truncate(self.pool_bytes)
                subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True)
            self.run("sh", "-c", "mkdir -p /var/lib/swell && mount -o loop " + image + " /var/lib/swell")
        # The node's cable: a veth from the host bridge into its network namespace.
        subprocess.run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", str(self.pid)],
                       check=True)
        subprocess.run(["ip", "link", "set", self.veth, "master", BRIDGE, "up"], check=True)
        self.run("ip", "addr", "add", f"{self.ip}/24", "dev", "eth0")
        self.run("ip", "link", "set", "eth0", "up")
        self.run("ip", "route", "add", "default", "via", API_IP)

    def spawn(self, name, argv):
        logf = open(os.path.join(self.dir, "logs", f"{name}.log"), "ab")
        self.procs[name] = subprocess.Popen(self.nsenter(*argv), stdout=logf, stderr=subprocess.STDOUT,
                                            env=self.cluster.env, start_new_session=True)
        logf.close()

    def tail(self, name, lines=40):
        path = os.path.join(self.dir, "logs", f"{name}.log")
        if not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    # ---------- containerd and kubelet ----------

    def ctr(self, *args, check=True):
        return subprocess.run(["ctr", "--address", self.containerd_sock, "-n", "k8s.io", *args],
                              capture_output=True, text=True, env=self.cluster.env, check=check)

    def start_containerd(self):
        d = os.path.join(self.dir, "containerd")
        with open(os.path.join(d, "config.toml"), "w") as f:
            f.write(kube.containerd_config(d, self.containerd_sock, os.path.join(self.dir, "cni", "net.d")))
        with open(os.path.join(self.dir, "cni", "net.d", "10-swell.conflist"), "w") as f:
            json.dump({"cniVersion": "1.0.0", "name": "swell-node", "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": False, "ipMasq": False,
                 "ipam": {"type": "host-local", "dataDir": f"{self.dir}/cni/ipam",
                          "ranges": [[{"subnet": f"10.244.{self.index}.0/24"}]]}}]}, f)
        self.spawn("containerd", ["containerd", "--config", os.path.join(d, "config.toml")])
        kube.wait_for(f"{self.name}'s containerd", lambda: self.ctr("version", check=False).returncode == 0, 60)

    def import_images(self, images):
        for _, archive in images:
            self.ctr("images", "import", "--no-unpack=false", archive)

    def start_kubelet(self):
        c = self.cluster
        conf = os.path.join(self.dir, "kubelet-conf", "config.json")
        config = kube.kubelet_config(c.pki, self.containerd_sock, os.path.join(self.dir, "pod-logs"),
                                     os.path.join(self.dir, "volume-plugins"), address=self.ip)
        # The node's lease is renewed every 2 s (a quarter of its 8 s), so that the controller's
        # 16 s grace period (conftest) still leaves a busy machine 14 s before a live node counts
        # as lost; with the default 40 s lease a renewal is only every 10 s.
        config["nodeLeaseDurationSeconds"] = 8
        with open(conf, "w") as f:
            json.dump(config, f)
        self.spawn("kubelet", [
            f"{c.bin}/kubelet", f"--config={conf}", f"--kubeconfig={c.kubeconfig}", "--root-dir=/var/lib/kubelet",
            f"--cert-dir={self.dir}/kubelet-conf", f"--node-ip={self.ip}", f"--hostname-override={self.name}", "--v=1"])

    def start(self, images):
        self.start_holder()
        self.start_containerd()
        self.import_images(images)
        self.start_kubelet()

    def restart(self):
        """After `stop()`: the same folders, new namespaces, as a machine comes back from a power cut."""
        self.procs = {}
        self.start_holder()
        self.start_containerd()
        self.start_kubelet()

    # ---------- stop ----------

    def kill_tasks(self):
        """Every container of the node, through its containerd, after its kubelet: what a clean
        shutdown of the node stops, so that no shim is left to force."""
        p = self.procs.get("kubelet")
        if p and p.poll() is None:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        c = self.procs.get("containerd")
        if not c or c.poll() is not None:
            return
        tasks = self.ctr("tasks", "list", "-q", check=False).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
        for task in tasks:
            for _ in range(50):
                if self.ctr("tasks", "delete", task, check=False).returncode == 0:
                    break
                time.sleep(0.1)
        for container in self.ctr("containers", "list", "-q", check=False).stdout.split():
            self.ctr("containers", "delete", container, check=False)

    def task_pids(self):
        """The init process of every container this node's containerd runs (killing one kills its
        whole PID namespace)."""
        c = self.procs.get("containerd")
        if not c or c.poll() is not None:
            return []
        out = self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]
        return [int(line.split()[1]) for line in out if len(line.split()) >= 2 and line.split()[1].isdigit()]

    def processes(self):
        """Every process in this node's namespaces (its own mount namespace, or its network
        namespace, which host-network pods share), the holder aside."""
        if self.holder is None:
            return []
        mine = {("mnt", ns_inode(self.pid, "mnt")), ("net", ns_inode(self.pid, "net"))}
        found = []
        for d in glob.glob("/proc/[0-9]*"):
            pid = int(d.split("/")[2])
            if pid != self.pid and ({("mnt", ns_inode(pid, "mnt")), ("net", ns_inode(pid, "net"))} & mine):
                found.append(pid)
        return found

    def kill(self, *names):
        for name in names:
            p = self.procs.get(name)
            if p and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def stop(self, graceful=True):
        """Stops the node whole: kubelet, containerd and its shims, every process left in its
        namespaces, every loop device it attached, then the holder (its mounts go with its mount
        namespace). Returns what had to be forced."""
        forced = []
        tasks = self.task_pids()
        if graceful:
            self.kill_tasks()
            for name in ("kubelet", "containerd"):
                p = self.procs.get(name)
                if p and p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(20)
                    except subprocess.TimeoutExpired:
                        forced.append(f"{self.name} {name}")
        # A power cut: every container's processes die at once, whatever containerd would say.
        for pid in tasks:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in kube.shims(self.containerd_sock):
            if graceful:
                forced.append(f"{self.name} shim {pid}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in range(3):
            left = self.processes()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        self.kill(*self.procs)
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait()
        subprocess.run(["ip", "link", "delete", self.veth], capture_output=True, check=False)
        forced += detach_loops_under(self.dir)
        return forced


def loops_under(folder):
    """The loop devices whose backing file lives under `folder`, matched by the file's device and
    inode (the kernel shows the path the attaching namespace saw), and then every loop device whose
    backing file lives on one of those (a node's volumes on its own pool filesystem, which the host
    cannot see): the latter first, since each keeps the filesystem under it busy."""
    inodes = set()
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
                inodes.add((st.st_dev, st.st_ino))
            except OSError:
                pass
    backing = {}
    for f in glob.glob("/sys/block/loop*/loop/backing_file"):
        dev = "/dev/" + f.split("/")[3]
        r = subprocess.run(["losetup", "--noheadings", "-O", "BACK-MAJ:MIN,BACK-INO", dev], capture_output=True, text=True)
        parts = r.stdout.split()
        if len(parts) == 2:
            major, minor = (int(x) for x in parts[0].split(":"))
            backing[dev] = (os.makedev(major, minor), int(parts[1]))
    found = [dev for dev, key in backing.items() if key in inodes]
    layer = found
    while layer:
        devices = {os.stat(d).st_rdev for d in layer if os.path.exists(d)}
        layer = [dev for dev, (bdev, _) in backing.items() if bdev in devices and dev not in found]
        found = layer + found
    return found


def loop_holders(dev):
    """Who still holds a loop device: each process whose mount table shows it (pid, command, its
    mount namespace), for a report."""
    try:
        st = os.stat(dev)
    except OSError:
        return []
    mm = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    found = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{d}/mountinfo") as f:
                if not any(line.split()[2] == mm for line in f):
                    continue
            cmd = open(f"{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")[:80]
            found.append((int(d.split("/")[2]), cmd, ns_inode(d.split("/")[2], "mnt")))
        except OSError:
            pass
    return found


def detach_loops_under(folder):
    """Detaches every loop device backed by a file under `folder`; returns what it found."""
    left = []
    for dev in loops_under(folder):
        left.append(f"loop device {dev}")
        # One set to clear itself may already be gone by the time its turn comes.
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
    return left


class MultiCluster(kube.Cluster):
    """The control plane on the host, reached at the bridge address, and `count` nodes."""

    def __init__(self, kit, workdir, count=3, log=print, pools=None):
        """`pools`: {node index: bytes} for nodes whose /var/lib/swell is a filesystem of that size."""
        super().__init__(kit, workdir, log=log, api_ip=API_IP, service_cidr=SERVICE_CIDR, etcd_port=ETCD_PORT)
        self.nodes = [Node(self, i, (pools or {}).get(i)) for i in range(1, count + 1)]

    def node(self, name):
        return next(n for n in self.nodes if n.name == name)

    def start(self, images):
        if not os.path.exists(os.path.join(self.bin, "kubelet")):
            self.unpack_kit()
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
        self.bridge = True
        subprocess.run(["ip", "addr", "add", f"{API_IP}/24", "dev", BRIDGE], check=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
        self.make_pki()
        t0 = time.monotonic()
        self.start_etcd()
        self.start_apiserver()
        self.start_controllers()
        for n in self.nodes:
            n.start_holder()
            n.start_containerd()
        for n in self.nodes:
            n.import_images(images)
        self.log(f"images imported into {len(self.nodes)} nodes")
        for n in self.nodes:
            n.start_kubelet()
        for n in self.nodes:
            kube.wait_for(f"{n.name} Ready", lambda n=n: self.node_ready(n.name), timeout=120)
        kube.wait_for("the default ServiceAccount", lambda: self.get("serviceaccount", "default", "-n", "default"), 60)
        self.log(f"{len(self.nodes)} nodes up in {time.monotonic() - t0:.1f}s")

    def node_ready(self, name=None):
        self.check_alive()
        node = self.get("node", name)
        return node and any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])

    def stop(self):
        forced = []
        for n in self.nodes:
            p = n.procs.get("kubelet")
            if p and p.poll() is None:
                p.terminate()
        for n in self.nodes:
            try:
                forced += n.stop()
            except Exception as e:  # noqa: BLE001 - the rest must still go
                forced.append(f"{n.name}: {e}")
        for name in ["kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]:
            self.stop_proc(name)
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
        for path in glob.glob("/var/log/containers/*"):
            if os.path.islink(path) and os.readlink(path).startswith(self.dir):
                os.unlink(path)
        for _ in range(3):
            mounts = kube.mounts_under(self.dir)
            if not mounts:
                break
            for m in reversed(mounts):
                forced.append(f"mount {m}")
                subprocess.run(["umount", "-l", m], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        return forced
