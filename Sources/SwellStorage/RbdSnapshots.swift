import SwellHost

#if canImport(Glibc)
  import Glibc
#endif

/// Snapshots of rbd volumes: an RBD snapshot of the volume's image (the instant), cloned into the
/// image `swell-snap-<id>`, which holds the record. The snapshot outlives its volume: deleting the
/// volume flattens the snapshot's image first. The instant is crash-consistent, as a power cut
/// would leave the volume: RBD snapshots the image's objects; a filesystem mounted on another
/// node is not frozen (as with ceph-csi).
extension RbdBackend {
  func snapshotRecord(_ rbd: Rbd, pool: String, image: RbdImage) async throws -> SnapshotRecord? {
    guard let text = try await rbd.meta("\(pool)/\(image.name)", Self.recordKey) else { return nil }
    let fields = try Self.fields(text, what: "the record of rbd image \(pool)/\(image.name)")
    guard let id = fields["snapshot"], Self.snapshotImageName(id) == image.name, let source = fields["source"],
      let created = fields["created"].flatMap(Int64.init)
    else { return nil }
    return SnapshotRecord(
      id: id, sourceVolumeID: source, sizeBytes: image.size, createdUnixNanos: created, readyToUse: true,
      backend: Self.name, method: "rbd clone")
  }

  public func createSnapshot(_ spec: SnapshotSpec) async throws -> SnapshotRecord {
    let rbd = try client()
    let name = Self.snapshotImageName(spec.id)
    if let found = try await locate(rbd, image: name) {
      if let record = try await snapshotRecord(rbd, pool: found.pool, image: found.image) {
        guard record.sourceVolumeID == spec.sourceVolumeID else {
          throw SwellError(.alreadyExists, "snapshot \(spec.id) exists of volume \(record.sourceVolumeID), not \(spec.sourceVolumeID)")
        }
        return record
      }
      try await removeImage(rbd, pool: found.pool, image: found.image)
    }
    let source = try await sourceImage(rbd, .volume(spec.sourceVolumeID))
    let image = "\(source.pool)/\(name)"
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    try await clone(rbd, parent: source, child: image, childName: name, size: source.image.size)
    Failpoints.hit("rbd-snapshot-before-record")
    let created = Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    try await rbd.setMeta(
      image, Self.recordKey, Self.encode([("snapshot", spec.id), ("source", spec.sourceVolumeID), ("created", "\(created)")]))
    guard let made = try await rbd.info(image), let record = try await snapshotRecord(rbd, pool: source.pool, image: made) else {
      throw SwellError(.internal, "rbd image \(image) was made but cannot be read back")
    }
    return record
  }

  public func createGroupSnapshot(_ group: GroupSnapshotSpec) async throws -> [SnapshotRecord] {
    try refuseGroupSnapshot(
      group, backend: Self.name,
      because: "Swell does not take RBD consistency-group snapshots yet, and the filesystems are mounted on other nodes; "
        + "use loop or iscsi volumes for a group")
  }

  public func deleteSnapshot(_ id: String) async throws {
    let rbd = try client()
    guard let found = try await locate(rbd, image: Self.snapshotImageName(id)) else { return }
    try await removeImage(rbd, pool: found.pool, image: found.image)
  }

  public func snapshot(_ id: String) async throws -> SnapshotRecord? {
    let rbd = try client()
    guard let found = try await locate(rbd, image: Self.snapshotImageName(id)) else { return nil }
    return try await snapshotRecord(rbd, pool: found.pool, image: found.image)
  }

  public func listSnapshots() async throws -> [SnapshotRecord] {
    let rbd = try client()
    var all: [SnapshotRecord] = []
    for (pool, image) in try await images(rbd, prefix: Self.snapshotPrefix) {
      if let record = try await snapshotRecord(rbd, pool: pool, image: image) { all.append(record) }
    }
    return all.sorted { $0.id < $1.id }
  }
}
