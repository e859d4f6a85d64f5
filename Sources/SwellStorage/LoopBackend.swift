#if canImport(Glibc)
  import Glibc
#endif
import SwellHost

/// Volumes made of sparse files, attached on the node as loop devices.
///
/// Layout under the data directory, named deterministically from the volume ID:
///
///     volumes/<id>/disk.img     the volume's bytes (sparse)
///     volumes/<id>/meta         what it was created as (``VolumeMeta``)
///     volumes/.<id>.creating/   a create in progress; renamed into place when complete
///     volumes/.<id>.deleting/   a delete in progress; removed when complete
///     snapshots/<id>/disk.img   a snapshot's bytes (a reflink or a sparse copy of a volume's file)
///     snapshots/<id>/meta       its source, size, creation time and copy method (``SnapshotMeta``)
///     snapshots/.<id>.creating/ a snapshot in progress, with a `frozen` marker while a filesystem is frozen
///
/// A volume exists exactly when `volumes/<id>` does. Creation builds the whole directory under a
/// temporary name and renames it, so a crash leaves either nothing or a complete volume; the
/// leftovers of a crashed create or delete are swept by the next call for that ID, and at start.
public struct LoopBackend: ControllerBackend, NodeBackend {
  /// The name StorageClasses use for it (`backend: loop`), and the default.
  public static let name = "loop"
  public let root: String
  public let granularity: Int64 = Capacity.miB
  public let maximumBytes: Int64
  public let isLocal: Bool = true
  /// The longest a filesystem stays frozen for a snapshot or clone of a mounted volume.
  public let freezeLimit: Duration
  let loops: LoopDevices
  /// Group commit of renames in `volumes/`.
  let volumesSync: DirectorySync

  /// Opens (and creates, when missing) the data directory. `root` is made canonical, because
  /// the kernel reports a loop device's backing file by its canonical path.
  public init(
    dataDir: String, exec: any Executor, maximumBytes: Int64 = 16 * Capacity.tiB, freezeLimit: Duration = .seconds(30)
  ) throws {
    try makeDirectories(dataDir + "/volumes")
    try makeDirectories(dataDir + "/snapshots")
    self.root = try realPath(dataDir)
    self.maximumBytes = maximumBytes
    self.freezeLimit = freezeLimit
    self.loops = LoopDevices(exec: exec)
    self.volumesSync = DirectorySync(path: root + "/volumes")
  }

  var volumesDir: String { root + "/volumes" }
  func volumeDir(_ id: String) -> String { "\(volumesDir)/\(id)" }
  /// The backing file of a volume.
  public func diskPath(_ id: String) -> String { volumeDir(id) + "/disk.img" }
  func metaPath(_ id: String) -> String { volumeDir(id) + "/meta" }

  // MARK: Controller

  public func create(_ spec: VolumeSpec) async throws -> VolumeRecord {
    try await create(spec, sourceInUseElsewhere: false)
  }

  /// Makes the volume; `sourceInUseElsewhere` says a source volume is attached on another host
  /// (an iSCSI session), so that only an atomic reflink may copy it.
  ///
  /// The file work runs on the blocking pool; the data directory's fsync is shared with every
  /// create and delete that renamed meanwhile (group commit). A volume found already made is also
  /// answered only after such an fsync, so that a retry after a crash between the rename and the
  /// fsync does not acknowledge a volume that a power loss could still take away.
  func create(_ spec: VolumeSpec, sourceInUseElsewhere: Bool) async throws -> VolumeRecord {
    let spans = Spans.recorder
    let record = try await BlockingIO.run {
      try self.makeVolume(spec, sourceInUseElsewhere: sourceInUseElsewhere, spans: spans)
    }
    try await Spans.measure("dir-fsync") { try await volumesSync.commit() }
    return record
  }

