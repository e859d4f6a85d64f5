#if canImport(Glibc)
  import Glibc
#endif
import SwellHost

/// Snapshots and clones of file-backed volumes (the loop backend, and the iSCSI backend's files).
///
/// A snapshot is a copy of the volume's backing file, made the way a volume is: under
/// `snapshots/.<id>.creating/`, fsynced, then renamed into place. The copy is a reflink where the
/// data directory's filesystem supports FICLONE (instant, blocks shared), else a sparse-aware
/// copy of the written extents. Snapshots are independent files: a volume may be deleted while
/// its snapshots live on, and a volume restored from one shares nothing with it after the copy.
///
/// Consistency: when the volume's filesystem is mounted on this node, it is frozen (FIFREEZE)
/// around the copy, for at most ``LoopBackend/freezeLimit``, and thawed whatever happens; a marker
/// file records the frozen mount point first, so that a crash while frozen is thawed by the retry
/// or by the next start. A volume in use without a mounted filesystem here (a block volume, or an
/// iSCSI LUN) can only be captured by an atomic reflink; a plain copy of it is refused.
extension LoopBackend {
  var snapshotsDir: String { root + "/snapshots" }
  func snapshotDir(_ id: String) -> String { "\(snapshotsDir)/\(id)" }
  /// A snapshot's bytes.
  public func snapshotDisk(_ id: String) -> String { snapshotDir(id) + "/disk.img" }

  public func createSnapshot(_ spec: SnapshotSpec) async throws -> SnapshotRecord {
    try await createSnapshot(spec, inUseElsewhere: false)
  }

  /// Takes the snapshot. `inUseElsewhere` says the volume is attached on another host (an iSCSI
  /// session), where it cannot be frozen from here.
  func createSnapshot(_ spec: SnapshotSpec, inUseElsewhere: Bool) async throws -> SnapshotRecord {
    if let existing = try loadSnapshot(spec.id) {
      guard existing.sourceVolumeID == spec.sourceVolumeID else {
        throw SwellError(
          .alreadyExists, "snapshot \(spec.id) exists of volume \(existing.sourceVolumeID), not \(spec.sourceVolumeID)")
      }
      return existing
    }
    guard try load(spec.sourceVolumeID) != nil else {
      throw SwellError.notFound("source volume \(spec.sourceVolumeID) does not exist")
    }
    let staging = "\(snapshotsDir)/.\(spec.id).creating"
    try thawLeftover(staging)
    try removeTree(staging)
    guard mkdir(staging, 0o750) == 0 else { throw SystemCallError("mkdir", staging) }
    let record: SnapshotRecord
    do {
      let (method, instant) = try copyConsistently(
        volume: spec.sourceVolumeID, to: staging + "/disk.img", marker: staging, inUseElsewhere: inUseElsewhere)
      Failpoints.hit("snapshot-after-thaw")
      guard let size = try FileInfo.of(staging + "/disk.img")?.size, size > 0 else {
        throw SwellError(.internal, "the snapshot copy of \(spec.sourceVolumeID) is empty")
      }
      let meta = SnapshotMeta(
        sourceVolumeID: spec.sourceVolumeID, sizeBytes: size, createdUnixNanos: instant, method: method)
      try writeFileAtomically(staging + "/meta", Array(meta.encoded().utf8), syncDirectory: false)
      guard rename(staging, snapshotDir(spec.id)) == 0 else { throw SystemCallError("rename", staging) }
      record = Self.snapshotRecord(spec.id, meta)
    } catch {
      try? thawLeftover(staging)
      try? removeTree(staging)
      throw error
    }
    try fsyncDirectory(snapshotsDir)
    return record
  }

  public func deleteSnapshot(_ id: String) async throws { try deleteSnapshotNow(id) }

  func deleteSnapshotNow(_ id: String) throws {
    let trash = "\(snapshotsDir)/.\(id).deleting"
    if try FileInfo.of(snapshotDir(id), followLinks: false) != nil {
      try removeTree(trash)
      guard rename(snapshotDir(id), trash) == 0 else { throw SystemCallError("rename", snapshotDir(id)) }
      try fsyncDirectory(snapshotsDir)
      Failpoints.hit("snapshot-delete-after-rename")
    }
    try removeTree(trash)
    try thawLeftover("\(snapshotsDir)/.\(id).creating")
    try removeTree("\(snapshotsDir)/.\(id).creating")
  }

  public func snapshot(_ id: String) async throws -> SnapshotRecord? {
    try loadSnapshot(id)
  }

  public func listSnapshots() async throws -> [SnapshotRecord] { try allSnapshots() }

  // MARK: Helpers

  func loadSnapshot(_ id: String) throws -> SnapshotRecord? {
    guard try FileInfo.of(snapshotDir(id), followLinks: false) != nil else { return nil }
    do {
      return Self.snapshotRecord(id, try SnapshotMeta.decode(try readSmallFile(snapshotDir(id) + "/meta")))
    } catch {
      throw RecordFormat.rethrow(error, subject: "snapshot \(id)", fallback: "snapshot \(id) has unreadable metadata")
    }
  }

