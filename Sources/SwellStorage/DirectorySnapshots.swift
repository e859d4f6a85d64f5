#if canImport(Glibc)
  import Glibc
#endif
import SwellHost

/// Snapshots, restores and clones of directory volumes: copies of the tree, made with `cp -a`
/// (modes, owners, times, links and extended attributes kept), as reflinks where the data
/// filesystem shares blocks (xfs with reflink=1), plain copies elsewhere (ext4).
///
///     snapshots/<id>/meta           its source, size, creation time and copy method (``SnapshotMeta``)
///     snapshots/<id>/data/          the copy: in no project, so no volume's limit is charged for it
///     snapshots/.<id>.creating/     a snapshot in progress: removed and made again by a retry
///
/// A restore or a clone is made like any volume (its project and limit first), then filled from
/// the source while it is still `.creating`, so the copy is charged to it, and renamed into place
/// once the copy is durable (syncfs). A crash anywhere leaves a `.creating` directory that the
/// retry empties and fills again.
///
/// Consistency: a directory cannot be frozen without freezing the node's whole filesystem, so a
/// source that any mount shows (a staged volume) is refused with FAILED_PRECONDITION, before the
/// copy and again after it (a stage during the copy makes the copy worthless).
extension DirectoryBackend {
  var snapshotsDir: String { root + "/snapshots" }
  func snapshotDir(_ id: String) -> String { "\(snapshotsDir)/\(id)" }

  public func createSnapshot(_ spec: SnapshotSpec) async throws -> SnapshotRecord {
    if let existing = try await snapshot(spec.id) {
      guard existing.sourceVolumeID == spec.sourceVolumeID else {
        throw SwellError(
          .alreadyExists, "snapshot \(spec.id) exists of volume \(existing.sourceVolumeID), not \(spec.sourceVolumeID)")
      }
      return existing
    }
    guard let volume = try await volume(spec.sourceVolumeID) else {
      throw SwellError.notFound("source volume \(spec.sourceVolumeID) does not exist")
    }
    let staging = "\(snapshotsDir)/.\(spec.id).creating"
    let source = try await BlockingIO.run { () throws -> String in
      let tree = try tree(of: .volume(spec.sourceVolumeID))
      try removeTree(staging)
      guard mkdir(staging, 0o750) == 0 else { throw SystemCallError("mkdir", staging) }
      guard mkdir(staging + "/data", 0o750) == 0 else { throw SystemCallError("mkdir", staging + "/data") }
      return tree
    }
    do {
      // The copy's start: a file is copied as it is when its turn comes, so whatever was written
      // before the start is in the copy (a directory volume is not frozen: later writes may be too).
      let started = unixNanoseconds()
      let method = try await copyTree(source, into: staging + "/data")
      Failpoints.hit("dir-snapshot-after-copy")
      let meta = SnapshotMeta(
        sourceVolumeID: spec.sourceVolumeID, sizeBytes: volume.capacityBytes, createdUnixNanos: started,
        method: method)
      try await BlockingIO.run {
        _ = try tree(of: .volume(spec.sourceVolumeID))
        try syncFileSystem(of: staging)
        try writeFileAtomically(staging + "/meta", Array(meta.encoded().utf8), syncDirectory: false)
        guard rename(staging, snapshotDir(spec.id)) == 0 else { throw SystemCallError("rename", staging) }
        try fsyncDirectory(snapshotsDir)
      }
      return snapshotRecord(spec.id, meta)
    } catch {
      try? removeTree(staging)
      throw error
    }
  }

  /// Directory volumes share the host's filesystem: holding their writes would freeze the host's.
  public func createGroupSnapshot(_ group: GroupSnapshotSpec) async throws -> [SnapshotRecord] {
    try refuseGroupSnapshot(
      group, backend: Self.name,
      because: "they share the host's filesystem, which Swell will not freeze; use loop or iscsi volumes for a group")
  }

  public func deleteSnapshot(_ id: String) async throws {
    try await BlockingIO.run {
      let trash = "\(snapshotsDir)/.\(id).deleting"
      if try FileInfo.of(snapshotDir(id), followLinks: false) != nil {
        try removeTree(trash)
        guard rename(snapshotDir(id), trash) == 0 else { throw SystemCallError("rename", snapshotDir(id)) }
        try fsyncDirectory(snapshotsDir)
      }
      try removeTree(trash)
      try removeTree("\(snapshotsDir)/.\(id).creating")
    }
  }

