#!/usr/bin/env python3
"""LVM thin against loop files, in the same VM-tier boot (a Debian kernel under qemu TCG, no KVM).

Runs conformance/test_lvm.py's guest script ROUNDS times and reads the guest plugin's own per-RPC
log lines (server-side milliseconds) for three volumes made in the same run:
- pvc-e4: lvm thin, ext4, 64 -> 128 MiB;
- pvc-xf: lvm thin, xfs, 320 -> 400 MiB;
- pvc-lp: loop file, ext4, 64 -> 128 MiB.
CreateVolume and ControllerExpandVolume are the first (non-repeated) calls; NodeExpandVolume is
the online grow of the mounted filesystem.

Usage: bench/bench_lvm.py [path/to/swell] [ROUNDS]   (needs root)"""
import os
import re
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "conformance"))
sys.path.insert(0, HERE)

import conftest  # noqa: E402
import rounds as rounds_out  # noqa: E402
import test_lvm  # noqa: E402

VOLUMES = ["pvc-e4", "pvc-xf", "pvc-lp"]
METHODS = ["CreateVolume", "ControllerExpandVolume", "NodeStageVolume", "NodeExpandVolume"]


def first_ok(log, method, volume):
    for line in log.splitlines():
        if f"method={method} " in line and f"volume={volume}" in line and "code=OK" in line:
            return float(re.search(r" ms=([\d.]+)", line).group(1))
    raise SystemExit(f"no OK {method} for {volume} in the guest log")


def main():
    swell = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else conftest.SWELL
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    rows = []
    for i in range(rounds):
        root = tempfile.mkdtemp(prefix="swell-lvmbench-")
        vm = None
        try:
            vm, status, results, log = test_lvm.run_lvm_vm(swell, root)
            if status != 0:
                raise SystemExit(f"the guest failed:\n{vm.console()}")
            row = {f"{m}/{v}": first_ok(log, m, v) for m in METHODS for v in VOLUMES}
            row["one `lvm lvs` (guest shell, 10 ms clock)"] = float(results["lvs_ms"])
            rows.append(row)
            rounds_out.print_round(i, row, 0)
        finally:
            if vm is not None:
                vm.close()
            shutil.rmtree(root, ignore_errors=True)
    rounds_out.print_summary(f"{swell}, {rounds} boots; server-side ms", rows, 0)


if __name__ == "__main__":
    main()