  /// Makes the volume's directory under a temporary name and renames it into place; returns the
  /// volume, made now or before. The caller makes the rename durable.
  private func makeVolume(_ spec: VolumeSpec, sourceInUseElsewhere: Bool, spans: SpanRecorder?) throws -> VolumeRecord {
    if let existing = try Spans.measure("lookup", in: spans, { try load(spec.id) }) {
      try checkCompatible(existing, with: spec)
      return existing
    }
    if spec.source == nil {
      let available = try Spans.measure("statvfs", in: spans) { try FileSystemUsage.of(volumesDir).availableBytes }
      guard spec.capacityBytes <= available else {
        throw SwellError(
          .resourceExhausted,
          "\(spec.capacityBytes) bytes asked for, \(available) bytes free under \(root)")
      }
    }
    let staging = "\(volumesDir)/.\(spec.id).creating"
    do {
      try Spans.measure("files", in: spans) {
        try thawLeftover(staging)
        try removeTree(staging)
        guard mkdir(staging, 0o750) == 0 else { throw SystemCallError("mkdir", staging) }
        if let source = spec.source {
          try populate(staging, from: source, size: spec.capacityBytes, inUseElsewhere: sourceInUseElsewhere)
          Failpoints.hit("create-after-clone")
        } else {
          try makeSparseFile(staging + "/disk.img", size: spec.capacityBytes)
          Failpoints.hit("create-after-sparse-file")
        }
        if spec.thick { try preallocate(staging + "/disk.img", from: 0, to: spec.capacityBytes, volume: spec.id) }
      }
      // Durability costs two fsyncs: the metadata's (which commits the filesystem's journal, and with
      // it the sparse file's size), then the data directory's after the rename (group-committed).
      let meta = VolumeMeta(
        access: spec.access, fsType: spec.fsType, capacityBytes: spec.capacityBytes, source: spec.source, thick: spec.thick)
      try Spans.measure("fsync", in: spans) {
        try writeFileAtomically(staging + "/meta", Array(meta.encoded().utf8), syncDirectory: false)
      }
      try Spans.measure("rename", in: spans) {
        guard rename(staging, volumeDir(spec.id)) == 0 else { throw SystemCallError("rename", staging) }
      }
    } catch {
      try? thawLeftover(staging)
      try? removeTree(staging)
      throw error
    }
    return VolumeRecord(
      id: spec.id, capacityBytes: spec.capacityBytes, access: spec.access, fsType: spec.fsType, backend: Self.name,
      source: spec.source, thick: spec.thick)
  }

  /// Renames the volume's directory away, makes that durable (group commit, as for create), then
  /// removes it. A crash after the rename leaves a `.deleting` directory that the retry or the
  /// next start removes.
  public func delete(_ id: String) async throws {
    let dir = volumeDir(id)
    let trash = "\(volumesDir)/.\(id).deleting"
    let spans = Spans.recorder
    let renamed = try await BlockingIO.run {
      let users = try Spans.measure("lookup", in: spans) { () throws -> [LoopDevice]? in
        guard try FileInfo.of(dir, followLinks: false) != nil else { return nil }
        return try loops.attached(to: diskPath(id))
      }
      guard let users else { return false }
      if !users.isEmpty {
        throw SwellError.precondition(
          "volume \(id) is still attached as \(users.map(\.path).joined(separator: ", ")); unstage it first")
      }
      try Spans.measure("rename", in: spans) {
        try removeTree(trash)
        guard rename(dir, trash) == 0 else { throw SystemCallError("rename", dir) }
      }
      return true
    }
    if renamed {
      try await Spans.measure("dir-fsync") { try await volumesSync.commit() }
      Failpoints.hit("delete-after-rename")
    }
    try await BlockingIO.run {
      try Spans.measure("files", in: spans) {
        try removeTree(trash)
        try removeTree("\(volumesDir)/.\(id).creating")
      }
    }
  }

  public func expand(_ id: String, to bytes: Int64) async throws -> VolumeRecord {
    let spans = Spans.recorder
    return try await BlockingIO.run { try self.grow(id, to: bytes, spans: spans) }
  }

