import SwellHost

/// The controller's backends by name. CreateVolume goes where the StorageClass's `backend`
/// parameter says; every other call goes to the backend that holds the volume.
///
/// Volume IDs are the CO's names, unique across backends: a name already used in one backend is
/// ALREADY_EXISTS when asked for in another.
public struct ControllerBackends: ControllerBackend {
  public let backends: [(name: String, backend: any ControllerBackend)]
  public let defaultName: String
  /// The publication record of the local kinds (loop, lvm, dir); the network backends keep their own.
  public let localPublishing: LocalPublishing?

  public init(
    _ backends: [(name: String, backend: any ControllerBackend)], defaultName: String = LoopBackend.name,
    localPublishing: LocalPublishing? = nil
  ) {
    precondition(backends.contains { $0.name == defaultName }, "the default backend must be configured")
    self.backends = backends
    self.defaultName = defaultName
    self.localPublishing = localPublishing
  }

  /// Where the publications of a volume of `owner` live and what publishing it does: the backend's
  /// own (iscsi: the target's ACL; rbd: the image's owner), or the local record.
  public func publishing(for owner: any ControllerBackend) throws -> any Publishing {
    if let own = owner as? any Publishing { return own }
    guard let localPublishing else {
      throw SwellError(.internal, "this controller keeps no publication record for local volumes")
    }
    return localPublishing
  }

  /// The nodes a volume is published to, read from the backend its record names.
  public func publishedNodes(_ record: VolumeRecord) async throws -> [String] {
    try await publishing(for: try backend(named: record.backend)).publications(record.id).map(\.nodeID)
  }

  public var names: [String] { backends.map(\.name) }

  /// The named backend, or INVALID_ARGUMENT naming the ones this controller has.
  public func backend(named name: String?) throws -> any ControllerBackend {
    let wanted = name ?? defaultName
    guard let found = backends.first(where: { $0.name == wanted }) else {
      throw SwellError.invalid(
        "backend \(wanted.debugDescription) is not configured on this controller; it has \(names.joined(separator: ", "))")
    }
    return found.backend
  }

  /// The backend holding `id`, if any.
  public func owner(of id: String) async throws -> (any ControllerBackend)? {
    for entry in backends where try await entry.backend.volume(id) != nil { return entry.backend }
    return nil
  }

  public var granularity: Int64 { backends.map(\.backend.granularity).max() ?? Capacity.miB }
  public var maximumBytes: Int64 { backends.map(\.backend.maximumBytes).min() ?? 0 }

  public func create(_ spec: VolumeSpec) async throws -> VolumeRecord {
    let target = try backend(named: spec.backend)
    for entry in backends where entry.name != spec.backend {
      if try await entry.backend.volume(spec.id) != nil {
        throw SwellError(.alreadyExists, "volume \(spec.id) exists in backend \(entry.name), not \(spec.backend)")
      }
    }
    return try await target.create(spec)
  }

  /// Deletes from every backend: each delete is idempotent and sweeps its own half-done work. The
  /// volume's publication records go with it.
  public func delete(_ id: String) async throws {
    if let owner = try await owner(of: id) {
      try await owner.delete(id)
      try await publishing(for: owner).forget(id)
      return
    }
    for entry in backends { try await entry.backend.delete(id) }
    try await localPublishing?.forget(id)
  }

  public func expand(_ id: String, to bytes: Int64) async throws -> VolumeRecord {
    guard let owner = try await owner(of: id) else { throw SwellError.notFound("volume \(id) does not exist") }
    return try await owner.expand(id, to: bytes)
  }

  public func modify(_ id: String, _ changes: VolumeChanges) async throws {
    guard let owner = try await owner(of: id) else { throw SwellError.notFound("volume \(id) does not exist") }
    try await owner.modify(id, changes)
  }

  public func volume(_ id: String) async throws -> VolumeRecord? {
    try await owner(of: id)?.volume(id)
  }

