#if canImport(Glibc)
  import Glibc
#endif
import Synchronization
import SwellHost

/// Where directory volumes live, and the project IDs they may take.
public struct DirectoryConfig: Sendable {
  /// A directory on the node's data filesystem: xfs mounted with `prjquota`, or ext4 with the
  /// `project` feature mounted with `prjquota`.
  public var root: String
  /// Project IDs are taken from `firstProject` up, never below it: lower ones belong to the host.
  public var firstProject: UInt32

  public init(root: String, firstProject: UInt32 = 0x5E11_0000) {
    self.root = root
    self.firstProject = firstProject
  }
}

/// Volumes that are directories on the node's own filesystem, each capped by a project quota:
/// the host filesystem's speed, with no second filesystem and no loop device under the data.
///
/// Layout under the root, named deterministically from the volume ID:
///
///     volumes/<id>/meta          its project ID and size (``DirectoryMeta``)
///     volumes/<id>/data/         the volume: tagged with the project ID, which its entries inherit
///     volumes/.<id>.creating/    a create in progress; its `meta` reserves the project ID first
///     volumes/.<id>.deleting/    a delete in progress; its project ID stays reserved until removed
///
/// A project ID is recorded (fsynced) before it is put on a directory or given a limit, and it is
/// taken only when no record names it and the filesystem charges and limits nothing to it; so no
/// crash or restart gives two volumes one ID. Growing is raising the hard limit: instant, online,
/// with no filesystem grow.
public struct DirectoryBackend: ControllerBackend, NodeBackend {
  /// The name StorageClasses use for it (`backend: dir`).
  public static let name = "dir"
  public let config: DirectoryConfig
  public let root: String
  public let granularity: Int64 = Capacity.miB
  public let maximumBytes: Int64 = 64 * Capacity.tiB
  public let isLocal: Bool = true
  let quotas: ProjectQuotas
  /// Runs `cp` for snapshots, restores and clones.
  let exec: any Executor
  /// Creates, grows and deletes, one at a time: each reads every volume's promise and project ID.
  let serial = Serial()
  let volumesSync: DirectorySync

  public init(config: DirectoryConfig, exec: any Executor) throws {
    try makeDirectories(config.root + "/volumes")
    try makeDirectories(config.root + "/snapshots")
    self.config = config
    self.exec = exec
    self.root = try realPath(config.root)
    self.quotas = ProjectQuotas(root: root)
    self.volumesSync = DirectorySync(path: root + "/volumes")
  }

  var volumesDir: String { root + "/volumes" }
  func volumeDir(_ id: String) -> String { "\(volumesDir)/\(id)" }
  /// The directory a volume's users see.
  public func dataPath(_ id: String) -> String { volumeDir(id) + "/data" }

  // MARK: Controller

  public func create(_ spec: VolumeSpec) async throws -> VolumeRecord {
    guard spec.access == .mount else {
      throw SwellError.invalid("a dir volume is a directory: it has no block access; use backend loop or lvm for a block volume")
    }
    if spec.thick { throw SwellError.invalid("parameter provisioning=thick is for file and LVM volumes, not dir") }
    // A source that cannot be copied is refused before anything is made.
    var from: String? = nil
    if let source = spec.source, try await volume(spec.id) == nil {
      from = try await BlockingIO.run { try self.tree(of: source) }
    }
    let (record, unfilled) = try await BlockingIO.run { try serial.run { try self.make(spec) } }
    if let source = spec.source, let from, unfilled {
      // Filled after the limit is set (the copy is charged to the new volume), then renamed into place.
      return try await populate(spec, from: source, tree: from)
    }
    try await volumesSync.commit()
    return record
  }

