import CSIProto
import GRPCCore
import SwellClient
import SwellHost
import Testing
import SwellDriver

@Suite(.serialized, .enabled(if: runningAsRoot, "needs root: attaches loop devices and mounts filesystems"))
struct LifecycleTests {
  let exec = SystemExecutor()

  @Test(arguments: ["ext4", "xfs"])
  func createStagePublishGrowOnlineAndCleanUp(fsType: String) async throws {
    try await withPlugin { client, root in
      let cap = CSIRequests.mountCapability(fsType: fsType)
      let staging = root + "/staging"
      let target = root + "/pods/p1/mount"
      let created = try await client.controller.createVolume(CSIRequests.create(name: "v1", bytes: 400 << 20, capability: cap))
      #expect(created.volume.capacityBytes == 400 << 20)
      #expect(created.volume.accessibleTopology.first?.segments["topology.swell.csi.dev/node"] == "it-node")

      let published = try await client.publishHere("v1", capability: cap) ?? [:]
      _ = try await client.node.nodeStageVolume(.with {
        $0.volumeID = "v1"
        $0.stagingTargetPath = staging
        $0.volumeCapability = cap
        $0.publishContext = published
      })
      _ = try await client.node.nodePublishVolume(.with {
        $0.volumeID = "v1"
        $0.stagingTargetPath = staging
        $0.targetPath = target
        $0.volumeCapability = cap
      })
      let mount = try #require(MountInfo.mount(at: target, in: try MountInfo.current()))
      #expect(mount.fsType == fsType)

      try await exec.run(["dd", "if=/dev/urandom", "of=\(target)/data", "bs=1M", "count=16", "conv=fsync", "status=none"])
      let before = try await exec.run(["sha256sum", "\(target)/data"]).stdout.prefix(64)
      let sizeBefore = try FileSystemUsage.of(target).totalBytes

      let expanded = try await client.controller.controllerExpandVolume(.with {
        $0.volumeID = "v1"
        $0.capacityRange.requiredBytes = 800 << 20
      })
      #expect(expanded.capacityBytes == 800 << 20)
      #expect(expanded.nodeExpansionRequired)
      let nodeExpand = Csi_V1_NodeExpandVolumeRequest.with {
        $0.volumeID = "v1"
        $0.volumePath = target
        $0.stagingTargetPath = staging
        $0.capacityRange.requiredBytes = 800 << 20
      }
      if fsType == "ext4", ProcessCapabilities.has(ProcessCapabilities.sysResource) == false {
        // The kernel refuses ext4 online resize without CAP_SYS_RESOURCE: the plugin must say so
        // plainly, leave the data and the mount alone, and still have refreshed the device.
        let error = await #expect(throws: RPCError.self) { try await client.node.nodeExpandVolume(nodeExpand) }
        #expect(error?.code == .failedPrecondition)
        #expect(error?.message.contains("CAP_SYS_RESOURCE") == true)
        let after = try await exec.run(["sha256sum", "\(target)/data"]).stdout.prefix(64)
        #expect(before == after)
        let size = try await exec.run(["blockdev", "--getsize64", mount.source]).stdout.trimmingWhitespace()
        #expect(size == String(800 << 20))
        try await unpublishUnstageDelete(client, root: root, staging: staging, target: target)
        return
      }
      let grown = try await client.node.nodeExpandVolume(nodeExpand)
      #expect(grown.capacityBytes == 800 << 20)
      let sizeAfter = try FileSystemUsage.of(target).totalBytes
      #expect(sizeAfter > sizeBefore + (300 << 20), "the filesystem grew: \(sizeBefore) -> \(sizeAfter)")
      let after = try await exec.run(["sha256sum", "\(target)/data"]).stdout.prefix(64)
      #expect(before == after)

      // Repeats are no-ops.
      let again = try await client.node.nodeExpandVolume(.with {
        $0.volumeID = "v1"
        $0.volumePath = target
      })
      #expect(again.capacityBytes == 800 << 20)

      let stats = try await client.node.nodeGetVolumeStats(.with {
        $0.volumeID = "v1"
        $0.volumePath = target
      })
      let bytes = try #require(stats.usage.first { $0.unit == .bytes })
      #expect(bytes.total == sizeAfter)
      #expect(stats.usage.contains { $0.unit == .inodes && $0.total > 0 })
      #expect(!stats.volumeCondition.abnormal)

      try await unpublishUnstageDelete(client, root: root, staging: staging, target: target)
    }
  }

