#!/usr/bin/env python3
"""PostgreSQL and fio on every local kind against the guest's own filesystem, in the VM tier (a
Debian kernel under qemu TCG, one vCPU, no KVM).

Boots conformance/test_vm_db.py's guest once per round. In each place (the guest's own ext4 on a
disk of its own, with project quotas on; an ext4 thin LV; an ext4 thick LV; an ext4 loop volume
whose file lives on that own ext4; a dir volume, a directory of that own ext4 with a project
quota) the same fio commit job (8 KiB writes + fdatasync, 8 s) and pgbench (scale 2, 2 clients,
12 s), then pgbench while each Swell volume grows online twice, timing each grow (ControllerExpand
and NodeExpand). Prints each figure and the ratios to the guest's own filesystem. Emulation makes
every absolute figure slow; the ratios are the point.

Usage: bench/bench_vm_db.py [path/to/swell] [ROUNDS]   (needs root, fio, postgresql-15, lvm2)"""
import os
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "conformance"))

import conftest  # noqa: E402
import test_vm_db  # noqa: E402


def server_ms(log, method, place):
    """The plugin's own milliseconds for each call of `method` on the place's volume, from its log."""
    out = []
    for line in log.splitlines():
        if f"method={method} " in line and f"volume=db-{place}" in line and "code=OK" in line:
            out.append(line.split(" ms=")[1].split()[0])
    return out


def main():
    swell = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else conftest.SWELL
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    conftest.SWELL = swell
    runs = []
    for i in range(rounds):
        root = tempfile.mkdtemp(prefix="swell-benchvmdb-")
        vm = None
        try:
            vm, status, results, log = test_vm_db.run_db_vm(swell, root)
            if status != 0:
                sys.exit(f"round {i + 1}: the guest failed:\n{vm.console()}\n{log[-3000:]}")
            runs.append(test_vm_db.figures(vm))
            grow = {p: test_vm_db.share_text(vm, f"pggrow-{p}.txt") for p in test_vm_db.PLACES[1:]}
            r = vm.results()
            for place, (commits, tps) in runs[-1].items():
                print(f"round {i + 1}: {place}: fio commits {commits:.0f}/s, pgbench {tps:.1f} tps", flush=True)
            for place, text in grow.items():
                tps = float(text.split("tps = ")[1].split()[0])
                grows = [r[f"grow_ms_{mib}_{place}"] for mib in (768, 1024)]
                rpcs = [f"{m} {', '.join(server_ms(log, m, place))} ms" for m in ("ControllerExpandVolume", "NodeExpandVolume")]
                print(f"round {i + 1}: {place}: pgbench while growing online twice {tps:.1f} tps, no failed transaction; "
                      f"the grows took {' and '.join(grows)} ms from the guest's shell (the CLI's start included); "
                      f"in the plugin: {'; '.join(rpcs)}")
        finally:
            if vm is not None:
                vm.close()
            shutil.rmtree(root, ignore_errors=True)
    for place in test_vm_db.PLACES[1:]:
        commit = statistics.median(r[place][0] / r["own"][0] for r in runs)
        tps = statistics.median(r[place][1] / r["own"][1] for r in runs)
        print(f"{place}: commits {commit:.2f}x the guest's own ext4, pgbench {tps:.2f}x (median of {rounds})")


if __name__ == "__main__":
    main()
