"""deploy/monitoring/: the alerting rules pass `promtool check rules` and their unit tests (each alert
fires, and stays silent on a near miss); the PrometheusRule is the rules file's groups; the
PodMonitor and PrometheusRule use only fields of the Prometheus Operator's v1 CRDs and scrape ports
the pods really have; the monitoring overlay renders and validates. The live check, a real
Prometheus scraping a real plugin and sidecar, is sidecars/tests/test_prometheus.py."""
import json
import os
import shutil
import subprocess

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MONITORING = os.path.join(HERE, "monitoring")


def load(name):
    with open(os.path.join(MONITORING, name)) as f:
        return yaml.safe_load(f)


def promtool(*args):
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (scripts/setup.sh --tests installs the prometheus package)")
    return subprocess.run(["promtool", *args], cwd=MONITORING, capture_output=True, text=True)


def alerts():
    return [r for g in load("rules.yaml")["groups"] for r in g["rules"]]


def test_rules_pass_promtool_check():
    r = promtool("check", "rules", "rules.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in r.stdout, r.stdout


def test_rules_pass_their_unit_tests():
    r = promtool("test", "rules", "rules.test.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_each_alert_is_tested_firing_and_silent():
    cases = [c for t in load("rules.test.yaml")["tests"] for c in t.get("alert_rule_test", [])]
    for rule in alerts():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']} is never tested firing"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']} is never tested silent"
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_prometheusrule_holds_the_rules_files_groups():
    r = subprocess.run(["python3", os.path.join(ROOT, "scripts", "monitoring-rules.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert load("prometheusrule.yaml")["spec"]["groups"] == load("rules.yaml")["groups"]


# The fields this project uses, as the Prometheus Operator's v1 CRDs (monitoring.coreos.com,
# podmonitors and prometheusrules) define them: name → type, or a nested object's fields.
# The CRDs themselves are not vendored here; these are transcribed from their openAPIV3Schema.
POD_MONITOR_SPEC = {
    "selector": {"matchLabels": dict, "matchExpressions": list},
    "namespaceSelector": {"any": bool, "matchNames": list},
    "podMetricsEndpoints": [{
        "port": str, "portNumber": int, "path": str, "interval": str, "scrapeTimeout": str, "scheme": str,
        "honorLabels": bool, "relabelings": [{"sourceLabels": list, "targetLabel": str, "regex": str,
                                             "replacement": str, "action": str, "separator": str}],
        "metricRelabelings": list,
    }],
    "jobLabel": str, "podTargetLabels": list, "sampleLimit": int,
}
PROMETHEUS_RULE_SPEC = {
    "groups": [{
        "name": str, "interval": str, "limit": int, "partial_response_strategy": str,
        "rules": [{"alert": str, "record": str, "expr": str, "for": str, "keep_firing_for": str,
                   "labels": dict, "annotations": dict}],
    }],
}


def check_fields(value, schema, where):
    if isinstance(schema, dict):
        assert isinstance(value, dict), f"{where} is not an object"
        for key, sub in value.items():
            assert key in schema, f"{where}.{key} is not a field of the CRD"
            check_fields(sub, schema[key], f"{where}.{key}")
    elif isinstance(schema, list):
        assert isinstance(value, list), f"{where} is not a list"
        for i, item in enumerate(value):
            check_fields(item, schema[0], f"{where}[{i}]")
    else:
        assert isinstance(value, schema), f"{where} is not a {schema.__name__}"


@pytest.mark.parametrize("name, kind, schema", [
    ("podmonitor.yaml", "PodMonitor", POD_MONITOR_SPEC),
    ("prometheusrule.yaml", "PrometheusRule", PROMETHEUS_RULE_SPEC),
])
def test_custom_resources_use_the_crds_fields(name, kind, schema):
    obj = load(name)
    assert obj["apiVersion"] == "monitoring.coreos.com/v1" and obj["kind"] == kind
    assert obj["metadata"]["namespace"] == "swell-system"
    check_fields(obj["spec"], schema, "spec")


def render(target):
    return [d for d in yaml.safe_load_all(subprocess.run(
        ["kubectl", "kustomize", os.path.join(HERE, target)], capture_output=True, text=True, check=True).stdout) if d]


def test_the_podmonitor_scrapes_ports_the_pods_have():
    objs = render("overlays/monitoring")
    monitor = next(d for d in objs if d["kind"] == "PodMonitor")
    selector = monitor["spec"]["selector"]["matchExpressions"][0]
    assert selector["key"] == "app.kubernetes.io/name" and selector["operator"] == "In"
    workloads = [d for d in objs if d["kind"] in ("DaemonSet", "Deployment")]
    assert sorted(d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] for d in workloads) == \
        sorted(selector["values"])
    wanted = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    for w in workloads:
        assert w["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
        ports = {p["name"]: p["containerPort"] for c in w["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        assert wanted <= set(ports), (w["metadata"]["name"], ports)
        # Each named port is the one its container's --metrics-address serves.
        for c in w["spec"]["template"]["spec"]["containers"]:
            for p in c.get("ports", []):
                if p["name"] in wanted:
                    assert f"--metrics-address=0.0.0.0:{p['containerPort']}" in c["args"], (c["name"], p)
    # SwellComponentDown watches jobs named like this one's ("<namespace>/<name>").
    assert "swell" in f"{monitor['metadata']['namespace']}/{monitor['metadata']['name']}"


def test_the_monitoring_overlay_renders_and_its_core_objects_validate(tmp_path):
    objs = render("overlays/monitoring")
    kinds = [d["kind"] for d in objs]
    assert kinds.count("PodMonitor") == 1 and kinds.count("PrometheusRule") == 1
    board = next(d for d in objs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "swell-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["dashboard.json"])["uid"] == "swell-volumes"
    core = tmp_path / "core.yaml"
    core.write_text(yaml.safe_dump_all([d for d in objs if not d["apiVersion"].startswith("monitoring.coreos.com/")]))
    r = subprocess.run(["kubernetes-validate", "-k", "1.33.0", "--strict", "--quiet", str(core)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_dashboard_is_well_formed():
    with open(os.path.join(MONITORING, "dashboard.json")) as f:
        board = json.load(f)
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "instance", "volume"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        if p["type"] == "row":
            continue
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
    assert board["annotations"]["list"][0]["name"] == "Grows"