  private func grow(_ id: String, to bytes: Int64, spans: SpanRecorder?) throws -> VolumeRecord {
    guard var record = try load(id) else { throw SwellError.notFound("volume \(id) does not exist") }
    if bytes <= record.capacityBytes {
      // A crash between growing the file and recording it leaves the record behind; mend it.
      if let meta = try? VolumeMeta.decode(readSmallFile(metaPath(id))), meta.capacityBytes != record.capacityBytes {
        try writeMeta(record)
      }
      return record
    }
    let available = try FileSystemUsage.of(volumesDir).availableBytes
    guard bytes - record.capacityBytes <= available else {
      throw SwellError(
        .resourceExhausted,
        "growing \(id) by \(bytes - record.capacityBytes) bytes needs more than the \(available) bytes free")
    }
    let path = diskPath(id)
    if record.thick { try preallocate(path, from: record.capacityBytes, to: bytes, volume: id) }
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { throw SystemCallError("open", path) }
    defer { close(fd) }
    try Spans.measure("truncate", in: spans) {
      guard ftruncate(fd, off_t(bytes)) == 0 else { throw SystemCallError("ftruncate", path) }
    }
    // No fsync of the backing file here: the metadata's fsync below commits the data
    // filesystem's journal, size change included (xfs and ext4 journal metadata in order). The
    // file's own fsync would wait behind the volume's in-flight writes and flushes (a database's
    // commits) on a busy disk, and add a journal commit to each grow.
    Failpoints.hit("expand-after-truncate")
    record.capacityBytes = bytes
    try Spans.measure("meta", in: spans) { try writeMeta(record) }
    return record
  }

  public func volume(_ id: String) async throws -> VolumeRecord? {
    try await BlockingIO.run { try self.load(id) }
  }

  public func modify(_ id: String, _ changes: VolumeChanges) async throws {
    try await BlockingIO.run { try self.change(id, changes) }
  }

  /// Thin to thick reserves every block of the file now (fallocate keeps the data), after checking
  /// that the room is there, and records it only then, so that a crash in between converges on the
  /// retry. Thick to thin is recorded only: reserved blocks stay reserved, later grows are sparse.
  private func change(_ id: String, _ changes: VolumeChanges) throws {
    guard var record = try load(id) else { throw SwellError.notFound("volume \(id) does not exist") }
    try changes.refuseInodeLimit(id, backend: record.backend)
    guard let thick = changes.thick, thick != record.thick else { return }
    if thick {
      let path = diskPath(id)
      let needed = record.capacityBytes - (try allocatedBytes(path))
      let available = try FileSystemUsage.of(volumesDir).availableBytes
      guard needed < available else {
        throw SwellError(
          .resourceExhausted,
          "making volume \(id) thick needs \(needed) more bytes and \(root) has \(available) free; nothing was changed")
      }
      try preallocate(path, from: 0, to: record.capacityBytes, volume: id)
      Failpoints.hit("modify-after-preallocate")
    }
    record.thick = thick
    try writeMeta(record)
  }

  public func list() async throws -> [VolumeRecord] {
    try await BlockingIO.run {
      try listDirectory(volumesDir).filter { !$0.hasPrefix(".") }.sorted().compactMap { try? self.load($0) }
    }
  }

  public func health(_ id: String) async -> VolumeHealth {
    (try? await BlockingIO.run { self.healthNow(id) }) ?? .abnormal("the health of \(id) could not be read")
  }

  private func healthNow(_ id: String) -> VolumeHealth {
    guard let disk = try? FileInfo.of(diskPath(id), followLinks: false) else {
      return .abnormal("backing file \(diskPath(id)) is missing")
    }
    guard disk.isRegular else { return .abnormal("backing file \(diskPath(id)) is not a regular file") }
    guard let text = try? readSmallFile(metaPath(id)), let meta = try? VolumeMeta.decode(text) else {
      return .abnormal("metadata \(metaPath(id)) is missing or damaged")
    }
    if disk.size < meta.capacityBytes {
      return .abnormal("backing file is \(disk.size) bytes, shorter than the volume's \(meta.capacityBytes)")
    }
    if let device = try? loops.attached(to: diskPath(id)).first,
      let backing = try? readSmallFile("/sys/block/\(device.name)/loop/backing_file"),
      backing.contains("(deleted)")
    {
      return .abnormal("\(device.path) is attached to a deleted file")
    }
    return .normal
  }

