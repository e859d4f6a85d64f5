import Logging
import SwellClient
import SwellDriver
import SwellHost
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// True when the tests may attach loop devices and mount: they need root.
let runningAsRoot = geteuid() == 0

/// A real plugin (controller + node, loop-file backend) on a unix socket in a fresh temp dir,
/// with a Swift client connected. Everything the body leaves (mounts, loop devices, files) is
/// removed afterwards, on failure too.
func withPlugin(_ body: (CSIClient, String) async throws -> Void) async throws {
  let root = try makeTemporaryDirectory(prefix: "swell-it-")
  let socket = root + "/csi.sock"
  let config = DriverConfig(driverName: "swell.csi.dev", version: "test", nodeID: "it-node", mode: .all)
  var logger = Logger(label: "swell.test")
  logger.logLevel = .warning
  let plugin = Plugin(options: PluginOptions(endpoint: "unix://" + socket, dataDir: root + "/data", config: config), logger: logger)
  let (server, listener) = try plugin.makeServer()
  var failure: (any Error)?
  try await withThrowingTaskGroup(of: Void.self) { group in
    group.addTask { try await server.serve() }
    do {
      try await withCSIClient(socketPath: socket) { client in try await body(client, root) }
    } catch {
      failure = error
    }
    server.beginGracefulShutdown()
    try await group.waitForAll()
  }
  listener.removeIfUnchanged()
  await cleanUpHost(under: root)
  if let failure { throw failure }
}

/// Unmounts everything under `root`, detaches loop devices backed by files under it, removes it.
func cleanUpHost(under root: String) async {
  let exec = SystemExecutor()
  let mounts = ((try? MountInfo.current()) ?? []).filter { $0.mountPoint.hasPrefix(root + "/") }
  for mount in mounts.reversed() { _ = try? await exec.output(["umount", "-l", mount.mountPoint]) }
  for name in loopsUnder(root) { _ = try? await exec.output(["losetup", "-d", "/dev/" + name]) }
  try? removeTree(root)
}

/// The loop devices attached to files under `root`.
func loopsUnder(_ root: String) -> [String] {
  ((try? listDirectory("/sys/block")) ?? []).filter { name in
    guard name.hasPrefix("loop"), let backing = try? readSmallFile("/sys/block/\(name)/loop/backing_file") else {
      return false
    }
    return backing.hasPrefix(root + "/")
  }
}
