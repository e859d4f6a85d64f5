import ArgumentParser
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import SwellKube
import SwellSidecar

#if canImport(Glibc)
  import Glibc
#endif

struct SidecarCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "sidecar",
    abstract: "Provision, delete and grow volumes for PVCs: Swell's provisioner and resizer.")

  @Option(help: "The plugin's socket, as unix:///path.")
  var csiAddress = "unix:///csi/csi.sock"

  @Option(help: "The driver name; must match the plugin's.")
  var driverName = "swell.csi.dev"

  @Option(help: "A kubeconfig file (default: the in-cluster service account).")
  var kubeconfig: String?

  @Option(help: "With --per-node: this node's name, as the scheduler writes it in volume.kubernetes.io/selected-node.")
  var nodeId: String?

  @Flag(help: "Handle only this node's claims and volumes (local volumes; the sidecar runs in the node DaemonSet).")
  var perNode = false

  @Option(help: "Concurrent reconcile workers.")
  var workers = 4

  @Option(help: "Serve Prometheus /metrics and /healthz on HOST:PORT (off when not given).")
  var metricsAddress: String?

  @Flag(help: "Elect a leader on a coordination.k8s.io Lease, so that several replicas are safe.")
  var leaderElection = false

  @Option(help: "The namespace of the leader Lease (default: the pod's namespace, else kube-system).")
  var leaderElectionNamespace: String?

  @Option(help: "Seconds a lease lasts without renewal before another replica may take it.")
  var leaderElectionLeaseDuration = 15.0

  @Option(help: "Seconds the leader keeps trying to renew before it gives up leadership.")
  var leaderElectionRenewDeadline = 10.0

  @Option(help: "Seconds between tries to take or renew the lease.")
  var leaderElectionRetryPeriod = 2.0

  @Option(help: "The fsType when the StorageClass names none.")
  var defaultFstype = "ext4"

  @Option(help: "Seconds to wait for one CSI call.")
  var timeout = 60

  @Option(help: "Serve only StorageClasses whose backend parameter is this (absent means loop), and their volumes; repeatable. Default: all. Per-node sidecars take loop and lvm; the controller's takes iscsi.")
  var backend: [String] = []

  @Option(help: "Seconds between full resyncs of every claim and volume.")
  var resyncSeconds = 600

  @Option(help: "Objects per page when listing (the list's limit).")
  var listPageSize = 500

  @Option(help: "With --per-node: the local plugin's --metrics-address (HOST:PORT); turns on auto-grow for claims whose policy enables it.")
  var autogrowPluginAddress: String?

  @Option(help: "Seconds between looks at a staged volume when it is not filling fast.")
  var autogrowMaxInterval = 2.0

  @Option(help: "Seconds: grow early when, at its fill rate, a volume would cross its threshold within this.")
  var autogrowHorizon = 30

  @Flag(help: "Be the snapshotter too: take VolumeSnapshotContents of this driver to the plugin, and restore claims from VolumeSnapshots. Needs the snapshot CRDs and the common snapshot-controller.")
  var snapshots = false

  @Flag(help: "Take VolumeGroupSnapshotContents of this driver to the plugin's GroupController too (csi-snapshotter's group role). Needs the group snapshot CRDs and the common snapshot-controller with its group feature.")
  var groupSnapshots = false

  @Flag(help: "Take scheduled snapshots: VolumeSnapshots of the claims whose StorageClass or own annotations set snapshot.swell.dev/schedule, kept by their retention (keep, max-age); with --group-snapshots, VolumeGroupSnapshots of the claims labelled snapshot.swell.dev/group. Central sidecar only; needs the snapshot CRDs.")
  var scheduledSnapshots = false

  @Option(help: .hidden)
  var scheduleClockFile: String?

  @Option(help: .hidden)
  var scheduleInterval = 1.0

  @Flag(help: "Be the attacher too (csi-attacher's role): publish volumes to the nodes their VolumeAttachments name, and unpublish them when those go. Per-node: this node's local volumes; central: the network volumes. The CSIDriver must say attachRequired: true.")
  var attach = false

  @Option(help: "Write the node IDs that CSINodes register for this driver to this file, one a line, whenever they change: the controller plugin's --nodes-file.")
  var nodesFile: String?

  @Option(help: "Seconds between looks at every volume's health (ListVolumes; NodeGetVolumeStats for staged volumes with --autogrow-plugin-address); an abnormal condition becomes a Warning Event on the claim. 0 turns it off.")
  var healthInterval = 60.0

  @Flag(help: "Publish CSIStorageCapacity objects for the scheduler (per-node: this node's local classes; central: the network classes). Needs --pod-name and --pod-namespace.")
  var enableCapacity = false

  @Option(help: "Seconds between full refreshes of the published capacity (it is also refreshed after every create, delete, grow and snapshot).")
  var capacityPollInterval = 60.0

  @Option(help: "This sidecar's pod (default: $POD_NAME, from the downward API); its DaemonSet or Deployment owns the capacity objects.")
  var podName: String?

  @Option(help: "This sidecar's namespace (default: $POD_NAMESPACE); the capacity objects live there.")
  var podNamespace: String?

  @Option(help: "trace, debug, info, notice, warning, error or critical.")
  var logLevel: Logger.Level = .info

  @Option(help: "text, or json for one JSON object per line.")
  var logFormat: String = "text"

  func validate() throws {
    guard ["text", "json"].contains(logFormat) else { throw ValidationError("--log-format must be text or json") }
    guard csiAddress.hasPrefix("unix://") else { throw ValidationError("--csi-address must be unix:///path") }
    if perNode && (nodeId ?? "").isEmpty { throw ValidationError("--per-node needs --node-id") }
    if !perNode && nodeId != nil { throw ValidationError("--node-id is only used with --per-node") }
    guard scheduleInterval >= 0.05 else { throw ValidationError("--schedule-interval must be at least 0.05") }
    if scheduledSnapshots && perNode {
      throw ValidationError("--scheduled-snapshots runs in the central sidecar, not with --per-node")
    }
    if autogrowPluginAddress != nil && !perNode { throw ValidationError("--autogrow-plugin-address needs --per-node") }
    guard autogrowMaxInterval >= 0.1 else { throw ValidationError("--autogrow-max-interval must be at least 0.1") }
    guard capacityPollInterval >= 0.1 else { throw ValidationError("--capacity-poll-interval must be at least 0.1") }
    guard healthInterval == 0 || healthInterval >= 0.1 else { throw ValidationError("--health-interval must be 0 or at least 0.1") }
    guard autogrowHorizon >= 0 else { throw ValidationError("--autogrow-horizon must not be negative") }
    guard (1...64).contains(workers) else { throw ValidationError("--workers must be 1 to 64") }
    guard leaderElectionRetryPeriod > 0, leaderElectionRetryPeriod < leaderElectionRenewDeadline,
      leaderElectionRenewDeadline < leaderElectionLeaseDuration
    else { throw ValidationError("leader election needs retry period < renew deadline < lease duration") }
    guard timeout > 0, resyncSeconds > 0, listPageSize > 0 else {
      throw ValidationError("--timeout, --resync-seconds and --list-page-size must be positive")
    }
  }

  func run() async throws {
    _ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
    let logger = bootstrapLogging(level: logLevel, json: logFormat == "json")
    do {
      let kube: KubeConfig
      if let kubeconfig {
        kube = try KubeConfig.load(path: kubeconfig)
      } else {
        kube = try KubeConfig.inCluster(environment: environment())
      }
      var config = SidecarConfig(
        csiSocket: String(csiAddress.dropFirst("unix://".count)), driverName: driverName, kube: kube,
        identity: SidecarConfig.defaultIdentity())
      config.nodeName = perNode ? nodeId : nil
      config.workers = workers
      config.leaderElection = leaderElection
      config.leaderElectionNamespace = leaderElectionNamespace ?? kube.namespace ?? "kube-system"
      config.leaseDuration = .seconds(leaderElectionLeaseDuration)
      config.renewDeadline = .seconds(leaderElectionRenewDeadline)
      config.retryPeriod = .seconds(leaderElectionRetryPeriod)
      config.defaultFSType = defaultFstype
      config.backends = backend
      config.csiTimeout = .seconds(timeout)
      config.resyncPeriod = .seconds(resyncSeconds)
      config.listPageSize = listPageSize
      config.autoGrowPluginAddress = autogrowPluginAddress
      config.autoGrowMaxInterval = .milliseconds(Int64(autogrowMaxInterval * 1000))
      config.autoGrowHorizon = .seconds(autogrowHorizon)
      config.snapshots = snapshots
      config.groupSnapshots = groupSnapshots
      config.scheduledSnapshots = scheduledSnapshots
      config.scheduleClockFile = scheduleClockFile
      config.scheduleInterval = .milliseconds(Int64(scheduleInterval * 1000))
      config.attach = attach
      config.nodesFile = nodesFile
      if enableCapacity {
        let env = environment()
        guard let pod = podName ?? env["POD_NAME"], let ns = podNamespace ?? env["POD_NAMESPACE"], !pod.isEmpty, !ns.isEmpty
        else { throw ValidationError("--enable-capacity needs --pod-name and --pod-namespace (or POD_NAME and POD_NAMESPACE)") }
        var capacity = CapacityConfig(podName: pod, podNamespace: ns)
        capacity.pollInterval = .milliseconds(Int64(capacityPollInterval * 1000))
        config.capacity = capacity
      }
      config.healthInterval = healthInterval > 0 ? .milliseconds(Int64(healthInterval * 1000)) : nil
      let metrics = SidecarMetrics()
      let state = SidecarState()
      var services: [any Service] = [SidecarService(config: config, metrics: metrics, state: state, logger: logger)]
      if let metricsAddress {
        services.append(try sidecarMetricsServer(address: metricsAddress, metrics: metrics, state: state, logger: logger))
      }
      let group = ServiceGroup(
        configuration: .init(
          services: services.map { .init(service: $0, successTerminationBehavior: .gracefullyShutdownGroup,
            failureTerminationBehavior: .gracefullyShutdownGroup) },
          gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
      try await group.run()
    } catch {
      logger.critical("sidecar failed", metadata: ["error": "\(error)"])
      throw ExitCode.failure
    }
  }
}

func environment() -> [String: String] {
  var out: [String: String] = [:]
  var pointer = environ
  while let entry = pointer.pointee {
    let text = String(cString: entry)
    if let eq = text.firstIndex(of: "=") { out[String(text[..<eq])] = String(text[text.index(after: eq)...]) }
    pointer += 1
  }
  return out
}
