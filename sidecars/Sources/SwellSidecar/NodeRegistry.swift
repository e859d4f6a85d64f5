import Logging
import SwellHost
import SwellKube

/// Keeps a file listing the node IDs that CSINodes register for the driver, one a line, sorted:
/// the controller plugin reads it (`--nodes-file`) to tell a node that exists from one that does
/// not (ControllerPublishVolume's NOT_FOUND), since the plugin holds no API credentials. Written
/// atomically, and only when the list changes.
struct NodeRegistry: Sendable {
  let csiNodes: Informer
  let driver: String
  let path: String
  let logger: Logger

  /// The node IDs the CSINodes register for `driver`.
  static func nodeIDs(_ csiNodes: [JSON], driver: String) -> [String] {
    Set(csiNodes.compactMap { Attachments.nodeID(csiNode: $0, driver: driver) }).sorted()
  }

  func run(nudge: Nudge) async throws {
    var written: [String]?
    while !Task.isCancelled {
      if csiNodes.hasSynced {
        let ids = Self.nodeIDs(csiNodes.list(), driver: driver)
        if ids != written {
          try await BlockingIO.run { try writeFileAtomically(path, Array(ids.map { $0 + "\n" }.joined().utf8)) }
          logger.info("wrote the node list", metadata: ["path": "\(path)", "nodes": "\(ids.count)"])
          written = ids
        }
      }
      await nudge.wait(timeout: .seconds(30))
    }
  }
}
