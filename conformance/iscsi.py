"""The iSCSI tier's real parts: a private tgtd on 127.0.0.1, an independent initiator
(`iscsi-readcapacity16` from libiscsi), and the VM that runs the kernel's initiator.

Everything a test starts here is stopped and removed in `close()`, on failure too.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VM_BUILD = os.path.join(ROOT, "scripts", "vm", "build.py")
GUEST_PORTAL_HOST = "10.0.2.2"  # qemu user networking's name for the host's 127.0.0.1


def _free_control_port():
    """A tgtd control port (socket /var/run/tgtd/socket.N) that no tgtd holds."""
    for n in range(300 + os.getpid() % 500, 1000):
        if not os.path.exists(f"/var/run/tgtd/socket.{n}"):
            return n
    raise RuntimeError("no free tgtd control port")


def _free_tcp_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tgtd:
    """A private tgtd: its own control socket and portal port, killed and cleaned up by close()."""

    def __init__(self, root, address="127.0.0.1", prefix=()):
        """`address`: the portal's; `prefix`: what tgtd runs under (`ip netns exec NS`)."""
        self.root = root
        self.address = address
        self.prefix = list(prefix)
        self.control = _free_control_port()
        self.port = _free_tcp_port()
        self.proc = None
        self.log_path = os.path.join(root, "tgtd.log")

    def start(self, wrapper=None):
        """Starts tgtd, or with `wrapper` (a swell binary) `swell tgtd` running it as its child."""
        log = open(self.log_path, "a")
        portal = f"{self.address}:{self.port}"
        argv = self.prefix + ([wrapper, "tgtd", "--control-port", str(self.control), "--portal", portal] if wrapper
                              else ["tgtd", "-f", "-C", str(self.control), "--iscsi", f"portal={portal}"])
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tgtd exited {self.proc.returncode}: {self.log()}")
            if subprocess.run(self.tgtadm("--mode", "sys", "--op", "show"), capture_output=True).returncode == 0:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"tgtd did not answer: {self.log()}")

    def kill(self):
        """SIGKILL, as a crash would: every target it held is gone."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.daemon_pids():  # a wrapper's child
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        self._remove_sockets()

    def daemon_pids(self):
        """The tgtd processes on this control port."""
        out = subprocess.run(["pgrep", "-f", f"(^|/)tgtd -f -C {self.control} "], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def close(self):
        self.kill()

    def _remove_sockets(self):
        for suffix in ("", ".lock"):
            try:
                os.unlink(f"/var/run/tgtd/socket.{self.control}{suffix}")
            except FileNotFoundError:
                pass

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def tgtadm(self, *args):
        return ["tgtadm", "-C", str(self.control), "--lld", "iscsi", *args]

    def show(self):
        return subprocess.run(self.tgtadm("--mode", "target", "--op", "show"), capture_output=True, text=True,
                              check=True).stdout

    def targets(self):
        """{iqn: number of logged-in initiators}."""
        found, current = {}, None
        for line in self.show().splitlines():
            m = re.match(r"^Target \d+: (\S+)", line)
            if m:
                current = m.group(1)
                found[current] = 0
            elif current and line.strip().startswith("I_T nexus:"):
                found[current] += 1
        return found

    def plugin_args(self, storage_dir, portal_host="127.0.0.1", nodes_file=None):
        """The controller's iSCSI flags; with `nodes_file`, the list of nodes it may publish to."""
        return ["--iscsi-portal", f"{portal_host}:{self.port}", "--iscsi-storage-dir", storage_dir,
                "--iscsi-tgt-control-port", str(self.control)] + (["--nodes-file", nodes_file] if nodes_file else [])


# The node the host's own initiator (libiscsi) reads as, and the name its target admits once a
# volume is published to it: the controller's prefix, `.node:`, and the node ID.
READER = "host-reader"


def initiator_name(node, prefix="iqn.2026-11.dev.swell"):
    return f"{prefix}.node:{node}"