  public func snapshot(_ id: String) async throws -> SnapshotRecord? {
    try await BlockingIO.run { try loadSnapshot(id) }
  }

  public func listSnapshots() async throws -> [SnapshotRecord] {
    try await BlockingIO.run {
      try listDirectory(snapshotsDir).filter { !$0.hasPrefix(".") }.sorted().compactMap { try? loadSnapshot($0) }
    }
  }

  private func loadSnapshot(_ id: String) throws -> SnapshotRecord? {
    guard try FileInfo.of(snapshotDir(id), followLinks: false) != nil else { return nil }
    do {
      return snapshotRecord(id, try SnapshotMeta.decode(try readSmallFile(snapshotDir(id) + "/meta")))
    } catch {
      throw RecordFormat.rethrow(error, subject: "snapshot \(id)", fallback: "snapshot \(id) has unreadable metadata")
    }
  }

  private func snapshotRecord(_ id: String, _ meta: SnapshotMeta) -> SnapshotRecord {
    SnapshotRecord(
      id: id, sourceVolumeID: meta.sourceVolumeID, sizeBytes: meta.sizeBytes, createdUnixNanos: meta.createdUnixNanos,
      readyToUse: true, backend: Self.name, method: meta.method.rawValue)
  }

  /// The tree a source's copy is made from: NOT_FOUND when it does not exist, FAILED_PRECONDITION
  /// when a source volume is staged or mounted anywhere on this node.
  func tree(of source: VolumeSource) throws -> String {
    switch source {
    case .snapshot(let id):
      guard try loadSnapshot(id) != nil else { throw SwellError.notFound("source snapshot \(id) does not exist") }
      return snapshotDir(id) + "/data"
    case .volume(let id):
      guard try loadMeta(id) != nil else { throw SwellError.notFound("source volume \(id) does not exist") }
      let users = try mountsOf(dataPath(id))
      if !users.isEmpty {
        throw SwellError.precondition(
          "dir volume \(id) is mounted at \(users.map(\.mountPoint).joined(separator: ", ")): a dir volume is copied only while no pod uses it, since its directory cannot be frozen without freezing the node's whole filesystem; stop its pod, or use backend lvm (thin) or loop for snapshots of volumes in use")
      }
      return dataPath(id)
    }
  }

  /// Fills a new volume's `.creating` directory from `tree` (the source's, from ``tree(of:)``),
  /// checks the source again (a stage during the copy makes it worthless), makes the copy durable,
  /// and renames it into place. A retry starts the copy again.
  func populate(_ spec: VolumeSpec, from source: VolumeSource, tree from: String) async throws -> VolumeRecord {
    let staging = "\(volumesDir)/.\(spec.id).creating"
    try await BlockingIO.run { try emptyDirectory(staging + "/data") }
    _ = try await copyTree(from, into: staging + "/data")
    Failpoints.hit("dir-restore-after-copy")
    let made = try await BlockingIO.run { () throws -> VolumeRecord in
      _ = try tree(of: source)
      try syncFileSystem(of: staging)
      let meta = try DirectoryMeta.decode(readSmallFile(staging + "/meta"))
      guard rename(staging, volumeDir(spec.id)) == 0 else { throw SystemCallError("rename", staging) }
      return record(spec.id, meta, limit: meta.capacityBytes)
    }
    try await volumesSync.commit()
    return made
  }

  /// Copies the contents of `source` into the existing, empty directory `dest`: a reflink copy
  /// where the filesystem shares blocks, else a plain one. New entries take `dest`'s project.
  func copyTree(_ source: String, into dest: String) async throws -> CloneMethod {
    let reflink = try await exec.output(["cp", "-a", "--reflink=always", "--no-target-directory", source, dest])
    if reflink.exitCode == 0 { return .reflink }
    try await BlockingIO.run { try emptyDirectory(dest) }
    do {
      try await exec.run(["cp", "-a", "--reflink=never", "--no-target-directory", source, dest])
    } catch let error as CommandError where error.stderr.contains("quota exceeded") || error.stderr.contains("No space left") {
      throw SwellError(.resourceExhausted, "copying \(source) does not fit: \(error.stderr.trimmingWhitespace())")
    }
    return .copy
  }
}
