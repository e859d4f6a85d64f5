"""A private Ceph cluster for the rbd backend's tests: one monitor, one manager and three OSDs on
memstore (RAM, capped per OSD), all on 127.0.0.1 with ports of their own, every file (config,
keyrings, sockets, logs, the monitor's store) under one temp directory. Nothing of the machine's
own Ceph is read or started: every command gets `-c <our ceph.conf>`, and CEPH_CONF points there.

`Cluster.stop()` kills every daemon it started (SIGKILL, then waits for each to go), removes the
directory, and leaves no process behind; the leftovers check in scripts/test.sh looks for any."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

DAEMONS = ("ceph-mon", "ceph-mgr", "ceph-osd")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, osds=3, pool_size=2, osd_bytes=384 << 20, address="127.0.0.1", root=None, netns=None):
        """`netns`: a network namespace (holding `address`) that every daemon and tool runs in."""
        self.root = root or tempfile.mkdtemp(prefix="swell-ceph-")
        self.prefix = ["ip", "netns", "exec", netns] if netns else []
        self.address = address
        self.port = free_port()
        self.fsid = str(uuid.uuid4())
        self.conf = os.path.join(self.root, "ceph.conf")
        self.procs = {}
        self.osd_count = osds
        self.pool_size = pool_size
        self.osd_bytes = osd_bytes
        self.admin_key = None

    @property
    def monitors(self):
        return f"{self.address}:{self.port}"

    def env(self):
        env = dict(os.environ, CEPH_CONF=self.conf)
        env.pop("CEPH_ARGS", None)
        return env

    def run(self, *argv, check=True, timeout=60, input=None):
        """Runs a Ceph tool against this cluster (its conf and the admin keyring)."""
        argv = list(argv)
        argv[1:1] = ["-c", self.conf]
        out = subprocess.run(self.prefix + argv, capture_output=True, text=True, env=self.env(), timeout=timeout, input=input)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {out.returncode}: {out.stderr.strip()}")
        return out

    def ceph_json(self, *args):
        return json.loads(self.run("ceph", *args, "--format", "json").stdout)

    def _write_conf(self):
        d = self.root
        with open(self.conf, "w") as f:
            f.write(f"""[global]
