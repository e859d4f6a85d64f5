"""Scheduled snapshots with retention: the central sidecar takes VolumeSnapshots of claims on the
schedules their annotations (or their StorageClass's) set, and deletes them by their retention.

The scheduler's wall clock is a file (`--schedule-clock-file`, Unix seconds) that the test moves, so
an hour of slots takes seconds. The test plays the common snapshot-controller where a snapshot must
become ready: it makes the content of a scheduled VolumeSnapshot, the sidecar's snapshotter takes the
real snapshot through the plugin, and the test binds the VolumeSnapshot."""

import calendar
import os
import signal
import time

from conftest import DRIVER
from test_group_snapshots import GROUP, create_group_class
from test_sidecar import pv_for, reasons, wait_bound

SNAP = "/apis/snapshot.storage.k8s.io/v1"
P = "snapshot.swell.dev/"
MiB = 1 << 20


def epoch(text):
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


class Clock:
    def __init__(self, root, start):
        self.path = os.path.join(root, "schedule-clock")
        self.set(start)

    def set(self, text):
        with open(self.path + ".tmp", "w") as f:
            f.write(f"{epoch(text)}\n")
        os.rename(self.path + ".tmp", self.path)


def scheduler(cluster, clock, *extra, name=None):
    return cluster.sidecar("--snapshots", "--scheduled-snapshots", "--schedule-clock-file", clock.path,
                           "--schedule-interval", "0.2", *extra, name=name)


def scheduled(api, ns="default", resource="volumesnapshots", group=SNAP):
    items = api.ok("GET", f"{group}/namespaces/{ns}/{resource}")["items"]
    return {s["metadata"]["name"]: s for s in items if s["metadata"].get("annotations", {}).get(P + "slot")}


def annotations(api, claim):
    return api.get(api.pvc_path(claim))["metadata"].get("annotations", {})


def wait_next(api, claim, text, timeout=30):
    return api.wait(f"{claim}'s next slot {text}", lambda: annotations(api, claim).get(P + "next-snapshot-at") == text,
                    timeout)


def wait_snapshot(api, name, ns="default"):
    return api.wait(f"VolumeSnapshot {name}", lambda: api.get(f"{SNAP}/namespaces/{ns}/volumesnapshots/{name}"))