  static func snapshotRecord(_ id: String, _ meta: SnapshotMeta) -> SnapshotRecord {
    var record = SnapshotRecord(
      id: id, sourceVolumeID: meta.sourceVolumeID, sizeBytes: meta.sizeBytes, createdUnixNanos: meta.createdUnixNanos,
      readyToUse: true, backend: name, method: meta.method.rawValue)
    record.groupID = meta.group?.id
    record.groupSize = meta.group?.size ?? 0
    return record
  }

  /// Fills a new volume's staging directory from its source, then grows the file to `size`.
  func populate(_ staging: String, from source: VolumeSource, size: Int64, inUseElsewhere: Bool) throws {
    let disk = staging + "/disk.img"
    switch source {
    case .snapshot(let id):
      guard let snap = try loadSnapshot(id) else { throw SwellError.notFound("source snapshot \(id) does not exist") }
      guard size >= snap.sizeBytes else {
        throw SwellError(.outOfRange, "snapshot \(id) holds \(snap.sizeBytes) bytes; a volume of \(size) cannot hold it")
      }
      _ = try cloneFile(snapshotDisk(id), to: disk) { try requireRoom(toCopy: snapshotDisk(id)) }
    case .volume(let id):
      guard let volume = try load(id) else { throw SwellError.notFound("source volume \(id) does not exist") }
      guard size >= volume.capacityBytes else {
        throw SwellError(.outOfRange, "volume \(id) holds \(volume.capacityBytes) bytes; a clone of \(size) cannot hold it")
      }
      _ = try copyConsistently(volume: id, to: disk, marker: staging, inUseElsewhere: inUseElsewhere)
    }
    guard let copied = try FileInfo.of(disk)?.size else { throw SwellError(.internal, "\(disk) is missing after the copy") }
    if size > copied {
      let fd = open(disk, O_WRONLY | O_CLOEXEC)
      guard fd >= 0 else { throw SystemCallError("open", disk) }
      defer { close(fd) }
      guard ftruncate(fd, off_t(size)) == 0 else { throw SystemCallError("ftruncate", disk) }
      guard fsync(fd) == 0 else { throw SystemCallError("fsync", disk) }
    }
  }

  /// Copies a volume's backing file so that the copy holds everything written before the call:
  /// its filesystem frozen around the copy when it is mounted here; a reflink only, when it is
  /// in use any other way. The freeze and thaw are plain system calls with no suspension between
  /// them, so neither cancellation nor an error can leave the filesystem frozen.
  ///
  /// Returns the copy's method and its instant (Unix nanoseconds): when the freeze returned, or
  /// just before the copy of a filesystem not mounted here. Every write acknowledged before that
  /// instant is in the copy, and none after the freeze; the time after the copy would date the
  /// snapshot later than what it holds (a commit between the thaw and that time would look older
  /// than the snapshot and not be in it).
  func copyConsistently(volume id: String, to dest: String, marker: String, inUseElsewhere: Bool) throws -> (
    CloneMethod, instant: Int64
  ) {
    let source = diskPath(id)
    let device = try loops.attached(to: source).first
    let mountPoint = try device.flatMap { dev in
      try MountInfo.current().first { $0.major == dev.major && $0.minor == dev.minor && $0.root == "/" }?.mountPoint
    }
    let inUse = inUseElsewhere || device != nil
    guard let mountPoint else {
      let instant = unixNanoseconds()
      return (try cloneFile(source, to: dest) {
        if inUse {
          throw SwellError.precondition(
            "volume \(id) is in use without a filesystem this node can freeze, and \(root) cannot reflink; "
              + "a plain copy of it would not be consistent: unstage it, or keep data on xfs (reflink=1) or btrfs")
        }
        try requireRoom(toCopy: source)
      }, instant)
    }
    let markerFile = marker + "/frozen"
    try writeFileAtomically(markerFile, Array(mountPoint.utf8))
    try FileSystemFreeze.freeze(mountPoint)
    let instant = unixNanoseconds()
    Failpoints.hit("snapshot-after-freeze")
    let method: CloneMethod
    do {
      method = try cloneFile(source, to: dest, deadline: ContinuousClock().now + freezeLimit) {
        try requireRoom(toCopy: source)
      }
      Failpoints.hit("snapshot-frozen-after-copy")
    } catch {
      try? FileSystemFreeze.thaw(mountPoint)
      try? removeIfPresent(markerFile)
      throw error
    }
    try FileSystemFreeze.thaw(mountPoint)
    try removeIfPresent(markerFile)
    return (method, instant)
  }

  /// Thaws the filesystem a crashed snapshot or clone left frozen (its staging directory's
  /// marker names it), and removes the marker.
  func thawLeftover(_ staging: String) throws {
    let markerFile = staging + "/frozen"
    guard let text = try? readSmallFile(markerFile) else { return }
    let mountPoint = text.trimmingWhitespace()
    if (try? Names.validateAbsolutePath(mountPoint, field: "frozen mount point")) != nil {
      try FileSystemFreeze.thaw(mountPoint)
    }
    try removeIfPresent(markerFile)
  }

  /// RESOURCE_EXHAUSTED unless a sparse copy of `path` fits in the data directory now.
  func requireRoom(toCopy path: String) throws {
    let needed = try allocatedBytes(path)
    let available = try FileSystemUsage.of(root).availableBytes
    guard needed < available else {
      throw SwellError(
        .resourceExhausted,
        "copying \(path) needs \(needed) bytes and \(root) has \(available) free (a data directory with reflink needs none)")
    }
  }
}