fsid = {self.fsid}
mon host = v2:{self.address}:{self.port}
mon initial members = a
public addr = {self.address}
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = {d}/run
log file = {d}/log/$name.log
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
mon data = {d}/mon-$id
mgr data = {d}/mgr-$id
osd data = {d}/osd$id
osd objectstore = memstore
memstore device bytes = {self.osd_bytes}
osd pool default size = {self.pool_size}
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool delete = true
mon warn on pool no redundancy = false
mon osd down out interval = 600
auth allow insecure global id reclaim = false
osd heartbeat grace = 6
osd heartbeat interval = 2
mon osd min down reporters = 1
mgr initial modules =
ms bind msgr1 = false
[client.admin]
keyring = {d}/admin.keyring
[mon]
keyring = {d}/mon.keyring
[mgr]
keyring = {d}/mgr-$id/keyring
[osd]
keyring = {d}/osd$id/keyring
osd memory target = 134217728
""")
        for sub in ("run", "log"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)

    def _spawn(self, name, argv):
        log = open(os.path.join(self.root, "log", f"{name}.out"), "ab")
        self.procs[name] = subprocess.Popen(
            self.prefix + argv + ["-c", self.conf, "-f"], stdout=log, stderr=subprocess.STDOUT, env=self.env(),
            start_new_session=True)
        log.close()

    def start(self, timeout=90):
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout):
        d = self.root
        self._write_conf()
        tool = lambda *a: subprocess.run(self.prefix + list(a), check=True, capture_output=True, env=self.env())
        tool("ceph-authtool", "--create-keyring", f"{d}/mon.keyring", "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
        tool("ceph-authtool", "--create-keyring", f"{d}/admin.keyring", "--gen-key", "-n", "client.admin",
             "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *", "--cap", "mds", "allow *")
        tool("ceph-authtool", f"{d}/mon.keyring", "--import-keyring", f"{d}/admin.keyring")
        tool("monmaptool", "--create", "--fsid", self.fsid, "--addv", "a", f"[v2:{self.address}:{self.port}]",
             f"{d}/monmap")
        tool("ceph-mon", "-c", self.conf, "--mkfs", "-i", "a", "--monmap", f"{d}/monmap", "--keyring", f"{d}/mon.keyring")
        self._spawn("mon.a", ["ceph-mon", "-i", "a"])
        self.wait(lambda: self.run("ceph", "mon", "stat", check=False, timeout=10).returncode == 0, timeout,
                  "the monitor answers")
        self.admin_key = self.run("ceph", "auth", "get-key", "client.admin").stdout.strip()
        os.makedirs(f"{d}/mgr-x", exist_ok=True)
        self.run("ceph", "auth", "get-or-create", "mgr.x", "mon", "allow profile mgr", "osd", "allow *", "mds", "allow *",
                 "-o", f"{d}/mgr-x/keyring")
        self._spawn("mgr.x", ["ceph-mgr", "-i", "x"])
        for i in range(self.osd_count):
            self.add_osd()
        self.wait(lambda: self.ceph_json("osd", "stat")["num_up_osds"] == self.osd_count, timeout, "every OSD is up")
        self.run("ceph", "osd", "set-require-min-compat-client", "mimic")
        self.wait(lambda: self.run("ceph", "df", check=False, timeout=10).returncode == 0, timeout,
                  "the manager reports the pools' usage")

    def add_osd(self):
        d = self.root
        osd_uuid = str(uuid.uuid4())
        osd_id = int(self.run("ceph", "osd", "new", osd_uuid).stdout.strip())
        path = f"{d}/osd{osd_id}"
        os.makedirs(path, exist_ok=True)
        subprocess.run(["ceph-authtool", "--create-keyring", f"{path}/keyring", "--gen-key", "-n", f"osd.{osd_id}"],
                       check=True, capture_output=True)
        self.run("ceph", "auth", "add", f"osd.{osd_id}", "osd", "allow *", "mon", "allow profile osd",
                 "-i", f"{path}/keyring")
        subprocess.run(self.prefix + ["ceph-osd", "-c", self.conf, "-i", str(osd_id), "--mkfs", "--osd-uuid", osd_uuid],
                       check=True, capture_output=True, env=self.env())
        self._spawn(f"osd.{osd_id}", ["ceph-osd", "-i", str(osd_id)])
        return osd_id

    def create_pool(self, name, size=None):
        self.run("ceph", "osd", "pool", "create", name, "8", "8")
        if size is not None:
            self.run("ceph", "osd", "pool", "set", name, "size", str(size), "--yes-i-really-mean-it")
        self.run("ceph", "osd", "pool", "application", "enable", name, "rbd")
        self.run("rbd", "pool", "init", name, timeout=120)

    def create_user(self, name, *pools):
        """A client key limited to `pools`, as a class's Secret would carry (profile rbd)."""
        osd = ", ".join(f"profile rbd pool={p}" for p in pools)
        self.run("ceph", "auth", "get-or-create", f"client.{name}", "mon", "profile rbd", "osd", osd, "mgr", "profile rbd")
        return self.run("ceph", "auth", "get-key", f"client.{name}").stdout.strip()

    def kill(self, name):
        """SIGKILLs one daemon (`mon.a`, `osd.1`) and waits for it to be gone."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def restart(self, name):
        self.kill(name)
        kind, ident = name.split(".")
        self._spawn(name, [f"ceph-{kind}", "-i", ident])

    @staticmethod
    def wait(predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while True:
            try:
                if predicate():
                    return
            except (subprocess.TimeoutExpired, RuntimeError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting until {what}")
            time.sleep(0.5)

    def stop(self):
        for name in list(self.procs):
            try:
                self.kill(name)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def image_write(cluster, spec, offset, data, user_args=()):
    """Writes `data` at `offset` into image `pool/name` without mapping it: an `rbd import-diff`
    of a diff that holds one write (the format of doc/dev/rbd-diff.rst: the "rbd diff v1\\n" banner,
    then `w` le64 offset, le64 length, bytes; `e` ends it)."""
    import struct
    diff = b"rbd diff v1\n" + b"w" + struct.pack("<QQ", offset, len(data)) + data + b"e"
    path = os.path.join(cluster.root, f"diff-{uuid.uuid4().hex}")
    with open(path, "wb") as f:
        f.write(diff)
    try:
        cluster.run("rbd", "import-diff", "--no-progress", path, spec, *user_args)
    finally:
        os.unlink(path)


def empty_pool(cluster, pool, passes=5):
    """Removes every image and snapshot in `pool`, clones included: each pass flattens, purges
    snapshots and removes what it can, since a parent goes only after its children."""
    for _ in range(passes):
        names = cluster.run("rbd", "ls", pool).stdout.split()
        if not names:
            return
        for image in names:
            cluster.run("rbd", "flatten", "--no-progress", f"{pool}/{image}", check=False, timeout=120)
            cluster.run("rbd", "snap", "purge", "--no-progress", f"{pool}/{image}", check=False)
            cluster.run("rbd", "rm", "--no-progress", f"{pool}/{image}", check=False)
    left = cluster.run("rbd", "ls", pool).stdout.split()
    assert not left, f"pool {pool} still holds {left} after {passes} passes"


def image_read(cluster, spec):
    """The whole image's bytes, through `rbd export`."""
    path = os.path.join(cluster.root, f"export-{uuid.uuid4().hex}")
    try:
        cluster.run("rbd", "export", "--no-progress", spec, path, timeout=120)
        with open(path, "rb") as f:
            return f.read()
    finally:
        if os.path.exists(path):
            os.unlink(path)
