import CSIProto
import GRPCCore
import Logging
import Synchronization
import SwellKube

/// Volume health on the claim, as kubernetes-csi's external-health-monitor reports it: the
/// plugin's volume condition becomes Events on the PVC that holds the volume.
///
/// Two observers feed it. The controller side lists every volume with its condition (ListVolumes)
/// each ``interval``; the node side is the auto-grow loop, which reads the condition of each staged
/// volume from NodeGetVolumeStats. While a volume is abnormal, every look records a Warning
/// `VolumeConditionAbnormal` with the plugin's message, which the event recorder folds into one
/// Event with a growing count; the first normal look after that records a Normal
/// `VolumeConditionNormal`.
final class HealthMonitor: Sendable {
  let reconciler: Reconciler
  let interval: Duration
  let logger: Logger
  /// Per claim UID and observer: the message of the abnormal condition last seen.
  private let abnormal = Mutex<[String: String]>([:])

  init(reconciler: Reconciler, interval: Duration, logger: Logger) {
    self.reconciler = reconciler
    self.interval = interval
    self.logger = logger
  }

  /// The controller side: lists the plugin's volumes with their condition, every `interval`.
  func run() async throws {
    try await repeatPasses("volume health", logger: logger) {
      try await lookAtEveryVolume()
      reconciler.metrics.pass("health")
    } between: {
      try await Task.sleep(for: interval)
    }
  }

  func lookAtEveryVolume() async throws {
    var byHandle: [String: JSON] = [:]
    for pv in reconciler.volumes.list() {
      if let handle = pv[path: "spec", "csi", "volumeHandle"]?.string { byHandle[handle] = pv }
    }
    guard !byHandle.isEmpty else { return }
    var token = ""
    repeat {
      let page = try await reconciler.callCSI("ListVolumes") { csi, options in
        try await csi.controller.listVolumes(.with { $0.startingToken = token }, options: options)
      }
      for entry in page.entries where entry.hasStatus && entry.status.hasVolumeCondition {
        guard let pv = byHandle[entry.volume.volumeID] else { continue }
        let condition = entry.status.volumeCondition
        report(pv: pv, observer: "controller", abnormal: condition.abnormal, message: condition.message)
      }
      token = page.nextToken
    } while !token.isEmpty
  }

  /// Records what one observer saw of one volume's condition.
  func report(pv: JSON, observer: String, abnormal isAbnormal: Bool, message: String) {
    guard let claim = reconciler.claim(boundTo: pv) else { return }
    let key = "\(claim.uid)/\(observer)"
    let prefix = observer == "controller" ? "" : "on node \(observer): "
    if isAbnormal {
      abnormal.withLock { $0[key] = message }
      reconciler.events.record(claim, .warning, reason: "VolumeConditionAbnormal", message: prefix + message)
    } else if let was = abnormal.withLock({ $0.removeValue(forKey: key) }) {
      reconciler.events.record(
        claim, .normal, reason: "VolumeConditionNormal",
        message: prefix + "the volume is healthy again (it was: \(was))")
    }
  }
}

extension Reconciler {
  /// The claim a PV of ours is bound to, when the cache holds that very claim (same UID).
  func claim(boundTo pv: JSON) -> JSON? {
    guard owns(pv), let ns = pv[path: "spec", "claimRef", "namespace"]?.string,
      let name = pv[path: "spec", "claimRef", "name"]?.string, let claim = claims.get("\(ns)/\(name)"),
      claim.uid == pv[path: "spec", "claimRef", "uid"]?.string
    else { return nil }
    return claim
  }
}
