import SwellHost

/// Where and how the controller exports iSCSI volumes.
public struct IscsiTargetConfig: Sendable {
  /// Holds the backing files, with the same crash-safe layout as loop volumes.
  public var storageDir: String
  /// The portal nodes log in to (`HOST:PORT`), handed to them in the volume context.
  public var portal: String
  /// Each volume's target is `<iqnPrefix>:<volume id>`.
  public var iqnPrefix: String
  /// tgtd's control port (`tgtd -C N`, `tgtadm -C N`).
  public var controlPort: Int

  public init(storageDir: String, portal: String, iqnPrefix: String = "iqn.2026-11.dev.swell", controlPort: Int = 0) {
    self.storageDir = storageDir
    self.portal = portal
    self.iqnPrefix = iqnPrefix
    self.controlPort = controlPort
  }
}

/// Volumes that are sparse files on the storage host, exported by tgtd as one target each (LUN 1).
///
/// The files and the publication records are the durable state; tgtd's targets and their ACLs are
/// derived from them and rebuilt whenever they are missing or stale (``reconcileExports()``, run by
/// every readiness check), so a restart of tgtd or of the plugin converges. A target admits only
/// the initiators of the nodes its volume is published to (one, by name): none before a publish,
/// none after the unpublish (``IscsiBackend/publish(_:_:)``). Every change to tgtd goes through
/// one gate, because target IDs are chosen by reading what is taken.
public struct IscsiBackend: ControllerBackend {
  public static let name = "iscsi"
  public static let lun = 1

  public let config: IscsiTargetConfig
  let files: LoopBackend
  let tgt: TgtAdmin
  let gate = SerialGate()
  let accounts: ChapAccounts
  let publicationFiles: PublicationFiles

  public var granularity: Int64 { files.granularity }
  public var maximumBytes: Int64 { files.maximumBytes }
  /// Reachable from every node that can log in to the portal: no topology.
  public let isLocal: Bool = false

  public init(config: IscsiTargetConfig, exec: any Executor) throws {
    self.config = config
    self.files = try LoopBackend(dataDir: config.storageDir, exec: exec)
    self.tgt = TgtAdmin(exec: exec, controlPort: config.controlPort)
    self.accounts = try ChapAccounts(storageDir: files.root)
    self.publicationFiles = try PublicationFiles(dir: files.root + "/publications")
  }

  public func iqn(_ id: String) -> String { "\(config.iqnPrefix):\(id)" }

