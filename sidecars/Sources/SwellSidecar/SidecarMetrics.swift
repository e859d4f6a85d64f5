import Prometheus
import Synchronization

/// The sidecar's Prometheus metrics: operations and their latencies, CSI errors by code, the work
/// queue's depth and leadership.
public final class SidecarMetrics: Sendable {
  let registry = PrometheusCollectorRegistry()
  private let buckets: [Duration] = [
    .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
    .milliseconds(100), .milliseconds(250), .seconds(1), .seconds(5), .seconds(30), .seconds(120),
  ]
  private let growBuckets: [Duration] = [
    .seconds(1), .seconds(2), .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(120), .seconds(300),
    .seconds(900),
  ]

  static var operations: MetricNameDescriptor { MetricNameDescriptor(
    namespace: "swell", subsystem: "sidecar", metricName: "operations", unitName: "total",
    helpText: "Provision, delete, resize, modify and snapshot steps finished, by operation and result") }
  static var duration: MetricNameDescriptor { MetricNameDescriptor(
    namespace: "swell", subsystem: "sidecar", metricName: "operation_duration", unitName: "seconds",
    helpText: "Time taken by provision, delete and resize steps, by operation") }
  static var csiErrors: MetricNameDescriptor { MetricNameDescriptor(
    namespace: "swell", subsystem: "sidecar", metricName: "csi_errors", unitName: "total",
    helpText: "CSI calls that failed, by method and gRPC code") }
  static var queueDepth: MetricNameDescriptor { MetricNameDescriptor(
    namespace: "swell", subsystem: "sidecar", metricName: "queue_depth", unitName: "",
    helpText: "Keys waiting in the work queue") }
  static var leader: MetricNameDescriptor { MetricNameDescriptor(
    namespace: "swell", subsystem: "sidecar", metricName: "leader", unitName: "",
    helpText: "1 while this replica holds the leader lease (always 1 without leader election)") }

  static var autoGrows: MetricNameDescriptor { MetricNameDescriptor(
    namespace: "swell", subsystem: "sidecar", metricName: "autogrow", unitName: "total",
    helpText: "Auto-grow decisions: grow (a request raised) and capped (at the maximum)") }

  static var deferred: MetricNameDescriptor { MetricNameDescriptor(
    namespace: "swell", subsystem: "sidecar", metricName: "deferred", unitName: "total",
    helpText: "Looks at an object of the driver's that left it as it was, by operation and reason "
      + "(a claim waiting for its node, another node's claim, a retained volume, an invalid auto-grow policy, "
      + "an Infeasible attributes class)") }
  static var passes: MetricNameDescriptor { MetricNameDescriptor(
    namespace: "swell", subsystem: "sidecar", metricName: "passes", unitName: "total",
    helpText: "Passes of the periodic loops finished, by loop (autogrow, capacity, health)") }

  static var autoGrowDuration: MetricNameDescriptor { MetricNameDescriptor(
    namespace: "swell", subsystem: "sidecar", metricName: "autogrow_duration", unitName: "seconds",
    helpText: "Time from an auto-grow's raised request to the claim's capacity reaching it: "
      + "the controller's grow and the node's filesystem grow, end to end") }
  static var atMaximum: MetricNameDescriptor { MetricNameDescriptor(
    namespace: "swell", subsystem: "sidecar", metricName: "autogrow_at_maximum", unitName: "",
    helpText: "1 while a claim's auto-grow is held at its policy's maximum, 0 after it grows again") }

