#!/usr/bin/env python3
"""Renders deploy/monitoring/prometheusrule.yaml (for the Prometheus Operator) from
deploy/monitoring/rules.yaml (a plain rules file), so the two never differ:
    python3 scripts/monitoring-rules.py            # writes the file
    python3 scripts/monitoring-rules.py --check    # exits 1 when the file is stale"""
import os
import sys

import yaml

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "monitoring")
HEADER = "# Rendered from rules.yaml by scripts/monitoring-rules.py: edit that file, then run the script.\n"


class Literal(str):
    pass


class Dumper(yaml.SafeDumper):
    """Indents sequences under their key, as yamllint's default asks."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


Dumper.add_representer(
    Literal, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|"))


def render():
    with open(os.path.join(HERE, "rules.yaml")) as f:
        groups = yaml.safe_load(f)["groups"]
    for group in groups:
        for rule in group["rules"]:
            if "\n" in rule["expr"]:
                rule["expr"] = Literal(rule["expr"])
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "swell", "namespace": "swell-system",
                     "labels": {"app.kubernetes.io/name": "swell", "app.kubernetes.io/component": "monitoring"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(rule, Dumper=Dumper, sort_keys=False, width=110)


def main():
    path = os.path.join(HERE, "prometheusrule.yaml")
    text = render()
    if "--check" in sys.argv[1:]:
        with open(path) as f:
            if f.read() != text:
                sys.exit(f"{path} is stale: run scripts/monitoring-rules.py")
        return
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
