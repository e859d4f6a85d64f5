import Glibc
import Logging
import SwellHost
import SwellKube
import Synchronization

/// The wall clock the scheduler reads: the system's, or for tests a file holding Unix seconds.
public struct ScheduleClock: Sendable {
  public let file: String?
  public init(file: String?) { self.file = file }

  public func now() -> Int64? {
    guard let file else { return Int64(time(nil)) }
    return (try? readSmallFile(file)).flatMap { Double($0.trimmingWhitespace()) }.map { Int64($0) }
  }
}

/// Scheduled snapshots with retention. Every pass (once a second) it looks at each claim of the
/// driver whose policy (`snapshot.swell.dev/*`, see ``SnapshotSchedulePolicy``) has a schedule:
/// - the claim's `snapshot.swell.dev/next-snapshot-at` is the next slot. It is written when a schedule is
///   first seen, and it is the scheduler's memory: once it has passed, one VolumeSnapshot is taken,
///   named after the latest slot due, however many slots passed while no sidecar ran;
/// - snapshots are named from their slot, so two replicas, or a retry after a crash between the create
///   and the claim's update, ask for the same object;
/// - retention deletes all but the newest `keep`, and those past `max-age`, but never the newest ready one.
/// Claims labelled `snapshot.swell.dev/group` are snapshotted together as one VolumeGroupSnapshot.
/// It runs in the central sidecar, which holds the leader lease before it starts anything.
final class SnapshotScheduler: Sendable {
  let reconciler: Reconciler
  let snapshots: Informer
  let groupSnapshots: Informer?
  let clock: ScheduleClock
  let interval: Duration
  let logger: Logger
  /// What was already reported, so that a problem or a failure is told once, not every pass.
  let reported = Mutex<Set<String>>([])
  /// The UIDs of snapshots deleted by retention, until the caches no longer show them.
  let pruned = Mutex<Set<String>>([])

  init(
    reconciler: Reconciler, snapshots: Informer, groupSnapshots: Informer?, clock: ScheduleClock,
    interval: Duration = .seconds(1), logger: Logger
  ) {
    self.reconciler = reconciler
    self.snapshots = snapshots
    self.groupSnapshots = groupSnapshots
    self.clock = clock
    self.interval = interval
    self.logger = logger
  }

  /// One claim, or the claims of one group, and what they are snapshotted by.
  struct Target {
    var namespace: String
    var members: [JSON]
    var policy: SnapshotSchedulePolicy
    /// The group's name, nil for one claim.
    var group: String?

    var base: String { group ?? members[0].name }
    var metricLabel: String { group.map { "group/\($0)" } ?? "pvc/\(members[0].name)" }
    var resource: KubeResource { group == nil ? .volumeSnapshots : .volumeGroupSnapshots }
  }

  func run() async throws {
    while true {
      do {
        try await pass()
        reconciler.metrics.pass("snapshot-schedule")
      } catch is CancellationError {
        throw CancellationError()
      } catch {
        logger.warning("snapshot schedule pass failed", metadata: ["error": "\(error)"])
      }
      try await Task.sleep(for: interval)
    }
  }

  func pass() async throws {
    // Until the snapshot CRDs are served there is nothing to take snapshots with.
    guard snapshots.hasSynced, let now = clock.now() else { return }
    let all = targets()
    defer {
      reconciler.metrics.keepSchedules(Set(all.map { [$0.namespace, $0.metricLabel] }))
      let cached = Set((snapshots.list() + (groupSnapshots?.list() ?? [])).map(\.uid))
      pruned.withLock { $0.formIntersection(cached) }
    }
    for target in all {
      do {
        try await serve(target, now: now)
      } catch is CancellationError {
        throw CancellationError()
      } catch {
        reconciler.metrics.scheduledSnapshot(operation: "schedule", success: false)
        for claim in target.members {
          reconciler.events.record(
            claim, .warning, reason: "ScheduledSnapshotFailed", message: "scheduled snapshot failed: \(error)")
        }
      }
    }
  }