  public func list() async throws -> [VolumeRecord] {
    var all: [VolumeRecord] = []
    for entry in backends { all += try await entry.backend.list() }
    return all.sorted { $0.id < $1.id }
  }

  public func health(_ id: String) async -> VolumeHealth {
    guard let owner = try? await owner(of: id) else { return .abnormal("volume \(id) does not exist") }
    return await owner.health(id)
  }

  public func availableBytes() async throws -> Int64 {
    try await backend(named: defaultName).availableBytes()
  }

  public func pools() async throws -> [PoolUsage] {
    var all: [PoolUsage] = []
    for entry in backends { all += try await entry.backend.pools() }
    return all
  }

  public func checkReady() async throws {
    for entry in backends { try await entry.backend.checkReady() }
  }

  public var isLocal: Bool { (try? backend(named: defaultName).isLocal) ?? true }

  public func sweepLeftovers() throws -> [String] {
    try backends.flatMap { try $0.backend.sweepLeftovers() }
  }

  public func availableBytes(parameters: [String: String]) async throws -> Int64 {
    try await backend(named: parameters["backend"]).availableBytes(parameters: parameters)
  }

  // MARK: Snapshots: each lives in its source volume's backend; IDs are unique across backends.

  public func createSnapshot(_ spec: SnapshotSpec) async throws -> SnapshotRecord {
    for entry in backends {
      if let existing = try await entry.backend.snapshot(spec.id) {
        guard existing.sourceVolumeID == spec.sourceVolumeID else {
          throw SwellError(
            .alreadyExists, "snapshot \(spec.id) exists of volume \(existing.sourceVolumeID), not \(spec.sourceVolumeID)")
        }
        return existing
      }
    }
    guard let owner = try await owner(of: spec.sourceVolumeID) else {
      throw SwellError.notFound("source volume \(spec.sourceVolumeID) does not exist")
    }
    return try await owner.createSnapshot(spec)
  }

  /// Every snapshot that carries the group's ID, whole or not, from every backend.
  public func groupMembers(_ group: String) async throws -> [SnapshotRecord] {
    try await listSnapshots().filter { $0.groupID == group }
  }

  /// Goes to the backend that holds every source; volumes in different backends cannot share one
  /// instant (FAILED_PRECONDITION), a missing one is NOT_FOUND. A group's ID, like a snapshot's,
  /// is unique across backends: a group found whole in any backend is the answer, or ALREADY_EXISTS.
  public func createGroupSnapshot(_ group: GroupSnapshotSpec) async throws -> [SnapshotRecord] {
    for entry in backends {
      let found = try await entry.backend.listSnapshots().filter { $0.groupID == group.id }
      if GroupSnapshots.whole(found) != nil { return try await entry.backend.createGroupSnapshot(group) }
    }
    var owners: [String: [String]] = [:]
    var owner: (any ControllerBackend)?
    for source in group.sourceVolumeIDs {
      guard let entry = try await backends.asyncFirst(where: { try await $0.backend.volume(source) != nil }) else {
        throw SwellError.notFound("source volume \(source) does not exist")
      }
      owners[entry.name, default: []].append(source)
      owner = entry.backend
    }
    guard owners.count == 1, let owner else {
      let parts = owners.sorted { $0.key < $1.key }.map { "\($0.value.joined(separator: ", ")) in \($0.key)" }
      throw SwellError.precondition(
        "a group snapshot's volumes must be in one backend to be held at one instant; these are in several: "
          + parts.joined(separator: "; "))
    }
    return try await owner.createGroupSnapshot(group)
  }

  /// Deletes from the backend that holds it, or from every backend (each sweeps its own half-done work).
  public func deleteSnapshot(_ id: String) async throws {
    for entry in backends where try await entry.backend.snapshot(id) != nil {
      try await entry.backend.deleteSnapshot(id)
      return
    }
    for entry in backends { try await entry.backend.deleteSnapshot(id) }
  }

