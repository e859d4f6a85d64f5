#if canImport(Glibc)
  import Glibc
#endif
import CSIProto
import GRPCCore
import Logging
import SwellHost
import SwellStorage

/// The CSI Node service: attach, format, mount, publish, measure and grow volumes on this node.
///
/// Node operations believe the kernel (the mount table, blkid, sysfs sizes), never a state file,
/// so every call converges when it is retried after a crash.
public struct NodeService: Csi_V1_Node.SimpleServiceProtocol {
  let config: DriverConfig
  let backend: any NodeBackend
  let mounter: Mounter
  let logger: Logger
  let locks = VolumeLocks()

  public init(
    config: DriverConfig, backend: any NodeBackend, mounter: Mounter, logger: Logger = Logger(label: "swell.node")
  ) {
    self.config = config
    self.backend = backend
    self.mounter = mounter
    self.logger = logger
  }

  public func nodeStageVolume(
    request: Csi_V1_NodeStageVolumeRequest, context: ServerContext
  ) async throws -> Csi_V1_NodeStageVolumeResponse {
    let id = request.volumeID
    try Names.validateVolumeID(id)
    try Names.validateAbsolutePath(request.stagingTargetPath, field: "staging_target_path")
    guard request.hasVolumeCapability else { throw SwellError.invalid("volume_capability is missing") }
    let access = try Validation.access(request.volumeCapability)
    let staging = Names.normalized(request.stagingTargetPath)
    try refuseSymlink(staging, field: "staging_target_path")
    let mkfsOptions = try request.volumeContext["mkfsOptions"].map(Validation.mkfsOptions) ?? []
    try await checkPublishedHere(id, request)
    try await locks.withLock(id) {
      let device = try await backend.attach(
        id,
        context: AttachContext(
          volumeContext: request.volumeContext, secrets: request.secrets, publishContext: request.publishContext,
          nodeID: config.nodeID))
      Failpoints.hit("stage-after-attach")
      if device.directIO == false {
        logger.warning(
          "loop device is buffered: its backing filesystem refused direct I/O, so the volume's data is cached twice and O_DIRECT in the volume is not direct",
          metadata: ["volume": "\(id)", "device": "\(device.path)"])
      }
      if device.isDirectory {
        guard access.kind == .mount else {
          throw SwellError.invalid("volume \(id) is a directory: it has no block access")
        }
        try await stageDirectory(device, at: staging, readOnly: access.mountFlags.contains("ro"))
        return
      }
      guard access.kind == .mount else { return }
      do {
        try await stageFilesystem(
          device, at: staging, access: access, mkfsOptions: mkfsOptions,
          growToDevice: request.volumeContext["contentSource"] != nil)
      } catch {
        // Leave no loop device behind for a stage that did not mount.
        if try MountInfo.mounts(of: device).isEmpty { try? await backend.detach(id) }
        throw error
      }
    }
    return .init()
  }

  /// Refuses a stage of a volume that ControllerPublishVolume did not publish to this node: its
  /// publish context must name this node. A local volume that does not exist here is NOT_FOUND
  /// first; a network backend also checks the storage's own record when it attaches (the target's
  /// ACL, the image's owner).
  private func checkPublishedHere(_ id: String, _ request: Csi_V1_NodeStageVolumeRequest) async throws {
    let publishedTo = request.publishContext[PublishContext.node]
    guard publishedTo != config.nodeID else { return }
    let kind = request.volumeContext["backend"] ?? LoopBackend.name
    let local = [LoopBackend.name, LvmBackend.name, DirectoryBackend.name].contains(kind)
    if local, try await !backend.exists(id) {
      throw SwellError.notFound("volume \(id) does not exist on this node")
    }
    if local, publishedTo == nil, config.stageUnpublishedLocal { return }
    guard let publishedTo else {
      throw SwellError.precondition(
        "volume \(id) is not published to this node (\(config.nodeID)): NodeStageVolume needs the publish context "
          + "that ControllerPublishVolume to this node answered")
    }
    throw SwellError.precondition("volume \(id) is published to node \(publishedTo), not to this node (\(config.nodeID))")
  }

