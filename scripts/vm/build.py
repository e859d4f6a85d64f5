#!/usr/bin/env python3
"""Builds the VM test tier's kernel and initramfs from Debian packages, and caches them outside git.

The tier exists because this machine's kernel has no iSCSI initiator, no device-mapper and no nbd.
A stock Debian kernel has all three, and boots under `qemu-system-x86_64 -accel tcg`:

- the kernel is the image `linux-image-amd64` depends on, fetched with `apt-get download` and
  unpacked with `dpkg-deb -x`; its compressed payload is unpacked to an ELF `vmlinux`, which qemu
  boots directly through PVH (no decompression under emulation);
- the initramfs is an uncompressed newc cpio with busybox-static, real kmod (busybox modprobe
  ignores softdeps), the modules the tests need with `depmod -b`, and the host's own open-iscsi,
  e2fsprogs, xfsprogs and util-linux binaries with the libraries `ldd` names.

Usage: build.py [--cache DIR]   prints the cache directory; rebuilds only what is missing or stale.
"""
import argparse
import hashlib
import lzma
import os
import shutil
import stat
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CACHE = os.environ.get("SWELL_VM_CACHE", "/var/tmp/swell-vm")

# Modules the guest loads (their dependencies come along): the 9p share and the NIC, the iSCSI
# initiator and SCSI disks, filesystems, and the block layers later tiers use.
MODULES = [
    "virtio_pci", "virtio_net", "virtio_blk", "9p", "9pnet_virtio", "iscsi_tcp", "sd_mod", "ext4", "xfs",
    "loop", "dm_thin_pool", "dm_snapshot", "nbd", "crc32c_generic", "crc32c_intel", "af_packet", "quota_v2",
    "rbd",
]
# Host binaries copied in, with their libraries. Missing optional ones are skipped.
REQUIRED_TOOLS = [
    "/usr/sbin/iscsiadm", "/usr/sbin/iscsid", "/usr/sbin/mke2fs", "/usr/sbin/resize2fs", "/usr/sbin/mkfs.xfs",
    "/usr/sbin/xfs_growfs", "/usr/sbin/blkid", "/usr/bin/mount", "/usr/bin/umount", "/usr/sbin/losetup",
    "/usr/sbin/blockdev", "/usr/bin/findmnt", "/usr/sbin/e2fsck",
]
# GNU cp (busybox's has no --reflink=always): the node plugin copies dir volumes with it.
OPTIONAL_TOOLS = ["/usr/sbin/lvm", "/usr/sbin/thin_check", "/usr/sbin/dmsetup", "/usr/bin/setpriv", "/usr/bin/cp"]
FILES = ["/etc/mke2fs.conf"]


def run(argv, **kw):
    return subprocess.run(argv, check=True, **kw)


def kernel_version():
    def depends():
        out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            line = line.strip()
            if line.startswith("Depends: linux-image-"):
                return line.split("linux-image-", 1)[1]
        return None
    version = depends()
    if version is None:
        run(["apt-get", "update", "-qq"])
        version = depends()
    if version is None:
        sys.exit("vm: apt-cache names no kernel for linux-image-amd64")
    return version


def fetch(cache, packages):
    debs = os.path.join(cache, "debs")
    os.makedirs(debs, exist_ok=True)
    missing = [p for p in packages if not any(f.startswith(p + "_") for f in os.listdir(debs))]
    if missing:
        # apt's sandbox user cannot write into root's cache directory; that warning is harmless.
        run(["apt-get", "download", "-q"] + missing, cwd=debs, stderr=subprocess.DEVNULL)
    root = os.path.join(cache, "pkgroot")
    for name in sorted(os.listdir(debs)):
        marker = os.path.join(root, ".unpacked-" + name)
        if not os.path.exists(marker):
            run(["dpkg-deb", "-x", os.path.join(debs, name), root])
            open(marker, "w").close()
    return root


def extract_vmlinux(vmlinuz, out):
    """The kernel's ELF image: the xz stream inside the bzImage, decompressed."""
    data = open(vmlinuz, "rb").read()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        sys.exit(f"vm: {vmlinuz} has no xz payload")
    elf = lzma.LZMADecompressor().decompress(data[start:])
    if not elf.startswith(b"\x7fELF"):
        sys.exit("vm: the decompressed kernel is not an ELF image")
    with open(out + ".tmp", "wb") as f:
        f.write(elf)
    os.replace(out + ".tmp", out)