  public func snapshot(_ id: String) async throws -> SnapshotRecord? {
    for entry in backends {
      if let found = try await entry.backend.snapshot(id) { return found }
    }
    return nil
  }

  public func listSnapshots() async throws -> [SnapshotRecord] {
    var all: [SnapshotRecord] = []
    for entry in backends { all += try await entry.backend.listSnapshots() }
    return all.sorted { $0.id < $1.id }
  }

  /// The size of a new volume's source in the backend `name`: NOT_FOUND when the source does not
  /// exist, INVALID_ARGUMENT when it lives in another backend (a copy cannot cross backends).
  public func sourceBytes(_ source: VolumeSource, backend name: String) async throws -> Int64 {
    let target = try backend(named: name)
    func size(in backend: any ControllerBackend) async throws -> Int64? {
      switch source {
      case .snapshot(let id): try await backend.snapshot(id)?.sizeBytes
      case .volume(let id): try await backend.volume(id)?.capacityBytes
      }
    }
    if let bytes = try await size(in: target) { return bytes }
    for entry in backends where entry.name != name {
      if try await size(in: entry.backend) != nil {
        throw SwellError.invalid("the source \(source.encoded) is in backend \(entry.name); a volume made from it must be too, not \(name)")
      }
    }
    switch source {
    case .snapshot(let id): throw SwellError.notFound("source snapshot \(id) does not exist")
    case .volume(let id): throw SwellError.notFound("source volume \(id) does not exist")
    }
  }
}

/// The node's backends: stage picks one by the volume context's `backend`; the other calls, which
/// carry only the volume ID, go to the first backend that knows the volume (loop: its file; iscsi:
/// its stage record; lvm: its LV), and to the loop backend when none does.
public struct NodeBackends: NodeBackend {
  let loop: any NodeBackend
  let others: [(name: String, backend: any NodeBackend)]

  public init(loop: any NodeBackend, others: [(name: String, backend: any NodeBackend)]) {
    self.loop = loop
    self.others = others
  }

  /// The backend that knows `id`, or nil.
  private func knower(of id: String) async throws -> (any NodeBackend)? {
    if try await loop.exists(id) { return loop }
    for entry in others where try await entry.backend.exists(id) { return entry.backend }
    return nil
  }

  private func owner(of id: String) async throws -> any NodeBackend {
    try await knower(of: id) ?? loop
  }

  public func exists(_ id: String) async throws -> Bool { try await knower(of: id) != nil }

  public func attach(_ id: String, context: AttachContext) async throws -> AttachedDevice {
    let name = context.volumeContext["backend"] ?? LoopBackend.name
    if name == LoopBackend.name { return try await loop.attach(id, context: context) }
    guard let entry = others.first(where: { $0.name == name }) else {
      throw SwellError.precondition("this node plugin has no \(name.debugDescription) backend configured")
    }
    return try await entry.backend.attach(id, context: context)
  }

  public func attachedDevice(_ id: String) async throws -> AttachedDevice? {
    try await owner(of: id).attachedDevice(id)
  }

  public func detach(_ id: String) async throws { try await owner(of: id).detach(id) }

  public func rescan(_ id: String, atLeast: Int64) async throws -> AttachedDevice {
    try await owner(of: id).rescan(id, atLeast: atLeast)
  }

  public func health(_ id: String) async -> VolumeHealth {
    guard let owner = try? await owner(of: id) else { return .abnormal("volume \(id) is unreadable") }
    return await owner.health(id)
  }

  public func checkReady() async throws {
    try await loop.checkReady()
    for entry in others { try await entry.backend.checkReady() }
  }
}

extension Array {
  /// The first element that satisfies an async predicate.
  func asyncFirst(where predicate: (Element) async throws -> Bool) async rethrows -> Element? {
    for element in self where try await predicate(element) { return element }
    return nil
  }
}
