"""`swell csi …` against the real plugin on its socket: human output, --json, and errors."""
import json
import os
import subprocess

from conftest import SWELL, MiB
from test_node import paths


def cli(plugin, *args, check=True):
    r = subprocess.run([SWELL, "csi", *args[:1], "--endpoint", f"unix://{plugin.socket}", *args[1:]],
                       capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def test_cli_walks_a_volume_through_its_life(plugin):
    staging, target = paths(plugin, "c1")
    assert cli(plugin, "probe").stdout.strip() == "ready: true"
    assert "name: swell.csi.dev" in cli(plugin, "info").stdout
    caps = cli(plugin, "capabilities").stdout.splitlines()
    assert "plugin: CONTROLLER_SERVICE" in caps and "plugin: VOLUME_EXPANSION ONLINE" in caps
    assert "controller: EXPAND_VOLUME" in caps and "node: STAGE_UNSTAGE_VOLUME" in caps
    created = json.loads(cli(plugin, "create", "c1", "--bytes", str(320 * MiB), "--fs-type", "xfs", "--json").stdout)
    assert created["volume"]["volume_id"] == "c1" and int(created["volume"]["capacity_bytes"]) == 320 * MiB
    assert "c1\t" + str(320 * MiB) in cli(plugin, "list").stdout
    cli(plugin, "stage", "c1", staging, "--fs-type", "xfs")
    cli(plugin, "publish", "c1", staging, target, "--fs-type", "xfs")
    assert os.path.ismount(target)
    out = cli(plugin, "expand", "c1", "--bytes", str(640 * MiB)).stdout
    assert f"capacity: {640 * MiB} bytes" in out and "node expansion required: true" in out
    assert f"capacity: {640 * MiB} bytes" in cli(plugin, "node-expand", "c1", target).stdout
    stats = json.loads(cli(plugin, "stats", "c1", target, "--json").stdout)
    units = {u.get("unit"): u for u in stats["usage"]}
    assert int(units["BYTES"]["total"]) > 500 * MiB
    cli(plugin, "unpublish", "c1", target)
    cli(plugin, "unstage", "c1", staging)
    assert cli(plugin, "delete", "c1").stdout.strip() == "deleted c1"
    assert cli(plugin, "list").stdout.strip() == ""


def test_cli_errors_name_the_grpc_code(plugin):
    r = cli(plugin, "expand", "missing", "--bytes", str(MiB), check=False)
    assert r.returncode == 2
    assert r.stdout.startswith("error: NOT_FOUND: ") and "missing" in r.stdout
    r = cli(plugin, "create", "bad/name", check=False)
    assert r.returncode == 2 and r.stdout.startswith("error: INVALID_ARGUMENT: ")


def test_version():
    out = subprocess.run([SWELL, "version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("swell ") and "CSI spec 1.12.0" in out


def test_cli_takes_gets_and_deletes_a_group_snapshot(plugin):
    def group(*args, check=True):
        r = subprocess.run([SWELL, "csi", "group-snapshot", args[0], "--endpoint", f"unix://{plugin.socket}",
                            *args[1:]], capture_output=True, text=True, timeout=60)
        assert not check or r.returncode == 0, (args, r.stdout, r.stderr)
        return r
    assert "group controller: CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT" in cli(plugin, "capabilities").stdout
    for v in ("ga", "gb"):
        cli(plugin, "create", v, "--bytes", str(16 * MiB))
    made = group("create", "gc", "gb", "ga").stdout.splitlines()
    assert made[0].startswith("gc\t") and "ready: true" in made[0]
    assert sorted(line.split("\t")[0].strip() for line in made[1:]) == ["gc.0", "gc.1"]
    assert all("group: gc" in line for line in made[1:])
    got = json.loads(group("get", "gc", "--json").stdout)["group_snapshot"]
    assert sorted(s["source_volume_id"] for s in got["snapshots"]) == ["ga", "gb"]
    r = group("delete", "gc", "gc.0", check=False)
    assert r.returncode == 2 and r.stdout.startswith("error: INVALID_ARGUMENT: "), "the list must be the group's"
    assert group("delete", "gc", "gc.0", "gc.1").stdout.strip() == "deleted group snapshot gc"
    assert group("get", "gc", check=False).stdout.startswith("error: NOT_FOUND: ")
