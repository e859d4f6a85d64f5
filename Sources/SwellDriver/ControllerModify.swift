import CSIProto
import GRPCCore
import SwellStorage

extension ControllerService {
  /// Changes a volume's mutable parameters (a VolumeAttributesClass): only the keys given, and
  /// nothing at all when any key or value is refused. An empty map changes nothing and succeeds,
  /// as csi-sanity expects of a volume made without a class.
  public func controllerModifyVolume(
    request: Csi_V1_ControllerModifyVolumeRequest, context: ServerContext
  ) async throws -> Csi_V1_ControllerModifyVolumeResponse {
    try Names.validateVolumeID(request.volumeID)
    let changes = try Validation.mutableParameters(request.mutableParameters)
    try await locks.withLock(request.volumeID) { try await backend.modify(request.volumeID, changes) }
    return .init()
  }
}
