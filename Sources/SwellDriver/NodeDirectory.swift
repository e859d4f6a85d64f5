import SwellHost
import SwellStorage

/// Which nodes a volume can be published to, for ControllerPublishVolume's "node does not exist"
/// (NOT_FOUND).
///
/// A local volume lives on this node, the only one it can be published to. A network volume can
/// go to any node that runs Swell's node plugin; the controller learns them from a file (`--nodes-file`)
/// that Swell's sidecar keeps from the cluster's CSINode objects, one node ID a line, since the
/// plugin itself holds no API credentials. Without that file every well-formed node ID is taken.
public struct NodeDirectory: Sendable {
  let ownNode: String
  let file: String?

  public init(ownNode: String, file: String?) {
    self.ownNode = ownNode
    self.file = file
  }

  /// Throws NOT_FOUND when `node` is not one `volume` can be published to; UNAVAILABLE while the
  /// node list has not been written yet (the call is retried).
  func check(_ node: String, for volume: VolumeRecord) async throws {
    if volume.isLocal {
      guard node == ownNode else {
        throw SwellError.notFound(
          "node \(node) cannot reach volume \(volume.id): a \(volume.backend) volume lives on node \(ownNode), the only node it can be published to")
      }
      return
    }
    guard let file else { return }
    let known = try await BlockingIO.run { () -> [Substring]? in
      guard try FileInfo.of(file) != nil else { return nil }
      return try readSmallFile(file).split(separator: "\n")
    }
    guard let known else {
      throw SwellError(.unavailable, "the list of nodes (\(file)) is not written yet: the sidecar writes it from the cluster's CSINodes")
    }
    guard known.contains(where: { $0 == node }) else {
      throw SwellError.notFound("node \(node) does not exist: no CSINode registers it for this driver (\(file))")
    }
  }
}
