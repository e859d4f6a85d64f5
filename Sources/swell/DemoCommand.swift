import ArgumentParser
import CSIProto
import Logging
import SwellClient
import SwellDriver
import SwellHost

#if canImport(Glibc)
  import Glibc
#endif

/// `swell demo`: the plugin on a temp socket with the loop-file backend, driven the way the
/// provisioner and kubelet drive it: create, stage, publish, write, grow online, verify, clean up.
struct DemoCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "demo", abstract: "Create a 1 GiB volume, use it, grow it to 2 GiB online, verify the data, clean up.")

  @Option(help: "The filesystem: ext4 or xfs (default ext4, or xfs where ext4 cannot grow online).")
  var fsType: String?

  @Option(help: "trace, debug, info, notice, warning, error or critical (the plugin's log).")
  var logLevel: Logger.Level = .warning

  func validate() throws {
    guard fsType == nil || ["ext4", "xfs"].contains(fsType!) else { throw ValidationError("--fs-type must be ext4 or xfs") }
  }

  func run() async throws {
    guard geteuid() == 0 else {
      print("swell demo needs root: it attaches a loop device and mounts a filesystem.")
      throw ExitCode.failure
    }
    let logger = bootstrapLogging(level: logLevel)
    var fsType = self.fsType ?? "ext4"
    if self.fsType == nil, ProcessCapabilities.has(ProcessCapabilities.sysResource) == false {
      say(
        "Note: this machine withholds CAP_SYS_RESOURCE, without which the kernel refuses to grow a mounted ext4 "
          + "filesystem. Using xfs, which grows online with CAP_SYS_ADMIN. (--fs-type ext4 forces ext4.)")
      fsType = "xfs"
    }
    let root = try makeTemporaryDirectory(prefix: "swell-demo-")
    let socket = root + "/csi.sock"
    let config = DriverConfig(driverName: "swell.csi.dev", version: SwellVersion.version, nodeID: "demo-node", mode: .all)
    let plugin = Plugin(
      options: PluginOptions(endpoint: "unix://" + socket, dataDir: root + "/data", config: config), logger: logger)
    let (server, listener) = try plugin.makeServer()
    say("Started the Swell plugin (controller + node) on \(socket), data in \(root)/data.")

    var failure: (any Error)?
    try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask { try await server.serve() }
      let demo = Demo(root: root, fsType: fsType)
      say("Filesystem: \(fsType).")
      do {
        try await withCSIClient(socketPath: socket) { client in
          do {
            try await demo.play(client)
          } catch {
            failure = error
          }
          await demo.cleanUp(client)
        }
      } catch {
        failure = failure ?? error
      }
      server.beginGracefulShutdown()
      try await group.waitForAll()
    }
    listener.removeIfUnchanged()
    try? removeTree(root)
    if let failure {
      say("FAILED: \(failure)")
      throw ExitCode.failure
    }
    say("Done: the volume grew from 1 GiB to 2 GiB while mounted, the data survived, and nothing was left behind.")
  }
}

func say(_ line: String) {
  print(line)
  fflush(nil)
}

struct Demo {
  let root: String
  let fsType: String
  let volumeName = "demo-volume"
  let exec = SystemExecutor()
  var staging: String { root + "/kubelet/staging" }
  var target: String { root + "/kubelet/pods/demo/mount" }
  var capability: Csi_V1_VolumeCapability { CSIRequests.mountCapability(fsType: fsType) }

  func play(_ client: CSIClient) async throws {
    let info = try await client.identity.getPluginInfo(.init())
    let ready = try await client.identity.probe(.init()).ready.value
    say("Probe: ready=\(ready). Plugin \(info.name) \(info.vendorVersion).")

    let created = try await client.controller.createVolume(
      CSIRequests.create(name: volumeName, bytes: 1 << 30, capability: capability))
    say("CreateVolume \(volumeName): \(created.volume.capacityBytes) bytes, on node \(created.volume.accessibleTopology.first?.segments.values.first ?? "?").")

    let published = try await client.publishHere(volumeName, capability: capability) ?? [:]
    say("ControllerPublishVolume to this node: publish context \(published.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")).")
    _ = try await client.node.nodeStageVolume(.with {
      $0.volumeID = volumeName
      $0.stagingTargetPath = staging
      $0.volumeCapability = capability
      $0.publishContext = published
    })
    say("NodeStageVolume: attached a loop device, formatted it \(fsType) (it was blank), mounted at \(staging).")
    _ = try await client.node.nodePublishVolume(.with {
      $0.volumeID = volumeName
      $0.stagingTargetPath = staging
      $0.targetPath = target
      $0.volumeCapability = capability
    })
    say("NodePublishVolume: bind-mounted at \(target), where a pod would see it.")

    let file = target + "/data.bin"
    try await exec.run(["dd", "if=/dev/urandom", "of=\(file)", "bs=1M", "count=64", "conv=fsync", "status=none"])
    let before = try await checksum(file)
    say("Wrote 64 MiB of random data; sha256 \(before.prefix(16))…")
    say("df before:\n" + (try await exec.run(["df", "-h", target])).stdout.trimmingWhitespace())

    let start = ContinuousClock.now
    let expanded = try await client.controller.controllerExpandVolume(.with {
      $0.volumeID = volumeName
      $0.capacityRange.requiredBytes = 2 << 30
    })
    let grown = try await client.node.nodeExpandVolume(.with {
      $0.volumeID = volumeName
      $0.volumePath = target
      $0.stagingTargetPath = staging
      $0.capacityRange.requiredBytes = 2 << 30
      $0.volumeCapability = capability
    })
    let took = ContinuousClock.now - start
    say(
      "ControllerExpandVolume: \(expanded.capacityBytes) bytes (node expansion required: \(expanded.nodeExpansionRequired)); "
        + "NodeExpandVolume: \(grown.capacityBytes) bytes, filesystem grown while mounted. Took \(Int(took.milliseconds.rounded())) ms.")
    say("df after:\n" + (try await exec.run(["df", "-h", target])).stdout.trimmingWhitespace())

    let stats = try await client.node.nodeGetVolumeStats(.with {
      $0.volumeID = volumeName
      $0.volumePath = target
    })
    if let bytes = stats.usage.first(where: { $0.unit == .bytes }) {
      say("NodeGetVolumeStats: total \(bytes.total) bytes, used \(bytes.used), available \(bytes.available).")
    }
    let after = try await checksum(file)
    guard after == before else { throw SwellError(.internal, "checksum changed: \(before) became \(after)") }
    say("Checksum after the grow matches: \(after.prefix(16))…")
  }

  /// Unpublishes, unstages and deletes whatever the demo got to, reporting but not stopping on errors.
  func cleanUp(_ client: CSIClient) async {
    do {
      _ = try await client.node.nodeUnpublishVolume(.with {
        $0.volumeID = volumeName
        $0.targetPath = target
      })
      _ = try await client.node.nodeUnstageVolume(.with {
        $0.volumeID = volumeName
        $0.stagingTargetPath = staging
      })
      try await client.unpublishHere(volumeName)
      _ = try await client.controller.deleteVolume(.with { $0.volumeID = volumeName })
      say("Cleaned up: NodeUnpublishVolume, NodeUnstageVolume (loop device detached), ControllerUnpublishVolume, DeleteVolume.")
    } catch {
      say("Clean-up failed: \(error)")
    }
  }

  func checksum(_ path: String) async throws -> String {
    let out = try await exec.run(["sha256sum", path]).stdout
    return String(out.split(separator: " ").first ?? "")
  }
}
