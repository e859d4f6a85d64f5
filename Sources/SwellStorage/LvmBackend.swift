import SwellHost

/// A node's volume group and its thin pools, as flags name them.
public struct LvmConfig: Sendable {
  public var volumeGroup: String
  /// The thin pools thin volumes may live in; the first is the default, a class picks another with
  /// `pool`. Empty: only thick volumes.
  public var thinPools: [String]
  /// The most the virtual sizes of a pool's thin volumes may add up to, as a multiple of its size.
  public var overcommitRatio: Double
  /// No volume is made or grown while a pool's data or metadata is at least this full (percent).
  public var fullPercent: Double

  public init(volumeGroup: String, thinPools: [String], overcommitRatio: Double = 1.0, fullPercent: Double = 95) {
    self.volumeGroup = volumeGroup
    self.thinPools = thinPools
    self.overcommitRatio = overcommitRatio
    self.fullPercent = fullPercent
  }
}

/// Local volumes as LVs: thin LVs in a thin pool (the default: instant snapshots and clones,
/// overcommit), or linear LVs (`provisioning: thick`, TopoLVM's default): extents allocated at
/// creation, so a flush goes straight to the disk with no pool metadata to commit. Both grow online.
///
/// A volume's LV is named `sw-<volume id>` and carries tags that make it self-describing
/// (`swell.csi.dev/volume=<id>`, its access kind and filesystem), all written by the one
/// `lvcreate`, so a retry after a crash finds exactly what the first attempt made. LVM's own
/// report is the only state; device paths come from it, never from a guess.
public struct LvmBackend: ControllerBackend, NodeBackend {
  public static let name = "lvm"
  static let volumeTag = "swell.csi.dev/volume"
  static let accessTag = "swell.csi.dev/access"
  static let fsTypeTag = "swell.csi.dev/fstype"
  static let sourceTag = "swell.csi.dev/source"
  static let snapshotTag = "swell.csi.dev/snapshot"
  static let createdTag = "swell.csi.dev/created"
  /// The record format of an LV's tags: LVs made before 2026-12-06 carry none and are format 1.
  static let formatTag = "swell.csi.dev/format"
  static let format = 1
  /// Substrings LVM reserves for its own hidden LVs.
  static let reserved = ["_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare", "_rimage", "_rmeta",
                         "_tdata", "_tmeta", "_vorigin", "_vdata"]

  public let config: LvmConfig
  let lvm: Lvm
  public let granularity: Int64 = Capacity.miB
  public let maximumBytes: Int64 = 64 * Capacity.tiB
  public let isLocal: Bool = true

  public init(config: LvmConfig, exec: any Executor) {
    self.config = config
    self.lvm = Lvm(exec: exec)
  }

  var vg: String { config.volumeGroup }

  /// The LV name for a volume ID, or INVALID_ARGUMENT when LVM could not take it.
  public static func lvName(_ id: String) throws -> String {
    try prefixedName("sw-", id, what: "volume")
  }

  /// `prefix + id`, or INVALID_ARGUMENT when LVM could not take it (too long, or holding a part
  /// LVM reserves for its hidden LVs).
  static func prefixedName(_ prefix: String, _ id: String, what: String) throws -> String {
    let name = prefix + id
    guard name.utf8.count <= 127 else { throw SwellError.invalid("\(what) name \(id.debugDescription) is too long for an LVM volume") }
    if let bad = reserved.first(where: { id.contains($0) }) {
      throw SwellError.invalid("\(what) name \(id.debugDescription) contains \(bad), which LVM reserves")
    }
    return name
  }

  /// The pool a class picked (`pool` parameter), or the default; an unknown one is INVALID_ARGUMENT.
  public func pool(named name: String?) throws -> String {
    guard let name else {
      guard let first = config.thinPools.first else {
        throw SwellError.invalid("no thin pool is configured on this node (--lvm-thin-pool); ask for provisioning=thick")
      }
      return first
    }
    guard config.thinPools.contains(name) else {
      throw SwellError.invalid("thin pool \(name.debugDescription) is not configured; this node has \(config.thinPools.joined(separator: ", "))")
    }
    return name
  }

  // MARK: Controller

