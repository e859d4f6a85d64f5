import CSIProto
import GRPCCore
import Logging
import NIOHTTP1
import ServiceLifecycle
import SwellClient
import SwellDriver
import SwellKube
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Everything `swell sidecar` is told on its command line.
public struct SidecarConfig: Sendable {
  public var csiSocket: String
  public var driverName: String
  public var kube: KubeConfig
  /// Set for the per-node mode: this node's name, as the scheduler writes it in `selected-node`.
  public var nodeName: String?
  public var workers = 4
  public var metricsAddress: String?
  public var leaderElection = false
  public var leaderElectionNamespace = "kube-system"
  public var leaseDuration: Duration = .seconds(15)
  public var renewDeadline: Duration = .seconds(10)
  public var retryPeriod: Duration = .seconds(2)
  public var defaultFSType = "ext4"
  /// Serve only StorageClasses (and their PVs) whose `backend` is one of these; empty for all.
  public var backends: [String] = []
  public var csiTimeout: Duration = .seconds(60)
  public var resyncPeriod: Duration = .seconds(600)
  /// Objects per page when listing.
  public var listPageSize = 500
  /// Per-node auto-grow: the local plugin's metrics address (it serves `/volumes`), and the longest
  /// wait between looks at a volume.
  public var autoGrowPluginAddress: String?
  public var autoGrowMaxInterval: Duration = .seconds(2)
  public var autoGrowHorizon: Duration = .seconds(30)
  /// Serve VolumeSnapshotContents (the snapshot CRDs and the common snapshot-controller must be
  /// installed) and restores from VolumeSnapshots.
  public var snapshots = false
  /// Serve VolumeGroupSnapshotContents (the group snapshot CRDs, and the common snapshot-controller
  /// with its group feature, must be installed).
  public var groupSnapshots = false
  /// Take VolumeSnapshots (and with `groupSnapshots`, VolumeGroupSnapshots) on the schedules that
  /// claims and classes set, and delete them by their retention (central sidecar only).
  public var scheduledSnapshots = false
  /// For tests: the scheduler's wall clock, as Unix seconds in this file.
  public var scheduleClockFile: String?
  /// How often the scheduler looks at every claim's schedule.
  public var scheduleInterval: Duration = .seconds(1)
  /// Serve VolumeAttachments of this driver (csi-attacher's role): ControllerPublishVolume and
  /// ControllerUnpublishVolume for the volumes this sidecar owns.
  public var attach = false
  /// Keep this file listing the node IDs that CSINodes register for the driver (the plugin's
  /// `--nodes-file`); nil: none.
  public var nodesFile: String?
  /// How often the volumes' health is looked at (ListVolumes, and NodeGetVolumeStats for staged
  /// volumes when auto-grow has the plugin's address); nil turns health reporting off.
  public var healthInterval: Duration? = .seconds(60)
  /// CSIStorageCapacity publishing: the sidecar's own pod (from the downward API), whose owner
  /// owns the objects, and how often every figure is read again; nil turns it off.
  public var capacity: CapacityConfig?
  public var identity: String

  public init(csiSocket: String, driverName: String, kube: KubeConfig, identity: String) {
    self.csiSocket = csiSocket
    self.driverName = driverName
    self.kube = kube
    self.identity = identity
  }

  /// The lease's name: the driver name made a valid object name.
  public var leaseName: String {
    String(driverName.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "-" }) + "-sidecar"
  }

  public static func defaultIdentity() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    gethostname(&buffer, buffer.count)
    let host = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return "\(host)_\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
  }
}

/// The sidecar as a service: connects to the plugin, elects a leader if asked, fills the informer
/// caches, and runs the workers until shutdown.
public struct SidecarService: Service {
  let config: SidecarConfig
  let metrics: SidecarMetrics
  let state: SidecarState
  let logger: Logger

  public init(config: SidecarConfig, metrics: SidecarMetrics, state: SidecarState, logger: Logger) {
    self.config = config
    self.metrics = metrics
    self.state = state
    self.logger = logger
  }

  public func run() async throws {
    let kube = try KubeClient(config: config.kube, logger: logger, pageSize: config.listPageSize)
    do {
      try await cancelWhenGracefulShutdown {
        try await withCSIClient(socketPath: config.csiSocket) { csi in
          try await runConnected(kube: kube, csi: csi)
        }
      }
    } catch is CancellationError {
    } catch {
      await kube.shutdown()
      throw error
    }
    await kube.shutdown()
  }

