"""Volume health on the claim: the plugin's volume condition becomes a Warning Event on the PVC,
one Event whose count grows while the volume stays abnormal, and a Normal Event when it recovers.
The controller side reads conditions from ListVolumes, the node side from NodeGetVolumeStats."""

import os

from conftest import NODE, csiconf
from test_sidecar import pv_for, wait_bound


def health_events(api, claim, reason):
    return [e for e in api.events_for(claim) if e["reason"] == reason]


def wait_counted_warning(api, claim, prefix="", count=3):
    def seen():
        found = [e for e in health_events(api, claim, "VolumeConditionAbnormal") if e["message"].startswith(prefix)]
        return found if any(e["count"] >= count for e in found) else None
    return api.wait(f"VolumeConditionAbnormal counted {count} times", seen)


def test_a_missing_backing_file_is_a_warning_on_the_claim_until_it_is_back(cluster):
    api = cluster.api
    cluster.sidecar("--health-interval", "0.3")
    api.create_class("swell")
    claim = api.create_claim("h", size="64Mi")
    wait_bound(api, "h")
    handle = pv_for(api, claim)["spec"]["csi"]["volumeHandle"]
    disk = os.path.join(cluster.plugin.data, "volumes", handle, "disk.img")
    assert health_events(api, "h", "VolumeConditionAbnormal") == []
    os.rename(disk, disk + ".away")
    try:
        warnings = wait_counted_warning(api, "h")
    finally:
        os.rename(disk + ".away", disk)
    assert len(warnings) == 1, "one Event, counted, not one per look"
    assert warnings[0]["type"] == "Warning" and "is missing" in warnings[0]["message"], warnings[0]
    assert warnings[0]["involvedObject"]["uid"] == claim["metadata"]["uid"]
    normal = api.wait("VolumeConditionNormal", lambda: health_events(api, "h", "VolumeConditionNormal"))
    assert normal[0]["type"] == "Normal" and "is missing" in normal[0]["message"]
    # Healthy from then on: nothing more is posted.
    count = wait_counted_warning(api, "h", count=1)[0]["count"]
    # Three more looks at every volume (the sidecar's pass counter), and still nothing new.
    passes = cluster.sidecars[0].metric("swell_sidecar_passes_total", loop="health")
    cluster.sidecars[0].wait_metric("swell_sidecar_passes_total", passes + 2, loop="health")
    assert wait_counted_warning(api, "h", count=1)[0]["count"] == count
    assert len(health_events(api, "h", "VolumeConditionNormal")) == 1


def test_the_node_side_reports_a_staged_volume_whose_metadata_is_damaged(cluster):
    api = cluster.api
    port = csiconf.free_port()
    cluster.plugin.stop()
    cluster.plugin.start(extra_args=("--metrics-address", f"127.0.0.1:{port}"))
    cluster.sidecar("--per-node", "--node-id", NODE, "--autogrow-plugin-address", f"127.0.0.1:{port}",
                    "--autogrow-max-interval", "0.3", "--health-interval", "0.3")
    api.create_class("swell", binding="WaitForFirstConsumer")
    claim = api.create_claim("n", size="320Mi", annotations={"volume.kubernetes.io/selected-node": NODE})
    wait_bound(api, "n")
    handle = pv_for(api, claim)["spec"]["csi"]["volumeHandle"]
    staging = cluster.stage(handle, "n")
    meta = os.path.join(cluster.plugin.data, "volumes", handle, "meta")
    with open(meta, "rb") as f:
        saved = f.read()
    try:
        with open(meta, "wb") as f:
            f.write(b"\x00garbage\n")
        warnings = wait_counted_warning(api, "n", prefix=f"on node {NODE}: ", count=2)
        assert len(warnings) == 1 and "damaged" in warnings[0]["message"], warnings
    finally:
        with open(meta, "wb") as f:
            f.write(saved)
        try:
            normal = api.wait("the node's VolumeConditionNormal", lambda: [
                e for e in health_events(api, "n", "VolumeConditionNormal") if e["message"].startswith(f"on node {NODE}")])
            assert normal[0]["type"] == "Normal"
        finally:
            cluster.unstage(handle, staging)