  /// The claims of this driver with a schedule, one target each, or one per group.
  func targets() -> [Target] {
    let r = reconciler
    var singles: [Target] = []
    var groups: [String: [(JSON, SnapshotSchedulePolicy?)]] = [:]
    for claim in r.claims.list() where claim[path: "status", "phase"]?.string == "Bound" && !claim.isBeingDeleted {
      guard let storageClass = r.storageClass(of: claim), storageClass["provisioner"]?.string == r.driver else { continue }
      let (policy, problems) = SnapshotSchedulePolicy.resolve(
        classAnnotations: storageClass.annotations, claimAnnotations: claim.annotations)
      if !problems.isEmpty {
        let text = problems.map(\.description).joined(separator: "; ")
        if once("problem/\(claim.uid)/\(text)") {
          r.events.record(claim, .warning, reason: "SnapshotScheduleInvalid", message: "snapshot schedule ignored: \(text)")
        }
      }
      let namespace = claim.namespace ?? "default"
      if let group = claim.labels[SnapshotSchedulePolicy.groupLabel] {
        groups["\(namespace)/\(group)", default: []].append((claim, policy))
      } else if let policy {
        singles.append(Target(namespace: namespace, members: [claim], policy: policy))
      }
    }
    var out = singles
    for (key, members) in groups.sorted(by: { $0.key < $1.key }) {
      let policies = members.compactMap(\.1)
      guard let policy = policies.first else { continue }
      let claims = members.map(\.0).sorted { $0.name < $1.name }
      guard policies.count == members.count, policies.allSatisfy({ $0 == policy }) else {
        if once("group/\(key)/\(members.map { $0.0.resourceVersion })") {
          for claim in claims {
            r.events.record(
              claim, .warning, reason: "SnapshotScheduleInvalid",
              message: "the claims of snapshot group \(key) do not all have the same snapshot schedule; none is taken")
          }
        }
        continue
      }
      guard groupSnapshots != nil else {
        if once("nogroups/\(key)") {
          for claim in claims {
            r.events.record(
              claim, .warning, reason: "SnapshotScheduleInvalid",
              message: "snapshot group \(key): group snapshots are not enabled on this sidecar (--group-snapshots)")
          }
        }
        continue
      }
      out.append(Target(namespace: claims[0].namespace ?? "default", members: claims, policy: policy,
                        group: String(key.split(separator: "/", maxSplits: 1)[1])))
    }
    return out
  }

  func once(_ key: String) -> Bool { reported.withLock { $0.insert(key).inserted } }

  /// The scheduled snapshots a target has, from the informer's cache.
  func taken(_ target: Target) -> [JSON] {
    let cache = target.group == nil ? snapshots : groupSnapshots
    let (labelKey, value) = target.group.map { (SnapshotSchedulePolicy.groupLabel, $0) }
      ?? (SnapshotSchedulePolicy.claimLabel, SnapshotSchedulePolicy.labelValue(target.members[0].name))
    return (cache?.list() ?? []).filter { s in
      s.namespace == target.namespace && s.labels[labelKey] == value
        && (target.group != nil || s[path: "spec", "source", "persistentVolumeClaimName"]?.string == target.members[0].name)
    }
  }

  func serve(_ target: Target, now: Int64) async throws {
    let r = reconciler
    let schedule = target.policy.schedule
    var existing = taken(target)
    let stored = target.members.compactMap {
      $0.annotations[SnapshotSchedulePolicy.nextAnnotation].flatMap(Schedule.parseRFC3339)
    }.min()
    let upcoming = schedule.next(after: now)
    if let stored, stored <= now, let slot = schedule.previous(atOrBefore: now) {
      let name = SnapshotSchedulePolicy.snapshotName(base: target.base, slot: slot)
      if !existing.contains(where: { $0.name == name }) {
        if let created = try await create(target, name: name, slot: slot) {
          existing.append(created)
          let skipped = max(0, schedule.slots(after: stored - 1, through: slot) - 1)
        let message = "took \(target.resource.kind) \(name) for the slot at \(Schedule.rfc3339(slot))"
          + (skipped > 0 ? "; \(skipped) earlier slot(s) passed while no scheduler ran, and are not taken again" : "")
          for claim in target.members { r.events.record(claim, .normal, reason: "SnapshotScheduled", message: message) }
        }
      }
      try await annotate(target, last: name, next: upcoming)
    } else if stored != upcoming {
      // A schedule first seen, or changed: its next slot.
      try await annotate(target, last: nil, next: upcoming)
    }
    try await prune(target, existing, now: now)
    report(target, existing)
  }