  /// Mounts the volume's filesystem at `staging`, formatting only a device with nothing on it.
  /// `growToDevice` (a volume copied from a smaller snapshot or volume) grows a filesystem that
  /// was already there to fill the device, once mounted.
  private func stageFilesystem(
    _ device: AttachedDevice, at staging: String, access: RequestedAccess, mkfsOptions: [String], growToDevice: Bool
  ) async throws {
    let fsType = access.fsType.isEmpty ? FileSystemType.ext4.rawValue : access.fsType
    if let existing = MountInfo.mount(at: staging, in: try MountInfo.current()) {
      guard existing.major == device.major, existing.minor == device.minor else {
        throw SwellError(.alreadyExists, "\(staging) already has \(existing.source) mounted")
      }
      guard existing.fsType == fsType else {
        throw SwellError(.alreadyExists, "\(staging) is staged as \(existing.fsType), not \(fsType)")
      }
      return
    }
    try makeDirectories(staging)
    var existing = false
    switch try await mounter.probe(device.path) {
    case .empty:
      try await mounter.format(device.path, as: FileSystemType(rawValue: fsType)!, extraOptions: mkfsOptions)
      Failpoints.hit("stage-after-format")
    case .filesystem(let found) where found == fsType:
      existing = true
    case .filesystem(let found):
      throw SwellError.precondition("the volume holds a \(found) filesystem, not \(fsType); refusing to format it")
    case .other(let what):
      throw SwellError.precondition("the volume holds data (\(what)); refusing to format it")
    }
    // xfs refuses a second filesystem with a UUID already mounted, and a restored snapshot or a
    // clone carries its source's: `nouuid` lets both be mounted on one node.
    var options = access.mountFlags
    if fsType == FileSystemType.xfs.rawValue, !options.contains("nouuid") { options.append("nouuid") }
    // A database gains nothing from access times, and each one is a metadata write: `noatime`
    // unless the capability's mount flags choose an atime mode themselves.
    let atimeModes: Set<String> = ["atime", "noatime", "relatime", "norelatime", "strictatime", "nostrictatime", "lazytime"]
    if !options.contains(where: atimeModes.contains) { options.append("noatime") }
    try await mounter.mount(device.path, at: staging, type: fsType, options: options)
    guard existing, growToDevice else { return }
    do {
      try await mounter.growFilesystem(type: fsType, device: device.path, mountPoint: staging)
    } catch {
      // Unmounted again, so that the retry grows it rather than finding it staged.
      try? await mounter.unmount(staging)
      throw error
    }
  }

  /// Bind-mounts a directory volume at `staging`: there is nothing to format or grow.
  private func stageDirectory(_ device: AttachedDevice, at staging: String, readOnly: Bool) async throws {
    if let existing = MountInfo.mount(at: staging, in: try MountInfo.current()) {
      guard existing.shows(device) else {
        throw SwellError(.alreadyExists, "\(staging) already has \(existing.source) \(existing.root) mounted")
      }
      return
    }
    try makeDirectories(staging)
    try await mounter.bindMount(device.path, at: staging, readOnly: readOnly)
  }

  public func nodeUnstageVolume(
    request: Csi_V1_NodeUnstageVolumeRequest, context: ServerContext
  ) async throws -> Csi_V1_NodeUnstageVolumeResponse {
    let id = request.volumeID
    try Names.validateVolumeID(id)
    try Names.validateAbsolutePath(request.stagingTargetPath, field: "staging_target_path")
    let staging = Names.normalized(request.stagingTargetPath)
    try await locks.withLock(id) {
      if let device = try await backend.attachedDevice(id) {
        let users = try MountInfo.mounts(of: device).filter { $0.mountPoint != staging }
        guard users.isEmpty else {
          throw SwellError.precondition(
            "volume \(id) is still mounted at \(users.map(\.mountPoint).joined(separator: ", ")); unpublish it first")
        }
      }
      try await unmountAll(at: staging)
      try await backend.detach(id)
    }
    return .init()
  }

