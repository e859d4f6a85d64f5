import Prometheus
import SwellHost
import SwellStorage

/// The plugin's Prometheus metrics: RPC counts and latencies, kept as calls happen, and the
/// volume figures, read from the backend and the kernel at each scrape.
public final class DriverMetrics: Sendable {
  let registry = PrometheusCollectorRegistry()
  private let buckets: [Duration] = [
    .microseconds(250), .milliseconds(1), .milliseconds(2.5), .milliseconds(5), .milliseconds(10), .milliseconds(25),
    .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1), .seconds(5), .seconds(30),
  ]

  static var calls: MetricNameDescriptor { MetricNameDescriptor(
    namespace: "swell", metricName: "rpc", unitName: "total", helpText: "CSI calls answered, by method and gRPC code") }
  static var latency: MetricNameDescriptor { MetricNameDescriptor(
    namespace: "swell", metricName: "rpc_duration", unitName: "seconds", helpText: "Time to answer a CSI call, by method") }

  public init() {}

  /// Counts one finished RPC and records its duration.
  public func record(method: String, code: String, duration: Duration) {
    registry.makeCounter(descriptor: Self.calls, labels: [("method", method), ("code", code)]).increment()
    registry.makeDurationHistogram(descriptor: Self.latency, labels: [("method", method)], buckets: buckets)
      .record(duration)
  }

  /// The Prometheus text: the registry's metrics, then the volume figures of this moment.
  public func render(volumes: VolumeFigures) -> String {
    registry.emitToString() + volumes.prometheusText()
  }
}

/// Volume figures for one scrape.
public struct VolumeFigures: Sendable {
  /// Volumes by state: `healthy` and `abnormal` (controller), `attached` (node).
  public var byState: [String: Int] = [:]
  /// For each volume attached on this node: its device size, and the bytes its filesystem uses (nil for block).
  public var attached: [(id: String, capacity: Int64, used: Int64?)] = []
  /// For each attached volume with a filesystem mounted: one of its mount points (staging or publish).
  public var mountPoints: [(id: String, path: String)] = []
  /// Attached loop devices by mode: `on` (direct I/O to the backing file) and `off` (buffered).
  public var loopDirectIO: [String: Int] = [:]
  /// For each attached volume with a filesystem mounted: its inodes, in all and in use.
  public var inodes: [(id: String, total: Int64, used: Int64)] = []
  /// The controller's pools (data filesystems, volume groups, thin pools), by backend.
  public var pools: [(backend: String, pool: PoolUsage)] = []

  /// `/volumes`: one line per volume staged on this node, `ID<TAB>PATH`, for the per-node sidecar's
  /// auto-grow, which asks NodeGetVolumeStats about that path.
  public func stagedText() -> String {
    mountPoints.map { "\($0.id)\t\($0.path)\n" }.joined()
  }

  func prometheusText() -> String {
    let sizes = attached.map { ("volume=\"\($0.id)\"", $0.capacity) }
    let used = attached.compactMap { v in v.used.map { ("volume=\"\(v.id)\"", $0) } }
    var out = Self.gauge("swell_volumes", "Volumes by state", byState.keys.sorted().map { ("state=\"\($0)\"", Int64(byState[$0]!)) })
    out += Self.gauge("swell_volume_capacity_bytes", "Size of each volume attached on this node", sizes)
    out += Self.gauge("swell_volume_used_bytes", "Bytes used by the filesystem of each volume staged on this node", used)
    out += Self.gauge(
      "swell_volume_inodes", "Inodes of the filesystem of each volume staged on this node",
      inodes.map { ("volume=\"\($0.id)\"", $0.total) })
    out += Self.gauge(
      "swell_volume_used_inodes", "Inodes in use in the filesystem of each volume staged on this node",
      inodes.map { ("volume=\"\($0.id)\"", $0.used) })
    if !loopDirectIO.isEmpty {
      out += Self.gauge(
        "swell_loop_devices",
        "Loop devices of volumes attached on this node, by direct I/O (off: buffered, because the backing filesystem refused it)",
        loopDirectIO.keys.sorted().map { ("direct_io=\"\($0)\"", Int64(loopDirectIO[$0]!)) })
    }
    if !pools.isEmpty {
      out += Self.gauge(
        "swell_pool_size_bytes", "Size of each pool volumes are carved from, by backend",
        pools.map { (Self.poolLabels($0), $0.pool.sizeBytes) })
      out += Self.gauge(
        "swell_pool_available_bytes", "Bytes still free in each pool, by backend",
        pools.map { (Self.poolLabels($0), $0.pool.availableBytes) })
    }
    return out
  }

