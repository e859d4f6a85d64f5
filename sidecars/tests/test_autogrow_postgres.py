"""Auto-grow under a real database: PostgreSQL 15 on a small Swell volume, pgbench's inserts fill
it, and the per-node sidecar grows the claim (this test plays kubelet for the node half, as in
test_autogrow) before PostgreSQL ever sees "No space left on device"."""

import os
import re
import sys
import time

import pytest

from conftest import ROOT, csiconf
from test_autogrow import Kubelet, staged_autogrow_claim

sys.path.insert(0, os.path.join(ROOT, "conformance"))
import pg  # noqa: E402

MiB = 1 << 20

# About 1 MiB of heap per transaction; at 20 transactions a second pgbench writes ~20 MiB/s.
# An AutoGrow Event: "... to 480Mi: F of T bytes free; <why>", where <why> is the threshold or
# "filling at R bytes/s (...)".
EVENT = re.compile(r"(\d+) of (\d+) bytes free[^;]*; (.*)$")
RATE = re.compile(r"^filling at (\d+) bytes/s")

FILL = "INSERT INTO filler (payload) SELECT repeat(md5(g::text), 32) FROM generate_series(1, 1000) g;\n"


def test_autogrow_grows_a_postgres_volume_before_it_is_full(cluster):
    if not pg.available():
        pytest.fail("postgresql-15 is not installed (scripts/setup.sh --tests installs it)")
    api = cluster.api
    handle, staging = staged_autogrow_claim(cluster, "pg", {
        "autogrow.swell.dev/threshold": "30%", "autogrow.swell.dev/increase": "50%",
        "autogrow.swell.dev/min-step": "128Mi", "autogrow.swell.dev/max": "2Gi",
        "autogrow.swell.dev/cooldown": "1s"})
    pg.open_path_for_postgres(staging)
    kubelet = Kubelet(api, cluster.plugin, "pg", handle, staging)
    kubelet.start()
    server = pg.Server(os.path.join(staging, "pgdata"), csiconf.free_port())
    script = os.path.join(cluster.root, "fill.sql")
    with open(script, "w") as f:
        f.write(FILL)
    os.chmod(script, 0o644)
    try:
        server.initdb()
        server.start()
        server.pgbench("-i", "-s", "2", "-q", check=True, capture_output=True)
        server.psql("CREATE TABLE filler (id bigserial PRIMARY KEY, payload text NOT NULL)")
        server.psql("ALTER TABLE filler ALTER COLUMN payload SET STORAGE PLAIN")
        first = os.statvfs(staging)
        began = time.monotonic()
        # ~600 MiB of rows into a 320 MiB volume: without growing it fills a third of the way in.
        load = server.pgbench_background("-n", "-c", "2", "-j", "2", "-R", "20", "-T", "30", "-f", script)
        out, _ = load.communicate(timeout=180)
        elapsed = time.monotonic() - began
        end = os.statvfs(staging)
        used = lambda st: (st.f_blocks - st.f_bfree) * st.f_frsize  # noqa: E731
        average_rate = (used(end) - used(first)) / elapsed
        assert load.returncode == 0, out
        assert "number of failed transactions: 0" in out, out
        rows = int(server.psql("SELECT count(*) FROM filler"))
        assert rows >= 400 * 1000, out
        size = int(server.psql("SELECT pg_database_size('postgres')"))
        assert size > 320 * MiB, "the database outgrew the volume's first size"
        log = open(server.log).read()
        assert "No space left on device" not in log, log[-3000:]
        code, report = server.amcheck()
        assert code == 0, report
        grows = [e for e in api.events_for("pg") if e["reason"] == "AutoGrow"]
        assert len(grows) >= 2, grows
        # No raise with more than twice the threshold's free space, unless the fill rate over the
        # window demanded it, and that rate was the database's own, not a burst's (XFS's
        # preallocation, a new 16 MiB WAL segment) magnified.
        for event in grows:
            free, total, why = EVENT.search(event["message"]).groups()
            if int(free) > 2 * 0.3 * int(total):
                rate = RATE.match(why)
                assert rate, f"raised at {int(free) // MiB} of {int(total) // MiB} MiB free: {event['message']}"
                assert int(rate.group(1)) <= 2 * average_rate, \
                    f"a rate of {int(rate.group(1)) // MiB} MiB/s, the database filled at {average_rate / MiB:.1f}: {event['message']}"
        print(f"the database filled at {average_rate / MiB:.1f} MiB/s; " + " | ".join(e["message"] for e in grows))
        st = os.statvfs(staging)
        assert st.f_blocks * st.f_frsize > first.f_blocks * first.f_frsize + size - 320 * MiB
        assert kubelet.error is None, kubelet.error
    finally:
        server.stop()
        kubelet.stop.set()
        kubelet.join(timeout=5)
        cluster.unstage(handle, staging)