def libraries(binary):
    out = run(["ldd", binary], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs.append(parts[2])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def copy_into(tree, path, dest=None):
    dest = os.path.join(tree, (dest or path).lstrip("/"))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copy2(os.path.realpath(path), dest)


def module_files(pkgroot, kver):
    kmod = os.path.join(pkgroot, "bin", "kmod")
    run(["depmod", "-b", pkgroot, kver], executable=kmod)
    files = set()
    for name in MODULES:
        out = subprocess.run(["modprobe", "-d", pkgroot, "-S", kver, "--show-depends", name],
                             executable=kmod, capture_output=True, text=True)
        if out.returncode != 0:
            continue  # not built for this kernel (crc32c_intel on some configs); modprobe in the guest says so
        for line in out.stdout.splitlines():
            parts = line.split()
            if parts and parts[0] == "insmod":
                files.add(parts[1])
    return sorted(files)


def write_cpio(tree, out):
    """An uncompressed newc archive of `tree`, owned by root."""
    def header(name, mode, size, nlink, ino, rdev=0):
        fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, os.major(rdev), os.minor(rdev), len(name) + 1, 0]
        return b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"

    def pad(f):
        f.write(b"\0" * ((4 - f.tell() % 4) % 4))

    with open(out + ".tmp", "wb") as f:
        ino = 1
        for dirpath, dirnames, filenames in os.walk(tree):
            dirnames.sort()
            for name in [""] + sorted(dirnames + filenames):
                full = os.path.join(dirpath, name) if name else dirpath
                rel = os.path.relpath(full, tree)
                if rel == ".":
                    continue
                st = os.lstat(full)
                if name in dirnames and not stat.S_ISLNK(st.st_mode):
                    continue  # directories are written when os.walk enters them
                data = b""
                if stat.S_ISLNK(st.st_mode):
                    data = os.readlink(full).encode()
                elif stat.S_ISREG(st.st_mode):
                    data = open(full, "rb").read()
                f.write(header(rel, st.st_mode, len(data), 2 if stat.S_ISDIR(st.st_mode) else 1, ino))
                pad(f)
                f.write(data)
                pad(f)
                ino += 1
        f.write(header("TRAILER!!!", 0, 0, 1, 0))
        pad(f)
    os.replace(out + ".tmp", out)


def fingerprint(kver):
    h = hashlib.sha256(kver.encode())
    for name in ["build.py", "init"]:
        h.update(open(os.path.join(HERE, name), "rb").read())
    for tool in REQUIRED_TOOLS + OPTIONAL_TOOLS:
        if os.path.exists(tool):
            h.update(tool.encode() + str(os.stat(tool).st_mtime_ns).encode())
    return h.hexdigest()[:16]


def build(cache):
    os.makedirs(cache, exist_ok=True)
    kver = kernel_version()
    stamp = os.path.join(cache, "stamp")
    want = fingerprint(kver)
    vmlinux = os.path.join(cache, "vmlinux")
    initrd = os.path.join(cache, "initramfs.cpio")
    if os.path.exists(stamp) and open(stamp).read() == want and os.path.exists(vmlinux) and os.path.exists(initrd):
        return cache
    missing = [t for t in REQUIRED_TOOLS if not os.path.exists(t)]
    if missing:
        sys.exit(f"vm: missing on the host (scripts/setup.sh --vm installs them): {missing}")
    pkgroot = fetch(cache, [f"linux-image-{kver}", "busybox-static", "kmod"])
    extract_vmlinux(os.path.join(pkgroot, "boot", f"vmlinuz-{kver}"), vmlinux)

    tree = os.path.join(cache, "initramfs")
    shutil.rmtree(tree, ignore_errors=True)
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc/iscsi", "proc", "sys", "dev", "tmp", "run", "var/lock",
              "var/lib/iscsi", "share", "lib64"]:
        os.makedirs(os.path.join(tree, d), exist_ok=True)
    copy_into(tree, os.path.join(pkgroot, "bin", "busybox"), "/bin/busybox")
    kmod = os.path.join(pkgroot, "bin", "kmod")
    copy_into(tree, kmod, "/sbin/kmod")
    for name in ["modprobe", "insmod", "rmmod", "lsmod", "depmod", "modinfo"]:
        os.symlink("kmod", os.path.join(tree, "sbin", name))
    binaries = [kmod] + REQUIRED_TOOLS + [t for t in OPTIONAL_TOOLS if os.path.exists(t)]
    for tool in binaries[1:]:
        copy_into(tree, tool)
    for lib in sorted({lib for b in binaries for lib in libraries(b)}):
        copy_into(tree, lib)
    os.symlink("mke2fs", os.path.join(tree, "usr/sbin/mkfs.ext4"))
    for f in FILES:
        copy_into(tree, f)
    with open(os.path.join(tree, "etc/iscsi/initiatorname.iscsi"), "w") as f:
        f.write("InitiatorName=iqn.2026-11.dev.swell:vm-guest\n")
    # No udev in the guest (as in many node-plugin containers): LVM makes its own /dev nodes.
    os.makedirs(os.path.join(tree, "etc/lvm"), exist_ok=True)
    with open(os.path.join(tree, "etc/lvm/lvm.conf"), "w") as f:
        f.write("devices { obtain_device_list_from_udev = 0 }\n"
                "activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }\n")
    with open(os.path.join(tree, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/:/bin/sh\n")
    moddir = f"lib/modules/{kver}"
    for ko in module_files(pkgroot, kver):
        rel = os.path.relpath(ko, pkgroot)
        copy_into(tree, ko, "/" + rel)
    for name in ["modules.order", "modules.builtin", "modules.builtin.modinfo"]:
        copy_into(tree, os.path.join(pkgroot, moddir, name), "/" + moddir + "/" + name)
    run(["depmod", "-b", tree, kver], executable=kmod)
    shutil.copy2(os.path.join(HERE, "init"), os.path.join(tree, "init"))
    os.chmod(os.path.join(tree, "init"), 0o755)
    write_cpio(tree, initrd)
    with open(stamp, "w") as f:
        f.write(want)
    return cache


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=DEFAULT_CACHE)
    args = parser.parse_args()
    print(build(args.cache))


if __name__ == "__main__":
    main()
