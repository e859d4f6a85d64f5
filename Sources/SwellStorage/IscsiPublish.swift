import SwellHost

/// Publishing an iSCSI volume: its target admits one initiator, by name, the one the published
/// node logs in as (``initiatorName(node:)``, handed to the node in the publish context). CHAP, if
/// the class asks for it, still applies on top. Unpublishing removes the name from the ACL and
/// ends the node's sessions on the target, so that its next write fails: its initiator logs in
/// again and is refused.
///
/// The record (`<storage>/publications/<volume>`) is the truth and the ACL is derived from it, so
/// a restarted tgtd or plugin admits exactly the published nodes again. A publish writes the
/// record, then binds; an unpublish removes the record, then unbinds and ends the sessions; a
/// crash between is finished by the retry, which the CO makes until the call succeeds.
extension IscsiBackend: Publishing {
  /// The initiator name of a node: one per node, derived from its ID, so that the controller
  /// needs nothing from the node to admit it.
  public func initiatorName(node: String) -> String { "\(config.iqnPrefix).node:\(node)" }

  public func publications(_ id: String) async throws -> [Publication] {
    try await BlockingIO.run { try publicationFiles.read(id) }
  }

  public func publish(_ volume: VolumeRecord, _ publication: Publication) async throws -> [String: String] {
    try Self.validateForIQN(publication.nodeID, what: "node ID")
    try await BlockingIO.run { try publicationFiles.add(volume.id, publication) }
    Failpoints.hit("iscsi-publish-after-record")
    guard let record = try await files.volume(volume.id) else {
      throw SwellError.notFound("volume \(volume.id) does not exist")
    }
    try await exportOne(record)
    return [PublishContext.initiator: initiatorName(node: publication.nodeID)]
  }

  public func unpublish(_ id: String, node: String) async throws {
    try await BlockingIO.run { try publicationFiles.remove(id, node: node) }
    Failpoints.hit("iscsi-unpublish-after-record")
    let initiator = initiatorName(node: node)
    try await gate.run {
      guard let target = try await tgt.targets().first(where: { $0.iqn == iqn(id) }) else { return }
      try await tgt.unbind(tid: target.tid, aclEntry: initiator)
      for nexus in target.nexuses where nexus.initiator == initiator {
        for cid in nexus.connections { try await tgt.closeConnection(tid: target.tid, sid: nexus.sid, cid: cid) }
      }
    }
  }

  public func forget(_ id: String) async throws {
    try await BlockingIO.run { try publicationFiles.remove(id) }
  }
}