  public func create(_ spec: VolumeSpec) async throws -> VolumeRecord {
    if spec.thick { return try await createThick(spec) }
    let name = try Self.lvName(spec.id)
    let lvs = try await lvm.logicalVolumes(vg: vg)
    if let existing = lvs.first(where: { $0.name == name }), let record = try record(existing), record.thick {
      throw SwellError(.alreadyExists, "volume \(spec.id) exists as a thick LV, not thin")
    }
    let origin = try spec.source.map { try sourceLV($0, in: lvs) }
    if let origin, origin.pool.isEmpty {
      throw SwellError.invalid("the source \(spec.source!.encoded) is a thick LV; only thin LVs are cloned")
    }
    // A volume made from a snapshot or a volume is a thin snapshot of it, in its pool.
    let pool = try origin.map { lv -> String in
      if let asked = spec.pool, asked != lv.pool {
        throw SwellError.invalid("the source lives in thin pool \(lv.pool), and a volume made from it must too, not \(asked)")
      }
      return lv.pool
    } ?? self.pool(named: spec.pool)
    if let existing = lvs.first(where: { $0.name == name }) {
      guard var record = try record(existing), record.id == spec.id else {
        throw SwellError(.alreadyExists, "LV \(vg)/\(name) exists and is not volume \(spec.id)")
      }
      if spec.source != nil, record.source == spec.source, record.capacityBytes < spec.capacityBytes {
        // A crash between the snapshot and its growth: finish the growth.
        record = try await expand(spec.id, to: spec.capacityBytes)
      }
      try checkCompatible(record, existing, with: spec, pool: pool)
      return record
    }
    let (_, size, tags) = try await sizeAndTags(spec)
    try checkRoom(in: pool, lvs: lvs, adding: size)
    if let origin, let source = spec.source {
      guard size >= origin.sizeBytes else {
        throw SwellError(.outOfRange, "the source holds \(origin.sizeBytes) bytes, more than the \(size) asked")
      }
      try await lvm.createThinSnapshot(
        vg: vg, origin: origin.name, name: name, tags: tags + ["\(Self.sourceTag)=\(source.encoded)"], active: true)
      Failpoints.hit("lvm-create-after-lvcreate")
      if size > origin.sizeBytes { try await lvm.extend(vg: vg, name: name, to: size) }
    } else {
      try await lvm.createThin(vg: vg, pool: pool, name: name, bytes: size, tags: tags)
      Failpoints.hit("lvm-create-after-lvcreate")
    }
    guard let made = try await logicalVolume(spec.id), let record = try record(made) else {
      throw SwellError(.internal, "lvcreate succeeded but \(vg)/\(name) is not reported")
    }
    return record
  }

  /// A linear LV with all its extents allocated now, empty: a thick volume has no snapshots to
  /// start from (LVM's thick snapshots are copy-on-write areas sized in advance, which a database's
  /// writes can fill and so invalidate).
  private func createThick(_ spec: VolumeSpec) async throws -> VolumeRecord {
    let name = try Self.lvName(spec.id)
    if spec.source != nil {
      throw SwellError.invalid(
        "a thick LVM volume (provisioning=thick) starts empty; restore snapshots and clone volumes with a thin class")
    }
    let lvs = try await lvm.logicalVolumes(vg: vg)
    if let existing = lvs.first(where: { $0.name == name }) {
      guard let record = try record(existing), record.id == spec.id else {
        throw SwellError(.alreadyExists, "LV \(vg)/\(name) exists and is not volume \(spec.id)")
      }
      try checkCompatible(record, existing, with: spec, pool: "")
      return record
    }
    let (group, size, tags) = try await sizeAndTags(spec)
    try checkFree(group, adding: size)
    try await lvm.createLinear(vg: vg, name: name, bytes: size, tags: tags)
    Failpoints.hit("lvm-create-after-lvcreate")
    guard let made = try await logicalVolume(spec.id), let record = try record(made) else {
      throw SwellError(.internal, "lvcreate succeeded but \(vg)/\(name) is not reported")
    }
    return record
  }

  /// A new volume's size in whole extents (OUT_OF_RANGE past `limit_bytes`) and the tags that make
  /// its LV describe it, with the volume group they were read from.
  private func sizeAndTags(_ spec: VolumeSpec) async throws -> (VolumeGroup, Int64, [String]) {
    let group = try await lvm.volumeGroup(vg)
    guard let size = Capacity.roundUp(spec.capacityBytes, to: group.extentBytes),
      spec.limitBytes == 0 || size <= spec.limitBytes
    else {
      throw SwellError(.outOfRange, "\(spec.capacityBytes) bytes rounds up to whole \(group.extentBytes)-byte extents, over limit_bytes \(spec.limitBytes)")
    }
    let tags = ["\(Self.formatTag)=\(Self.format)", "\(Self.volumeTag)=\(spec.id)", "\(Self.accessTag)=\(spec.access.rawValue)"]
      + (spec.fsType.isEmpty ? [] : ["\(Self.fsTypeTag)=\(spec.fsType)"])
    return (group, size, tags)
  }