  /// The volume, and whether it is still `.creating`, waiting for its source's copy.
  private func make(_ spec: VolumeSpec) throws -> (VolumeRecord, unfilled: Bool) {
    if let existing = try load(spec.id) {
      if existing.source != spec.source {
        throw SwellError(
          .alreadyExists,
          "volume \(spec.id) exists with content source \(existing.source?.encoded ?? "none"), not \(spec.source?.encoded ?? "none")")
      }
      if let meta = try loadMeta(spec.id), meta.inodeLimit != spec.inodeLimit {
        throw SwellError(
          .alreadyExists, "volume \(spec.id) exists with inodeLimit \(meta.inodeLimit), not \(spec.inodeLimit)")
      }
      if existing.capacityBytes < spec.requiredBytes || (spec.limitBytes > 0 && existing.capacityBytes > spec.limitBytes) {
        throw SwellError(
          .alreadyExists,
          "volume \(spec.id) exists with \(existing.capacityBytes) bytes, outside [\(spec.requiredBytes), \(spec.limitBytes)]")
      }
      return (existing, false)
    }
    try requireQuotas()
    let staging = "\(volumesDir)/.\(spec.id).creating"
    // A retry after a crash keeps the project ID the first attempt recorded.
    var project = (try? DirectoryMeta.decode(readSmallFile(staging + "/meta")))?.project
    let available = try availableNow(excluding: ".\(spec.id).creating")
    guard spec.overcommit || spec.capacityBytes <= available else {
      throw SwellError(
        .resourceExhausted, "\(spec.capacityBytes) bytes asked for; \(available) bytes are free and not promised to other volumes under \(root)")
    }
    if project == nil {
      let id = try freeProject()
      try removeTree(staging)
      guard mkdir(staging, 0o750) == 0 else { throw SystemCallError("mkdir", staging) }
      let meta = DirectoryMeta(project: id, capacityBytes: spec.capacityBytes, overcommit: spec.overcommit)
      try writeFileAtomically(staging + "/meta", Array(meta.encoded().utf8))
      try fsyncDirectory(volumesDir)
      project = id
    }
    let data = staging + "/data"
    if try FileInfo.of(data, followLinks: false) == nil {
      guard mkdir(data, 0o777) == 0 else { throw SystemCallError("mkdir", data) }
    }
    try ProjectQuotas.tag(data, project: project!)
    try quotas.setLimit(project: project!, bytes: spec.capacityBytes, inodes: spec.inodeLimit)
    Failpoints.hit("dir-create-after-quota")
    let meta = DirectoryMeta(
      project: project!, capacityBytes: spec.capacityBytes, source: spec.source, overcommit: spec.overcommit,
      inodeLimit: spec.inodeLimit)
    try writeFileAtomically(staging + "/meta", Array(meta.encoded().utf8), syncDirectory: false)
    // A volume made from a source stays `.creating` until its copy is whole (``populate``).
    if spec.source != nil { return (record(spec.id, meta, limit: spec.capacityBytes), true) }
    guard rename(staging, volumeDir(spec.id)) == 0 else { throw SystemCallError("rename", staging) }
    return (record(spec.id, meta, limit: spec.capacityBytes), false)
  }

  /// Renames the volume away (durably), then removes its tree and its limit.
  public func delete(_ id: String) async throws {
    let trash = "\(volumesDir)/.\(id).deleting"
    let renamed = try await BlockingIO.run { () throws -> Bool in
      guard try FileInfo.of(volumeDir(id), followLinks: false) != nil else { return false }
      let users = try mountsOf(dataPath(id))
      if !users.isEmpty {
        throw SwellError.precondition(
          "volume \(id) is still mounted at \(users.map(\.mountPoint).joined(separator: ", ")); unstage it first")
      }
      try serial.run {
        try finishDelete(trash)
        guard rename(volumeDir(id), trash) == 0 else { throw SystemCallError("rename", volumeDir(id)) }
      }
      return true
    }
    if renamed {
      try await volumesSync.commit()
      Failpoints.hit("dir-delete-after-rename")
    }
    try await BlockingIO.run {
      try serial.run {
        try finishDelete(trash)
        try finishDelete("\(volumesDir)/.\(id).creating")
      }
    }
  }

