"""Swell's monitoring against a real Prometheus: it scrapes the real plugin and the per-node sidecar
while a volume fills, auto-grows to its maximum and fills on, then every dashboard query and every
alert expression is evaluated through Prometheus's HTTP API. The fill alert must fire before the
volume is full. promtool checks both /metrics pages.

The rules are loaded from deploy/monitoring/rules.yaml with each `for:` set to 0s: the durations are
unit-tested by promtool (rules.test.yaml); here the expressions meet real series."""
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from conftest import ROOT, csiconf
from test_autogrow import Kubelet, staged_autogrow_claim, write_synced
from test_scheduled_snapshots import Clock, scheduler, wait_next, wait_snapshot

MiB = 1 << 20
MONITORING = os.path.join(ROOT, "deploy", "monitoring")


class Prometheus:
    """A private Prometheus: its own config, rules and TSDB under `root`, on a free loopback port."""

    def __init__(self, root, jobs, rules):
        self.root = root
        self.port = csiconf.free_port()
        with open(os.path.join(root, "rules.yaml"), "w") as f:
            yaml.safe_dump(rules, f)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [os.path.join(root, "rules.yaml")],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in jobs.items()],
        }
        with open(os.path.join(root, "prometheus.yml"), "w") as f:
            yaml.safe_dump(config, f)
        self.log_path = os.path.join(root, "prometheus.log")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [shutil.which("prometheus"), f"--config.file={root}/prometheus.yml",
                 f"--storage.tsdb.path={root}/tsdb", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--web.enable-lifecycle", "--log.level=warn"], stdout=log, stderr=log)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self):
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"prometheus never became ready:\n{self.log()}"
            time.sleep(0.2)

    def log(self):
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr):
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def firing(self, alertname):
        return [a for a in self.api("alerts")["alerts"]
                if a["labels"]["alertname"] == alertname and a["state"] == "firing"]

    def wait_targets_up(self, count, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            up = [r for r in self.query("up == 1")]
            if len(up) >= count:
                return up
            assert time.monotonic() < deadline, (self.api("targets"), self.log())
            time.sleep(0.5)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def rules_without_durations():
    with open(os.path.join(MONITORING, "rules.yaml")) as f:
        rules = yaml.safe_load(f)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    return rules


def dashboard_queries():
    """Every query of the dashboard (panels and annotations), with its variables set to match all
    and Grafana's $__rate_interval to 10s (four 1 s scrapes and more)."""
    with open(os.path.join(MONITORING, "dashboard.json")) as f:
        board = json.load(f)
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"]]
    out = []
    for e in exprs:
        for var, value in (("$__rate_interval", "10s"), ("$instance", ".*"), ("$volume", ".*")):
            e = e.replace(var, value)
        assert "$" not in e, e
        out.append(e)
    return out


def metric_names(expr):
    """The metric names an expression reads (identifiers followed by a selector or a range)."""
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?:\{|\[)", expr))
    functions = {"rate", "increase", "changes", "predict_linear", "histogram_quantile", "sum", "by", "on"}
    return names - functions


def promtool_check_metrics(text):
    r = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


@pytest.fixture
def prometheus_tools():
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup.sh --tests installs the prometheus package)")


def test_dashboard_and_alerts_against_a_real_prometheus(cluster, prometheus_tools):
    api = cluster.api
    handle, staging = staged_autogrow_claim(cluster, "db", {
        "autogrow.swell.dev/threshold": "30%", "autogrow.swell.dev/increase": "50%",
        "autogrow.swell.dev/min-step": "64Mi", "autogrow.swell.dev/max": "640Mi",
        "autogrow.swell.dev/cooldown": "1s"})
    sidecar = cluster.sidecars[-1]
    # The controller's sidecar, for the scheduled snapshots' series: its scheduler on a clock the test
    # moves; with --backend iscsi it provisions, grows and snapshots nothing of these loop volumes.
    clock = Clock(cluster.root, "2026-12-06T10:00:01Z")
    central = scheduler(cluster, clock, "--backend", "iscsi")
    plugin_port = cluster.plugin.metrics_port
    kubelet = Kubelet(api, cluster.plugin, "db", handle, staging)
    path = os.path.join(staging, "data")
    started = time.time()
    fired = None
    prom = None
    try:
        prom = Prometheus(cluster.root, {
            "swell-plugin": [f"127.0.0.1:{plugin_port}"],
            "swell-sidecar": [f"127.0.0.1:{sidecar.metrics_port}"],
            "swell-sidecar-controller": [f"127.0.0.1:{central.metrics_port}"],
        }, rules_without_durations())
        kubelet.start()
        assert len(prom.wait_targets_up(3)) == 3
        # Fill at about 20 MiB/s through two grows (320 → 480 → 640 MiB, the maximum), then on at about
        # 8 MiB/s toward full, until the fill alert fires.
        chunk = os.urandom(2 * MiB)
        with open(path, "wb") as f:
            for i in range(400):
                write_synced(f, chunk, i * len(chunk))  # ENOSPC: full before the alert fired
                at_maximum = api.get(api.pvc_path("db"))["status"]["capacity"]["storage"] == "640Mi"
                time.sleep(0.25 if at_maximum else 0.1)
                if at_maximum and (alerts := prom.firing("SwellVolumeFillingFast")):
                    fired = alerts[0]
                    break
        assert fired is not None, "the fill alert never fired"
        assert fired["labels"]["volume"] == handle and fired["labels"]["job"] == "swell-plugin", fired
        st = os.statvfs(staging)
        free = st.f_bavail * st.f_frsize
        assert free > 0, "fired before full"
        assert kubelet.error is None, kubelet.error
        # An infeasible grow: the resizer's error, for the error panels and their alert.
        api.update_claim("db", lambda c: c["spec"]["resources"]["requests"].update(storage="20Ti"))
        sidecar.wait_metric("swell_sidecar_operations_total", 0, operation="resize", result="error")
        sidecar.wait_metric("swell_sidecar_autogrow_at_maximum", 0, namespace="default", persistentvolumeclaim="db")
        # Two scheduled snapshots of the claim: the first made ready, the second failed, with the
        # statuses the common snapshot-controller writes.
        api.update_claim("db", lambda c: c["metadata"]["annotations"].update(
            {"snapshot.swell.dev/schedule": "@every 10s", "snapshot.swell.dev/keep": "5"}))
        wait_next(api, "db", "2026-12-06T10:00:10Z")
        for slot, status in (("100010", {"readyToUse": True}),
                             ("100020", {"readyToUse": False, "error": {"message": "refused", "time": "2026-12-06T10:00:21Z"}})):
            clock.set(f"2026-12-06T{slot[:2]}:{slot[2:4]}:{slot[4:]}Z")
            snap = wait_snapshot(api, f"db-20261206-{slot}")
            snap["status"] = status
            api.ok("PUT", f"/apis/snapshot.storage.k8s.io/v1/namespaces/default/volumesnapshots/{snap['metadata']['name']}/status",
                   snap)
        central.wait_metric("swell_sidecar_scheduled_snapshots_total", 0, operation="ready", result="error")
        central.wait_metric("swell_sidecar_scheduled_snapshot_last_ready_timestamp_seconds", 0, target="pvc/db")
        time.sleep(3)  # three scrapes past the last change

        for expr in dashboard_queries():
            assert prom.query(expr), f"the dashboard query returned nothing: {expr}"
        seen = set(prom.api("label/__name__/values"))
        for group in rules_without_durations()["groups"]:
            for rule in group["rules"]:
                prom.query(rule["expr"])  # evaluates: a parse or type error fails here
                missing = metric_names(rule["expr"]) - seen
                assert not missing, f"{rule['alert']} reads series nobody exports: {missing}"
        assert prom.firing("SwellVolumeAtAutoGrowMaximum"), prom.api("alerts")
        assert not prom.firing("SwellComponentDown")

        for name, port in (("plugin", plugin_port), ("sidecar", sidecar.metrics_port),
                           ("controller's sidecar", central.metrics_port)):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                code, out = promtool_check_metrics(r.read().decode())
            assert code == 0, f"promtool check metrics on the {name}'s /metrics:\n{out}"

        if os.environ.get("SWELL_MONITORING_DATA"):
            save_series(prom, handle, started, os.environ["SWELL_MONITORING_DATA"])
    finally:
        kubelet.stop.set()
        if kubelet.is_alive():
            kubelet.join(timeout=5)
        if os.path.exists(path):
            os.remove(path)
        cluster.unstage(handle, staging)
        if prom is not None:
            prom.stop()


def save_series(prom, volume, start, path):
    """The fill-and-grow panels' series over the run, for scripts/plot-monitoring.py."""
    end = time.time()
    out = {"volume": volume, "start": start}
    for key, expr in (("capacity", f'swell_volume_capacity_bytes{{volume="{volume}"}}'),
                      ("used", f'swell_volume_used_bytes{{volume="{volume}"}}'),
                      ("alert", f'ALERTS{{alertname="SwellVolumeFillingFast", alertstate="firing", volume="{volume}"}}')):
        data = prom.api("query_range", query=expr, start=start, end=end, step="1s")["result"]
        out[key] = [[float(t), float(v)] for t, v in data[0]["values"]] if data else []
    with open(path, "w") as f:
        json.dump(out, f)