  /// RESOURCE_EXHAUSTED unless the volume group has `bytes` of free extents.
  private func checkFree(_ group: VolumeGroup, adding bytes: Int64) throws {
    guard bytes <= group.freeBytes else {
      throw SwellError(
        .resourceExhausted, "volume group \(vg) has \(group.freeBytes) bytes of free extents, less than the \(bytes) asked")
    }
  }

  public func delete(_ id: String) async throws {
    guard let lv = try await logicalVolume(id) else { return }
    if lv.tag(Self.volumeTag) != nil { try checkFormat(lv) }
    if lv.isOpen {
      throw SwellError.precondition("volume \(id) (\(lv.path)) is open, still mounted or in use; unstage it first")
    }
    try await lvm.remove(vg: vg, name: lv.name)
  }

  public func expand(_ id: String, to bytes: Int64) async throws -> VolumeRecord {
    let lvs = try await lvm.logicalVolumes(vg: vg)
    guard let lv = lvs.first(where: { $0.name == (try? Self.lvName(id)) }), var record = try record(lv) else {
      throw SwellError.notFound("volume \(id) does not exist")
    }
    if bytes <= lv.sizeBytes { return record }
    let group = try await lvm.volumeGroup(vg)
    guard let size = Capacity.roundUp(bytes, to: group.extentBytes) else {
      throw SwellError(.outOfRange, "\(bytes) bytes is too large")
    }
    if record.thick {
      try checkFree(group, adding: size - lv.sizeBytes)
    } else {
      try checkRoom(in: lv.pool, lvs: lvs, adding: size - lv.sizeBytes)
    }
    try await lvm.extend(vg: vg, name: lv.name, to: size)
    record.capacityBytes = size
    return record
  }

  public func volume(_ id: String) async throws -> VolumeRecord? {
    try await logicalVolume(id).flatMap { try record($0) }
  }

  public func list() async throws -> [VolumeRecord] {
    try await lvm.logicalVolumes(vg: vg).compactMap { try record($0) }.sorted { $0.id < $1.id }
  }

  public func health(_ id: String) async -> VolumeHealth {
    guard let lvs = try? await lvm.logicalVolumes(vg: vg) else { return .abnormal("volume group \(vg) is not readable") }
    guard let lv = lvs.first(where: { $0.name == (try? Self.lvName(id)) }) else {
      return .abnormal("LV for volume \(id) is missing from \(vg)")
    }
    if !lv.pool.isEmpty, let pool = lvs.first(where: { $0.name == lv.pool }), let full = fullness(pool), full >= 100 {
      return .abnormal("thin pool \(vg)/\(pool.name) is full: writes to unprovisioned blocks fail")
    }
    return .normal
  }

  /// Free room for new volumes in the default pool: the overcommit allowance left, or nothing when
  /// the pool is too full to take more. With no thin pool, the volume group's free extents.
  public func availableBytes() async throws -> Int64 {
    guard let first = config.thinPools.first else { return try await lvm.volumeGroup(vg).freeBytes }
    return try await availableBytes(pool: first)
  }

  /// A thick class's room is the volume group's free extents; a thin class's, its pool's allowance.
  public func availableBytes(parameters: [String: String]) async throws -> Int64 {
    if parameters["provisioning"] == "thick" { return try await lvm.volumeGroup(vg).freeBytes }
    return try await availableBytes(pool: try pool(named: parameters["pool"]))
  }

  public func availableBytes(pool: String) async throws -> Int64 {
    let lvs = try await lvm.logicalVolumes(vg: vg)
    guard let thinPool = lvs.first(where: { $0.name == pool && $0.segmentType == "thin-pool" }) else { return 0 }
    if let full = fullness(thinPool), full >= config.fullPercent { return 0 }
    return max(0, allowance(thinPool) - committed(to: pool, in: lvs))
  }

