import CSIProto
import GRPCCore
import SwellHost
import SwellStorage

/// ControllerPublishVolume and ControllerUnpublishVolume: one node at a time.
///
/// Every Swell volume has a single-node access mode, so a volume is published to at most one node:
/// a second node is FAILED_PRECONDITION, naming the first, until the first is unpublished. A repeat
/// for the same node with the same capability is the same publication (the backend re-applies it,
/// which finishes a publish a crash interrupted); another capability is ALREADY_EXISTS. What a
/// publish does on the storage is the backend's (``Publishing``): a local volume is only recorded,
/// an iSCSI target admits that node's initiator, an rbd image records its owner. Unpublishing a
/// volume or a node that is gone succeeds, as the spec allows.
extension ControllerService {
  public func controllerPublishVolume(
    request: Csi_V1_ControllerPublishVolumeRequest, context: ServerContext
  ) async throws -> Csi_V1_ControllerPublishVolumeResponse {
    let id = request.volumeID
    try Names.validateVolumeID(id)
    guard !request.nodeID.isEmpty else { throw SwellError.invalid("node_id is missing") }
    try Names.validateVolumeID(request.nodeID, field: "node_id")
    guard request.hasVolumeCapability else { throw SwellError.invalid("volume_capability is missing") }
    let access = try Validation.access(request.volumeCapability)
    guard !request.readonly else {
      throw SwellError.invalid("readonly is set, but this plugin does not offer PUBLISH_READONLY: publish it writable, "
        + "and mount it read-only at NodePublishVolume")
    }
    let wanted = Publication(
      nodeID: request.nodeID, access: access.kind, mode: Validation.modeName(request.volumeCapability.accessMode.mode))
    let publishContext = try await locks.withLock(id) {
      guard let owner = try await backend.owner(of: id), let record = try await owner.volume(id) else {
        throw SwellError.notFound("volume \(id) does not exist")
      }
      try await nodes.check(request.nodeID, for: record)
      guard record.access == access.kind else {
        throw SwellError.invalid(
          "volume_capability asks for \(access.kind.rawValue) access; volume \(id) is a \(record.access.rawValue) volume")
      }
      let publishing = try backend.publishing(for: owner)
      let existing = try await publishing.publications(id)
      if let same = existing.first(where: { $0.nodeID == wanted.nodeID }) {
        try same.checkRepeat(wanted, volume: id)
      } else if let other = existing.first {
        throw SwellError.precondition(
          "volume \(id) is published to node \(other.nodeID), and its access mode is single-node: "
            + "unpublish it from \(other.nodeID) first")
      } else if record.isLocal, let local = backend.localPublishing,
        try await local.count(node: request.nodeID) >= config.maxVolumesPerNode
      {
        // The node's limit (NodeGetInfo's max_volumes_per_node) is this plugin's own for local volumes.
        throw SwellError(
          .resourceExhausted, "node \(request.nodeID) has \(config.maxVolumesPerNode) volumes published, its most (max_volumes_per_node)")
      }
      return try await publishing.publish(record, wanted)
    }
    return .with { $0.publishContext = publishContext.merging([PublishContext.node: request.nodeID]) { _, node in node } }
  }

  public func controllerUnpublishVolume(
    request: Csi_V1_ControllerUnpublishVolumeRequest, context: ServerContext
  ) async throws -> Csi_V1_ControllerUnpublishVolumeResponse {
    let id = request.volumeID
    try Names.validateVolumeID(id)
    if !request.nodeID.isEmpty { try Names.validateVolumeID(request.nodeID, field: "node_id") }
    try await locks.withLock(id) {
      // A volume that is gone is unpublished everywhere.
      guard let owner = try await backend.owner(of: id) else { return }
      let publishing = try backend.publishing(for: owner)
      let nodes = request.nodeID.isEmpty ? try await publishing.publications(id).map(\.nodeID) : [request.nodeID]
      for node in nodes { try await publishing.unpublish(id, node: node) }
    }
    return .init()
  }
}