def readcapacity(port, iqn, lun=1, chap=None, mutual=None, node=READER):
    """The LUN's size as an independent initiator (libiscsi, logging in as `node`'s initiator name)
    reads it, or None if it cannot log in. `chap` is (user, password) for CHAP; `mutual` the
    (user, password) the target must answer with."""
    auth = f"{chap[0]}%{chap[1]}@" if chap else ""
    query = f"?target_user={mutual[0]}&target_password={mutual[1]}" if mutual else ""
    out = subprocess.run(["iscsi-readcapacity16", "-i", initiator_name(node),
                          f"iscsi://{auth}127.0.0.1:{port}/{iqn}/{lun}{query}"],
                         capture_output=True, text=True, timeout=30)
    m = re.search(r"Total size:(\d+)", out.stdout)
    return int(m.group(1)) if out.returncode == 0 and m else None


# ---- the VM tier ---------------------------------------------------------------------------

def vm_artifacts():
    """Builds (or reuses) the kernel and initramfs; returns their directory."""
    out = subprocess.run([sys.executable, VM_BUILD], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the VM tier could not be built:\n{out.stdout}\n{out.stderr}")
    return out.stdout.strip().splitlines()[-1]


def stage_binary(binary, dest_dir):
    """Copies `binary` and the shared libraries it needs into dest_dir/{bin,lib} for the guest."""
    os.makedirs(os.path.join(dest_dir, "bin"), exist_ok=True)
    os.makedirs(os.path.join(dest_dir, "lib"), exist_ok=True)
    shutil.copy2(binary, os.path.join(dest_dir, "bin", os.path.basename(binary)))
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            shutil.copy2(os.path.realpath(parts[2]), os.path.join(dest_dir, "lib", parts[0]))


def run_guest(root, script, disk_sizes, timeout, memory_mib=1024, binaries=(), stage=None, during=None, **vm_options):
    """Boots the VM tier with raw disks of `disk_sizes` bytes (vda, vdb, …), the given binaries
    (and their libraries) in share/swell, and whatever `stage(share)` adds; runs `script` as
    guest.sh and waits up to `timeout` s for it. Returns the VM (the caller closes it), guest.sh's
    exit status, its results and the guest plugin's log (share/guest-plugin.log). `during(vm)`, if
    given, runs on the host after the boot and before the wait."""
    disks = []
    for i, size in enumerate(disk_sizes):
        disks.append(os.path.join(root, f"vd{chr(ord('a') + i)}.img"))
        with open(disks[-1], "wb") as f:
            f.truncate(size)
    vm = VM(root, vm_artifacts(), memory_mib=memory_mib, disks=disks, **vm_options)
    try:
        for binary in binaries:
            stage_binary(binary, os.path.join(vm.share, "swell"))
        if stage is not None:
            stage(vm.share)
        vm.boot(script)
        if during is not None:
            during(vm)  # the host's part while the guest runs (markers in the share)
        status = vm.finish(timeout)
    except BaseException:
        vm.close()
        raise
    try:
        log = open(os.path.join(vm.share, "guest-plugin.log")).read()
    except OSError:
        log = ""
    return vm, status, vm.results(), log


class VM:
    """One boot of the test kernel under TCG, with a 9p share at /share in the guest.

    The guest runs share/guest.sh and writes its exit status to share/exit-status. The host and
    the guest meet through marker files in the share.
    """

    def __init__(self, root, artifacts, memory_mib=1024, disks=(), netdev="user,id=n0", prefix=(), mac=None):
        """`netdev`: qemu's -netdev for the guest's eth0 (id n0); `prefix`: what qemu runs under
        (`ip netns exec NS` for a tap device in a namespace); `mac`: eth0's address (guests on one
        bridge each need their own)."""
        self.netdev = netdev
        self.mac = mac
        self.prefix = list(prefix)
        self.root = root
        self.disks = list(disks)  # raw image files, seen as /dev/vda, /dev/vdb, … in the guest
        self.share = os.path.join(root, "share")
        os.makedirs(self.share, exist_ok=True)
        self.artifacts = artifacts
        self.memory = memory_mib
        self.proc = None
        self.console_path = os.path.join(root, "console.log")

    def boot(self, script):
        with open(os.path.join(self.share, "guest.sh"), "w") as f:
            f.write(script)
        console = open(self.console_path, "wb")
        self.proc = subprocess.Popen(
            [*self.prefix, "qemu-system-x86_64", "-accel", "tcg", "-m", str(self.memory), "-smp", "1", "-nographic",
             "-no-reboot", "-nodefaults", "-serial", "stdio", "-monitor", "none",
             "-kernel", os.path.join(self.artifacts, "vmlinux"),
             "-initrd", os.path.join(self.artifacts, "initramfs.cpio"),
             "-append", "console=ttyS0 panic=-1 quiet",
             "-netdev", self.netdev, "-device", "virtio-net-pci,netdev=n0,romfile=" + (f",mac={self.mac}" if self.mac else ""),
             "-virtfs", f"local,path={self.share},mount_tag=share,security_model=none,id=share",
             *[a for d in self.disks for a in ("-drive", f"file={d},if=virtio,format=raw")]],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
        console.close()
        return self

    def console(self):
        try:
            with open(self.console_path, "rb") as f:
                return f.read().decode(errors="replace")[-12000:]
        except OSError:
            return ""

    def wait_for(self, marker, timeout):
        """Waits for the guest to create share/<marker>; fails, with the console, if it ends first."""
        path = os.path.join(self.share, marker)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(path):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"the guest stopped before {marker}:\n{self.console()}")
            time.sleep(0.05)
        raise AssertionError(f"no {marker} from the guest within {timeout} s:\n{self.console()}")

    def signal(self, marker):
        open(os.path.join(self.share, marker), "w").close()

    def finish(self, timeout):
        """Waits for the guest to power off; returns guest.sh's exit status."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the guest did not power off within {timeout} s:\n{self.console()}")
        try:
            with open(os.path.join(self.share, "exit-status")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            raise AssertionError(f"the guest left no exit status:\n{self.console()}")

    def results(self):
        """share/results: `key=value` lines the guest wrote."""
        out = {}
        try:
            with open(os.path.join(self.share, "results")) as f:
                for line in f:
                    if "=" in line:
                        k, v = line.rstrip("\n").split("=", 1)
                        out[k] = v
        except OSError:
            pass
        return out

    def close(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# ---- the end-to-end scenario ---------------------------------------------------------------

GUEST_SCRIPT = r'''
# Runs in the guest (busybox sh -e). The real plugin does the node side against the host's tgtd.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LD_LIBRARY_PATH=/share/swell/lib
. /share/params
ms() { read up _ < /proc/uptime; echo "${up%.*}${up#*.}0"; }
result() { echo "$1=$2" >> /share/results; }
csi() { sub=$1; shift; /tmp/swell csi "$sub" --endpoint unix:///tmp/csi.sock "$@"; }
for m in iscsi_tcp sd_mod ext4 xfs loop; do modprobe "$m"; done
cp /share/swell/bin/swell /tmp/swell
iscsid
start_plugin() {
  /tmp/swell plugin --mode node --endpoint unix:///tmp/csi.sock --data-dir /tmp/swell-data --node-id vm \
    --log-level info >> /share/guest-plugin.log 2>&1 &
  plugin_pid=$!
  i=0; while [ ! -S /tmp/csi.sock ]; do i=$((i+1)); [ $i -lt 600 ] || { echo "no plugin socket"; exit 1; }; sleep 0.1; done
  csi probe
}
# A crash right after the iSCSI login, in the first volume's stage: the retried stage (below, by a
# restarted plugin) must converge on the session the crashed one left.
if [ "$CRASH_FIRST_STAGE" = 1 ]; then
  first=${VOLUMES%% *}; first_id=${first%%:*}; first_kind=${first#*:}
  eval first_ctx=\$CTX_$(echo "$first_id" | tr - _)
  eval first_pub=\$PUB_$(echo "$first_id" | tr - _)
  SWELL_FAILPOINTS=iscsi-stage-after-login start_plugin
  crash_args=""; for kv in $first_ctx; do crash_args="$crash_args --context $kv"; done
  for kv in $first_pub; do crash_args="$crash_args --publish-context $kv"; done
  if csi stage --fs-type "$first_kind" $crash_args "$first_id" /tmp/csi/stage/$first_id; then
    echo "the stage with a crash point succeeded"; exit 1
  fi
  wait $plugin_pid || true
  rm -f /tmp/csi.sock
  result sessions_after_crash "$(ls /sys/class/iscsi_session | wc -l)"
fi
start_plugin
for spec in $VOLUMES; do
  id=${spec%%:*}; kind=${spec#*:}
  eval ctx=\$CTX_$(echo "$id" | tr - _)
  eval pub=\$PUB_$(echo "$id" | tr - _)
  args=""; for kv in $ctx; do args="$args --context $kv"; done
  for kv in $pub; do args="$args --publish-context $kv"; done
  if [ "$kind" = block ]; then cap="--block"; else cap="--fs-type $kind"; fi
  if [ -e /share/secrets-$id ]; then
    # A CHAP volume: the kernel initiator without credentials, then with a wrong password, is refused.
    for try in none wrong; do
      extra=""; [ "$try" = wrong ] && extra="--secrets-file /share/badsecrets-$id"
      if csi stage $cap $args $extra "$id" /tmp/csi/stage/$id > /tmp/stage-err 2>&1; then
        result chap_${try}_$id accepted
      else
        result chap_${try}_$id "$(grep -o 'PERMISSION_DENIED' /tmp/stage-err | head -n 1)"
      fi
    done
    result chap_sessions_refused_$id "$(ls /sys/class/iscsi_session | wc -l)"
    args="$args --secrets-file /share/secrets-$id"
  fi
  t0=$(ms)
  csi stage $cap $args "$id" /tmp/csi/stage/$id
  t1=$(ms)
  result stage_ms_$id $((t1 - t0))
  csi stage $cap $args "$id" /tmp/csi/stage/$id   # idempotent
  csi publish $cap "$id" /tmp/csi/stage/$id /tmp/csi/pub/$id
  if [ "$kind" = block ]; then
    dd if=/dev/urandom of=/tmp/csi/pub/$id bs=1M count=8 conv=fsync 2>/dev/null
    result sha_before_$id "$(head -c 8388608 /tmp/csi/pub/$id | sha256sum | cut -d' ' -f1)"
    result dev_bytes_before_$id "$(blockdev --getsize64 /tmp/csi/pub/$id)"
  else
    dd if=/dev/urandom of=/tmp/csi/pub/$id/data bs=1M count=16 conv=fsync 2>/dev/null
    result sha_before_$id "$(sha256sum /tmp/csi/pub/$id/data | cut -d' ' -f1)"
    result fs_bytes_before_$id "$(stat -f -c '%b %S' /tmp/csi/pub/$id | awk '{print $1*$2}')"
    result stats_$id "$(csi stats "$id" /tmp/csi/pub/$id | head -n 1)"
  fi
done
result sessions_staged "$(ls /sys/class/iscsi_session | wc -l)"
touch /share/ready-to-grow
i=0; while [ ! -e /share/grown ]; do i=$((i+1)); [ $i -lt 1200 ] || { echo "no grown marker"; exit 1; }; sleep 0.1; done
. /share/grown
for spec in $VOLUMES; do
  id=${spec%%:*}; kind=${spec#*:}
  eval want=\$SIZE_$(echo "$id" | tr - _)
  t0=$(ms)
  csi node-expand --bytes "$want" "$id" /tmp/csi/pub/$id
  touch /share/expanded-$id
  if [ "$kind" = block ]; then
    result dev_bytes_after_$id "$(blockdev --getsize64 /tmp/csi/pub/$id)"
    result sha_after_$id "$(head -c 8388608 /tmp/csi/pub/$id | sha256sum | cut -d' ' -f1)"
  else
    result fs_bytes_after_$id "$(stat -f -c '%b %S' /tmp/csi/pub/$id | awk '{print $1*$2}')"
    result grow_ms_$id $(( $(ms) - t0 ))
    result dev_bytes_after_$id "$(blockdev --getsize64 "$(findmnt -n -o SOURCE /tmp/csi/stage/$id)")"
    result sha_after_$id "$(sha256sum /tmp/csi/pub/$id/data | cut -d' ' -f1)"
  fi
  csi node-expand --bytes "$want" "$id" /tmp/csi/pub/$id   # idempotent
  csi unpublish "$id" /tmp/csi/pub/$id
  csi unstage "$id" /tmp/csi/stage/$id
  csi unstage "$id" /tmp/csi/stage/$id   # idempotent
done
result sessions_after "$(ls /sys/class/iscsi_session | wc -l)"
result node_records_after "$(iscsiadm -m node 2>/dev/null | wc -l)"
kill $plugin_pid
'''


def shell_words(mapping):
    return " ".join(f"{k}={v}" for k, v in sorted(mapping.items()))


def run_vm_scenario(root, artifacts, swell_binary, controller, volumes, grow, before_grow=None, after_grow=None,
                    crash_first_stage=False, timeout=240, secrets=None):
    """Publishes `volumes` ({id: (kind, volume_context)}) to the guest's node ("vm") through the
    host's `controller`, boots the guest, stages them there with that publish context, lets the
    host grow them through `grow(id) -> new size` once all are written (calling `before_grow()`
    first and `after_grow(vm)` once the guest may go on), and checks nothing itself. With
    `crash_first_stage`, a plugin with a crash point right after the iSCSI login stages the first
    volume first.

    Returns (vm, guest exit status, guest results, host timings); the caller closes the VM.
    """
    import conftest
    published = {vid: controller.publish(vid, "vm", cap=conftest.block_cap() if kind == "block" else conftest.mount_cap(kind))
                 for vid, (kind, _) in volumes.items()}
    vm = VM(root, artifacts)
    stage_binary(swell_binary, os.path.join(vm.share, "swell"))
    # Node-stage secrets ({id: (right, wrong)}), as files: kubelet passes them in the request, never argv.
    for vid, (right, wrong) in (secrets or {}).items():
        for name, values in ((f"secrets-{vid}", right), (f"badsecrets-{vid}", wrong)):
            with open(os.path.join(vm.share, name), "w") as f:
                f.write("".join(f"{k}={v}\n" for k, v in values.items()))
    with open(os.path.join(vm.share, "params"), "w") as f:
        f.write(f"VOLUMES='{' '.join(f'{i}:{kind}' for i, (kind, _) in volumes.items())}'\n")
        f.write(f"CRASH_FIRST_STAGE={1 if crash_first_stage else 0}\n")
        for vid, (_, ctx) in volumes.items():
            f.write(f"CTX_{vid.replace('-', '_')}='{shell_words(ctx)}'\n")
            f.write(f"PUB_{vid.replace('-', '_')}='{shell_words(published[vid])}'\n")
    vm.boot(GUEST_SCRIPT)
    timings = {}
    try:
        vm.wait_for("ready-to-grow", timeout)
        if before_grow:
            before_grow()
        sizes = {}
        for vid in volumes:
            t0 = time.monotonic()
            sizes[vid] = grow(vid)
            timings[f"controller_expand_ms_{vid}"] = (time.monotonic() - t0) * 1000
        with open(os.path.join(vm.share, "grown.tmp"), "w") as f:
            for vid, size in sizes.items():
                f.write(f"SIZE_{vid.replace('-', '_')}={size}\n")
        os.rename(os.path.join(vm.share, "grown.tmp"), os.path.join(vm.share, "grown"))
        if after_grow:
            after_grow(vm)
        status = vm.finish(timeout)
    except BaseException:
        vm.close()
        raise
    return vm, status, vm.results(), timings