  /// The volume group (thick volumes) and each thin pool, its free part from its data or metadata
  /// use, whichever is higher.
  public func pools() async throws -> [PoolUsage] {
    let group = try await lvm.volumeGroup(vg)
    var out = [PoolUsage(name: vg, sizeBytes: group.sizeBytes, availableBytes: group.freeBytes)]
    for lv in try await lvm.logicalVolumes(vg: vg) where lv.segmentType == "thin-pool" {
      let used = Int64(Double(lv.sizeBytes) * (fullness(lv) ?? 0) / 100)
      out.append(PoolUsage(name: "\(vg)/\(lv.name)", sizeBytes: lv.sizeBytes, availableBytes: max(0, lv.sizeBytes - used)))
    }
    return out
  }

  /// A thin LV cannot become a linear one in place, nor the reverse: INVALID_ARGUMENT, as the spec
  /// asks for a change the volume cannot support.
  public func modify(_ id: String, _ changes: VolumeChanges) async throws {
    guard let record = try await volume(id) else { throw SwellError.notFound("volume \(id) does not exist") }
    try changes.refuseInodeLimit(id, backend: Self.name)
    guard let thick = changes.thick, thick != record.thick else { return }
    throw SwellError.invalid(
      "volume \(id) is a \(record.thick ? "linear (thick)" : "thin") LV, and LVM cannot make it "
        + "\(thick ? "linear" : "thin") in place: restore a snapshot or copy the data into a volume of that class")
  }

  /// Nothing to sweep: one `lvcreate` makes a whole volume or snapshot, or nothing.
  public func sweepLeftovers() throws -> [String] { [] }

  public func checkReady() async throws {
    _ = try await lvm.volumeGroup(vg)
    let lvs = try await lvm.logicalVolumes(vg: vg)
    for pool in config.thinPools where !lvs.contains(where: { $0.name == pool && $0.segmentType == "thin-pool" }) {
      throw SwellError(.unavailable, "thin pool \(vg)/\(pool) does not exist")
    }
  }

  // MARK: Node

  public func exists(_ id: String) async throws -> Bool {
    try await logicalVolume(id) != nil
  }

  /// Activates the LV when it is not active (after a node restart), then returns its device.
  public func attach(_ id: String, context: AttachContext) async throws -> AttachedDevice {
    guard var lv = try await logicalVolume(id) else { throw SwellError.notFound("volume \(id) does not exist") }
    if !lv.active {
      try await lvm.activate(vg: vg, name: lv.name)
      guard let again = try await logicalVolume(id), again.active else {
        throw SwellError(.internal, "\(vg)/\(lv.name) is not active after lvchange -ay")
      }
      lv = again
    }
    return try describe(lv)
  }

  public func attachedDevice(_ id: String) async throws -> AttachedDevice? {
    guard let lv = try await logicalVolume(id), lv.active else { return nil }
    return try describe(lv)
  }

  /// Leaves the LV active: it is local, and deactivating would only slow the next stage.
  public func detach(_ id: String) async throws {}

  /// An LV's device takes its new size at once; nothing to rescan.
  public func rescan(_ id: String, atLeast: Int64) async throws -> AttachedDevice {
    guard let device = try await attachedDevice(id) else {
      throw SwellError.precondition("volume \(id) is not active on this node; stage it first")
    }
    return device
  }

  // MARK: Helpers

  func logicalVolume(_ id: String) async throws -> LogicalVolume? {
    let name = try Self.lvName(id)
    return try await lvm.logicalVolumes(vg: vg).first { $0.name == name }
  }

  /// The volume an LV is, when it is one of ours: tagged, and thin in one of our pools or linear
  /// (thick).
  func record(_ lv: LogicalVolume) throws -> VolumeRecord? {
    let thin = lv.segmentType == "thin" && config.thinPools.contains(lv.pool)
    let thick = ["linear", "striped"].contains(lv.segmentType) && lv.pool.isEmpty
    guard thin || thick, let id = lv.tag(Self.volumeTag), (try? Self.lvName(id)) == lv.name else { return nil }
    try checkFormat(lv)
    guard let access = lv.tag(Self.accessTag).flatMap(AccessKind.init(rawValue:)) else { return nil }
    return VolumeRecord(
      id: id, capacityBytes: lv.sizeBytes, access: access, fsType: lv.tag(Self.fsTypeTag) ?? "", backend: Self.name,
      context: thin ? ["pool": lv.pool] : [:], source: lv.tag(Self.sourceTag).flatMap(VolumeSource.init(encoded:)),
      thick: thick)
  }

