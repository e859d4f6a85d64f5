import SwellHost

/// What CreateVolumeGroupSnapshot asks a backend for, validated: the group's ID (its CSI name) and
/// one member snapshot per source volume.
///
/// A group has no record of its own. Its members are ordinary snapshots, each carrying the group's
/// ID and size; a group is whole when that many members carry its ID. The members are renamed into
/// place one by one after the copy, so a crash between two renames leaves a group that is not
/// whole: it is invisible to the CO, taken again by a retry, and removed by the next start.
public struct GroupSnapshotSpec: Sendable, Equatable {
  /// The most volumes one group may hold: each is frozen until the last copy is done.
  public static let maxMembers = 64
  /// A group's ID leaves room for a member's suffix (`.<index>`) within a snapshot ID's length.
  public static let maxIDLength = Names.maxLength - 3

  public var id: String
  /// The source volumes, sorted, without repeats: member `i` is a snapshot of `sourceVolumeIDs[i]`.
  public var sourceVolumeIDs: [String]

  /// INVALID_ARGUMENT unless `id` and every source are valid IDs and the group has 1 to
  /// ``maxMembers`` distinct volumes.
  public init(id: String, sourceVolumeIDs: [String]) throws {
    try Names.validateVolumeID(id, field: "name")
    guard id.utf8.count <= Self.maxIDLength else {
      throw SwellError.invalid("name is longer than \(Self.maxIDLength) bytes (a group's members add a suffix)")
    }
    guard !sourceVolumeIDs.isEmpty else { throw SwellError.invalid("source_volume_ids is empty") }
    for source in sourceVolumeIDs { try Names.validateVolumeID(source, field: "source_volume_ids") }
    let sources = Set(sourceVolumeIDs)
    guard sources.count == sourceVolumeIDs.count else {
      throw SwellError.invalid("source_volume_ids names a volume more than once")
    }
    guard sources.count <= Self.maxMembers else {
      throw SwellError.invalid("a group snapshot holds at most \(Self.maxMembers) volumes, not \(sources.count)")
    }
    self.id = id
    self.sourceVolumeIDs = sources.sorted()
  }

  /// The member snapshots, in the order of the sorted sources.
  public var members: [SnapshotSpec] {
    sourceVolumeIDs.enumerated().map { SnapshotSpec(id: "\(id).\($0.offset)", sourceVolumeID: $0.element) }
  }

  /// What a create finds of this group among `existing` (the snapshots that carry its ID or a
  /// member's ID): the whole group with the same sources, which is the answer; or the leftovers of
  /// an attempt that did not finish, to remove before taking it again. ALREADY_EXISTS when the
  /// whole group has other sources, or a member's ID is another snapshot's.
  public func resolve(_ existing: [SnapshotRecord]) throws -> GroupResolution {
    let memberIDs = Set(members.map(\.id))
    if let stranger = existing.first(where: { memberIDs.contains($0.id) && $0.groupID != id }) {
      throw SwellError(
        .alreadyExists, "snapshot \(stranger.id) exists and is not a member of group snapshot \(id); choose another name")
    }
    let mine = existing.filter { $0.groupID == id }
    if let whole = GroupSnapshots.whole(mine) {
      guard whole.map(\.sourceVolumeID).sorted() == sourceVolumeIDs else {
        throw SwellError(
          .alreadyExists,
          "group snapshot \(id) exists of volumes \(whole.map(\.sourceVolumeID).sorted().joined(separator: ", ")), "
            + "not \(sourceVolumeIDs.joined(separator: ", "))")
      }
      return .done(whole)
    }
    return .take(leftovers: mine.map(\.id).sorted())
  }
}

/// See ``GroupSnapshotSpec/resolve(_:)``.
public enum GroupResolution: Sendable, Equatable {
  case done([SnapshotRecord])
  case take(leftovers: [String])
}

public enum GroupSnapshots {
  /// The members, sorted by ID, when they are one whole group (all carry the same group ID and
  /// size, and there are that many); nil otherwise.
  public static func whole(_ members: [SnapshotRecord]) -> [SnapshotRecord]? {
    guard let first = members.first, let group = first.groupID,
      members.allSatisfy({ $0.groupID == group && $0.groupSize == first.groupSize }),
      members.count == first.groupSize
    else { return nil }
    return members.sorted { $0.id < $1.id }
  }

  /// The IDs of members of groups that are not whole: what a crash between two renames, or in the
  /// middle of a group's deletion, left behind.
  public static func strays(_ snapshots: [SnapshotRecord]) -> [String] {
    let groups = Dictionary(grouping: snapshots.filter { $0.groupID != nil }, by: { $0.groupID! })
    return groups.values.filter { whole($0) == nil }.flatMap { $0.map(\.id) }.sorted()
  }

  /// `snapshots` without the members of groups that are not whole.
  public static func visible(_ snapshots: [SnapshotRecord]) -> [SnapshotRecord] {
    let hidden = Set(strays(snapshots))
    return snapshots.filter { !hidden.contains($0.id) }
  }
}

extension ControllerBackend {
  /// The default for a backend that cannot freeze its volumes together: FAILED_PRECONDITION.
  public func refuseGroupSnapshot(_ group: GroupSnapshotSpec, backend: String, because reason: String) throws -> Never {
    throw SwellError.precondition(
      "volumes \(group.sourceVolumeIDs.joined(separator: ", ")) are \(backend) volumes, which cannot be snapshotted "
        + "at one instant: \(reason)")
  }
}
