import SwellHost

/// A volume published to one node (ControllerPublishVolume): the node, and the capability and
/// read-only flag it was published with, which a repeat must match.
public struct Publication: Sendable, Equatable {
  public var nodeID: String
  public var access: AccessKind
  /// The CSI access mode's name (`SINGLE_NODE_MULTI_WRITER`).
  public var mode: String
  public var readonly: Bool

  public init(nodeID: String, access: AccessKind, mode: String, readonly: Bool = false) {
    self.nodeID = nodeID
    self.access = access
    self.mode = mode
    self.readonly = readonly
  }

  /// The record format this build writes and the newest it reads (``RecordFormat``). Format 1
  /// lines were written without a version field until 2026-12-06, and are read as format 1.
  public static let version = 1

  /// `version=1;node=…;access=…;mode=…;readonly=…`: node IDs, kinds and mode names hold neither `;`
  /// nor `=`. A build that does not know `version` skips it, as every field it does not know.
  public var encoded: String {
    "version=\(Self.version);node=\(nodeID);access=\(access.rawValue);mode=\(mode);readonly=\(readonly)"
  }

  /// Parses ``encoded``: FAILED_PRECONDITION for a newer format, INTERNAL for a line it cannot read.
  public static func decode(_ text: String) throws -> Publication {
    var fields: [String: String] = [:]
    for part in text.split(separator: ";") {
      let kv = part.split(separator: "=", maxSplits: 1)
      if kv.count == 2 { fields[String(kv[0])] = String(kv[1]) }
    }
    try RecordFormat.check(fields: fields, current: version, what: "its publication record")
    guard let node = fields["node"], !node.isEmpty, let access = fields["access"].flatMap(AccessKind.init(rawValue:)),
      let mode = fields["mode"], !mode.isEmpty
    else { throw SwellError(.internal, "a publication record line is incomplete: \(text)") }
    return Publication(nodeID: node, access: access, mode: mode, readonly: fields["readonly"] == "true")
  }

  /// What ControllerPublishVolume answers for a volume already published to `request`'s node:
  /// nothing when the capability and flag are the same, ALREADY_EXISTS when they are not.
  public func checkRepeat(_ request: Publication, volume: String) throws {
    guard request != self else { return }
    throw SwellError(
      .alreadyExists,
      "volume \(volume) is published to node \(nodeID) as \(access.rawValue) \(mode)\(readonly ? " read-only" : ""), "
        + "not as \(request.access.rawValue) \(request.mode)\(request.readonly ? " read-only" : ""); unpublish it first")
  }
}

/// The keys of the publish context Swell hands a node: what NodeStageVolume checks and uses.
public enum PublishContext {
  /// The node the volume is published to; a stage on any other node is refused.
  public static let node = "node"
  /// An iSCSI volume's: the initiator name the node logs in as, the one its target admits.
  public static let initiator = "initiator"
}

/// How a backend publishes its volumes: where it records publications, and what publishing and
/// unpublishing do on its storage (a target's ACL, an image's owner and its fence). The Controller
/// service decides idempotency and exclusivity from ``publications(_:)`` under the volume's lock;
/// a backend only records and applies.
public protocol Publishing: Sendable {
  /// The volume's publications, as recorded.
  func publications(_ id: String) async throws -> [Publication]
  /// Records `publication` and makes the volume reachable from its node; returns what the node
  /// needs (the publish context). Called again for a publication that is already recorded (a retry
  /// after a crash), when it re-applies what may be missing.
  func publish(_ volume: VolumeRecord, _ publication: Publication) async throws -> [String: String]
  /// Makes the volume unreachable from `node` (and fences that node where the storage can) and
  /// removes its record. Called for a node with no record too, so that a retry after a crash
  /// between the two finishes the job; a volume that does not exist is success.
  func unpublish(_ id: String, node: String) async throws
  /// Forgets every publication of a volume that was deleted.
  func forget(_ id: String) async throws
}

/// Publications as small files, one per volume, in a directory: the record of local volumes
/// (whose only node is this one) and of iSCSI volumes (on the storage host, beside their files).
/// Each write is atomic and durable before the call that made it answers.
public struct PublicationFiles: Sendable {
  public let dir: String

  public init(dir: String) throws {
    try makeDirectories(dir)
    self.dir = try realPath(dir)
  }

  func path(_ id: String) -> String { "\(dir)/\(id)" }

  /// The volume's publications. A line it cannot read fails the call rather than being dropped: a
  /// dropped publication would let a second node publish, and the next write would lose it.
  public func read(_ id: String) throws -> [Publication] {
    guard try FileInfo.of(path(id)) != nil else { return [] }
    do {
      return try readSmallFile(path(id)).split(separator: "\n").map { try Publication.decode(String($0)) }
    } catch {
      throw RecordFormat.rethrow(error, subject: "volume \(id)", fallback: "volume \(id)'s publication record is unreadable")
    }
  }

  public func write(_ id: String, _ publications: [Publication]) throws {
    if publications.isEmpty {
      try remove(id)
    } else {
      try writeFileAtomically(path(id), Array(publications.map { $0.encoded + "\n" }.joined().utf8))
    }
  }

  public func add(_ id: String, _ publication: Publication) throws {
    var all = try read(id)
    guard !all.contains(publication) else { return }
    all.removeAll { $0.nodeID == publication.nodeID }
    try write(id, all + [publication])
  }

  public func remove(_ id: String, node: String) throws {
    let all = try read(id)
    guard all.contains(where: { $0.nodeID == node }) else { return }
    try write(id, all.filter { $0.nodeID != node })
  }

  public func remove(_ id: String) throws {
    guard try FileInfo.of(path(id)) != nil else { return }
    try removeIfPresent(path(id))
    try fsyncDirectory(dir)
  }

  /// Every volume with a record here.
  public func volumeIDs() throws -> [String] {
    try listDirectory(dir).filter { !$0.hasPrefix(".") && !$0.hasSuffix(".tmp") }.sorted()
  }
}

/// The local kinds' publishing (loop, lvm, dir): a record only. The volume lives on this node, the
/// only node it can be published to (the Controller service refuses any other as NOT_FOUND), so
/// there is nothing to open or fence.
public struct LocalPublishing: Publishing {
  let files: PublicationFiles

  public init(files: PublicationFiles) {
    self.files = files
  }

  public func publications(_ id: String) async throws -> [Publication] {
    try await BlockingIO.run { try files.read(id) }
  }

  public func publish(_ volume: VolumeRecord, _ publication: Publication) async throws -> [String: String] {
    try await BlockingIO.run { try files.add(volume.id, publication) }
    return [:]
  }

  public func unpublish(_ id: String, node: String) async throws {
    try await BlockingIO.run { try files.remove(id, node: node) }
  }

  public func forget(_ id: String) async throws {
    try await BlockingIO.run { try files.remove(id) }
  }

  /// How many volumes are published to `node`.
  public func count(node: String) async throws -> Int {
    try await BlockingIO.run { try files.volumeIDs().filter { try files.read($0).contains { $0.nodeID == node } }.count }
  }
}
