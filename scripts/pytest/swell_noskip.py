"""A pytest plugin (scripts/test.sh loads it with -p): where scripts/setup.sh --tests has installed
every tool the tests need (SWELL_NO_SKIPS=1, or CI=true), a skipped test is a failure, its reason
kept. Elsewhere skips stay skips, and -rs prints their reasons."""
import os

import pytest

STRICT = os.environ.get("SWELL_NO_SKIPS", "1" if os.environ.get("CI") == "true" else "0") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped where every tool is installed (SWELL_NO_SKIPS=1): {reason}"