  public func nodePublishVolume(
    request: Csi_V1_NodePublishVolumeRequest, context: ServerContext
  ) async throws -> Csi_V1_NodePublishVolumeResponse {
    let id = request.volumeID
    try Names.validateVolumeID(id)
    try Names.validateAbsolutePath(request.targetPath, field: "target_path")
    guard request.hasVolumeCapability else { throw SwellError.invalid("volume_capability is missing") }
    let access = try Validation.access(request.volumeCapability)
    // The spec's own row: STAGE_UNSTAGE_VOLUME is reported, so a publish without a staging path
    // cannot have followed a stage.
    guard !request.stagingTargetPath.isEmpty else {
      throw SwellError.precondition("staging_target_path is not set; stage the volume first (this plugin has STAGE_UNSTAGE_VOLUME)")
    }
    try Names.validateAbsolutePath(request.stagingTargetPath, field: "staging_target_path")
    let target = Names.normalized(request.targetPath)
    let staging = Names.normalized(request.stagingTargetPath)
    guard target != staging else { throw SwellError.invalid("target_path must differ from staging_target_path") }
    try refuseSymlink(target, field: "target_path")
    try await locks.withLock(id) {
      guard try await backend.exists(id) else { throw SwellError.notFound("volume \(id) does not exist") }
      guard let device = try await backend.attachedDevice(id) else {
        throw SwellError.precondition("volume \(id) is not staged on this node")
      }
      let table = try MountInfo.current()
      if let existing = MountInfo.mount(at: target, in: table) {
        guard try isOurs(existing, at: target, device: device, block: access.kind == .block) else {
          throw SwellError(.alreadyExists, "\(target) already has something else mounted")
        }
        guard existing.isReadOnly == request.readonly else {
          throw SwellError(.alreadyExists, "\(target) is published with readonly=\(existing.isReadOnly)")
        }
        return
      }
      let others = MountInfo.mounts(of: device, in: table).filter { $0.mountPoint != staging && $0.mountPoint != target }
      try PublishRules.check(
        volume: id, mode: request.volumeCapability.accessMode.mode, readOnly: request.readonly, others: others)
      switch access.kind {
      case .block:
        try makeDirectories(parentDirectory(of: target))
        try createEmptyFile(target)
        try await mounter.bindMount(device.path, at: target, readOnly: request.readonly)
      case .mount:
        guard let staged = MountInfo.mount(at: staging, in: table), staged.shows(device) else {
          throw SwellError.precondition("volume \(id) is not mounted at \(staging); stage it first")
        }
        try makeDirectories(target)
        try await mounter.bindMount(staging, at: target, readOnly: request.readonly)
      }
    }
    return .init()
  }

  public func nodeUnpublishVolume(
    request: Csi_V1_NodeUnpublishVolumeRequest, context: ServerContext
  ) async throws -> Csi_V1_NodeUnpublishVolumeResponse {
    let id = request.volumeID
    try Names.validateVolumeID(id)
    try Names.validateAbsolutePath(request.targetPath, field: "target_path")
    let target = Names.normalized(request.targetPath)
    try await locks.withLock(id) {
      try await unmountAll(at: target)
      try removeTarget(target)
    }
    return .init()
  }

  public func nodeGetVolumeStats(
    request: Csi_V1_NodeGetVolumeStatsRequest, context: ServerContext
  ) async throws -> Csi_V1_NodeGetVolumeStatsResponse {
    let id = request.volumeID
    try Names.validateVolumeID(id)
    let path = try Self.candidatePath(request.volumePath, volume: id)
    guard try await backend.exists(id), let device = try await backend.attachedDevice(id) else {
      throw SwellError.notFound("volume \(id) is not staged on this node")
    }
    let condition = csiCondition(await backend.health(id))
    if let info = try FileInfo.of(path), info.isBlockDevice {
      guard Int(info.rdevMajor) == device.major, Int(info.rdevMinor) == device.minor else {
        throw SwellError.notFound("\(path) is not volume \(id)")
      }
      return .with {
        $0.usage = [.with { $0.unit = .bytes; $0.total = device.sizeBytes }]
        $0.volumeCondition = condition
      }
    }
    guard try mountOfVolume(device, atAnyOf: [path]) != nil else {
      throw SwellError.notFound("\(path) is not a mount of volume \(id)")
    }
    let usage = try FileSystemUsage.of(path)
    return .with {
      $0.usage = [
        .with {
          $0.unit = .bytes
          $0.total = usage.totalBytes
          $0.available = usage.availableBytes
          $0.used = usage.usedBytes
        },
        .with {
          $0.unit = .inodes
          $0.total = usage.totalInodes
          $0.available = usage.freeInodes
          $0.used = usage.usedInodes
        },
      ]
      $0.volumeCondition = condition
    }
  }