def make_ready(cluster, snap, handle):
    """The common controller's part for a VolumeSnapshot the scheduler made: its content, taken by the
    sidecar through the plugin, then the VolumeSnapshot bound to it."""
    api = cluster.api
    uid = snap["metadata"]["uid"]
    name = f"snapcontent-{uid}"
    api.ok("POST", f"{SNAP}/volumesnapshotcontents", {
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
        "metadata": {"name": name, "finalizers": ["snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"]},
        "spec": {"deletionPolicy": "Delete", "driver": DRIVER, "source": {"volumeHandle": handle},
                 "volumeSnapshotClassName": snap["spec"]["volumeSnapshotClassName"],
                 "volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                                       "name": snap["metadata"]["name"], "namespace": "default", "uid": uid}}})
    ready = api.wait_content_finished(name)
    api.bind_snapshot(snap["metadata"]["name"], ready)
    return ready


def settled(sidecar, passes=3):
    """Waits for a few more of the scheduler's passes: after them, what it would do, it has done."""
    seen = sidecar.wait_metric("swell_sidecar_passes_total", -1, loop="snapshot-schedule")  # 0 until it serves
    sidecar.wait_metric("swell_sidecar_passes_total", seen + passes - 1, loop="snapshot-schedule")


def test_a_claims_schedule_takes_named_snapshots_and_keeps_the_newest(cluster):
    api = cluster.api
    clock = Clock(cluster.root, "2026-12-06T10:03:00Z")
    sidecar = scheduler(cluster, clock)
    api.create_class("swell")
    api.create_snapshot_class("snapclass")
    claim = api.create_claim("db", size="320Mi", annotations={
        P + "schedule": "*/10 * * * *", P + "keep": "2", P + "class": "snapclass"})
    wait_bound(api, "db")
    handle = pv_for(api, claim)["spec"]["csi"]["volumeHandle"]
    wait_next(api, "db", "2026-12-06T10:10:00Z")
    settled(sidecar)
    assert scheduled(api) == {}, "nothing before the first slot"

    contents = {}
    for slot in ("10:10", "10:20", "10:30"):
        clock.set(f"2026-12-06T{slot}:04Z")
        name = "db-20261206-" + slot.replace(":", "") + "00"
        snap = wait_snapshot(api, name)
        assert snap["metadata"]["labels"][P + "claim"] == "db"
        assert snap["metadata"]["annotations"][P + "slot"] == f"2026-12-06T{slot}:00Z"
        assert snap["metadata"]["annotations"][P + "schedule"] == "*/10 * * * *"
        assert snap["spec"] == {"source": {"persistentVolumeClaimName": "db"}, "volumeSnapshotClassName": "snapclass"}
        contents[name] = make_ready(cluster, snap, handle)
        after = {"10:10": "10:20", "10:20": "10:30", "10:30": "10:40"}[slot]
        wait_next(api, "db", f"2026-12-06T{after}:00Z")
        assert annotations(api, "db")[P + "last-snapshot"] == name

    # Keep 2: the oldest went once the third was taken.
    api.wait("retention", lambda: set(scheduled(api)) == {"db-20261206-102000", "db-20261206-103000"})
    assert reasons(api, "db").count("SnapshotScheduled") == 3
    assert "ScheduledSnapshotPruned" in reasons(api, "db")
    # The common controller deletes the pruned VolumeSnapshot's content; the real snapshot goes with it.
    oldest = contents["db-20261206-101000"]
    api.delete_content_as_controller(oldest["metadata"]["name"])
    api.wait("the pruned snapshot gone from the plugin", lambda: oldest["status"]["snapshotHandle"] not in cluster.snapshots())
    assert len(cluster.snapshots()) == 2
    assert sidecar.metric("swell_sidecar_scheduled_snapshots_total", operation="create", result="success") == 3
    assert sidecar.metric("swell_sidecar_scheduled_snapshots_total", operation="prune", result="success") == 1
    api.wait("the newest ready slot as a gauge", lambda: sidecar.metric(
        "swell_sidecar_scheduled_snapshot_last_ready_timestamp_seconds", target="pvc/db") == epoch("2026-12-06T10:30:00Z"))
    assert sidecar.metric("swell_sidecar_scheduled_snapshot_period_seconds", target="pvc/db") == 600
    # The claim deleted: its schedule's series go, so that the staleness alert does not fire for it.
    api.ok("DELETE", api.pvc_path("db"))
    api.wait("the schedule's series gone", lambda: "target=\"pvc/db\"" not in sidecar.http("/metrics")[1])
    assert len(scheduled(api)) == 2, "a deleted claim's snapshots stay"


def test_slots_missed_while_no_sidecar_ran_are_taken_once(cluster):
    api = cluster.api
    clock = Clock(cluster.root, "2026-12-06T10:03:00Z")
    first = scheduler(cluster, clock)
    api.create_class("swell")
    api.create_claim("db", size="320Mi", annotations={P + "schedule": "*/10 * * * *"})
    wait_bound(api, "db")
    wait_next(api, "db", "2026-12-06T10:10:00Z")
    first.stop()
    # Down for five slots (10:10 to 10:50); back at 10:55.
    clock.set("2026-12-06T10:55:00Z")
    second = scheduler(cluster, clock)
    wait_snapshot(api, "db-20261206-105000")
    wait_next(api, "db", "2026-12-06T11:00:00Z")
    settled(second)
    assert set(scheduled(api)) == {"db-20261206-105000"}, "one snapshot, for the latest slot due"
    message = next(e["message"] for e in api.events_for("db") if e["reason"] == "SnapshotScheduled")
    assert "4 earlier slot(s)" in message, message
    # A restart with no slot missed takes nothing.
    second.stop()
    scheduler(cluster, clock)
    settled(cluster.sidecars[-1])
    assert set(scheduled(api)) == {"db-20261206-105000"}


def test_two_replicas_take_each_slot_once(cluster):
    api = cluster.api
    clock = Clock(cluster.root, "2026-12-06T10:03:00Z")
    election = ("--leader-election", "--leader-election-namespace", "default", "--leader-election-lease-duration", "3",
                "--leader-election-renew-deadline", "2", "--leader-election-retry-period", "0.3")
    a = scheduler(cluster, clock, *election, name="a")
    b = scheduler(cluster, clock, *election, name="b")
    api.create_class("swell")
    api.create_claim("db", size="320Mi", annotations={P + "schedule": "*/10 * * * *"})
    wait_bound(api, "db")
    wait_next(api, "db", "2026-12-06T10:10:00Z")
    clock.set("2026-12-06T10:10:01Z")
    wait_snapshot(api, "db-20261206-101000")
    leader = api.wait("one leader", lambda: [s for s in (a, b) if s.metric("swell_sidecar_leader") == 1])
    assert len(leader) == 1
    settled(leader[0])
    assert reasons(api, "db").count("SnapshotScheduled") == 1
    # The leader dies without a word; the other takes the lease and the next slot.
    leader[0].stop(signal.SIGKILL)
    other = b if leader[0] is a else a
    other.wait_metric("swell_sidecar_leader", 0, timeout=30)
    clock.set("2026-12-06T10:20:01Z")
    wait_snapshot(api, "db-20261206-102000")
    settled(other)
    assert set(scheduled(api)) == {"db-20261206-101000", "db-20261206-102000"}
    assert reasons(api, "db").count("SnapshotScheduled") == 2


def test_a_class_schedule_max_age_failures_and_opting_out(cluster):
    api = cluster.api
    clock = Clock(cluster.root, "2026-12-06T10:30:00Z")
    sidecar = scheduler(cluster, clock)
    api.create_class("swell", annotations={P + "schedule": "@every 1h", P + "keep": "10", P + "max-age": "2h",
                                              P + "class": "snapclass"})
    api.create_snapshot_class("snapclass")
    claim = api.create_claim("a", size="320Mi")
    api.create_claim("b", size="320Mi", annotations={P + "schedule": "none"})
    api.create_claim("c", size="320Mi", annotations={P + "keep": "forever"})
    for name in ("a", "b", "c"):
        wait_bound(api, name)
    handle = pv_for(api, claim)["spec"]["csi"]["volumeHandle"]
    wait_next(api, "a", "2026-12-06T11:00:00Z")
    api.wait("the invalid policy reported", lambda: "SnapshotScheduleInvalid" in reasons(api, "c"))
    assert 'snapshot.swell.dev/keep="forever"' in next(
        e["message"] for e in api.events_for("c") if e["reason"] == "SnapshotScheduleInvalid")

    clock.set("2026-12-06T11:00:05Z")
    failed = wait_snapshot(api, "a-20261206-110000")
    # The controllers mark it failed, as the common controller copies a content's error.
    failed["status"] = {"readyToUse": False, "error": {"message": "the disk is on fire", "time": "2026-12-06T11:00:06Z"}}
    api.ok("PUT", f"{SNAP}/namespaces/default/volumesnapshots/a-20261206-110000/status", failed)
    api.wait("the failure reported", lambda: "ScheduledSnapshotFailed" in reasons(api, "a"))
    assert any("the disk is on fire" in e["message"] for e in api.events_for("a") if e["reason"] == "ScheduledSnapshotFailed")
    sidecar.wait_metric("swell_sidecar_scheduled_snapshots_total", 0, operation="ready", result="error")

    clock.set("2026-12-06T12:00:05Z")
    make_ready(cluster, wait_snapshot(api, "a-20261206-120000"), handle)
    for hour in ("13", "14"):
        clock.set(f"2026-12-06T{hour}:00:05Z")
        wait_snapshot(api, f"a-20261206-{hour}0000")
    # At 14:00 the failed 11:00 one is past the two hours, and goes; 12:00, as old, is the newest ready one, and stays.
    api.wait("max-age", lambda: set(scheduled(api)) == {"a-20261206-120000", "a-20261206-130000", "a-20261206-140000"})
    clock.set("2026-12-06T14:30:00Z")
    settled(sidecar)
    assert "a-20261206-120000" in scheduled(api)
    assert P + "next-snapshot-at" not in annotations(api, "b") and not [
        s for s in scheduled(api) if s.startswith("b-")], "b opted out"
    assert not [s for s in scheduled(api) if s.startswith("c-")]


def test_a_group_schedule_takes_one_group_snapshot_of_its_claims(cluster):
    api = cluster.api
    clock = Clock(cluster.root, "2026-12-06T10:03:00Z")
    sidecar = scheduler(cluster, clock, "--group-snapshots")
    api.create_class("swell", annotations={P + "schedule": "0 * * * *", P + "group-class": "groupclass"})
    create_group_class(api)
    for name in ("pg-data", "pg-wal"):
        api.create_claim(name, size="320Mi", labels={P + "group": "pg"})
    api.create_claim("odd", size="320Mi", labels={P + "group": "other"})
    api.create_claim("odd2", size="320Mi", labels={P + "group": "other"}, annotations={P + "schedule": "@daily"})
    for name in ("pg-data", "pg-wal", "odd", "odd2"):
        wait_bound(api, name)
    for name in ("pg-data", "pg-wal"):
        wait_next(api, name, "2026-12-06T11:00:00Z")
    api.wait("the disagreeing group reported", lambda: "SnapshotScheduleInvalid" in reasons(api, "odd"))
    clock.set("2026-12-06T11:00:02Z")
    group = api.wait("the group snapshot", lambda: api.get(f"{GROUP}/namespaces/default/volumegroupsnapshots/pg-20261206-110000"))
    assert group["spec"] == {"source": {"selector": {"matchLabels": {P + "group": "pg"}}},
                             "volumeGroupSnapshotClassName": "groupclass"}
    assert group["metadata"]["labels"] == {P + "group": "pg"}
    for name in ("pg-data", "pg-wal"):
        wait_next(api, name, "2026-12-06T12:00:00Z")
        assert annotations(api, name)[P + "last-snapshot"] == "pg-20261206-110000"
    settled(sidecar)
    assert scheduled(api) == {}, "no VolumeSnapshot of a member on its own"
    assert set(scheduled(api, resource="volumegroupsnapshots", group=GROUP)) == {"pg-20261206-110000"}
    assert P + "next-snapshot-at" not in annotations(api, "odd")
