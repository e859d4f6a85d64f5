"""SIGKILL at named points inside create, delete, stage and expand; a restarted plugin and a
retried call must converge, with nothing leaked (no orphan files, loop devices or mounts)."""
import os
import signal

import grpc
import pytest

from conftest import csi_pb2, create_req, mount_cap, loops_under, host_mounts_under, sha256, write_random, MiB
from test_node import paths, stage, publish, unpublish, unstage, expand, node_expand


def crash_then_restart(plugin, failpoint, call, while_down=None):
    plugin.stop()
    plugin.start(failpoints=failpoint)
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert plugin.wait_dead() == -signal.SIGKILL, "the plugin died at the failpoint"
    if while_down:
        while_down()
    plugin.start()


def volume_dirs(plugin):
    return sorted(os.listdir(os.path.join(plugin.data, "volumes")))


def test_crash_in_create_then_retry(plugin):
    crash_then_restart(plugin, "create-after-sparse-file",
                       lambda: plugin.controller.CreateVolume(create_req("c1", required=32 * MiB)))
    assert volume_dirs(plugin) == [], "the restart swept the half-made volume"
    v = plugin.controller.CreateVolume(create_req("c1", required=32 * MiB)).volume
    assert v.capacity_bytes == 32 * MiB
    assert volume_dirs(plugin) == ["c1"]


def test_crash_in_create_leaves_only_a_temporary_that_is_swept(plugin):
    def half_made():
        assert volume_dirs(plugin) == [".c2.creating"], "the crash hit the middle of create"
    crash_then_restart(plugin, "create-after-sparse-file",
                       lambda: plugin.controller.CreateVolume(create_req("c2", required=32 * MiB)), half_made)
    plugin.controller.CreateVolume(create_req("c2", required=32 * MiB))
    plugin.controller.CreateVolume(create_req("c2", required=32 * MiB))
    assert volume_dirs(plugin) == ["c2"]


def test_crash_in_delete_then_retry(plugin):
    plugin.controller.CreateVolume(create_req("d1"))
    crash_then_restart(plugin, "delete-after-rename",
                       lambda: plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="d1")))
    plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="d1"))
    assert volume_dirs(plugin) == []


@pytest.mark.parametrize("point", ["stage-after-attach", "stage-after-format"])
def test_crash_in_stage_then_retry(plugin, point):
    cap = mount_cap("ext4")
    staging, target = paths(plugin, "s")
    plugin.controller.CreateVolume(create_req("s", required=64 * MiB, cap=cap))
    crash_then_restart(plugin, point, lambda: stage(plugin, "s", staging, cap))
    assert len(loops_under(plugin.root)) == 1, "the crash left the loop device attached"
    stage(plugin, "s", staging, cap)
    assert len(loops_under(plugin.root)) == 1, "the retry reused it rather than attaching another"
    publish(plugin, "s", staging, target, cap)
    write_random(os.path.join(target, "x"), 1)
    unpublish(plugin, "s", target)
    unstage(plugin, "s", staging)
    assert loops_under(plugin.root) == [] and host_mounts_under(plugin.root) == []


@pytest.mark.parametrize("point", ["expand-after-truncate", "node-expand-after-rescan"])
def test_crash_in_expand_then_retry(plugin, point):
    cap = mount_cap("xfs")  # grows online wherever the plugin runs (ext4 needs CAP_SYS_RESOURCE)
    staging, target = paths(plugin, "x")
    plugin.controller.CreateVolume(create_req("x", required=320 * MiB, cap=cap))
    stage(plugin, "x", staging, cap)
    publish(plugin, "x", staging, target, cap)
    write_random(os.path.join(target, "data"), 8)
    digest = sha256(os.path.join(target, "data"))
    if point == "expand-after-truncate":
        crash_then_restart(plugin, point, lambda: expand(plugin, "x", 640 * MiB))
    else:
        expand(plugin, "x", 640 * MiB)
        crash_then_restart(plugin, point, lambda: node_expand(plugin, "x", target, 640 * MiB, staging))
    assert expand(plugin, "x", 640 * MiB).capacity_bytes == 640 * MiB
    assert node_expand(plugin, "x", target, 640 * MiB, staging).capacity_bytes == 640 * MiB
    st = os.statvfs(target)
    assert st.f_blocks * st.f_frsize > 500 * MiB
    assert sha256(os.path.join(target, "data")) == digest
    meta = open(os.path.join(plugin.data, "volumes", "x", "meta")).read()
    assert f"capacity_bytes={640 * MiB}" in meta
    unpublish(plugin, "x", target)
    unstage(plugin, "x", staging)
    assert loops_under(plugin.root) == []


def test_sigterm_exits_zero_and_removes_only_its_socket(plugin):
    assert plugin.stop(signal.SIGTERM) == 0
    assert not os.path.exists(plugin.socket)


def test_sigterm_drains_an_rpc_in_flight(plugin):
    import threading
    import time
    plugin.stop()
    plugin.start(failpoints="create-after-sparse-file:pause")
    result = {}

    def call():
        try:
            result["volume"] = plugin.controller.CreateVolume(create_req("inflight", required=8 * MiB)).volume
        except grpc.RpcError as e:
            result["error"] = e.code()

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 10
    while ".inflight.creating" not in volume_dirs(plugin) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert ".inflight.creating" in volume_dirs(plugin), "the call reached the pause"
    plugin.proc.send_signal(signal.SIGTERM)
    t.join(timeout=20)
    assert result.get("volume") is not None and result["volume"].volume_id == "inflight", result
    assert plugin.proc.wait(timeout=20) == 0
    assert volume_dirs(plugin) == ["inflight"]
    plugin.start()
