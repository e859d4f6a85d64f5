import GRPCCore
import GRPCNIOTransportHTTP2Posix
import Logging
import ServiceLifecycle
import SwellHost
import SwellStorage

/// Everything `swell plugin` needs to start.
public struct PluginOptions: Sendable {
  public var endpoint: String
  public var dataDir: String
  public var config: DriverConfig
  /// Where to serve `/metrics` and `/healthz` (HOST:PORT); nil for nowhere.
  public var metricsAddress: String?
  /// The iSCSI target the controller manages; nil for a controller with local volumes only.
  public var iscsiTarget: IscsiTargetConfig?
  /// This node's LVM thin pools; nil when the lvm backend is off.
  public var lvm: LvmConfig?
  /// Where directory volumes live; nil when the dir backend is off.
  public var directory: DirectoryConfig?
  /// The Ceph cluster the controller's rbd backend makes images in; nil when it is off.
  public var rbd: RbdConfig?
  /// The node's own Ceph client, for stages whose class gives no node-stage secret.
  public var rbdNodeCredentials: CephCredentials?

  public init(
    endpoint: String, dataDir: String, config: DriverConfig, metricsAddress: String? = nil,
    iscsiTarget: IscsiTargetConfig? = nil, lvm: LvmConfig? = nil, directory: DirectoryConfig? = nil,
    rbd: RbdConfig? = nil, rbdNodeCredentials: CephCredentials? = nil
  ) {
    self.rbd = rbd
    self.rbdNodeCredentials = rbdNodeCredentials
    self.directory = directory
    self.endpoint = endpoint
    self.dataDir = dataDir
    self.config = config
    self.metricsAddress = metricsAddress
    self.iscsiTarget = iscsiTarget
    self.lvm = lvm
  }
}

/// The backends one plugin process opened.
struct OpenBackends: Sendable {
  let loop: LoopBackend
  let controller: ControllerBackends
  let iscsiNode: IscsiNodeBackend
  let lvm: LvmBackend?
  let dir: DirectoryBackend?
  let node: NodeBackends

  init(options: PluginOptions, exec: any Executor) throws {
    loop = try LoopBackend(dataDir: options.dataDir, exec: exec)
    lvm = options.lvm.map { LvmBackend(config: $0, exec: exec) }
    var controllers: [(name: String, backend: any ControllerBackend)] = [(LoopBackend.name, loop)]
    if let target = options.iscsiTarget {
      controllers.append((IscsiBackend.name, try IscsiBackend(config: target, exec: exec)))
    }
    if let lvm { controllers.append((LvmBackend.name, lvm)) }
    dir = try options.directory.map { try DirectoryBackend(config: $0, exec: exec) }
    if let dir { controllers.append((DirectoryBackend.name, dir)) }
    // Last: a name that no local backend holds is the only one that costs a call to the cluster.
    if let rbd = options.rbd { controllers.append((RbdBackend.name, try RbdBackend(config: rbd, exec: exec))) }
    controller = ControllerBackends(
      controllers, localPublishing: LocalPublishing(files: try PublicationFiles(dir: options.dataDir + "/publications")))
    iscsiNode = try IscsiNodeBackend(dataDir: options.dataDir, exec: exec)
    var others: [(name: String, backend: any NodeBackend)] = [(IscsiBackend.name, iscsiNode)]
    if let lvm { others.append((LvmBackend.name, lvm)) }
    if let dir { others.append((DirectoryBackend.name, dir)) }
    others.append(
      (RbdBackend.name, try RbdNodeBackend(exec: exec, credentials: options.rbdNodeCredentials, keyDir: "\(options.dataDir)/.rbd-keys")))
    node = NodeBackends(loop: loop, others: others)
  }

  /// Removes what crashed creates and deletes left behind. Call before serving.
  func sweepLeftovers() throws -> [String] {
    try controller.sweepLeftovers()
  }
}

/// The plugin process: the services this mode serves, on a unix socket, until SIGTERM or SIGINT.
///
/// Shutdown is graceful: the server stops accepting calls, lets in-flight RPCs finish, then
/// removes its own socket file.
public struct Plugin {
  let options: PluginOptions
  let logger: Logger
  let exec: SystemExecutor
  let metrics = DriverMetrics()

  public init(options: PluginOptions, logger: Logger) {
    self.options = options
    self.logger = logger
    self.exec = SystemExecutor(logger: logger)
  }

  /// Builds the services for the configured mode.
  static func services(
    config: DriverConfig, backends: OpenBackends, exec: any Executor, logger: Logger = Logger(label: "swell")
  ) -> [any RegistrableRPCService] {
    var services: [any RegistrableRPCService] = []
    let mode = config.mode
    services.append(
      IdentityService(config: config) { try await checkReady(mode: mode, backends: backends, exec: exec) })
    if mode.servesController {
      let controller = ControllerService(config: config, backends: backends.controller)
      services += [controller, GroupControllerService(controller: controller)]
    }
    if mode.servesNode {
      services.append(NodeService(config: config, backend: backends.node, mounter: Mounter(exec: exec), logger: logger))
    }
    return services
  }