  /// The new snapshot, or nil when it exists already.
  func create(_ target: Target, name: String, slot: Int64) async throws -> JSON? {
    var object: JSON = [
      "apiVersion": .string(target.resource.apiVersion), "kind": .string(target.resource.kind),
      "metadata": [
        "name": .string(name), "namespace": .string(target.namespace),
        "labels": .strings(
          target.group.map { [SnapshotSchedulePolicy.groupLabel: $0] }
            ?? [SnapshotSchedulePolicy.claimLabel: SnapshotSchedulePolicy.labelValue(target.members[0].name)]),
        "annotations": .strings([
          SnapshotSchedulePolicy.slotAnnotation: Schedule.rfc3339(slot),
          SnapshotSchedulePolicy.scheduleAnnotation: target.policy.schedule.text,
        ]),
      ],
    ]
    if let group = target.group {
      object["spec"] = ["source": ["selector": ["matchLabels": .strings([SnapshotSchedulePolicy.groupLabel: group])]]]
      if let c = target.policy.groupClass { object[path: "spec", "volumeGroupSnapshotClassName"] = .string(c) }
    } else {
      object["spec"] = ["source": ["persistentVolumeClaimName": .string(target.members[0].name)]]
      if let c = target.policy.snapshotClass { object[path: "spec", "volumeSnapshotClassName"] = .string(c) }
    }
    do {
      let created = try await reconciler.kube.create(target.resource, namespace: target.namespace, object)
      reconciler.metrics.scheduledSnapshot(operation: "create", success: true)
      logger.notice("scheduled snapshot taken", metadata: ["snapshot": "\(target.namespace)/\(name)"])
      return created
    } catch let error as KubeError where error.isAlreadyExists {
      // Another replica, or this one before a restart, took this slot.
      return nil
    }
  }

  func annotate(_ target: Target, last: String?, next: Int64?) async throws {
    for claim in target.members {
      try await reconciler.rewrite(.persistentVolumeClaims, claim, status: false) { c in
        if let last { c[path: "metadata", "annotations", SnapshotSchedulePolicy.lastAnnotation] = .string(last) }
        c[path: "metadata", "annotations", SnapshotSchedulePolicy.nextAnnotation] =
          next.map { .string(Schedule.rfc3339($0)) } ?? .string("never")
      }
    }
  }

  static func slot(_ snapshot: JSON) -> Int64 {
    snapshot.annotations[SnapshotSchedulePolicy.slotAnnotation].flatMap(Schedule.parseRFC3339)
      ?? snapshot[path: "metadata", "creationTimestamp"]?.string.flatMap(Schedule.parseRFC3339) ?? 0
  }

  func prune(_ target: Target, _ existing: [JSON], now: Int64) async throws {
    let live = existing.filter { !$0.isBeingDeleted }
    let expired = target.policy.expired(
      live.map { .init(name: $0.name, slot: Self.slot($0), ready: $0[path: "status", "readyToUse"]?.bool == true) },
      now: now)
    for name in expired {
      // The cache may still show a snapshot deleted a pass ago: each goes once.
      guard let uid = live.first(where: { $0.name == name })?.uid, !pruned.withLock({ $0.contains(uid) }) else { continue }
      try await reconciler.kube.delete(target.resource, namespace: target.namespace, name: name)
      pruned.withLock { _ = $0.insert(uid) }
      reconciler.metrics.scheduledSnapshot(operation: "prune", success: true)
      for claim in target.members {
        reconciler.events.record(
          claim, .normal, reason: "ScheduledSnapshotPruned",
          message: "deleted \(target.resource.kind) \(name): retention keeps \(target.policy.keep)"
            + (target.policy.maxAge.map { ", none older than \($0) s" } ?? ""))
      }
    }
  }

  /// A snapshot the snapshot controllers marked failed becomes a Warning Event and a metric, once;
  /// the newest ready one's slot becomes the gauge the staleness alert reads.
  func report(_ target: Target, _ existing: [JSON]) {
    let r = reconciler
    for snapshot in existing {
      guard let message = snapshot[path: "status", "error", "message"]?.string, once("failed/\(snapshot.uid)") else { continue }
      r.metrics.scheduledSnapshot(operation: "ready", success: false)
      for claim in target.members {
        r.events.record(
          claim, .warning, reason: "ScheduledSnapshotFailed",
          message: "scheduled \(target.resource.kind) \(snapshot.name) failed: \(message)")
      }
    }
    let ready = existing.filter { $0[path: "status", "readyToUse"]?.bool == true }.map(Self.slot).max()
    let schedule = target.policy.schedule
    var period: Int64?
    if let now = clock.now(), let last = schedule.previous(atOrBefore: now), let next = schedule.next(after: last) {
      period = next - last
    }
    r.metrics.setSchedule(namespace: target.namespace, target: target.metricLabel, lastReady: ready, period: period)
  }
}
