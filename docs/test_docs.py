"""The docs a newcomer walks: README.md stays a front door (under 200 lines); every link in README.md
and docs/ resolves, to a file and, where it names one, to a heading; and everything the code accepts
or emits that an operator meets is documented: every StorageClass parameter and annotation, every
Event reason, every metric and every alert. The lists are read from the sources, so a new parameter,
Event or metric without its line in the docs fails here."""
import glob
import os
import re

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def pages():
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(HERE, "*.md")))


def without_code(text):
    """The text with fenced code blocks and inline code spans blanked out."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading):
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    text = re.sub(r"^```.*?^```", "", open(path).read(), flags=re.M | re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_readme_is_a_front_door():
    lines = read("README.md").splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines"
    text = "\n".join(lines)
    for command in ("scripts/demo.sh", "scripts/test.sh"):
        assert f"```sh\n{command}\n```" in text, command
    for page in sorted(glob.glob(os.path.join(HERE, "*.md"))):
        assert f"(docs/{os.path.basename(page)})" in text, f"README.md does not link {os.path.basename(page)}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_link_resolves(page):
    text = without_code(open(page).read())
    links = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text)
    assert links, "a page without links"
    for link in links:
        if link.startswith(("http://", "https://")):
            continue  # no network here; the repository's own links are what can rot
        target, _, anchor = link.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
        assert path.startswith(ROOT + os.sep), f"{link} leaves the repository"
        assert os.path.exists(path), f"{link}: {os.path.relpath(path, ROOT)} does not exist"
        if anchor:
            assert path.endswith(".md"), f"{link}: an anchor into a file that is not markdown"
            assert anchor in anchors(path), f"{link}: no heading #{anchor} in {os.path.relpath(path, ROOT)}"


def documented(page):
    return read("docs", page)


def test_every_class_parameter_is_documented():
    validation = read("Sources", "SwellDriver", "Validation.swift")
    known = re.search(r"let known = \[([^\]]+)\]", validation).group(1)
    params = re.findall(r'"([^"]+)"', known)
    assert "backend" in params and len(params) >= 5, params
    provisioner = read("sidecars", "Sources", "SwellSidecar", "Provisioner.swift")
    for kind in re.findall(r'secretReference\("([a-z-]+)"', provisioner):
        params += [f"csi.storage.k8s.io/{kind}-secret-name", f"csi.storage.k8s.io/{kind}-secret-namespace"]
    params += sorted(set(re.findall(r'"(csi\.storage\.k8s\.io/fstype)"', sidecar_sources())))
    doc = documented("storage-classes.md")
    table = doc[doc.index("## Parameters"):]
    for p in params:
        assert f"`{p}`" in table, f"class parameter {p} is not in docs/storage-classes.md's table"


def test_every_autogrow_annotation_is_documented():
    policy = read("sidecars", "Sources", "SwellSidecar", "AutoGrowPolicy.swift")
    prefix = re.search(r'static let prefix = "([^"]+)"', policy).group(1)
    keys = re.findall(r'"([a-z-]+)"', re.search(r"static let keys = \[([^\]]+)\]", policy).group(1))
    assert "max" in keys, keys
    doc = documented("auto-grow.md")
    for key in keys:
        assert f"`{prefix}{key}`" in doc, f"annotation {prefix}{key} is not in docs/auto-grow.md"


def sidecar_sources():
    return "".join(open(p).read() for p in glob.glob(os.path.join(ROOT, "sidecars", "Sources", "**", "*.swift"),
                                                     recursive=True))


def event_reasons():
    return set(re.findall(r'events\.record\(.{0,200}?reason:\s*"([A-Z][A-Za-z]+)"', sidecar_sources(), flags=re.S))


def test_every_event_reason_is_in_troubleshooting():
    reasons = event_reasons()
    assert {"ProvisioningFailed", "VolumeResizeFailed", "AutoGrowCapped"} <= reasons, reasons
    doc = documented("troubleshooting.md")
    for reason in sorted(reasons):
        assert f"| {reason} |" in doc, f"Event reason {reason} has no row in docs/troubleshooting.md"


def exported_metrics():
    names = set()
    for path in (os.path.join(ROOT, "Sources", "SwellDriver", "Metrics.swift"),
                 os.path.join(ROOT, "sidecars", "Sources", "SwellSidecar", "SidecarMetrics.swift")):
        text = open(path).read()
        names |= set(re.findall(r'gauge\(\s*"(swell_[a-z_]+)"', text))
        for m in re.finditer(r"MetricNameDescriptor\((.*?)\)", text, flags=re.S):
            fields = dict(re.findall(r'(namespace|subsystem|metricName|unitName):\s*"([^"]*)"', m.group(1)))
            parts = [fields.get(k, "") for k in ("namespace", "subsystem", "metricName", "unitName")]
            names.add("_".join(p for p in parts if p))
    return names


def test_every_metric_is_documented():
    names = exported_metrics()
    assert {"swell_rpc_total", "swell_pool_available_bytes", "swell_sidecar_autogrow_duration_seconds"} <= names, names
    doc = documented("monitoring.md")
    for name in sorted(names):
        assert f"`{name}" in doc, f"metric {name} is not in docs/monitoring.md"


def test_every_alert_is_documented():
    with open(os.path.join(ROOT, "deploy", "monitoring", "rules.yaml")) as f:
        alerts = [r["alert"] for g in yaml.safe_load(f)["groups"] for r in g["rules"]]
    monitoring, troubleshooting = documented("monitoring.md"), documented("troubleshooting.md")
    for alert in alerts:
        assert f"| {alert} |" in monitoring, f"{alert} has no row in docs/monitoring.md"
        assert alert in troubleshooting, f"{alert} is not in docs/troubleshooting.md"