  /// Removes a `.deleting` or `.creating` directory: its files, then its project's limit, then the
  /// directory with the record that reserved the ID.
  private func finishDelete(_ dir: String) throws {
    guard try FileInfo.of(dir, followLinks: false) != nil else { return }
    let meta = try? DirectoryMeta.decode(readSmallFile(dir + "/meta"))
    try removeTree(dir + "/data")
    if let meta { try quotas.setLimit(project: meta.project, bytes: 0) }
    try removeTree(dir)
  }

  /// Raises the hard limit; never lowers it.
  public func expand(_ id: String, to bytes: Int64) async throws -> VolumeRecord {
    try await BlockingIO.run {
      try serial.run {
        guard var meta = try loadMeta(id), let current = try load(id) else {
          throw SwellError.notFound("volume \(id) does not exist")
        }
        if bytes <= current.capacityBytes {
          if meta.capacityBytes != current.capacityBytes {
            // A crash between raising the limit and recording it: record it.
            meta.capacityBytes = current.capacityBytes
            try writeFileAtomically(volumeDir(id) + "/meta", Array(meta.encoded().utf8))
          }
          return current
        }
        try requireQuotas()
        let available = try availableNow()
        guard meta.overcommit || bytes - current.capacityBytes <= available else {
          throw SwellError(
            .resourceExhausted,
            "growing \(id) by \(bytes - current.capacityBytes) bytes needs more than the \(available) bytes free and not promised")
        }
        try quotas.setLimit(project: meta.project, bytes: bytes, inodes: meta.inodeLimit)
        Failpoints.hit("dir-expand-after-quota")
        meta.capacityBytes = bytes
        try writeFileAtomically(volumeDir(id) + "/meta", Array(meta.encoded().utf8))
        return record(id, meta, limit: bytes)
      }
    }
  }

  public func volume(_ id: String) async throws -> VolumeRecord? {
    try await BlockingIO.run { try load(id) }
  }

  public func list() async throws -> [VolumeRecord] {
    try await BlockingIO.run {
      try listDirectory(volumesDir).filter { !$0.hasPrefix(".") }.sorted().compactMap { try? load($0) }
    }
  }

  public func health(_ id: String) async -> VolumeHealth {
    (try? await BlockingIO.run { healthNow(id) }) ?? .abnormal("the health of \(id) could not be read")
  }

  private func healthNow(_ id: String) -> VolumeHealth {
    guard let meta = try? loadMeta(id) else { return .abnormal("metadata of \(id) is missing or damaged") }
    guard let tag = try? ProjectQuotas.project(of: dataPath(id)) else { return .abnormal("\(dataPath(id)) is missing") }
    guard tag.id == meta.project, tag.inherit else {
      return .abnormal("\(dataPath(id)) carries project \(tag.id), not the volume's \(meta.project): its files are not limited")
    }
    guard let usage = try? quotas.usage(project: meta.project) else { return .abnormal("the quota of \(id) is unreadable") }
    guard usage.limitBytes >= meta.capacityBytes else {
      return .abnormal("project \(meta.project) is limited to \(usage.limitBytes) bytes, not the volume's \(meta.capacityBytes)")
    }
    if usage.usedBytes >= usage.limitBytes {
      return .abnormal("the volume is full: \(usage.usedBytes) of \(usage.limitBytes) bytes used; writes fail with EDQUOT")
    }
    return .normal
  }

  /// The data filesystem's free space less what the volumes' limits promise beyond what they use.
  public func availableBytes() async throws -> Int64 {
    try await BlockingIO.run { try availableNow() }
  }

  /// An overcommitting class (`overcommit: "true"`) may use all the free space, promised or not.
  public func availableBytes(parameters: [String: String]) async throws -> Int64 {
    guard parameters["overcommit"] == "true" else { return try await availableBytes() }
    return try await BlockingIO.run { try FileSystemUsage.of(volumesDir).availableBytes }
  }

  public func pools() async throws -> [PoolUsage] { [try await .fileSystem(volumesDir)] }

