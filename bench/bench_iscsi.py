#!/usr/bin/env python3
"""iSCSI benchmark in the VM tier (a Debian kernel under qemu TCG, no KVM): the host's controller
exports volumes from a real tgtd; the guest's node plugin logs in, stages, and grows them.

Per volume (ext4, xfs, and a raw block volume), over ROUNDS boots:
- NodeStageVolume inside the guest, server-side (iSCSI login to mounted, with mkfs of the blank
  volume), from the guest plugin's own per-RPC log line;
- ControllerExpandVolume on the host (file grown, LUN re-added in tgtd), client-side;
- NodeExpandVolume inside the guest, server-side (session rescan until the kernel sees the size,
  then resize2fs / xfs_growfs online);
- end to end on the host's clock: ControllerExpandVolume sent -> the guest's statfs shows the new
  size. This includes starting the `swell csi` client inside the emulated guest and two marker
  polls through the 9p share (100 ms guest side, 20 ms host side).

Usage: bench/bench_iscsi.py [path/to/swell] [ROUNDS]   (needs root; the guest runs that binary)"""
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "conformance"))
sys.path.insert(0, HERE)

import conftest  # noqa: E402
import rounds as rounds_out  # noqa: E402
import iscsi  # noqa: E402
import test_iscsi  # noqa: E402

MiB = 1 << 20
SIZES = {"pvc-e4": (64 * MiB, 160 * MiB, "ext4"), "pvc-xf": (320 * MiB, 512 * MiB, "xfs"),
         "pvc-bk": (32 * MiB, 48 * MiB, "block")}


def rpc_ms(log, method):
    """{volume: ms} from the plugin's `method=M ms=X volume=V` lines (the first OK call each)."""
    out = {}
    for line in log.splitlines():
        if f"method={method} " in line and "code=OK" in line:
            ms = float(re.search(r" ms=([\d.]+)", line).group(1))
            vol = re.search(r" volume=(\S+)", line).group(1)
            out.setdefault(vol, ms)
    return out


def one_round(swell, artifacts):
    ctl = test_iscsi.Controller(portal_host=iscsi.GUEST_PORTAL_HOST).start()
    vm = None
    sent, seen = {}, {}
    try:
        volumes = {}
        for vid, (before, _, kind) in SIZES.items():
            cap = conftest.block_cap() if kind == "block" else conftest.mount_cap(kind)
            volumes[vid] = (kind, dict(ctl.create(vid, before, cap=cap, publish_to=None).volume_context))

        def grow(vid):
            sent[vid] = time.monotonic()
            return ctl.expand(vid, SIZES[vid][1]).capacity_bytes

        def watch(vm):
            while len(seen) < len(SIZES):
                for vid in SIZES:
                    if vid not in seen and os.path.exists(os.path.join(vm.share, f"expanded-{vid}")):
                        seen[vid] = time.monotonic()
                if vm.proc.poll() is not None:
                    break
                time.sleep(0.02)

        t0 = time.monotonic()
        vm, status, results, timings = iscsi.run_vm_scenario(
            ctl.root, artifacts, swell, ctl, volumes, grow=grow, after_grow=watch)
        wall = time.monotonic() - t0
        if status != 0:
            raise SystemExit(f"the guest failed:\n{vm.console()}")
        guest_log = open(os.path.join(vm.share, "guest-plugin.log")).read()
        boot = float(re.search(r"vm-init: up after ([\d.]+) s", vm.console()).group(1))
        row = {"wall_s": wall, "boot_s": boot}
        stage, node_expand = rpc_ms(guest_log, "NodeStageVolume"), rpc_ms(guest_log, "NodeExpandVolume")
        for vid in SIZES:
            row[f"stage_ms/{vid}"] = stage[vid]
            row[f"controller_expand_ms/{vid}"] = timings[f"controller_expand_ms_{vid}"]
            row[f"node_expand_ms/{vid}"] = node_expand[vid]
        # Volumes are grown one after another on the host, then expanded one after another in the
        # guest; the first one's end-to-end time is the clean figure.
        first = next(iter(SIZES))
        row["end_to_end_ms/first"] = (seen[first] - sent[first]) * 1000
        for vid in SIZES:
            ctl.delete(vid)
        return row
    finally:
        if vm is not None:
            vm.close()
        ctl.close()


def main():
    swell = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else conftest.SWELL
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    conftest.SWELL = swell
    test_iscsi.SWELL = swell
    artifacts = iscsi.vm_artifacts()
    rows = []
    for i in range(rounds):
        row = one_round(swell, artifacts)
        rows.append(row)
        rounds_out.print_round(i, row, 1)
    rounds_out.print_summary(f"{os.path.basename(swell)} ({swell}), {rounds} boots", rows, 1)


if __name__ == "__main__":
    main()
