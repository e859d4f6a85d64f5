import ArgumentParser
import Logging
import NIOCore
import NIOPosix
import SwellDriver
import SwellHost
import SwellStorage

#if canImport(Glibc)
  import Glibc
#endif

struct PluginCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "plugin", abstract: "Serve the CSI Identity, Controller and Node services on a unix socket.")

  @Option(help: "The socket to serve on, as unix:///path.")
  var endpoint = "unix:///csi/csi.sock"

  @Option(help: "This node's ID (default: the host name).")
  var nodeId: String?

  @Option(help: "The driver name that Kubernetes knows this driver by.")
  var driverName = "swell.csi.dev"

  @Option(help: "Which services to serve: controller, node or all.")
  var mode: String = "all"

  @Option(help: "The directory that holds the loop-file backend's volumes.")
  var dataDir = "/var/lib/swell"

  @Option(help: "The most volumes this node takes (NodeGetInfo).")
  var maxVolumesPerNode: Int64 = 256

  @Option(help: "trace, debug, info, notice, warning, error or critical.")
  var logLevel: Logger.Level = .info

  @Option(help: "text, or json for one JSON object per line.")
  var logFormat: String = "text"

  @Option(help: "Serve Prometheus /metrics and /healthz on HOST:PORT (off when not given).")
  var metricsAddress: String?

  @Option(help: "Controller: offer the iscsi backend, exported by tgtd; nodes log in to this HOST:PORT.")
  var iscsiPortal: String?

  @Option(help: "Controller: where iSCSI volumes' backing files live.")
  var iscsiStorageDir = "/var/lib/swell-iscsi"

  @Option(help: "Controller: each iSCSI target is named PREFIX:<volume>.")
  var iscsiIqnPrefix = "iqn.2026-11.dev.swell"

  @Option(help: "Controller: tgtd's control port (tgtd -C N).")
  var iscsiTgtControlPort = 0

  @Option(help: "Deprecated and ignored: a target admits only the initiator of the node its volume is published to.")
  var iscsiAllowedInitiator: [String] = []

  @Flag(help: "Node: stage local volumes (loop, lvm, dir) that come with no publish context, for a CSIDriver with attachRequired: false. Network volumes always need their publication.")
  var stageUnpublishedLocal = false

  @Option(help: "Controller: the file listing the node IDs a network volume may be published to, one a line (the sidecar's --nodes-file); without it, any well-formed node ID.")
  var nodesFile: String?

  @Option(help: "Offer the lvm backend: thick (linear) volumes in this volume group, and thin ones with --lvm-thin-pool.")
  var lvmVg: String?

  @Option(help: "A thin pool in --lvm-vg; repeatable; the first is the default, a class picks another with pool.")
  var lvmThinPool: [String] = []

  @Option(help: "The most a thin pool's volumes may add up to, as a multiple of the pool's size.")
  var lvmOvercommitRatio = 1.0

  @Option(help: "Refuse new volumes and growth while a thin pool's data or metadata is at least this % full.")
  var lvmFullPercent = 95.0

  @Option(help: "Offer the dir backend: volumes are directories under this path, each limited by a project quota (its filesystem mounted with prjquota).")
  var dirRoot: String?

  @Option(help: "The lowest project ID dir volumes take.")
  var dirFirstProject: UInt32 = 0x5E11_0000

  @Option(help: "Controller: offer the rbd backend: RBD images in a Ceph cluster whose monitors are HOST:PORT[,HOST:PORT…].")
  var rbdMonitors: String?

  @Option(help: "Controller: a Ceph pool for rbd volumes; repeatable; the first is the default, a class picks another with pool.")
  var rbdPool: [String] = []

  @Option(help: "The Ceph client (without client.) for calls that carry no secret; with --rbd-key-file.")
  var rbdUser: String?

  @Option(help: "A file holding that client's key (the key alone, or a keyring).")
  var rbdKeyFile: String?

  @Option(help: "Controller: flatten a new rbd clone whose chain of parents would be deeper than this.")
  var rbdMaxCloneDepth = 4

  func validate() throws {
    if rbdMonitors != nil, rbdPool.isEmpty { throw ValidationError("--rbd-monitors needs --rbd-pool") }
    if (rbdUser == nil) != (rbdKeyFile == nil) { throw ValidationError("--rbd-user and --rbd-key-file go together") }
    guard rbdMaxCloneDepth >= 1, rbdMaxCloneDepth <= 16 else { throw ValidationError("--rbd-max-clone-depth must be 1 to 16") }
    guard ["text", "json"].contains(logFormat) else { throw ValidationError("--log-format must be text or json") }
    guard PluginMode(rawValue: mode) != nil else {
      throw ValidationError("--mode must be controller, node or all")
    }
    if lvmVg == nil, !lvmThinPool.isEmpty { throw ValidationError("--lvm-thin-pool needs --lvm-vg") }
    guard lvmOvercommitRatio > 0, lvmFullPercent > 0, lvmFullPercent <= 100 else {
      throw ValidationError("--lvm-overcommit-ratio must be positive and --lvm-full-percent in (0, 100]")
    }
    if !iscsiIqnPrefix.hasPrefix("iqn.") {
      throw ValidationError("--iscsi-iqn-prefix must start with iqn.")
    }
    if let nodeId, nodeId.isEmpty || nodeId.utf8.count > 128 {
      throw ValidationError("--node-id must be 1 to 128 bytes")
    }
  }

  /// The client named by --rbd-user with the key in --rbd-key-file (the key alone, or the `key = …`
  /// line of a keyring).
  func rbdCredentials() throws -> CephCredentials? {
      guard let rbdUser, let rbdKeyFile else { return nil }
      let text = try readSmallFile(rbdKeyFile)
      let key = text.split(separator: "\n").compactMap { line -> String? in
        let parts = line.split(separator: "=", maxSplits: 1)
        return parts.count == 2 && parts[0].trimmingWhitespace() == "key" ? parts[1].trimmingWhitespace() : nil
      }.first ?? text.trimmingWhitespace()
      guard let credentials = try CephCredentials(secrets: ["userID": rbdUser, "userKey": key]) else { return nil }
      return credentials
  }

  func run() async throws {
    // Run Swift concurrency on NIO's event loops: fewer thread hand-offs per RPC.
    _ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
    let logger = bootstrapLogging(level: logLevel, json: logFormat == "json")
    var config = DriverConfig(
      driverName: driverName, version: SwellVersion.version, nodeID: nodeId ?? hostName(),
      mode: PluginMode(rawValue: mode)!, maxVolumesPerNode: maxVolumesPerNode)
    config.nodesFile = nodesFile
    config.stageUnpublishedLocal = stageUnpublishedLocal
    let iscsi = iscsiPortal.map {
      IscsiTargetConfig(storageDir: iscsiStorageDir, portal: $0, iqnPrefix: iscsiIqnPrefix, controlPort: iscsiTgtControlPort)
    }
    if !iscsiAllowedInitiator.isEmpty {
      logger.warning(
        "--iscsi-allowed-initiator is ignored: a target admits only the initiator of the node its volume is published to")
    }
    let rbdCredentials = try rbdCredentials()
    let plugin = Plugin(
      options: PluginOptions(
        endpoint: endpoint, dataDir: dataDir, config: config, metricsAddress: metricsAddress, iscsiTarget: iscsi,
        lvm: lvmVg.map {
          LvmConfig(
            volumeGroup: $0, thinPools: lvmThinPool, overcommitRatio: lvmOvercommitRatio, fullPercent: lvmFullPercent)
        }, directory: dirRoot.map { DirectoryConfig(root: $0, firstProject: dirFirstProject) },
        rbd: rbdMonitors.map {
          RbdConfig(
            monitors: $0, pools: rbdPool, credentials: rbdCredentials, keyDir: "\(dataDir)/.rbd-keys",
            maxCloneDepth: rbdMaxCloneDepth)
        }, rbdNodeCredentials: rbdCredentials),
      logger: logger)
    do {
      try await plugin.run()
    } catch {
      logger.critical("plugin failed", metadata: ["error": "\(error)"])
      throw ExitCode.failure
    }
  }
}

func hostName() -> String {
  var buffer = [CChar](repeating: 0, count: 256)
  guard gethostname(&buffer, buffer.count) == 0 else { return "localhost" }
  return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