  /// An IQN may hold only lowercase letters, digits, `.`, `-` and `:` (RFC 3722), so only such
  /// volume IDs can become targets; Kubernetes' `pvc-<uid>` names are.
  static func validateForIQN(_ id: String, what: String = "volume name") throws {
    let ok = id.utf8.allSatisfy { c in (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x2E }
    guard ok else {
      throw SwellError.invalid("\(what) \(id.debugDescription) cannot be part of an iSCSI name: use lowercase letters, digits, '-' and '.'")
    }
  }

  public func create(_ spec: VolumeSpec) async throws -> VolumeRecord {
    try Self.validateForIQN(spec.id)
    var sourceInUse = false
    if case .volume(let source) = spec.source {
      sourceInUse = !(try await tgt.targets().first(where: { $0.iqn == iqn(source) })?.sessions ?? []).isEmpty
    }
    let record = try await files.create(spec, sourceInUseElsewhere: sourceInUse)
    try await BlockingIO.run { try storeChap(spec.id, spec.chap) }
    Failpoints.hit("iscsi-create-before-export")
    try await exportOne(record)
    return decorate(record)
  }

  public func delete(_ id: String) async throws {
    let names = try chapNames(id)
    if try await files.volume(id) != nil {
      try await gate.run {
        guard let target = try await tgt.targets().first(where: { $0.iqn == iqn(id) }) else { return }
        guard target.sessions.isEmpty else {
          throw SwellError.precondition(
            "volume \(id) is still logged in from \(target.sessions.joined(separator: ", ")); unstage it first")
        }
        try await tgt.deleteTarget(tid: target.tid)
      }
    }
    try await files.delete(id)
    try await gate.run { try await dropUnusedAccounts(names) }
  }

  public func expand(_ id: String, to bytes: Int64) async throws -> VolumeRecord {
    let record = try await files.expand(id, to: bytes)
    Failpoints.hit("iscsi-expand-before-reexport")
    // tgt caches a LUN's size; re-adding the LUN (sessions stay logged in) makes it report the new one.
    try await exportOne(record)
    return decorate(record)
  }

  public func volume(_ id: String) async throws -> VolumeRecord? {
    try await files.volume(id).map(decorate)
  }

  public func list() async throws -> [VolumeRecord] {
    try await files.list().map(decorate)
  }

  public func health(_ id: String) async -> VolumeHealth {
    let stored = await files.health(id)
    guard stored == .normal else { return stored }
    guard let targets = try? await tgt.targets() else { return .abnormal("tgtd does not answer") }
    guard let target = targets.first(where: { $0.iqn == iqn(id) }), let lun = target.lun(Self.lun) else {
      return .abnormal("target \(iqn(id)) is not exported")
    }
    if lun.backingStore != files.diskPath(id) { return .abnormal("target \(iqn(id)) exports another file") }
    if let names = try? chapNames(id), !target.accounts.contains(names.username) {
      return .abnormal("target \(iqn(id)) does not ask for the CHAP account \(names.username)")
    }
    return .normal
  }

  public func availableBytes() async throws -> Int64 {
    try await files.availableBytes()
  }

  public func availableBytes(parameters: [String: String]) async throws -> Int64 {
    try await files.availableBytes()
  }

  /// The target's file is preallocated or not, as for loop volumes; the LUN does not change.
  public func modify(_ id: String, _ changes: VolumeChanges) async throws {
    try changes.refuseInodeLimit(id, backend: Self.name)
    try await files.modify(id, changes)
  }

  /// The target's files live on the storage host: its own monitoring watches that disk.
  public func pools() async throws -> [PoolUsage] { [] }

  // MARK: Snapshots: copies or reflinks of the target's file, on the storage host

  /// A LUN that an initiator is logged in to cannot be frozen from here, so only an atomic reflink
  /// may capture it; a plain copy is refused while a session is open.
  public func createSnapshot(_ spec: SnapshotSpec) async throws -> SnapshotRecord {
    if let existing = try await files.snapshot(spec.id) {
      guard existing.sourceVolumeID == spec.sourceVolumeID else {
        throw SwellError(
          .alreadyExists, "snapshot \(spec.id) exists of volume \(existing.sourceVolumeID), not \(spec.sourceVolumeID)")
      }
      return decorate(existing)
    }
    let sessions = try await tgt.targets().first(where: { $0.iqn == iqn(spec.sourceVolumeID) })?.sessions ?? []
    return decorate(try await files.createSnapshot(spec, inUseElsewhere: !sessions.isEmpty))
  }

  /// A group may hold LUNs no initiator is logged in to, and at most one volume in all when one is:
  /// the storage host cannot hold an initiator's writes (``LoopBackend/createGroupSnapshot(_:)``).
  public func createGroupSnapshot(_ group: GroupSnapshotSpec) async throws -> [SnapshotRecord] {
    let targets = try await tgt.targets()
    let inUse = Set(group.sourceVolumeIDs.filter { id in targets.contains { $0.iqn == iqn(id) && !$0.sessions.isEmpty } })
    return try await BlockingIO.run { try files.createGroupSnapshot(group, inUseElsewhere: inUse) }.map(decorate)
  }

  public func deleteSnapshot(_ id: String) async throws { try await files.deleteSnapshot(id) }

  public func snapshot(_ id: String) async throws -> SnapshotRecord? { try await files.snapshot(id).map(decorate) }

  public func listSnapshots() async throws -> [SnapshotRecord] { try await files.listSnapshots().map(decorate) }

  private func decorate(_ snapshot: SnapshotRecord) -> SnapshotRecord {
    var s = snapshot
    s.backend = Self.name
    return s
  }

  /// Ready when the storage directory is writable and every volume is exported as it should be.
  public func checkReady() async throws {
    try await files.checkReady()
    try await reconcileExports()
  }

  /// Exports every stored volume that tgtd lacks or reports stale (after tgtd restarted, or a
  /// crash between growing a file and re-adding its LUN). Returns the IDs it (re-)exported.
  @discardableResult
  public func reconcileExports() async throws -> [String] {
    let volumes = try await files.list()
    return try await gate.run {
      var changed: [String] = []
      // A replaced CHAP account is unbound from every target: one more round binds it again.
      for _ in 0..<2 {
        var targets = try await tgt.targets()
        var reset = false
        for record in volumes {
          let result = try await export(record, in: targets)
          reset = reset || result.reset
          guard result.changed else { continue }
          if !changed.contains(record.id) { changed.append(record.id) }
          targets = try await tgt.targets()
        }
        if !reset { break }
      }
      return changed
    }
  }

  /// Exports one volume; when that replaced a CHAP account, every target is looked at again.
  func exportOne(_ record: VolumeRecord) async throws {
    let result = try await gate.run { try await export(record, in: try await tgt.targets()) }
    if result.reset { try await reconcileExports() }
  }

  /// Removes what crashed creates and deletes left behind in the storage directory.
  public func sweepLeftovers() throws -> [String] { try files.sweepLeftovers() }

  // MARK: Helpers

  private func decorate(_ record: VolumeRecord) -> VolumeRecord {
    var r = record
    r.backend = Self.name
    r.isLocal = false
    r.context = ["portal": config.portal, "iqn": iqn(record.id), "lun": String(Self.lun)]
    return r
  }

  /// Makes tgtd export `record` at its current size, admitting the initiators of the nodes it is
  /// published to and no one else; returns whether anything changed. Call inside the gate, with
  /// `targets` read inside it.
  ///
  /// A new target gets its CHAP accounts before its LUN and its ACL: tgtd lets no initiator in
  /// before the ACL, so there is no moment when the volume can be reached without CHAP.
  @discardableResult
  private func export(_ record: VolumeRecord, in targets: [TgtTarget]) async throws -> (changed: Bool, reset: Bool) {
    let name = iqn(record.id)
    let path = files.diskPath(record.id)
    let admitted = try publicationFiles.read(record.id).map { initiatorName(node: $0.nodeID) }
    var changed = false
    let tid: Int
    if let existing = targets.first(where: { $0.iqn == name }) {
      tid = existing.tid
      let chap = try await exportChap(record.id, tid: tid, target: existing)
      changed = chap.changed
      if let lun = existing.lun(Self.lun) {
        if lun.backingStore != path || lun.sizeMB != TgtTarget.megabytes(record.capacityBytes) {
          try await tgt.deleteLUN(tid: tid, lun: Self.lun)
          try await tgt.newLUN(tid: tid, lun: Self.lun, backingStore: path)
          changed = true
        }
      } else {
        try await tgt.newLUN(tid: tid, lun: Self.lun, backingStore: path)
        changed = true
      }
      // Entries no publication asks for go first (an older Swell's `ALL` among them), then the
      // published nodes' names are bound.
      for entry in existing.acl where !admitted.contains(entry) {
        try await tgt.unbind(tid: tid, aclEntry: entry)
        changed = true
      }
      for initiator in admitted where !existing.acl.contains(initiator) {
        try await tgt.bind(tid: tid, initiatorName: initiator)
        changed = true
      }
      return (changed, chap.reset)
    }
    tid = (targets.map(\.tid).max() ?? 0) + 1
    try await tgt.newTarget(tid: tid, iqn: name)
    let chap = try await exportChap(record.id, tid: tid, target: nil)
    try await tgt.newLUN(tid: tid, lun: Self.lun, backingStore: path)
    for initiator in admitted {
      try await tgt.bind(tid: tid, initiatorName: initiator)
    }
    return (true, chap.reset)
  }
}

/// Runs bodies one at a time, in arrival order.
actor SerialGate {
  private var busy = false
  private var waiters: [CheckedContinuation<Void, Never>] = []

  @discardableResult
  func run<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
    if busy {
      await withCheckedContinuation { waiters.append($0) }
    }
    busy = true
    defer {
      if waiters.isEmpty { busy = false } else { waiters.removeFirst().resume() }
    }
    return try await body()
  }
}