  public func availableBytes() async throws -> Int64 {
    try await BlockingIO.run { try FileSystemUsage.of(volumesDir).availableBytes }
  }

  public func availableBytes(parameters: [String: String]) async throws -> Int64 {
    try await availableBytes()
  }

  public func pools() async throws -> [PoolUsage] { [try await .fileSystem(volumesDir)] }

  public func checkReady() async throws {
    guard access(volumesDir, W_OK) == 0 else {
      throw SwellError(.unavailable, "data directory \(volumesDir) is not writable")
    }
  }

  /// Removes what crashed creates, deletes and snapshots left behind, first thawing any filesystem
  /// a crashed snapshot or clone left frozen. Call only while no request is running.
  public func sweepLeftovers() throws -> [String] {
    var removed: [String] = []
    for dir in [volumesDir, snapshotsDir] {
      for name in try listDirectory(dir)
      where name.hasPrefix(".") && (name.hasSuffix(".creating") || name.hasSuffix(".deleting")) {
        try thawLeftover("\(dir)/\(name)")
        try removeTree("\(dir)/\(name)")
        removed.append(name)
      }
    }
    return removed + (try sweepGroupStrays())
  }

  // MARK: Node

  public func exists(_ id: String) async throws -> Bool {
    try await BlockingIO.run { try FileInfo.of(diskPath(id)) != nil }
  }

  public func attach(_ id: String, context: AttachContext = .init()) async throws -> AttachedDevice {
    guard try await exists(id) else { throw SwellError.notFound("volume \(id) does not exist") }
    try await BlockingIO.run { try refuseNewerRecord(id) }
    return try describe(try await loops.attach(diskPath(id)))
  }

  /// FAILED_PRECONDITION when the volume's record is of a format newer than this build reads: a
  /// node does not attach what it cannot read (a damaged or missing record does not stop it).
  func refuseNewerRecord(_ id: String) throws {
    guard let text = try? readSmallFile(metaPath(id)) else { return }
    do { _ = try VolumeMeta.decode(text) } catch let error as SwellError where error.kind == .failedPrecondition {
      throw RecordFormat.rethrow(error, subject: "volume \(id)", fallback: "")
    } catch {}
  }

  public func attachedDevice(_ id: String) async throws -> AttachedDevice? {
    try await BlockingIO.run { try loops.attached(to: diskPath(id)).first.map(describe) }
  }

  /// Every volume of this backend attached on this node, with its device, from one pass over sysfs
  /// (for a scrape: the cost grows with the number of loop devices, once, not once per volume).
  public func attachedDevices() async throws -> [String: AttachedDevice] {
    try await BlockingIO.run {
      var out: [String: AttachedDevice] = [:]
      let ids = ((try? listDirectory(volumesDir)) ?? []).filter { !$0.hasPrefix(".") }
      let devices = try loops.attachedDevices(of: ids.map(diskPath))
      for id in ids {
        if let device = devices[diskPath(id)] { out[id] = try describe(device) }
      }
      return out
    }
  }

  public func detach(_ id: String) async throws {
    for device in try loops.attached(to: diskPath(id)) {
      try await loops.detach(device)
    }
  }

  public func rescan(_ id: String, atLeast: Int64 = 0) async throws -> AttachedDevice {
    guard let device = try loops.attached(to: diskPath(id)).first else {
      throw SwellError.precondition("volume \(id) is not attached on this node; stage it first")
    }
    try await loops.refreshCapacity(device)
    return try describe(device)
  }

  // MARK: Helpers

  private func describe(_ device: LoopDevice) throws -> AttachedDevice {
    AttachedDevice(
      path: device.path, major: device.major, minor: device.minor, sizeBytes: try loops.sizeBytes(device),
      directIO: loops.directIO(device))
  }

