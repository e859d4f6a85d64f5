import AsyncHTTPClient
import CSIProto
import GRPCCore
import Logging
import NIOCore
import SwellKube

/// The per-node auto-grow loop. It asks the local plugin which volumes are staged here (`/volumes`
/// on the plugin's metrics address) and how full each one is (NodeGetVolumeStats). When a claim's
/// policy says so, it raises the claim's request; the resizer and kubelet then grow the volume as
/// for any `kubectl edit pvc`. The interval adapts: the faster a volume fills, the sooner it is
/// looked at again.
final class AutoGrower: Sendable {
  let reconciler: Reconciler
  let pluginAddress: String
  let maxInterval: Duration
  let minInterval: Duration = .milliseconds(100)
  let horizon: Duration
  let logger: Logger
  /// Where the conditions that NodeGetVolumeStats reports go, and under which node's name.
  let health: HealthMonitor?
  let node: String

  struct VolumeState {
    var fill: FillRate
    var lastBump: ContinuousClock.Instant?
    var reportedProblems = ""
    var cappedAt: Int64?
    /// The request the last auto-grow raised, until the claim's capacity reaches it.
    var pending: Int64?
    var lastHealthLook: ContinuousClock.Instant?
  }

  init(
    reconciler: Reconciler, pluginAddress: String, maxInterval: Duration, horizon: Duration,
    health: HealthMonitor? = nil, node: String = "", logger: Logger
  ) {
    self.reconciler = reconciler
    self.health = health
    self.node = node
    self.horizon = horizon
    self.pluginAddress = pluginAddress
    self.maxInterval = maxInterval
    self.logger = logger
  }

  func run() async throws {
    var states: [String: VolumeState] = [:]
    while true {
      var next = maxInterval
      do {
        let staged = try await stagedVolumes()
        // One pass over the PV cache per round, not one per staged volume.
        var byHandle: [String: JSON] = [:]
        if !staged.isEmpty {
          for pv in reconciler.volumes.list() {
            if let handle = pv[path: "spec", "csi", "volumeHandle"]?.string { byHandle[handle] = pv }
          }
        }
        for (volumeID, path) in staged {
          guard let pv = byHandle[volumeID] else { continue }
          if let wait = try await check(volumeID: volumeID, path: path, pv: pv, states: &states) {
            next = min(next, wait)
          }
        }
        reconciler.metrics.pass("autogrow")
      } catch is CancellationError {
        throw CancellationError()
      } catch {
        logger.warning("auto-grow pass failed", metadata: ["error": "\(error)"])
      }
      try await Task.sleep(for: max(minInterval, next))
    }
  }