  func runConnected(kube: KubeClient, csi: CSIClient) async throws {
    let scope = try await connect(csi)
    let multiWriter = await Self.hasSingleNodeMultiWriter(csi)
    metrics.setLeader(false)
    let election = config.leaderElection
      ? LeaderElection(
        client: kube, namespace: config.leaderElectionNamespace, name: config.leaseName,
        identity: config.identity, logger: logger, leaseDuration: config.leaseDuration,
        renewDeadline: config.renewDeadline, retryPeriod: config.retryPeriod)
      : nil
    try await election?.acquire()
    metrics.setLeader(true)

    let queue = WorkQueue()
    let events = EventRecorder(client: kube, component: "swell-sidecar", instance: config.identity, logger: logger)
    // Deleted claims are keyed too, so that an abandoned in-flight create is cleaned up.
    let claims = Informer(client: kube, resource: .persistentVolumeClaims, logger: logger) { old, new in
      if let claim = new ?? old { Task { await queue.add(Reconciler.claimKey(claim)) } }
    }
    let volumes = Informer(client: kube, resource: .persistentVolumes, logger: logger) { old, new in
      guard let pv = new ?? old else { return }
      let claimRef = pv[path: "spec", "claimRef"]
      Task {
        if new != nil { await queue.add(Reconciler.volumeKey(pv)) }
        if let ns = claimRef?["namespace"]?.string, let name = claimRef?["name"]?.string {
          await queue.add("claim/\(ns)/\(name)")
        }
      }
    }
    let capacityChanged = Nudge()
    let classes = Informer(client: kube, resource: .storageClasses, logger: logger) { _, new in
      capacityChanged.nudge()
      guard let name = new?.name else { return }
      Task {
        for claim in claims.list() where claim[path: "spec", "storageClassName"]?.string == name {
          await queue.add(Reconciler.claimKey(claim))
        }
      }
    }
    let snapshotCaches = config.snapshots
      ? ContentCaches.watching(
        .volumeSnapshotContents, classes: .volumeSnapshotClasses, classField: "volumeSnapshotClassName", kube: kube,
        queue: queue, logger: logger, key: Reconciler.contentKey)
      : nil
    let groupCaches = config.groupSnapshots
      ? ContentCaches.watching(
        .volumeGroupSnapshotContents, classes: .volumeGroupSnapshotClasses, classField: "volumeGroupSnapshotClassName",
        kube: kube, queue: queue, logger: logger, key: Reconciler.groupContentKey)
      : nil
    // The scheduler's caches: it looks at them once a second, so their changes queue nothing.
    let scheduled = config.scheduledSnapshots
      ? (Informer(client: kube, resource: .volumeSnapshots, logger: logger) { _, _ in },
         config.groupSnapshots ? Informer(client: kube, resource: .volumeGroupSnapshots, logger: logger) { _, _ in } : nil)
      : nil
    let attachments = config.attach
      ? Informer(client: kube, resource: .volumeAttachments, logger: logger) { old, new in
        guard let va = new ?? old else { return }
        Task {
          if new != nil { await queue.add(Reconciler.attachmentKey(va)) }
          // A VolumeAttachment gone may free its PV of the attacher's finalizer.
          if let pv = va[path: "spec", "source", "persistentVolumeName"]?.string { await queue.add("volume/\(pv)") }
        }
      }
      : nil
    let nodesChanged = Nudge()
    let csiNodes = config.attach || config.nodesFile != nil
      ? Informer(client: kube, resource: .csiNodes, logger: logger) { _, _ in nodesChanged.nudge() }
      : nil
    let reconciler = Reconciler(
      kube: kube, csi: csi, driver: config.driverName, scope: scope, backends: Set(config.backends),
      defaultFSType: config.defaultFSType, multiWriter: multiWriter,
      csiTimeout: config.csiTimeout, claims: claims, volumes: volumes, classes: classes, snapshotCaches: snapshotCaches,
      groupCaches: groupCaches, attachments: attachments, csiNodes: csiNodes, queue: queue, events: events,
      metrics: metrics, capacityChanged: capacityChanged, logger: logger)
    let publisher: CapacityPublisher?
    if let capacity = config.capacity {
      let owner = try await CapacityPublisher.owner(
        kube: kube, podNamespace: capacity.podNamespace, podName: capacity.podName)
      logger.notice("publishing capacity", metadata: ["owner": "\(owner["kind"]?.string ?? "")/\(owner["name"]?.string ?? "")"])
      publisher = CapacityPublisher(
        reconciler: reconciler, namespace: capacity.podNamespace, owner: owner, interval: capacity.pollInterval,
        nudge: capacityChanged, logger: logger)
    } else {
      publisher = nil
    }
    // The snapshot CRDs are optional, as for external-provisioner: provisioning, resizing and capacity
    // start once the core caches are filled; the snapshot informers wait for their CRDs on their own.
    let core = [claims, volumes, classes] + [attachments, csiNodes].compactMap { $0 }
    let optional = (snapshotCaches.map { [$0.contents, $0.classes] } ?? [])
      + (groupCaches.map { [$0.contents, $0.classes] } ?? [])
      + (scheduled.map { [$0.0] + [$0.1].compactMap { $0 } } ?? [])
    let informers = core + optional
    state.attach(queue: queue, core: core, optional: optional)

    try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask { await events.run() }
      for informer in informers { group.addTask { await informer.run() } }
      if let election {
        group.addTask {
          try await election.holdLease()
          throw SidecarError.lostLeadership
        }
      }
      group.addTask {
        while !core.allSatisfy(\.hasSynced) {
          try await Task.sleep(for: .milliseconds(20))
        }
        logger.notice("caches synced; starting workers", metadata: ["workers": "\(config.workers)"])
        try await withThrowingTaskGroup(of: Void.self) { workers in
          for _ in 0..<max(1, config.workers) {
            workers.addTask { await Workers.run(queue: queue, worker: reconciler, logger: logger) }
          }
          let health = config.healthInterval.map { HealthMonitor(reconciler: reconciler, interval: $0, logger: logger) }
          if let health { workers.addTask { try await health.run() } }
          if let publisher { workers.addTask { try await publisher.run() } }
          if let path = config.nodesFile, let csiNodes {
            let registry = NodeRegistry(csiNodes: csiNodes, driver: config.driverName, path: path, logger: logger)
            workers.addTask { try await registry.run(nudge: nodesChanged) }
          }
          if let (snapshots, groups) = scheduled {
            let scheduler = SnapshotScheduler(
              reconciler: reconciler, snapshots: snapshots, groupSnapshots: groups,
              clock: ScheduleClock(file: config.scheduleClockFile), interval: config.scheduleInterval, logger: logger)
            workers.addTask { try await scheduler.run() }
          }
          if case .node(let node, _) = scope, let address = config.autoGrowPluginAddress {
            let grower = AutoGrower(
              reconciler: reconciler, pluginAddress: address, maxInterval: config.autoGrowMaxInterval,
              horizon: config.autoGrowHorizon, health: health, node: node, logger: logger)
            workers.addTask { try await grower.run() }
          }
          workers.addTask {
            // Level-triggered: every object is looked at again now and then, whatever was missed.
            while true {
              try await Task.sleep(for: config.resyncPeriod)
              for claim in claims.list() { await queue.add(Reconciler.claimKey(claim)) }
              for pv in volumes.list() { await queue.add(Reconciler.volumeKey(pv)) }
              for content in snapshotCaches?.contents.list() ?? [] { await queue.add(Reconciler.contentKey(content)) }
              for content in groupCaches?.contents.list() ?? [] { await queue.add(Reconciler.groupContentKey(content)) }
              for va in attachments?.list() ?? [] { await queue.add(Reconciler.attachmentKey(va)) }
            }
          }
          try await workers.next()
        }
      }
      defer {
        events.finish()
        Task { await queue.shutDown() }
      }
      try await group.next()
      group.cancelAll()
    }
  }

  /// Waits for the plugin to be ready, checks that it is the driver we were told, and in per-node
  /// mode learns this node's topology from it.
  func connect(_ csi: CSIClient) async throws -> Scope {
    var delay = Duration.milliseconds(100)
    while true {
      do {
        var options = CallOptions.defaults
        options.timeout = .seconds(5)
        let probe = try await csi.identity.probe(.init(), options: options)
        if probe.hasReady && !probe.ready.value { throw SidecarError.pluginNotReady }
        let info = try await csi.identity.getPluginInfo(.init(), options: options)
        guard info.name == config.driverName else { throw SidecarError.wrongDriver(info.name, config.driverName) }
        guard let nodeName = config.nodeName else { return .central }
        let nodeInfo = try await csi.node.nodeGetInfo(.init(), options: options)
        logger.notice(
          "per-node mode", metadata: ["node": "\(nodeName)", "topology": "\(nodeInfo.accessibleTopology.segments)"])
        return .node(name: nodeName, topology: nodeInfo.accessibleTopology.segments)
      } catch let error as SidecarError where !(error == .pluginNotReady) {
        throw error
      } catch {
        logger.info("waiting for the plugin", metadata: ["error": "\(error)"])
        try await Task.sleep(for: delay)
        delay = min(delay * 2, .seconds(5))
      }
    }
  }

  /// Whether the plugin's controller has SINGLE_NODE_MULTI_WRITER (false when it serves no controller).
  static func hasSingleNodeMultiWriter(_ csi: CSIClient) async -> Bool {
    var options = CallOptions.defaults
    options.timeout = .seconds(5)
    guard let response = try? await csi.controller.controllerGetCapabilities(.init(), options: options) else {
      return false
    }
    return response.capabilities.contains { $0.rpc.type == .singleNodeMultiWriter }
  }
}