  /// The one readiness check, behind both Probe and `/healthz`: the data directories are usable;
  /// on a controller, every iSCSI volume is exported (re-exported after a tgtd restart); on a
  /// node, the kernel can make loop devices and the tools to attach, format, mount and grow are
  /// installed (a missing one is named with its package).
  static func checkReady(mode: PluginMode, backends: OpenBackends, exec: any Executor) async throws {
    if mode.servesController { try await backends.controller.checkReady() }
    if mode.servesNode {
      try Tools.require(Tools.node)
      try await backends.node.checkReady()
      guard LoopDevices(exec: exec).isUsable else {
        throw SwellError(.unavailable, "/dev/loop-control is missing: this node cannot attach loop devices")
      }
    }
  }

  /// Opens the backend, sweeps leftovers of interrupted calls, binds the socket and builds the server.
  /// The caller serves it and, when done, calls ``UnixListener/removeIfUnchanged()``.
  public func makeServer() throws -> (server: GRPCServer<HTTP2ServerTransport.Posix>, listener: UnixListener) {
    let (server, listener, _) = try makeServerAndBackend()
    return (server, listener)
  }

  func makeServerAndBackend() throws -> (GRPCServer<HTTP2ServerTransport.Posix>, UnixListener, OpenBackends) {
    let backends = try OpenBackends(options: options, exec: exec)
    if options.config.mode.servesController {
      let swept = try backends.sweepLeftovers()
      if !swept.isEmpty { logger.notice("removed leftovers of interrupted calls", metadata: ["paths": "\(swept)"]) }
    }
    if let dir = backends.dir {
      // Said at start as well as by Probe: CreateVolume refuses every dir volume until it is fixed.
      do {
        try dir.requireQuotas()
      } catch {
        logger.error("the dir backend cannot make volumes", metadata: ["root": "\(dir.root)", "error": "\(error)"])
      }
    }
    if options.config.mode.servesNode, ProcessCapabilities.has(ProcessCapabilities.sysResource) == false {
      logger.warning("no CAP_SYS_RESOURCE: ext4 volumes on this node cannot grow online (xfs and block can)")
    }
    let path = try UnixListener.socketPath(fromEndpoint: options.endpoint)
    let listener = try UnixListener.bind(path: path)
    var transportConfig = HTTP2ServerTransport.Posix.Config.defaults
    transportConfig.connection.flushCoalescing = nil
    transportConfig.connection.keepalive.clientBehavior.allowWithoutCalls = true
    let server = GRPCServer(
      transport: .http2NIOPosix(
        listeningSocketDescriptor: Int(listener.descriptor), transportSecurity: .plaintext, config: transportConfig),
      services: Self.services(config: options.config, backends: backends, exec: exec, logger: logger),
      interceptors: [RPCInterceptor(logger: logger, metrics: metrics)])
    logger.notice(
      "serving",
      metadata: [
        "endpoint": "unix://\(path)", "mode": "\(options.config.mode.rawValue)",
        "driver": "\(options.config.driverName)", "node": "\(options.config.nodeID)", "data-dir": "\(backends.loop.root)",
        "backends": "\(backends.controller.names.joined(separator: ","))",
      ])
    return (server, listener, backends)
  }

  /// Serves until SIGTERM or SIGINT, then drains in-flight RPCs and returns.
  public func run() async throws {
    let (server, listener, backends) = try makeServerAndBackend()
    defer { listener.removeIfUnchanged() }
    var services: [any Service] = [GRPCServerService(server: server)]
    if let address = options.metricsAddress {
      let metrics = self.metrics
      let mode = options.config.mode
      let exec = self.exec
      services.append(
        try MetricsServer(address: address, logger: logger) { path in
          switch path {
          case "/metrics":
            return (.ok, metrics.render(volumes: await VolumeFigures.collect(backends: backends, mode: mode)))
          case "/volumes":
            return (.ok, await VolumeFigures.collect(backends: backends, mode: mode, usage: false).stagedText())
          case "/healthz":
            do {
              try await Self.checkReady(mode: mode, backends: backends, exec: exec)
              return (.ok, "ok\n")
            } catch {
              return (.serviceUnavailable, "\(error)\n")
            }
          default:
            return (.notFound, "not found\n")
          }
        })
    }
    let group = ServiceGroup(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
    try await group.run()
    logger.notice("stopped")
  }
}

/// Runs a gRPC server as a swift-service-lifecycle service.
struct GRPCServerService<Transport: ServerTransport>: Service {
  let server: GRPCServer<Transport>

  func run() async throws {
    try await withGracefulShutdownHandler {
      try await server.serve()
    } onGracefulShutdown: {
      server.beginGracefulShutdown()
    }
  }
}