  public func nodeExpandVolume(
    request: Csi_V1_NodeExpandVolumeRequest, context: ServerContext
  ) async throws -> Csi_V1_NodeExpandVolumeResponse {
    let id = request.volumeID
    try Names.validateVolumeID(id)
    guard !request.volumePath.isEmpty else { throw SwellError.invalid("volume_path is empty") }
    if !request.stagingTargetPath.isEmpty {
      try Names.validateAbsolutePath(request.stagingTargetPath, field: "staging_target_path")
    }
    let required = request.capacityRange.requiredBytes
    guard required >= 0, request.capacityRange.limitBytes >= 0 else {
      throw SwellError.invalid("capacity_range must not be negative")
    }
    var blockRequested = false
    if request.hasVolumeCapability {
      blockRequested = try Validation.access(request.volumeCapability).kind == .block
    }
    let size = try await locks.withLock(id) { () -> Int64 in
      guard try await backend.exists(id) else { throw SwellError.notFound("volume \(id) does not exist") }
      let path = try Self.candidatePath(request.volumePath, volume: id)
      // The spans name where a grow's time goes (bench/bench_grow_db.py reads them): the device's
      // capacity change, the mount table, and the filesystem's own grow.
      let device = try await Spans.measure("rescan") { try await backend.rescan(id, atLeast: required) }
      Failpoints.hit("node-expand-after-rescan")
      if required > device.sizeBytes {
        throw SwellError(
          .outOfRange, "the volume is \(device.sizeBytes) bytes, less than the \(required) asked; expand it on the controller first")
      }
      let info = try FileInfo.of(path)
      if let info, info.isBlockDevice {
        guard Int(info.rdevMajor) == device.major, Int(info.rdevMinor) == device.minor else {
          throw SwellError.notFound("\(path) is not volume \(id)")
        }
        return device.sizeBytes
      }
      if blockRequested {
        // A block volume needs only the refresh; kubelet may name its own staging directory.
        guard info != nil else { throw SwellError.notFound("\(path) does not exist; volume \(id) is not there") }
        return device.sizeBytes
      }
      let candidates = [path, Names.normalized(request.stagingTargetPath)].filter { !$0.isEmpty }
      guard let mount = try Spans.measure("mounts", { try mountOfVolume(device, atAnyOf: candidates) }) else {
        throw SwellError.notFound("\(path) is not a mount of volume \(id)")
      }
      // A directory volume's limit is its size: raised by the controller, nothing to grow here.
      if !device.isDirectory {
        try await Spans.measure("growfs") {
          try await mounter.growFilesystem(type: mount.fsType, device: device.path, mountPoint: mount.mountPoint)
        }
      }
      return device.sizeBytes
    }
    return .with { $0.capacityBytes = size }
  }

  public func nodeGetCapabilities(
    request: Csi_V1_NodeGetCapabilitiesRequest, context: ServerContext
  ) async throws -> Csi_V1_NodeGetCapabilitiesResponse {
    let types: [Csi_V1_NodeServiceCapability.RPC.TypeEnum] = [
      .stageUnstageVolume, .getVolumeStats, .expandVolume, .volumeCondition, .singleNodeMultiWriter,
    ]
    return .with { $0.capabilities = types.map { t in .with { $0.rpc.type = t } } }
  }

  public func nodeGetInfo(
    request: Csi_V1_NodeGetInfoRequest, context: ServerContext
  ) async throws -> Csi_V1_NodeGetInfoResponse {
    .with {
      $0.nodeID = config.nodeID
      $0.maxVolumesPerNode = config.maxVolumesPerNode
      $0.accessibleTopology = .with { $0.segments = config.topologySegment }
    }
  }

