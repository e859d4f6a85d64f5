#!/usr/bin/env python3
"""Every local kind against the guest's own filesystem, in the VM tier (a Debian kernel under qemu
TCG, one vCPU, no KVM).

Boots conformance/test_vm_db.py's guest once per round. In each place (the guest's own ext4 on a
disk of its own, with project quotas on; an ext4 thin LV; an ext4 thick LV; an ext4 loop volume
whose file lives on that own ext4; a dir volume, a directory of that own ext4 with a project
quota), one after the other:
- fio commits: 8 KiB writes, each followed by fdatasync, 8 s, on fio's own new file, then on a
  file written once before (as a database's WAL segments are);
- fio random 4 KiB reads and writes (direct I/O, 50/50), 8 s;
- pgbench (scale 2, 2 clients, 12 s), then pgbench while each Swell volume grows online twice
  through the plugin and once by hand between them, with the kind's own tools (lvextend and
  resize2fs; ftruncate, `losetup -c` and resize2fs; none for a dir volume's quota);
- MariaDB (InnoDB, a durable commit): one writer committing batches of 100 rows of 1 KiB at a
  fixed pace beside 4 unpaced readers, while each Swell volume grows online twice more.
Prints each figure, each grow's length (from the guest's shell, the CLI's start included), the
longest commit in flight during a grow against the longest outside every grow, and the ratios to
the guest's own filesystem. Emulation makes every absolute figure slow; the ratios are the point.

Usage: bench/bench_vm_db.py [path/to/swell] [ROUNDS] [MDB_SECONDS] [MDB_PACE]
(needs root, fio, postgresql-15, mariadb-server, sysbench, lvm2)"""
import os
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "conformance"))

import conftest  # noqa: E402
import test_vm_db  # noqa: E402

# (key, label): the figures compared with the guest's own filesystem.
RATIOS = [("commits", "fio commits, new file"), ("commits_written", "fio commits, written file"),
          ("rand_read", "random 4 KiB reads"), ("rand_write", "random 4 KiB writes"), ("tps", "pgbench TPS"),
          ("mdb_rows", "MariaDB rows committed")]


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
    seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    pace = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    conftest.SWELL = swell
    runs = []
    for i in range(rounds):
        root = tempfile.mkdtemp(prefix="swell-benchvmdb-")
        vm = None
        try:
            vm, status, _, log = test_vm_db.run_db_vm(swell, root, mdb_seconds=seconds, mdb_pace=pace)
            if status != 0:
                sys.exit(f"round {i + 1}: the guest failed:\n{vm.console()}\n{log[-3000:]}")
            figures = test_vm_db.figures(vm, seconds)
            runs.append(figures)
        finally:
            if vm is not None:
                vm.close()
            shutil.rmtree(root, ignore_errors=True)
        for place, f in figures.items():
            m = f["mdb"]
            f["mdb_rows"] = m["rows_per_s"]
            print(f"round {i + 1}: {place}: fio commits {f['commits']:.0f}/s on a new file, {f['commits_written']:.0f}/s "
                  f"on a written one; random 4 KiB {f['rand_read']:.0f} reads/s and {f['rand_write']:.0f} writes/s; "
                  f"pgbench {f['tps']:.1f} tps; MariaDB {m['rows_per_s']:.0f} rows/s (paced at {pace * 100}), "
                  f"{m['idle_s']} s without a commit", flush=True)
            if place == "own":
                print(f"round {i + 1}: own: longest commit {m['longest_outside_ms']:.0f} ms")
                continue
            grows = ", ".join(f"{ms:.0f}" for ms in m["grow_ms"])
            rpcs = "; ".join(f"{name} {', '.join(server_ms(log, name, place))} ms"
                             for name in ("ControllerExpandVolume", "NodeExpandVolume"))
            print(f"round {i + 1}: {place}: pgbench while growing twice {f['tps_growing']:.1f} tps, grows "
                  f"{' and '.join(str(g) for g in f['pg_grow_ms'])} ms; under MariaDB grows {grows} ms, longest commit "
                  f"during a grow {m['longest_during_grow_ms']:.0f} ms, outside {m['longest_outside_ms']:.0f} ms; "
                  f"in the plugin (all four grows): {rpcs}", flush=True)
            if "hand_grow_ms" in f:
                print(f"round {i + 1}: {place}: a grow by hand with the kind's own tools under the same pgbench "
                      f"(to 896 MiB, between the plugin's two): {f['hand_grow_ms']} ms, the filesystem then "
                      f"{f['hand_fs_bytes'] / 1048576:.0f} MiB", flush=True)
    for place in test_vm_db.PLACES[1:]:
        parts = []
        for key, label in RATIOS:
            ratio = statistics.median(r[place][key] / r["own"][key] for r in runs if r["own"][key] > 0)
            parts.append(f"{label} {ratio:.2f}x")
        print(f"{place} against the guest's own ext4 (median of {rounds}): {', '.join(parts)}")


if __name__ == "__main__":
    main()
