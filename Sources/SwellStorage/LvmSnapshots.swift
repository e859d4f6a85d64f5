import SwellHost

/// LVM snapshots: thin snapshots of a volume's LV, in its pool, tagged with their ID and source.
extension LvmBackend {
  /// The LV name for a snapshot ID (`sws-<id>`, never a volume's `sw-<id>`).
  public static func snapshotLVName(_ id: String) throws -> String {
    try prefixedName("sws-", id, what: "snapshot")
  }

  /// A thin snapshot of the volume's LV, in its pool, tagged with its ID, source and creation time;
  /// the pool's overcommit and fullness guards apply as to a new volume of the source's size.
  public func createSnapshot(_ spec: SnapshotSpec) async throws -> SnapshotRecord {
    let name = try Self.snapshotLVName(spec.id)
    let lvs = try await lvm.logicalVolumes(vg: vg)
    if let existing = lvs.first(where: { $0.name == name }) {
      guard let record = try snapshotRecord(existing) else {
        throw SwellError(.alreadyExists, "LV \(vg)/\(name) exists and is not snapshot \(spec.id)")
      }
      guard record.sourceVolumeID == spec.sourceVolumeID else {
        throw SwellError(.alreadyExists, "snapshot \(spec.id) exists of volume \(record.sourceVolumeID), not \(spec.sourceVolumeID)")
      }
      return record
    }
    let origin = try sourceLV(.volume(spec.sourceVolumeID), in: lvs)
    guard !origin.pool.isEmpty else {
      throw SwellError.precondition(
        "volume \(spec.sourceVolumeID) is a thick LV; Swell snapshots thin LVs only (a thick LV's snapshot is a copy-on-write area that a database's writes can fill)")
    }
    try checkRoom(in: origin.pool, lvs: lvs, adding: origin.sizeBytes)
    try await lvm.createThinSnapshot(
      vg: vg, origin: origin.name, name: name,
      tags: ["\(Self.formatTag)=\(Self.format)", "\(Self.snapshotTag)=\(spec.id)", "\(Self.sourceTag)=\(spec.sourceVolumeID)", "\(Self.createdTag)=\(unixNanoseconds())"],
      active: false)
    Failpoints.hit("lvm-snapshot-after-lvcreate")
    guard let made = try await lvm.logicalVolumes(vg: vg).first(where: { $0.name == name }), let record = try snapshotRecord(made) else {
      throw SwellError(.internal, "lvcreate succeeded but \(vg)/\(name) is not reported")
    }
    return record
  }

  /// Refused: each `lvcreate -s` suspends its own LV, one after the other, and holding the members'
  /// filesystems frozen across them does not work: an `lvcreate -s` of a thin LV whose filesystem is
  /// FIFREEZE-frozen never returned on Debian 12's kernel (6.1) in the VM tier, stuck in the
  /// device-mapper suspend, which freezes the filesystem itself.
  public func createGroupSnapshot(_ group: GroupSnapshotSpec) async throws -> [SnapshotRecord] {
    try refuseGroupSnapshot(
      group, backend: Self.name,
      because: "each thin snapshot suspends its own LV, one after the other, and an LV cannot be snapshotted while "
        + "its filesystem is held frozen; use loop or iscsi volumes for a group")
  }

  public func deleteSnapshot(_ id: String) async throws {
    let name = try Self.snapshotLVName(id)
    guard let lv = try await lvm.logicalVolumes(vg: vg).first(where: { $0.name == name }), try snapshotRecord(lv) != nil else { return }
    try await lvm.remove(vg: vg, name: lv.name)
  }

  public func snapshot(_ id: String) async throws -> SnapshotRecord? {
    let name = try Self.snapshotLVName(id)
    return try await lvm.logicalVolumes(vg: vg).first(where: { $0.name == name }).flatMap { try snapshotRecord($0) }
  }

  public func listSnapshots() async throws -> [SnapshotRecord] {
    try await lvm.logicalVolumes(vg: vg).compactMap { try snapshotRecord($0) }.sorted { $0.id < $1.id }
  }

  func snapshotRecord(_ lv: LogicalVolume) throws -> SnapshotRecord? {
    guard lv.segmentType == "thin", config.thinPools.contains(lv.pool), let id = lv.tag(Self.snapshotTag),
      (try? Self.snapshotLVName(id)) == lv.name
    else { return nil }
    try checkFormat(lv)
    guard let source = lv.tag(Self.sourceTag) else { return nil }
    return SnapshotRecord(
      id: id, sourceVolumeID: source, sizeBytes: lv.sizeBytes,
      createdUnixNanos: lv.tag(Self.createdTag).flatMap(Int64.init) ?? 0, readyToUse: true, backend: Self.name,
      method: "thin-snapshot")
  }

  /// The LV a new volume's content comes from; NOT_FOUND when there is none.
  func sourceLV(_ source: VolumeSource, in lvs: [LogicalVolume]) throws -> LogicalVolume {
    switch source {
    case .snapshot(let id):
      let name = try Self.snapshotLVName(id)
      guard let lv = lvs.first(where: { $0.name == name }), try snapshotRecord(lv) != nil else {
        throw SwellError.notFound("source snapshot \(id) does not exist")
      }
      return lv
    case .volume(let id):
      let name = try Self.lvName(id)
      guard let lv = lvs.first(where: { $0.name == name }), try record(lv) != nil else {
        throw SwellError.notFound("source volume \(id) does not exist")
      }
      return lv
    }
  }
}