  /// A directory has nothing to preallocate: provisioning=thick is INVALID_ARGUMENT, thin changes
  /// nothing. `inodeLimit` sets the project's inode limit while the volume is in use; a limit below
  /// the inodes it already holds is INVALID_ARGUMENT. The limit is set, then recorded: a crash in
  /// between converges on the retry, which sets the same limit again.
  public func modify(_ id: String, _ changes: VolumeChanges) async throws {
    guard try await volume(id) != nil else { throw SwellError.notFound("volume \(id) does not exist") }
    if changes.thick == true {
      throw SwellError.invalid("volume \(id) is a directory with a quota: it has no blocks to preallocate (provisioning=thick)")
    }
    guard let inodes = changes.inodeLimit else { return }
    try await BlockingIO.run {
      try serial.run {
        guard var meta = try loadMeta(id) else { throw SwellError.notFound("volume \(id) does not exist") }
        let usage = try quotas.usage(project: meta.project)
        if usage.limitInodes == inodes && meta.inodeLimit == inodes { return }
        guard inodes == 0 || inodes >= usage.usedInodes else {
          throw SwellError.invalid(
            "volume \(id) already holds \(usage.usedInodes) files and directories; an inode limit of \(inodes) is below "
              + "that, and nothing was changed")
        }
        try requireQuotas()
        try quotas.setLimit(project: meta.project, bytes: max(usage.limitBytes, meta.capacityBytes), inodes: inodes)
        Failpoints.hit("dir-modify-after-quota")
        meta.inodeLimit = inodes
        try writeFileAtomically(volumeDir(id) + "/meta", Array(meta.encoded().utf8))
      }
    }
  }

  /// FAILED_PRECONDITION, naming the mount option, unless project quotas are enforced on the
  /// data filesystem.
  public func checkReady() async throws {
    try await BlockingIO.run { try requireQuotas() }
  }

  public func sweepLeftovers() throws -> [String] {
    try serial.run {
      var removed: [String] = []
      for name in try listDirectory(volumesDir) where name.hasPrefix(".") && name.hasSuffix(".deleting") {
        try finishDelete("\(volumesDir)/\(name)")
        removed.append(name)
      }
      for name in try listDirectory(snapshotsDir) where name.hasPrefix(".") {
        try removeTree("\(snapshotsDir)/\(name)")
        removed.append("snapshots/" + name)
      }
      return removed
    }
  }

  // MARK: Node

  public func exists(_ id: String) async throws -> Bool {
    try await BlockingIO.run { try FileInfo.of(volumeDir(id), followLinks: false) != nil }
  }

  /// A directory needs no attaching: this is where it is.
  public func attach(_ id: String, context: AttachContext) async throws -> AttachedDevice {
    guard let device = try await attachedDevice(id) else { throw SwellError.notFound("volume \(id) does not exist") }
    return device
  }

  public func attachedDevice(_ id: String) async throws -> AttachedDevice? {
    try await BlockingIO.run { () throws -> AttachedDevice? in
      guard let record = try load(id) else { return nil }
      let path = dataPath(id)
      guard let info = try FileInfo.of(path, followLinks: false), info.isDirectory else {
        throw SwellError(.internal, "\(path) is not a directory")
      }
      guard let place = MountInfo.location(of: path, in: try MountInfo.current()) else {
        throw SwellError(.internal, "no mount holds \(path)")
      }
      return AttachedDevice(
        path: path, major: Int(deviceMajor(info.device)), minor: Int(deviceMinor(info.device)),
        sizeBytes: record.capacityBytes, subtree: place.root)
    }
  }

  public func detach(_ id: String) async throws {}

  /// The limit is the size, and a raised limit holds at once.
  public func rescan(_ id: String, atLeast: Int64) async throws -> AttachedDevice {
    guard let device = try await attachedDevice(id) else { throw SwellError.notFound("volume \(id) does not exist") }
    return device
  }

  // MARK: Helpers