  /// An LV's tags in a newer format than this build reads: FAILED_PRECONDITION, changing nothing.
  func checkFormat(_ lv: LogicalVolume) throws {
    try RecordFormat.check(lv.tag(Self.formatTag) ?? "1", current: Self.format, what: "the tags of LV \(lv.vg)/\(lv.name)")
  }

  private func describe(_ lv: LogicalVolume) throws -> AttachedDevice {
    guard !lv.path.isEmpty, let info = try FileInfo.of(lv.path), info.isBlockDevice else {
      throw SwellError(.internal, "LVM reports \(lv.path.debugDescription) for \(lv.vg)/\(lv.name), which is not a block device")
    }
    let major = Int(info.rdevMajor), minor = Int(info.rdevMinor)
    let sectors = (try? readSmallFile("/sys/dev/block/\(major):\(minor)/size")).flatMap { Int64($0.trimmingWhitespace()) }
    return AttachedDevice(path: lv.path, major: major, minor: minor, sizeBytes: sectors.map { $0 * 512 } ?? lv.sizeBytes)
  }

  private func fullness(_ pool: LogicalVolume) -> Double? {
    switch (pool.dataPercent, pool.metadataPercent) {
    case let (d?, m?): return max(d, m)
    case let (d?, nil): return d
    case let (nil, m?): return m
    default: return nil
    }
  }

  private func allowance(_ pool: LogicalVolume) -> Int64 {
    Int64(Double(pool.sizeBytes) * config.overcommitRatio)
  }

  private func committed(to pool: String, in lvs: [LogicalVolume]) -> Int64 {
    lvs.filter { $0.segmentType == "thin" && $0.pool == pool }.reduce(0) { $0 + $1.sizeBytes }
  }

  /// RESOURCE_EXHAUSTED, saying which limit, unless `pool` can take `bytes` more of virtual size.
  func checkRoom(in pool: String, lvs: [LogicalVolume], adding bytes: Int64) throws {
    guard let thinPool = lvs.first(where: { $0.name == pool && $0.segmentType == "thin-pool" }) else {
      throw SwellError(.unavailable, "thin pool \(vg)/\(pool) does not exist")
    }
    if let full = fullness(thinPool), full >= config.fullPercent {
      throw SwellError(
        .resourceExhausted,
        "thin pool \(vg)/\(pool) is \(full)% full (data \(thinPool.dataPercent ?? 0)%, metadata \(thinPool.metadataPercent ?? 0)%), at or over the \(config.fullPercent)% limit")
    }
    let used = committed(to: pool, in: lvs)
    let allowed = allowance(thinPool)
    if used + bytes > allowed {
      throw SwellError(
        .resourceExhausted,
        "thin pool \(vg)/\(pool) cannot take \(bytes) more bytes: its volumes already have \(used) of the \(allowed) bytes allowed (\(thinPool.sizeBytes) bytes × overcommit ratio \(config.overcommitRatio))")
    }
  }

  private func checkCompatible(_ existing: VolumeRecord, _ lv: LogicalVolume, with spec: VolumeSpec, pool: String) throws {
    if existing.access != spec.access {
      throw SwellError(.alreadyExists, "volume \(spec.id) exists with \(existing.access.rawValue) access, not \(spec.access.rawValue)")
    }
    if !existing.fsType.isEmpty, !spec.fsType.isEmpty, existing.fsType != spec.fsType {
      throw SwellError(.alreadyExists, "volume \(spec.id) exists with fs_type \(existing.fsType), not \(spec.fsType)")
    }
    if existing.thick != spec.thick {
      throw SwellError(
        .alreadyExists, "volume \(spec.id) exists as a \(existing.thick ? "thick" : "thin") LV, not \(spec.thick ? "thick" : "thin")")
    }
    if lv.pool != pool {
      throw SwellError(.alreadyExists, "volume \(spec.id) exists in thin pool \(lv.pool), not \(pool)")
    }
    if existing.source != spec.source {
      throw SwellError(
        .alreadyExists,
        "volume \(spec.id) exists with content source \(existing.source?.encoded ?? "none"), not \(spec.source?.encoded ?? "none")")
    }
    if existing.capacityBytes < spec.requiredBytes || (spec.limitBytes > 0 && existing.capacityBytes > spec.limitBytes) {
      throw SwellError(
        .alreadyExists,
        "volume \(spec.id) exists with \(existing.capacityBytes) bytes, outside [\(spec.requiredBytes), \(spec.limitBytes)]")
    }
  }
}
