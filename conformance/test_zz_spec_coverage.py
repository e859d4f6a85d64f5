"""SPEC-COVERAGE.md cannot go stale: every row names tests that exist (or says why none applies),
and every RPC of the Identity, Controller and Node services in proto/csi.proto has a row.
Named test_zz_ so that it runs last."""
import ast
import os
import re

from conftest import HERE, PROTO

TABLE = os.path.join(HERE, "SPEC-COVERAGE.md")
TEST_REF = re.compile(r"\b(test_[a-z0-9_]+\.py)::(test_[A-Za-z0-9_]+)\b")


def rows():
    out = []
    with open(TABLE) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 5 and re.fullmatch(r"[A-Z]+[0-9]+", cells[0]):
                out.append(cells)
    return out


def functions_in(filename):
    with open(os.path.join(HERE, filename)) as f:
        tree = ast.parse(f.read())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_row_names_tests_that_exist_or_says_why_none_applies():
    table = rows()
    assert len(table) >= 60, "the table lost rows"
    ids = [r[0] for r in table]
    assert len(ids) == len(set(ids)), "row ids are unique"
    missing = []
    for rid, section, condition, code, test in table:
        assert section and condition and code, f"row {rid} is incomplete"
        refs = TEST_REF.findall(test)
        if test.startswith("n/a:"):
            assert len(test) > len("n/a: ") + 10, f"row {rid} says n/a without a reason"
        else:
            assert refs, f"row {rid} names no test and gives no reason"
        for filename, name in refs:
            if not os.path.exists(os.path.join(HERE, filename)) or name not in functions_in(filename):
                missing.append(f"{rid}: {filename}::{name}")
    assert missing == [], "rows name tests that do not exist"


def test_every_rpc_of_the_three_services_has_a_row():
    with open(PROTO) as f:
        proto = f.read()
    rpcs = []
    for service in ("Identity", "Controller", "Node"):
        start = proto.index("service %s {" % service)
        depth, i = 0, proto.index("{", start)
        while True:  # the service's body, to its matching brace
            depth += {"{": 1, "}": -1}.get(proto[i], 0)
            if depth == 0:
                break
            i += 1
        rpcs += re.findall(r"\brpc\s+(\w+)\s*\(", proto[start:i])
    assert "NodeExpandVolume" in rpcs and "CreateVolume" in rpcs and "Probe" in rpcs
    sections = " ".join(r[1] for r in rows())
    # The coverage of an RPC may sit under its Errors section or its own name.
    uncovered = [rpc for rpc in rpcs if not re.search(r"\b%s\b" % rpc, sections)]
    assert uncovered == [], f"RPCs without a row: {uncovered}"
