"""/metrics, /healthz and the per-RPC log lines, checked after a known sequence of calls."""
import json
import os
import re
import time
import urllib.error
import urllib.request

import grpc
import pytest

from conftest import csi_pb2, create_req, mount_cap, code_of, free_port, MiB
from test_node import paths, stage, publish, unpublish, unstage


def scrape(port, path="/metrics"):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.status, r.read().decode()


def samples(text):
    """{(name, frozenset(labels)): value} from the Prometheus text format."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)', line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(s, name, **labels):
    return s.get((name, frozenset(labels.items())))


@pytest.fixture
def metered(plugin):
    port = free_port()
    plugin.stop()
    plugin.start(extra_args=["--metrics-address", f"127.0.0.1:{port}", "--log-format", "json"])
    deadline = time.monotonic() + 10
    while True:
        try:
            scrape(port, "/healthz")
            break
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline, "the metrics server did not come up"
            time.sleep(0.02)
    return plugin, port


def test_metrics_after_a_known_sequence(metered):
    plugin, port = metered
    for _ in range(3):
        plugin.identity.Probe(csi_pb2.ProbeRequest())
    plugin.controller.CreateVolume(create_req("m1", required=300 * MiB, cap=mount_cap("xfs")))
    plugin.controller.CreateVolume(create_req("m2", required=8 * MiB))
    plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="m2"))
    assert code_of(plugin.controller.ControllerExpandVolume, csi_pb2.ControllerExpandVolumeRequest(
        volume_id="nope", capacity_range=csi_pb2.CapacityRange(required_bytes=MiB))) == grpc.StatusCode.NOT_FOUND
    cap = mount_cap("xfs")
    staging, target = paths(plugin, "m1")
    stage(plugin, "m1", staging, cap)
    publish(plugin, "m1", staging, target, cap)
    with open(os.path.join(target, "f"), "wb") as f:
        f.write(os.urandom(20 * MiB))
        os.fsync(f.fileno())

    status, text = scrape(port)
    assert status == 200
    s = samples(text)
    assert value(s, "swell_rpc_total", method="Probe", code="OK") == 3
    assert value(s, "swell_rpc_total", method="CreateVolume", code="OK") == 2
    assert value(s, "swell_rpc_total", method="DeleteVolume", code="OK") == 1
    assert value(s, "swell_rpc_total", method="ControllerExpandVolume", code="NOT_FOUND") == 1
    assert value(s, "swell_rpc_total", method="NodeStageVolume", code="OK") == 1
    assert value(s, "swell_rpc_duration_seconds_count", method="CreateVolume") == 2
    assert value(s, "swell_rpc_duration_seconds_sum", method="CreateVolume") > 0
    assert value(s, "swell_volumes", state="healthy") == 1
    assert value(s, "swell_volumes", state="abnormal") == 0
    assert value(s, "swell_volumes", state="attached") == 1
    assert value(s, "swell_volume_capacity_bytes", volume="m1") == 300 * MiB
    st = os.statvfs(target)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    assert abs(value(s, "swell_volume_used_bytes", volume="m1") - used) < MiB
    assert value(s, "swell_volume_used_bytes", volume="m1") >= 20 * MiB

    unpublish(plugin, "m1", target)
    unstage(plugin, "m1", staging)
    s = samples(scrape(port)[1])
    assert value(s, "swell_volumes", state="attached") == 0
    assert value(s, "swell_volume_capacity_bytes", volume="m1") is None


def test_healthz_and_unknown_paths(metered):
    plugin, port = metered
    assert scrape(port, "/healthz") == (200, "ok\n")
    with pytest.raises(urllib.error.HTTPError) as err:
        scrape(port, "/nope")
    assert err.value.code == 404


def test_json_log_has_one_line_per_rpc_without_secrets(metered):
    plugin, port = metered
    req = create_req("logged", required=8 * MiB)
    req.secrets["password"] = "hunter2-secret"
    plugin.controller.CreateVolume(req)
    assert code_of(plugin.controller.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id="a/b")) == \
        grpc.StatusCode.INVALID_ARGUMENT
    time.sleep(0.2)
    log = open(plugin.log_path).read()
    assert "hunter2-secret" not in log
    lines = [json.loads(l) for l in log.splitlines() if l.startswith("{")]
    rpcs = [l for l in lines if l.get("msg") == "rpc"]
    create = [l for l in rpcs if l["method"] == "CreateVolume"]
    assert len(create) == 1
    assert create[0]["volume"] == "logged" and create[0]["code"] == "OK" and float(create[0]["ms"]) > 0
    assert create[0]["level"] == "info" and create[0]["ts"].endswith("Z")
    bad = [l for l in rpcs if l["method"] == "DeleteVolume"]
    assert bad and bad[0]["code"] == "INVALID_ARGUMENT" and "volume_id" in bad[0]["error"]
