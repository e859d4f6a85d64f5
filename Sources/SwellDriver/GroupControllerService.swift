import CSIProto
import GRPCCore
import SwiftProtobuf
import SwellHost
import SwellStorage

/// The CSI GroupController service: snapshots of several volumes at one instant.
///
/// A group's ID is its CSI name; its members are ordinary snapshots (`<group>.<n>`, one per source
/// volume in sorted order) that carry `group_snapshot_id`. It shares the Controller service's
/// locks: a group holds its name, each member's snapshot and each source volume while it is taken.
public struct GroupControllerService: Csi_V1_GroupController.SimpleServiceProtocol {
  let controller: ControllerService

  public init(controller: ControllerService) { self.controller = controller }

  var backend: ControllerBackends { controller.backend }
  var locks: VolumeLocks { controller.locks }

  public func groupControllerGetCapabilities(
    request: Csi_V1_GroupControllerGetCapabilitiesRequest, context: ServerContext
  ) async throws -> Csi_V1_GroupControllerGetCapabilitiesResponse {
    .with { $0.capabilities = [.with { $0.rpc.type = .createDeleteGetVolumeGroupSnapshot }] }
  }

  public func createVolumeGroupSnapshot(
    request: Csi_V1_CreateVolumeGroupSnapshotRequest, context: ServerContext
  ) async throws -> Csi_V1_CreateVolumeGroupSnapshotResponse {
    let group = try GroupSnapshotSpec(id: request.name, sourceVolumeIDs: request.sourceVolumeIds)
    try Validation.snapshotParameters(request.parameters)
    let keys = [Self.lockKey(group.id)] + group.members.map { ControllerService.lockKey(.snapshot($0.id)) }
      + group.sourceVolumeIDs
    let members = try await locks.withLocks(keys) { try await backend.createGroupSnapshot(group) }
    return .with { $0.groupSnapshot = csiGroup(group.id, members) }
  }

  public func deleteVolumeGroupSnapshot(
    request: Csi_V1_DeleteVolumeGroupSnapshotRequest, context: ServerContext
  ) async throws -> Csi_V1_DeleteVolumeGroupSnapshotResponse {
    try Names.validateVolumeID(request.groupSnapshotID, field: "group_snapshot_id")
    let members = try await backend.groupMembers(request.groupSnapshotID)
    // The group and each member, as DeleteSnapshot holds a snapshot: no restore copies one meanwhile.
    let keys = [Self.lockKey(request.groupSnapshotID)] + members.map { ControllerService.lockKey(.snapshot($0.id)) }
    try await locks.withLocks(keys) {
      // A group that is not whole is what an interrupted delete left: finish it.
      if GroupSnapshots.whole(members) != nil {
        try checkList(request.snapshotIds, members, group: request.groupSnapshotID, required: true)
      }
      for member in members { try await backend.deleteSnapshot(member.id) }
    }
    return .init()
  }

  public func getVolumeGroupSnapshot(
    request: Csi_V1_GetVolumeGroupSnapshotRequest, context: ServerContext
  ) async throws -> Csi_V1_GetVolumeGroupSnapshotResponse {
    try Names.validateVolumeID(request.groupSnapshotID, field: "group_snapshot_id")
    guard let members = GroupSnapshots.whole(try await backend.groupMembers(request.groupSnapshotID)) else {
      throw SwellError.notFound("group snapshot \(request.groupSnapshotID) does not exist")
    }
    try checkList(request.snapshotIds, members, group: request.groupSnapshotID, required: false)
    return .with { $0.groupSnapshot = csiGroup(request.groupSnapshotID, members) }
  }

  /// INVALID_ARGUMENT when `snapshotIDs` are not the group's members (the spec's "snapshot list
  /// mismatch"). An empty list is a mismatch only where it is `required`: a delete removes
  /// exactly what the caller names.
  func checkList(_ snapshotIDs: [String], _ members: [SnapshotRecord], group: String, required: Bool) throws {
    if snapshotIDs.isEmpty && !required { return }
    let expected = members.map(\.id).sorted()
    guard snapshotIDs.sorted() == expected else {
      throw SwellError.invalid(
        "snapshot_ids [\(snapshotIDs.sorted().joined(separator: ", "))] are not the members of group snapshot \(group): "
          + "[\(expected.joined(separator: ", "))]")
    }
  }

  func csiGroup(_ id: String, _ members: [SnapshotRecord]) -> Csi_V1_VolumeGroupSnapshot {
    .with {
      $0.groupSnapshotID = id
      $0.snapshots = members.map(controller.csiSnapshot)
      $0.readyToUse = members.allSatisfy(\.readyToUse)
      let created = members.map(\.createdUnixNanos).min() ?? 0
      $0.creationTime = Google_Protobuf_Timestamp(
        seconds: created / 1_000_000_000, nanos: Int32(created % 1_000_000_000))
    }
  }

  static func lockKey(_ group: String) -> String { "group/\(group)" }
}
