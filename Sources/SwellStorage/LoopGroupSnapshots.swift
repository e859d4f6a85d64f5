#if canImport(Glibc)
  import Glibc
#endif
import SwellHost

/// Group snapshots of file-backed volumes: one instant across several volumes.
///
/// Every member's filesystem that is mounted on this node is frozen (a `frozen` marker in the
/// member's staging directory first, then FIFREEZE) before the first copy, and all are thawed after
/// the last, within one ``LoopBackend/freezeLimit``. Writes to any member wait in the kernel for
/// the whole time, so no member holds a write that another member's copy misses: the copies are
/// the volumes as they were at the first freeze. A member in use that this node cannot freeze (a
/// block volume, or an iSCSI LUN an initiator is logged in to) has no such instant, so a group of
/// more than one volume refuses it.
///
/// After the thaw the members are renamed into place one by one, each with the group's ID and
/// size in its `meta`. A crash before the last rename leaves a group that is not whole: hidden,
/// removed by the retry before it copies again, and by the next start (``sweepLeftovers()``); a
/// crash while frozen is thawed through the markers, as for a single snapshot.
extension LoopBackend {
  public func createGroupSnapshot(_ group: GroupSnapshotSpec) async throws -> [SnapshotRecord] {
    try createGroupSnapshot(group, inUseElsewhere: [])
  }

  /// Takes the group; `inUseElsewhere` holds the sources attached on another host.
  func createGroupSnapshot(_ group: GroupSnapshotSpec, inUseElsewhere: Set<String>) throws -> [SnapshotRecord] {
    let members = group.members
    let memberIDs = Set(members.map(\.id))
    let existing = try allSnapshots().filter { $0.groupID == group.id || memberIDs.contains($0.id) }
    switch try group.resolve(existing) {
    case .done(let whole): return whole
    case .take(let leftovers): for id in leftovers { try deleteSnapshotNow(id) }
    }
    var plans: [(member: SnapshotSpec, source: String, mountPoint: String?, inUse: Bool)] = []
    let mounts = try MountInfo.current()
    for member in members {
      guard try load(member.sourceVolumeID) != nil else {
        throw SwellError.notFound("source volume \(member.sourceVolumeID) does not exist")
      }
      let source = diskPath(member.sourceVolumeID)
      let device = try loops.attached(to: source).first
      let mountPoint = device.flatMap { dev in
        mounts.first { $0.major == dev.major && $0.minor == dev.minor && $0.root == "/" }?.mountPoint
      }
      let inUse = inUseElsewhere.contains(member.sourceVolumeID) || device != nil
      if members.count > 1, inUse, mountPoint == nil {
        throw SwellError.precondition(
          "volume \(member.sourceVolumeID) is in use "
            + (device != nil ? "as a block device on this node" : "by an iSCSI initiator on another host")
            + " with no filesystem this node can freeze, so it cannot share one instant with the other members: "
            + "snapshot it alone, or unstage it first")
      }
      plans.append((member, source, mountPoint, inUse))
    }
    let stagings = members.map { "\(snapshotsDir)/.\($0.id).creating" }
    for staging in stagings {
      try thawLeftover(staging)
      try removeTree(staging)
      guard mkdir(staging, 0o750) == 0 else { throw SystemCallError("mkdir", staging) }
    }
    var frozen: [(mountPoint: String, marker: String)] = []
    func thawAll() throws {
      while let last = frozen.popLast() {
        try FileSystemFreeze.thaw(last.mountPoint)
        try removeIfPresent(last.marker)
      }
    }
    var renamed = 0
    do {
      for (plan, staging) in zip(plans, stagings) {
        guard let mountPoint = plan.mountPoint else { continue }
        let marker = staging + "/frozen"
        try writeFileAtomically(marker, Array(mountPoint.utf8))
        try FileSystemFreeze.freeze(mountPoint)
        frozen.append((mountPoint, marker))
      }
      // The group's instant: every member frozen (a member's writes stop at its own freeze, so
      // whatever any member acknowledged before this is in its copy).
      let instant = unixNanoseconds()
      Failpoints.hit("group-snapshot-after-freeze")
      let deadline = ContinuousClock().now + freezeLimit
      var methods: [CloneMethod] = []
      for (plan, staging) in zip(plans, stagings) {
        methods.append(
          try cloneFile(plan.source, to: staging + "/disk.img", deadline: deadline) {
            if plan.inUse && plan.mountPoint == nil {
              throw SwellError.precondition(
                "volume \(plan.member.sourceVolumeID) is in use without a filesystem this node can freeze, and \(root) "
                  + "cannot reflink; a plain copy of it would not be consistent: unstage it, or keep data on xfs (reflink=1)")
            }
            try requireRoom(toCopy: plan.source)
          })
        Failpoints.hit("group-snapshot-frozen-after-copy")
      }
      try thawAll()
      var records: [SnapshotRecord] = []
      for ((plan, staging), method) in zip(zip(plans, stagings), methods) {
        guard let size = try FileInfo.of(staging + "/disk.img")?.size, size > 0 else {
          throw SwellError(.internal, "the snapshot copy of \(plan.member.sourceVolumeID) is empty")
        }
        var meta = SnapshotMeta(
          sourceVolumeID: plan.member.sourceVolumeID, sizeBytes: size, createdUnixNanos: instant, method: method)
        meta.group = (group.id, members.count)
        try writeFileAtomically(staging + "/meta", Array(meta.encoded().utf8), syncDirectory: false)
        records.append(Self.snapshotRecord(plan.member.id, meta))
      }
      for (member, staging) in zip(members, stagings) {
        guard rename(staging, snapshotDir(member.id)) == 0 else { throw SystemCallError("rename", staging) }
        renamed += 1
        Failpoints.hit("group-snapshot-after-rename")
      }
      try fsyncDirectory(snapshotsDir)
      return records
    } catch {
      try? thawAll()
      for staging in stagings.dropFirst(renamed) { try? removeTree(staging) }
      for member in members.prefix(renamed) { try? deleteSnapshotNow(member.id) }
      throw error
    }
  }

  /// Every snapshot, with the members of groups that are not whole.
  func allSnapshots() throws -> [SnapshotRecord] {
    try listDirectory(snapshotsDir).filter { !$0.hasPrefix(".") }.sorted().compactMap { try? loadSnapshot($0) }
  }

  /// Removes the members of groups that are not whole; returns their IDs.
  func sweepGroupStrays() throws -> [String] {
    let strays = GroupSnapshots.strays(try allSnapshots())
    for id in strays { try deleteSnapshotNow(id) }
    return strays
  }
}
