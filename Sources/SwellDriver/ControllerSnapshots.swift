import CSIProto
import GRPCCore
import SwiftProtobuf
import SwellHost
import SwellStorage

/// The Controller service's snapshot calls: CreateSnapshot, DeleteSnapshot, ListSnapshots and
/// GetSnapshot. A snapshot's ID is its CSI name, like a volume's, so a retried CreateSnapshot
/// finds what the first attempt made.
extension ControllerService {
  public func createSnapshot(
    request: Csi_V1_CreateSnapshotRequest, context: ServerContext
  ) async throws -> Csi_V1_CreateSnapshotResponse {
    try Names.validateVolumeID(request.name, field: "name")
    guard !request.sourceVolumeID.isEmpty else { throw SwellError.invalid("source_volume_id is missing") }
    try Names.validateVolumeID(request.sourceVolumeID, field: "source_volume_id")
    try Validation.snapshotParameters(request.parameters)
    let spec = SnapshotSpec(id: request.name, sourceVolumeID: request.sourceVolumeID)
    let record = try await locks.withLock(Self.lockKey(.snapshot(request.name))) {
      try await locks.withLock(request.sourceVolumeID) { try await backend.createSnapshot(spec) }
    }
    return .with { $0.snapshot = csiSnapshot(record) }
  }

  public func deleteSnapshot(
    request: Csi_V1_DeleteSnapshotRequest, context: ServerContext
  ) async throws -> Csi_V1_DeleteSnapshotResponse {
    try Names.validateVolumeID(request.snapshotID, field: "snapshot_id")
    try await locks.withLock(Self.lockKey(.snapshot(request.snapshotID))) {
      if let group = try await backend.snapshot(request.snapshotID)?.groupID {
        throw SwellError.invalid(
          "snapshot \(request.snapshotID) is a member of group snapshot \(group) and cannot be deleted alone: "
            + "delete the group (DeleteVolumeGroupSnapshot)")
      }
      try await backend.deleteSnapshot(request.snapshotID)
    }
    return .init()
  }

  public func listSnapshots(
    request: Csi_V1_ListSnapshotsRequest, context: ServerContext
  ) async throws -> Csi_V1_ListSnapshotsResponse {
    var snapshots: [SnapshotRecord]
    if !request.snapshotID.isEmpty {
      // A snapshot ID this plugin could never have issued matches nothing.
      let found = (try? Names.validateVolumeID(request.snapshotID)) == nil ? nil : try await visibleSnapshot(request.snapshotID)
      snapshots = found.map { [$0] } ?? []
    } else {
      snapshots = GroupSnapshots.visible(try await backend.listSnapshots())
    }
    if !request.sourceVolumeID.isEmpty {
      snapshots = snapshots.filter { $0.sourceVolumeID == request.sourceVolumeID }
    }
    let (page, next) = try ListToken.page(
      snapshots, id: \.id, maxEntries: request.maxEntries, startingToken: request.startingToken)
    return .with {
      $0.entries = page.map { record in .with { $0.snapshot = csiSnapshot(record) } }
      $0.nextToken = next
    }
  }

  public func getSnapshot(
    request: Csi_V1_GetSnapshotRequest, context: ServerContext
  ) async throws -> Csi_V1_GetSnapshotResponse {
    try Names.validateVolumeID(request.snapshotID, field: "snapshot_id")
    guard let record = try await visibleSnapshot(request.snapshotID) else {
      throw SwellError.notFound("snapshot \(request.snapshotID) does not exist")
    }
    return .with { $0.snapshot = csiSnapshot(record) }
  }

  /// The snapshot, or nil when it does not exist or is a member of a group that is not whole (a
  /// group being taken or deleted).
  func visibleSnapshot(_ id: String) async throws -> SnapshotRecord? {
    guard let record = try await backend.snapshot(id) else { return nil }
    guard let group = record.groupID else { return record }
    return GroupSnapshots.whole(try await backend.groupMembers(group)) == nil ? nil : record
  }

  func csiSnapshot(_ record: SnapshotRecord) -> Csi_V1_Snapshot {
    .with {
      $0.groupSnapshotID = record.groupID ?? ""
      $0.snapshotID = record.id
      $0.sourceVolumeID = record.sourceVolumeID
      $0.sizeBytes = record.sizeBytes
      $0.readyToUse = record.readyToUse
      $0.creationTime = Google_Protobuf_Timestamp(
        seconds: record.createdUnixNanos / 1_000_000_000, nanos: Int32(record.createdUnixNanos % 1_000_000_000))
    }
  }
}
