"""SPEC-COVERAGE.md cannot go stale: every row names tests that exist (or says why none applies),
and every RPC of the Identity, Controller, GroupController and Node services in proto/csi.proto has a row.
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


def test_every_rpc_of_the_four_services_has_a_row():
    with open(PROTO) as f:
        proto = f.read()
    rpcs = []
    for service in ("Identity", "Controller", "GroupController", "Node"):
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


CODES = ("INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED",
         "OUT_OF_RANGE", "ABORTED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED",
         "PERMISSION_DENIED")


def source_of(filename, name):
    """A test's source, with the module-level functions and constants it names (a helper, a guest
    script, a parametrized table), transitively, so that a code checked through a helper counts."""
    with open(os.path.join(HERE, filename)) as f:
        text = f.read()
    tree = ast.parse(text)
    top = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assigns = {t.id: n for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    seen, todo, parts = {name}, [top[name]], []
    while todo:  # the test, and what it names of its module, transitively
        node = todo.pop()
        parts.append(ast.get_source_segment(text, node))
        parts += [ast.get_source_segment(text, d) for d in getattr(node, "decorator_list", [])]
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id not in seen and (sub.id in top or sub.id in assigns):
                seen.add(sub.id)
                todo.append(top.get(sub.id) or assigns[sub.id])
    return "\n".join(parts)


def test_each_row_with_an_error_code_has_a_test_that_names_that_code():
    """Mechanically: a row that requires a gRPC code must name a test whose source (with its helpers)
    names that code, so that a row cannot point at a test that checks something else."""
    weak = []
    for rid, _, _, code, test in rows():
        wanted = [c for c in CODES if re.search(r"\b%s\b" % c, code)]
        refs = TEST_REF.findall(test)
        if not wanted or not refs or test.startswith("n/a:"):
            continue
        sources = " ".join(source_of(f, n) for f, n in refs)
        if not any(re.search(r"\b%s\b" % c, sources) for c in wanted):
            weak.append(f"{rid} ({'/'.join(wanted)}): {', '.join(n for _, n in refs)}")
    assert weak == [], "rows whose tests never name the row's code:\n" + "\n".join(weak)