public struct CapacityConfig: Sendable {
  public var podName: String
  public var podNamespace: String
  public var pollInterval: Duration = .seconds(60)
  public init(podName: String, podNamespace: String) {
    self.podName = podName
    self.podNamespace = podNamespace
  }
}

public enum SidecarError: Error, Equatable, CustomStringConvertible {
  case pluginNotReady
  case wrongDriver(String, String)
  case lostLeadership
  case noOwner(String)

  public var description: String {
    switch self {
    case .noOwner(let why): "cannot publish capacity: \(why)"
    case .pluginNotReady: "the plugin is not ready"
    case .wrongDriver(let got, let want): "the plugin is driver \(got.debugDescription), not \(want.debugDescription)"
    case .lostLeadership: "lost the leader lease"
    }
  }
}

/// What /healthz and /metrics read from a running sidecar.
public final class SidecarState: Sendable {
  let queue = Mutex<WorkQueue?>(nil)
  let informers = Mutex<(core: [Informer], optional: [Informer])>(([], []))

  public init() {}

  func attach(queue: WorkQueue, core: [Informer], optional: [Informer]) {
    self.queue.withLock { $0 = queue }
    self.informers.withLock { $0 = (core, optional) }
  }

  /// Healthy while waiting for leadership, and once running, when the core caches (claims, volumes,
  /// classes) have synced. Optional ones (the snapshot CRDs) never make the sidecar unhealthy.
  public var healthy: Bool { informers.withLock { $0.core.allSatisfy(\.hasSynced) } }

  /// One line per optional resource that is not served yet: the conditions /healthz reports.
  public var conditions: [String] {
    informers.withLock { informers in
      informers.optional.filter { !$0.hasSynced }.map { informer in
        informer.isAbsent
          ? "\(informer.resource): not served by the API server (CRD not installed); its controller waits for it"
          : "\(informer.resource): not listed yet"
      }
    }
  }
  public func queueDepth() async -> Int {
    guard let queue = queue.withLock({ $0 }) else { return 0 }
    return await queue.depth
  }
}

/// The sidecar's /metrics and /healthz.
public func sidecarMetricsServer(address: String, metrics: SidecarMetrics, state: SidecarState, logger: Logger)
  throws -> MetricsServer
{
  try MetricsServer(address: address, logger: logger) { path in
    switch path {
    case "/metrics":
      metrics.setQueueDepth(await state.queueDepth())
      return (.ok, metrics.render())
    case "/healthz":
      let conditions = state.conditions.map { $0 + "\n" }.joined()
      return state.healthy ? (.ok, "ok\n" + conditions) : (.serviceUnavailable, "caches not synced\n" + conditions)
    default:
      return (.notFound, "not found\n")
    }
  }
}