  /// The stored volume, or nil when `volumes/<id>` does not exist.
  func load(_ id: String) throws -> VolumeRecord? {
    guard try FileInfo.of(volumeDir(id), followLinks: false) != nil else { return nil }
    let meta: VolumeMeta
    do {
      meta = try VolumeMeta.decode(try readSmallFile(metaPath(id)))
    } catch {
      throw RecordFormat.rethrow(error, subject: "volume \(id)", fallback: "volume \(id) has unreadable metadata")
    }
    let size = try FileInfo.of(diskPath(id))?.size ?? meta.capacityBytes
    return VolumeRecord(
      id: id, capacityBytes: max(size, meta.capacityBytes), access: meta.access, fsType: meta.fsType,
      backend: Self.name, source: meta.source, thick: meta.thick)
  }

  private func writeMeta(_ record: VolumeRecord) throws {
    let meta = VolumeMeta(
      access: record.access, fsType: record.fsType, capacityBytes: record.capacityBytes, source: record.source,
      thick: record.thick)
    try writeFileAtomically(metaPath(record.id), Array(meta.encoded().utf8))
  }

  private func checkCompatible(_ existing: VolumeRecord, with spec: VolumeSpec) throws {
    if existing.access != spec.access {
      throw SwellError(
        .alreadyExists, "volume \(spec.id) exists with \(existing.access.rawValue) access, not \(spec.access.rawValue)")
    }
    if !existing.fsType.isEmpty, !spec.fsType.isEmpty, existing.fsType != spec.fsType {
      throw SwellError(.alreadyExists, "volume \(spec.id) exists with fs_type \(existing.fsType), not \(spec.fsType)")
    }
    if existing.thick != spec.thick {
      throw SwellError(
        .alreadyExists,
        "volume \(spec.id) exists \(existing.thick ? "thick" : "thin")-provisioned, not \(spec.thick ? "thick" : "thin")")
    }
    if existing.source != spec.source {
      throw SwellError(
        .alreadyExists,
        "volume \(spec.id) exists with content source \(existing.source?.encoded ?? "none"), not \(spec.source?.encoded ?? "none")")
    }
    if existing.capacityBytes < spec.requiredBytes || (spec.limitBytes > 0 && existing.capacityBytes > spec.limitBytes) {
      throw SwellError(
        .alreadyExists,
        "volume \(spec.id) exists with \(existing.capacityBytes) bytes, outside [\(spec.requiredBytes), \(spec.limitBytes)]")
    }
  }

  /// Reserves the disk blocks of bytes `[from, to)` of a backing file (fallocate, which keeps any
  /// data already there). A disk without the room is RESOURCE_EXHAUSTED, and the file keeps its
  /// size: what was reserved past the old end is given back.
  private func preallocate(_ path: String, from: Int64, to: Int64, volume: String) throws {
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { throw SystemCallError("open", path) }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw SystemCallError("fstat", path) }
    // glibc's posix_fallocate is the fallocate system call on ext4 and xfs; it returns the error.
    let rc = posix_fallocate(fd, off_t(from), off_t(to - from))
    if rc == 0 { return }
    let error = SystemCallError("fallocate", path, errno: rc)
    _ = ftruncate(fd, st.st_size)
    if error.errno == ENOSPC || error.errno == EDQUOT {
      throw SwellError(
        .resourceExhausted,
        "preallocating \(to - from) bytes for thick volume \(volume) failed: no space left under \(root)")
    }
    if error.errno == EOPNOTSUPP {
      throw SwellError.precondition("the filesystem under \(root) cannot preallocate (fallocate): thick volumes are not possible there")
    }
    throw SwellError(.internal, "preallocating thick volume \(volume)", cause: error)
  }

  private func makeSparseFile(_ path: String, size: Int64) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw SystemCallError("open", path) }
    defer { close(fd) }
    guard ftruncate(fd, off_t(size)) == 0 else { throw SystemCallError("ftruncate", path) }
  }
}