  // MARK: Helpers

  /// A `volume_path` (of NodeGetVolumeStats or NodeExpandVolume) made ready to compare with the
  /// mount table. Empty is INVALID_ARGUMENT (the field is required). A path that is not clean and
  /// absolute cannot be where this volume is mounted, so it is the spec's NOT_FOUND, and it is
  /// never touched.
  static func candidatePath(_ path: String, volume id: String) throws -> String {
    guard !path.isEmpty else { throw SwellError.invalid("volume_path is empty") }
    do {
      try Names.validateAbsolutePath(path, field: "volume_path")
    } catch {
      throw SwellError.notFound("volume \(id) is not at \(path.debugDescription): \(error)")
    }
    return Names.normalized(path)
  }

  /// The first of `paths` at which a filesystem on `device` is mounted.
  private func mountOfVolume(_ device: AttachedDevice, atAnyOf paths: [String]) throws -> MountEntry? {
    let table = try MountInfo.current()
    return paths.lazy.compactMap { MountInfo.mount(at: $0, in: table) }.first { $0.shows(device) }
  }

  /// Unmounts everything stacked at `path`; nothing mounted is fine.
  private func unmountAll(at path: String) async throws {
    while MountInfo.mount(at: path, in: try MountInfo.current()) != nil {
      try await mounter.unmount(path)
    }
  }

  /// True when the mount at `path` is this volume: a bind of its device node (block), or a
  /// filesystem on its device (mount).
  private func isOurs(_ mount: MountEntry, at path: String, device: AttachedDevice, block: Bool) throws -> Bool {
    if block {
      guard let info = try FileInfo.of(path), info.isBlockDevice else { return false }
      return Int(info.rdevMajor) == device.major && Int(info.rdevMinor) == device.minor
    }
    return mount.shows(device)
  }

  /// Removes what publish made at `target`: an empty directory, or the empty file a block volume
  /// was bound onto. Anything else (a file with content, a non-empty directory, a link) is refused,
  /// so that no request can make the plugin delete data it did not create.
  private func removeTarget(_ target: String) throws {
    guard let info = try FileInfo.of(target, followLinks: false) else { return }
    if info.isDirectory {
      guard rmdir(target) == 0 || errno == ENOENT else {
        if errno == ENOTEMPTY || errno == EEXIST {
          throw SwellError.precondition("\(target) still holds files after unmounting; refusing to remove it")
        }
        throw SystemCallError("rmdir", target)
      }
    } else if info.isRegular && info.size == 0 {
      guard unlink(target) == 0 || errno == ENOENT else { throw SystemCallError("unlink", target) }
    } else {
      throw SwellError.precondition("\(target) is not an empty directory or file that publish made; refusing to remove it")
    }
  }

  /// Refuses a path whose last component is a symlink: mount would follow it elsewhere.
  private func refuseSymlink(_ path: String, field: String) throws {
    if let info = try FileInfo.of(path, followLinks: false), info.isSymlink {
      throw SwellError.invalid("\(field) \(path) is a symlink")
    }
  }

  private func createEmptyFile(_ path: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
    guard fd >= 0 else { throw SystemCallError("open", path) }
    close(fd)
  }
}

extension MountInfo {
  /// Every mount of a filesystem on `device` (bind mounts of it included), and every bind mount
  /// of its device node (a published block volume).
  static func mounts(of device: AttachedDevice) throws -> [MountEntry] {
    mounts(of: device, in: try current())
  }

  static func mounts(of device: AttachedDevice, in table: [MountEntry]) -> [MountEntry] {
    if device.isDirectory { return table.filter { $0.shows(device) } }
    let node = "/" + device.path.split(separator: "/").last.map(String.init)!
    return table.filter {
      ($0.major == device.major && $0.minor == device.minor) || (["devtmpfs", "tmpfs"].contains($0.fsType) && $0.root == node)
    }
  }
}

extension MountEntry {
  /// Whether this mount shows the volume: its device, and for a directory volume its subtree.
  func shows(_ device: AttachedDevice) -> Bool {
    major == device.major && minor == device.minor && (device.subtree.map { $0 == root } ?? true)
  }
}