  func stagedVolumes() async throws -> [(String, String)] {
    var request = HTTPClientRequest(url: "http://\(pluginAddress)/volumes")
    request.method = .GET
    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(5))
    let body = try await response.body.collect(upTo: 4 << 20)
    guard response.status.code == 200 else { throw KubeError(code: Int(response.status.code), reason: "", message: "plugin /volumes") }
    let text = String(buffer: body)
    return text.split(separator: "\n").compactMap { (line: Substring) -> (String, String)? in
      let parts = line.split(separator: "\t", maxSplits: 1)
      guard parts.count == 2 else { return nil }
      return (String(parts[0]), String(parts[1]))
    }
  }

  /// Looks at one staged volume; returns how soon it should be looked at again, if sooner than usual.
  func check(volumeID: String, path: String, pv: JSON, states: inout [String: VolumeState]) async throws -> Duration? {
    let r = reconciler
    guard let claim = r.claim(boundTo: pv), let storageClass = r.storageClass(of: claim) else { return nil }
    let (policy, problems) = AutoGrowPolicy.resolve(
      classAnnotations: storageClass.annotations, claimAnnotations: claim.annotations)
    var state = states[claim.uid] ?? VolumeState(fill: FillRate(window: horizon))
    defer { states[claim.uid] = state }
    let problemText = problems.map(\.description).joined(separator: "; ")
    if !problems.isEmpty { r.metrics.deferred("autogrow", reason: "invalid-policy") }
    if problemText != state.reportedProblems {
      state.reportedProblems = problemText
      if !problems.isEmpty {
        r.events.record(claim, .warning, reason: "AutoGrowInvalidPolicy", message: "auto-grow ignored: \(problemText)")
      }
    }
    let growing = policy != nil && storageClass["allowVolumeExpansion"]?.bool == true
    // A volume that may not grow is still looked at for its health, once per health interval.
    let healthDue = health.map { h in state.lastHealthLook.map { ContinuousClock.now - $0 >= h.interval } ?? true } ?? false
    guard growing || healthDue else { return nil }

    var options = CallOptions.defaults
    options.timeout = .seconds(10)
    let stats = try await r.csi.node.nodeGetVolumeStats(
      .with {
        $0.volumeID = volumeID
        $0.volumePath = path
      }, options: options)
    if let health, stats.hasVolumeCondition {
      state.lastHealthLook = .now
      health.report(
        pv: pv, observer: node, abnormal: stats.volumeCondition.abnormal, message: stats.volumeCondition.message)
    }
    guard growing, let policy else { return nil }
    let claimLabels = (claim[path: "metadata", "namespace"]?.string ?? "", claim[path: "metadata", "name"]?.string ?? "")
    if let pending = state.pending, let bumped = state.lastBump,
      (Claims.bytes(claim[path: "status", "capacity", "storage"]) ?? 0) >= pending
    {
      r.metrics.autoGrowDone(after: .now - bumped)
      state.pending = nil
    }
    guard let bytes = stats.usage.first(where: { $0.unit == .bytes }) else { return nil }
    let inodes = stats.usage.first { $0.unit == .inodes }
    let usage = AutoGrowPolicy.Usage(
      totalBytes: bytes.total, availableBytes: bytes.available, totalInodes: inodes?.total, freeInodes: inodes?.available)

    // The fill rate over the window sets how soon to look again: a quarter of the time left to the threshold.
    let now = ContinuousClock.now
    state.fill.add(used: bytes.used, at: now)
    let rate = state.fill.bytesPerSecond
    let projected = state.fill.projected(over: horizon)
    var soon: Duration?
    if rate > 0 {
      let headroom = Double(bytes.available - policy.threshold.of(bytes.total)) - projected
      soon = .milliseconds(Int64(max(0, headroom / rate / 4) * 1000))
    }

    guard let reason = policy.reason(usage, projected: projected) else { return soon }
    let requested = try Claims.requestedBytes(claim)
    let capacity = Claims.bytes(claim[path: "status", "capacity", "storage"]) ?? 0
    if requested > capacity { return soon }  // One growth in flight: wait until it reaches the filesystem.
    if let last = state.lastBump, now - last < policy.cooldown { return soon }
    switch policy.nextRequest(current: requested) {
    case .grow(let target):
      try await r.rewrite(.persistentVolumeClaims, claim, status: false) { object in
        object[path: "spec", "resources", "requests", "storage"] = .string(Quantity.format(target))
      }
      state.lastBump = now
      state.pending = target
      r.metrics.autoGrow(capped: false)
      r.metrics.setAtMaximum(namespace: claimLabels.0, claim: claimLabels.1, false)
      r.events.record(
        claim, .normal, reason: "AutoGrow",
        message: "raised the request from \(Quantity.format(requested)) to \(Quantity.format(target)): "
          + "\(bytes.available) of \(bytes.total) bytes free"
          + (inodes.map { ", \($0.available) of \($0.total) inodes free" } ?? "") + "; " + why(reason, fill: state.fill))
    case .capped:
      if state.cappedAt != requested {
        state.cappedAt = requested
        r.metrics.autoGrow(capped: true)
        r.metrics.setAtMaximum(namespace: claimLabels.0, claim: claimLabels.1, true)
        r.events.record(
          claim, .warning, reason: "AutoGrowCapped",
          message: "the volume is at its auto-grow maximum of \(Quantity.format(policy.maximum)) "
            + "with \(bytes.available) of \(bytes.total) bytes free")
      }
    }
    return soon
  }

  /// The reason an AutoGrow Event gives: the threshold crossed, or the fill rate that would cross it.
  func why(_ reason: AutoGrowPolicy.Reason, fill: FillRate) -> String {
    switch reason {
    case .space(let floor): return "under the threshold of \(floor) bytes"
    case .inodes(let floor): return "free inodes under the threshold of \(floor)"
    case .rate(let floor, let projected):
      let (bytes, over) = fill.growth
      return "filling at \(Int64(fill.bytesPerSecond.rounded())) bytes/s (\(bytes) bytes in the last "
        + "\(Int64(FillRate.seconds(over).rounded())) s), \(projected) bytes more within the \(Int64(FillRate.seconds(horizon))) s "
        + "horizon would cross the threshold of \(floor) bytes"
    }
  }
}