  func loadMeta(_ id: String) throws -> DirectoryMeta? {
    guard try FileInfo.of(volumeDir(id), followLinks: false) != nil else { return nil }
    do {
      return try DirectoryMeta.decode(try readSmallFile(volumeDir(id) + "/meta"))
    } catch {
      throw RecordFormat.rethrow(error, subject: "volume \(id)", fallback: "volume \(id) has unreadable metadata")
    }
  }

  /// The volume, with the larger of its recorded size and its limit (a crash may fall between
  /// raising the limit and recording it).
  func load(_ id: String) throws -> VolumeRecord? {
    guard let meta = try loadMeta(id) else { return nil }
    let limit = (try? quotas.usage(project: meta.project).limitBytes) ?? 0
    return record(id, meta, limit: limit)
  }

  func record(_ id: String, _ meta: DirectoryMeta, limit: Int64) -> VolumeRecord {
    VolumeRecord(
      id: id, capacityBytes: max(meta.capacityBytes, limit), access: .mount, fsType: "", backend: Self.name,
      context: [:], source: meta.source)
  }

  /// Every project ID a record names: volumes, and creates and deletes in progress.
  private func recordedProjects() throws -> [(dir: String, meta: DirectoryMeta)] {
    try listDirectory(volumesDir).compactMap { name in
      guard let meta = try? DirectoryMeta.decode(readSmallFile("\(volumesDir)/\(name)/meta")) else { return nil }
      return (name, meta)
    }
  }

  /// The lowest ID from `firstProject` up that no record names and the filesystem neither charges
  /// nor limits (something else may use it).
  private func freeProject() throws -> UInt32 {
    let taken = Set(try recordedProjects().map(\.meta.project))
    var candidate = config.firstProject
    while candidate < UInt32.max {
      if !taken.contains(candidate), try quotas.usage(project: candidate).isUnused { return candidate }
      candidate += 1
    }
    throw SwellError(.resourceExhausted, "no free project ID from \(config.firstProject) up")
  }

  /// `excluding`: a create's own record, when a retry finds it.
  private func availableNow(excluding: String? = nil) throws -> Int64 {
    let free = try FileSystemUsage.of(volumesDir).availableBytes
    var promised: Int64 = 0
    for entry in try recordedProjects() where entry.dir != excluding && !entry.meta.overcommit {
      let usage = try quotas.usage(project: entry.meta.project)
      promised += max(0, max(usage.limitBytes, entry.meta.capacityBytes) - usage.usedBytes)
    }
    return max(0, free - promised)
  }

  /// Throws FAILED_PRECONDITION, naming the mount option, unless project quotas are enforced there.
  public func requireQuotas() throws {
    let mount = (try? MountInfo.location(of: root, in: MountInfo.current()))?.mount
    let device = try quotas.device
    let where_ = mount.map { "\($0.fsType) on \($0.mountPoint) (\(device))" } ?? device
    guard let state = try quotas.state() else {
      throw SwellError.precondition(
        "quotactl is not available for \(where_), which holds \(root): the filesystem is mounted without quotas (mount it with the prjquota option; ext4 also needs the project and quota features), or this kernel has no quota support; dir volumes are never made without their limit")
    }
    guard state.accounted, state.enforced else {
      throw SwellError.precondition(
        "project quotas are not enforced on \(where_), which holds \(root): mount it with the prjquota option (ext4 also needs the project and quota features); dir volumes are never made without their limit")
    }
  }

  /// Mounts of the filesystem holding `path` that show `path` or something under it.
  func mountsOf(_ path: String) throws -> [MountEntry] {
    guard let info = try FileInfo.of(path, followLinks: false) else { return [] }
    let table = try MountInfo.current()
    guard let place = MountInfo.location(of: path, in: table) else { return [] }
    let major = Int(deviceMajor(info.device)), minor = Int(deviceMinor(info.device))
    return table.filter {
      $0.major == major && $0.minor == minor && ($0.root == place.root || $0.root.hasPrefix(place.root + "/"))
    }
  }
}
