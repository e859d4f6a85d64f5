import SwellHost

/// Where a new volume's first bytes come from (CreateVolume's `volume_content_source`).
public enum VolumeSource: Sendable, Equatable {
  case snapshot(String)
  case volume(String)

  /// `snapshot:<id>` or `volume:<id>`, as metadata and LVM tags keep it.
  public var encoded: String {
    switch self {
    case .snapshot(let id): "snapshot:\(id)"
    case .volume(let id): "volume:\(id)"
    }
  }

  public init?(encoded: String) {
    if encoded.hasPrefix("snapshot:") {
      self = .snapshot(String(encoded.dropFirst("snapshot:".count)))
    } else if encoded.hasPrefix("volume:") {
      self = .volume(String(encoded.dropFirst("volume:".count)))
    } else {
      return nil
    }
  }
}

/// What CreateSnapshot asks a backend for, validated.
public struct SnapshotSpec: Sendable, Equatable {
  public var id: String
  public var sourceVolumeID: String

  public init(id: String, sourceVolumeID: String) {
    self.id = id
    self.sourceVolumeID = sourceVolumeID
  }
}

/// A snapshot as its backend stores it.
public struct SnapshotRecord: Sendable, Equatable {
  public var id: String
  public var sourceVolumeID: String
  /// The source's size when the snapshot was taken: the smallest volume it can restore to.
  public var sizeBytes: Int64
  public var createdUnixNanos: Int64
  public var readyToUse: Bool
  public var backend: String
  /// How the bytes were captured (reflink, copy, thin snapshot), for logs and the CLI.
  public var method: String
  /// The group snapshot it belongs to (CSI's `group_snapshot_id`), nil for a snapshot of its own.
  public var groupID: String? = nil
  /// How many members its group has: the group is whole only when that many carry its ID.
  public var groupSize: Int = 0

  public init(
    id: String, sourceVolumeID: String, sizeBytes: Int64, createdUnixNanos: Int64, readyToUse: Bool, backend: String,
    method: String
  ) {
    self.id = id
    self.sourceVolumeID = sourceVolumeID
    self.sizeBytes = sizeBytes
    self.createdUnixNanos = createdUnixNanos
    self.readyToUse = readyToUse
    self.backend = backend
    self.method = method
  }
}

/// The `meta` file beside a file snapshot: `key=value` lines, written atomically.
public struct SnapshotMeta: Sendable, Equatable {
  public static let version = 1
  public var sourceVolumeID: String
  public var sizeBytes: Int64
  public var createdUnixNanos: Int64
  public var method: CloneMethod
  /// The group it belongs to and the group's size, for a member of a group snapshot.
  public var group: (id: String, size: Int)? {
    get { groupID.map { ($0, groupSize) } }
    set {
      groupID = newValue?.id
      groupSize = newValue?.size ?? 0
    }
  }
  var groupID: String?
  var groupSize = 0

  public init(sourceVolumeID: String, sizeBytes: Int64, createdUnixNanos: Int64, method: CloneMethod) {
    self.sourceVolumeID = sourceVolumeID
    self.sizeBytes = sizeBytes
    self.createdUnixNanos = createdUnixNanos
    self.method = method
  }

  public func encoded() -> String {
    "version=\(Self.version)\nsource_volume=\(sourceVolumeID)\nsize_bytes=\(sizeBytes)\n"
      + "created_unix_nanos=\(createdUnixNanos)\nmethod=\(method.rawValue)\n"
      + (groupID.map { "group=\($0)\ngroup_size=\(groupSize)\n" } ?? "")
  }

  public static func decode(_ text: String) throws -> SnapshotMeta {
    let fields = try metadataFields(text)
    try RecordFormat.check(fields["version"], current: version, what: "its metadata")
    guard let source = fields["source_volume"], !source.isEmpty,
      let size = fields["size_bytes"].flatMap(Int64.init), size > 0,
      let created = fields["created_unix_nanos"].flatMap(Int64.init),
      let method = fields["method"].flatMap(CloneMethod.init(rawValue:))
    else { throw SwellError(.internal, "snapshot metadata is incomplete") }
    var meta = SnapshotMeta(sourceVolumeID: source, sizeBytes: size, createdUnixNanos: created, method: method)
    if let group = fields["group"] {
      guard !group.isEmpty, let size = fields["group_size"].flatMap(Int.init), size > 0 else {
        throw SwellError(.internal, "snapshot metadata names a group without its size")
      }
      meta.group = (group, size)
    }
    return meta
  }
}
