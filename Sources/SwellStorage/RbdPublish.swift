import SwellHost

/// Publishing an rbd volume: one owner at a time, recorded with the image (image-meta
/// `swell.publication`), and a fence when it is taken away.
///
/// A node that stages the volume checks that it is the owner, maps the image with a client of its
/// own (krbd `noshare`) and records that client's address with the image (`swell.client`).
/// Unpublishing blocklists that client before it removes the owner, so that no other node's
/// publish succeeds while the old client could still write: a node that unstaged cleanly has
/// already destroyed that client, and the entry costs nothing; a node that died, hangs or is cut
/// off is fenced (its next write fails, its watch is dropped), as ceph-csi's network fence does for
/// a whole node. Each step is one a retry repeats harmlessly.
extension RbdBackend: Publishing {
  static let publicationKey = "swell.publication"
  static let clientKey = "swell.client"

  /// The image of volume `id` with its record, or nil when there is none.
  func publishedImage(_ rbd: Rbd, _ id: String) async throws -> String? {
    guard let found = try await locate(rbd, image: Self.imageName(id)),
      try await record(rbd, pool: found.pool, image: found.image) != nil
    else { return nil }
    return "\(found.pool)/\(found.image.name)"
  }

  public func publications(_ id: String) async throws -> [Publication] {
    let rbd = try client()
    guard let image = try await publishedImage(rbd, id) else { return [] }
    // An owner record it cannot read fails the call: read as none, it would let a second node publish.
    return try await rbd.meta(image, Self.publicationKey).map { [try Self.owner($0, id)] } ?? []
  }

  static func owner(_ text: String, _ id: String) throws -> Publication {
    do { return try Publication.decode(text) } catch {
      throw RecordFormat.rethrow(error, subject: "volume \(id)", fallback: "volume \(id)'s owner record is unreadable")
    }
  }

  public func publish(_ volume: VolumeRecord, _ publication: Publication) async throws -> [String: String] {
    let rbd = try client()
    guard let image = try await publishedImage(rbd, volume.id) else {
      throw SwellError.notFound("volume \(volume.id) does not exist")
    }
    try await rbd.setMeta(image, Self.publicationKey, publication.encoded)
    return [:]
  }

  public func unpublish(_ id: String, node: String) async throws {
    let rbd = try client()
    guard let image = try await publishedImage(rbd, id) else { return }
    let client = try await rbd.meta(image, Self.clientKey).map { try Self.fields($0, what: "the client record of rbd image \(image)") } ?? [:]
    if client["node"] == node {
      if let address = client["addr"] { try await rbd.blocklist(address) }
      Failpoints.hit("rbd-unpublish-after-blocklist")
      try await rbd.removeMeta(image, Self.clientKey)
    }
    if let owner = try await rbd.meta(image, Self.publicationKey).map({ try Self.owner($0, id) }), owner.nodeID == node {
      try await rbd.removeMeta(image, Self.publicationKey)
    }
  }

  /// The image's metadata goes with it.
  public func forget(_ id: String) async throws {}
}