  static var scheduled: MetricNameDescriptor { MetricNameDescriptor(
    namespace: "swell", subsystem: "sidecar", metricName: "scheduled_snapshots", unitName: "total",
    helpText: "Scheduled snapshot steps: create, prune (retention), ready (a snapshot the controllers marked "
      + "failed counts as an error) and schedule (a pass over one claim or group that failed), by result") }
  static var scheduleLastReady: MetricNameDescriptor { MetricNameDescriptor(
    namespace: "swell", subsystem: "sidecar", metricName: "scheduled_snapshot_last_ready", unitName: "timestamp_seconds",
    helpText: "The slot of the newest ready scheduled snapshot of a claim (pvc/<name>) or group (group/<name>)") }
  static var schedulePeriod: MetricNameDescriptor { MetricNameDescriptor(
    namespace: "swell", subsystem: "sidecar", metricName: "scheduled_snapshot_period", unitName: "seconds",
    helpText: "The time between a schedule's last slot and its next") }

  public init() {}

  /// Drops the series of schedules no longer there (a claim deleted, a schedule removed), so that
  /// the staleness alert does not fire for them.
  public func keepSchedules(_ present: Set<[String]>) {
    let gone = scheduleSeries.withLock { series in
      let gone = series.subtracting(present)
      series.subtract(gone)
      return gone
    }
    for key in gone {
      for descriptor in [Self.scheduleLastReady, Self.schedulePeriod] {
        registry.unregisterGauge(registry.makeGauge(descriptor: descriptor, labels: [("namespace", key[0]), ("target", key[1])]))
      }
    }
  }

  public func scheduledSnapshot(operation: String, success: Bool) {
    registry.makeCounter(
      descriptor: Self.scheduled, labels: [("operation", operation), ("result", success ? "success" : "error")]
    ).increment()
  }

  /// The schedules' series published: (namespace, target).
  let scheduleSeries = Mutex<Set<[String]>>([])

  public func setSchedule(namespace: String, target: String, lastReady: Int64?, period: Int64?) {
    scheduleSeries.withLock { _ = $0.insert([namespace, target]) }
    let labels = [("namespace", namespace), ("target", target)]
    if let lastReady { registry.makeGauge(descriptor: Self.scheduleLastReady, labels: labels).set(to: Double(lastReady)) }
    if let period { registry.makeGauge(descriptor: Self.schedulePeriod, labels: labels).set(to: Double(period)) }
  }

  public func autoGrowDone(after duration: Duration) {
    registry.makeDurationHistogram(descriptor: Self.autoGrowDuration, buckets: growBuckets).record(duration)
  }

  public func setAtMaximum(namespace: String, claim: String, _ at: Bool) {
    registry.makeGauge(
      descriptor: Self.atMaximum, labels: [("namespace", namespace), ("persistentvolumeclaim", claim)]
    ).set(to: at ? 1 : 0)
  }

  /// An object this sidecar looked at and chose to leave alone: the sign that it saw the object.
  public func deferred(_ operation: String, reason: String) {
    registry.makeCounter(descriptor: Self.deferred, labels: [("operation", operation), ("reason", reason)]).increment()
  }

  public func pass(_ loop: String) {
    registry.makeCounter(descriptor: Self.passes, labels: [("loop", loop)]).increment()
  }

  public func autoGrow(capped: Bool) {
    registry.makeCounter(descriptor: Self.autoGrows, labels: [("result", capped ? "capped" : "grow")]).increment()
  }

  public func record(operation: String, success: Bool, duration: Duration) {
    registry.makeCounter(
      descriptor: Self.operations, labels: [("operation", operation), ("result", success ? "success" : "error")]
    ).increment()
    registry.makeDurationHistogram(descriptor: Self.duration, labels: [("operation", operation)], buckets: buckets)
      .record(duration)
  }

  public func csiError(method: String, code: String) {
    registry.makeCounter(descriptor: Self.csiErrors, labels: [("method", method), ("code", code)]).increment()
  }

  public func setQueueDepth(_ depth: Int) {
    registry.makeGauge(descriptor: Self.queueDepth).set(to: Double(depth))
  }

  public func setLeader(_ leading: Bool) {
    registry.makeGauge(descriptor: Self.leader).set(to: leading ? 1 : 0)
  }

  public func render() -> String { registry.emitToString() }
}