  /// One gauge in the text format: its HELP and TYPE lines, then a sample per label set.
  static func gauge(_ name: String, _ help: String, _ samples: [(labels: String, value: Int64)]) -> String {
    "# HELP \(name) \(help)\n# TYPE \(name) gauge\n" + samples.map { "\(name){\($0.labels)} \($0.value)\n" }.joined()
  }

  /// `backend="…",pool="…"`, the pool's name (a path) escaped as the text format requires.
  static func poolLabels(_ p: (backend: String, pool: PoolUsage)) -> String {
    let name = p.pool.name.replacingOccurrences(of: "\\", with: "\\\\")
      .replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    return "backend=\"\(p.backend)\",pool=\"\(name)\""
  }

  /// Reads the figures for one scrape: health for a controller's volumes, attachments and
  /// filesystem use for a node's. Volume IDs are safe label values (letters, digits, `-_.`).
  ///
  /// `usage: false` (for `/volumes`, which lists staged volumes and their mount points) skips the
  /// controller's health checks and the statvfs of each mount. Every cost is linear in the number of
  /// volumes: one pass over sysfs, one mount table, looked up by device number.
  static func collect(backends: OpenBackends, mode: PluginMode, usage: Bool = true) async -> VolumeFigures {
    var figures = VolumeFigures()
    if mode.servesController && usage {
      figures.byState = ["healthy": 0, "abnormal": 0]
      for v in (try? await backends.controller.list()) ?? [] {
        let state = await backends.controller.health(v.id) == .normal ? "healthy" : "abnormal"
        figures.byState[state, default: 0] += 1
      }
      for entry in backends.controller.backends {
        for pool in (try? await entry.backend.pools()) ?? [] { figures.pools.append((entry.name, pool)) }
      }
    }
    if mode.servesNode {
      // One mountinfo read and one sysfs pass for all loop volumes; iSCSI and LVM volumes are
      // looked up one by one (their backends read their own tables).
      let table = (try? await BlockingIO.run { try MountInfo.current() }) ?? []
      var mountByDevice: [Int: MountEntry] = [:]
      for entry in table where mountByDevice[entry.major << 20 | entry.minor] == nil {
        mountByDevice[entry.major << 20 | entry.minor] = entry
      }
      let loopDevices = (try? await backends.loop.attachedDevices()) ?? [:]
      var ids = Array(loopDevices.keys) + ((try? backends.iscsiNode.stagedIDs()) ?? [])
      if let lvm = backends.lvm { ids += (try? await lvm.list().map(\.id)) ?? [] }
      if let dir = backends.dir { ids += (try? await dir.list().map(\.id)) ?? [] }
      var count = 0
      for id in Set(ids).sorted() {
        let found: AttachedDevice?
        if let device = loopDevices[id] { found = device } else { found = try? await backends.node.attachedDevice(id) }
        guard let device = found else { continue }
        // A directory volume shares its filesystem's device: its own mount is the one of its subtree,
        // and it counts as attached only while mounted.
        let mount = device.isDirectory ? table.first { $0.shows(device) } : mountByDevice[device.major << 20 | device.minor]
        if device.isDirectory && mount == nil { continue }
        count += 1
        if let dio = device.directIO { figures.loopDirectIO[dio ? "on" : "off", default: 0] += 1 }
        let fs = usage ? mount.flatMap { try? FileSystemUsage.of($0.mountPoint) } : nil
        figures.attached.append((id, device.sizeBytes, fs?.usedBytes))
        if let fs, fs.totalInodes > 0 { figures.inodes.append((id, fs.totalInodes, fs.usedInodes)) }
        if let mount { figures.mountPoints.append((id, mount.mountPoint)) }
      }
      figures.byState["attached"] = count
      // Both series always exist on a node, so that an alert on `off` > 0 has something to watch.
      for mode in ["on", "off"] where figures.loopDirectIO[mode] == nil { figures.loopDirectIO[mode] = 0 }
    }
    return figures
  }
}