  func unpublishUnstageDelete(_ client: CSIClient, root: String, staging: String, target: String) async throws {
    _ = try await client.node.nodeUnpublishVolume(.with {
      $0.volumeID = "v1"
      $0.targetPath = target
    })
    _ = try await client.node.nodeUnstageVolume(.with {
      $0.volumeID = "v1"
      $0.stagingTargetPath = staging
    })
    #expect(loopsUnder(root).isEmpty)
    #expect(MountInfo.mount(at: staging, in: try MountInfo.current()) == nil)
    _ = try await client.controller.deleteVolume(.with { $0.volumeID = "v1" })
    let list = try await client.controller.listVolumes(.init())
    #expect(list.entries.isEmpty)
  }

  @Test func blockVolumeIsBoundAsADeviceAndGrows() async throws {
    try await withPlugin { client, root in
      let cap = CSIRequests.blockCapability()
      let staging = root + "/staging"
      let target = root + "/pods/p1/dev/block"
      _ = try await client.controller.createVolume(CSIRequests.create(name: "b1", bytes: 64 << 20, capability: cap))
      let published = try await client.publishHere("b1", capability: cap) ?? [:]
      _ = try await client.node.nodeStageVolume(.with {
        $0.volumeID = "b1"
        $0.stagingTargetPath = staging
        $0.volumeCapability = cap
        $0.publishContext = published
      })
      _ = try await client.node.nodePublishVolume(.with {
        $0.volumeID = "b1"
        $0.stagingTargetPath = staging
        $0.targetPath = target
        $0.volumeCapability = cap
      })
      let info = try #require(try FileInfo.of(target))
      #expect(info.isBlockDevice)
      let probe = try await exec.output(["blkid", "-p", target])
      #expect(probe.exitCode == 2, "a block volume gets no filesystem")

      _ = try await client.controller.controllerExpandVolume(.with {
        $0.volumeID = "b1"
        $0.capacityRange.requiredBytes = 128 << 20
      })
      let grown = try await client.node.nodeExpandVolume(.with {
        $0.volumeID = "b1"
        $0.volumePath = target
        $0.volumeCapability = cap
      })
      #expect(grown.capacityBytes == 128 << 20)
      let size = try await exec.run(["blockdev", "--getsize64", target]).stdout.trimmingWhitespace()
      #expect(size == String(128 << 20))

      let stats = try await client.node.nodeGetVolumeStats(.with {
        $0.volumeID = "b1"
        $0.volumePath = target
      })
      #expect(stats.usage.first?.total == 128 << 20)

      _ = try await client.node.nodeUnpublishVolume(.with {
        $0.volumeID = "b1"
        $0.targetPath = target
      })
      #expect(try FileInfo.of(target) == nil, "the target file is removed")
      _ = try await client.node.nodeUnstageVolume(.with {
        $0.volumeID = "b1"
        $0.stagingTargetPath = staging
      })
      #expect(loopsUnder(root).isEmpty)
    }
  }

  @Test func neverFormatsADeviceThatHoldsData() async throws {
    try await withPlugin { client, root in
      let cap = CSIRequests.mountCapability(fsType: "ext4")
      _ = try await client.controller.createVolume(CSIRequests.create(name: "d1", bytes: 320 << 20, capability: cap))
      // Someone else's filesystem is already on the volume.
      try await exec.run(["mkfs.xfs", "-q", root + "/data/volumes/d1/disk.img"])
      let published = try await client.publishHere("d1", capability: cap) ?? [:]
      #expect(published["node"] == "it-node")
      let error = await #expect(throws: RPCError.self) {
        _ = try await client.node.nodeStageVolume(.with {
          $0.volumeID = "d1"
          $0.stagingTargetPath = root + "/staging"
          $0.volumeCapability = cap
          $0.publishContext = published
        })
      }
      #expect(error?.code == .failedPrecondition)
      #expect(error?.message.contains("refusing to format") == true)
      let still = try await exec.run(["blkid", "-p", "-o", "value", "-s", "TYPE", root + "/data/volumes/d1/disk.img"])
      #expect(still.stdout.trimmingWhitespace() == "xfs")
      #expect(loopsUnder(root).isEmpty, "a failed stage leaves no loop device")
    }
  }

  @Test func socketIsPrivateAndASecondInstanceIsRefused() async throws {
    try await withPlugin { client, root in
      let info = try #require(try FileInfo.of(root + "/csi.sock", followLinks: false))
      #expect(info.isSocket)
      #expect(info.mode & 0o007 == 0, "not accessible to others")
      #expect(throws: SwellError.self) { _ = try SwellDriver.UnixListener.bind(path: root + "/csi.sock") }
      let probe = try await client.identity.probe(.init())
      #expect(probe.ready.value)
    }
  }
}
