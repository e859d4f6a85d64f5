import SwellHost

/// How a plugin reaches a Ceph cluster's RBD pools.
public struct RbdConfig: Sendable {
  /// The monitors, `host:port[,host:port…]`, as nodes reach them too (they travel in the volume context).
  public var monitors: String
  /// The pools volumes may live in; the first is the default, a class picks another with `pool`.
  public var pools: [String]
  /// The plugin's own client, for the calls that carry no secrets (ListVolumes, GetCapacity,
  /// ControllerGetVolume, health); a call's secrets (`userID`, `userKey`) take precedence.
  public var credentials: CephCredentials?
  /// Where key files live for the length of one command; made 0700.
  public var keyDir: String
  /// A new clone whose chain of parents would be deeper than this is flattened (copied whole)
  /// before CreateVolume returns, so that no image's reads walk more than this many parents.
  public var maxCloneDepth: Int

  public init(monitors: String, pools: [String], credentials: CephCredentials?, keyDir: String, maxCloneDepth: Int = 4) {
    self.monitors = monitors
    self.pools = pools
    self.credentials = credentials
    self.keyDir = keyDir
    self.maxCloneDepth = maxCloneDepth
  }
}

/// Network volumes as Ceph RBD images: replicated by the cluster, thin, grown with `rbd resize`,
/// snapshotted and cloned copy-on-write.
///
/// A volume is the image `swell-vol-<id>`; a snapshot is the image `swell-snap-<id>`, a clone of an
/// RBD snapshot of its source (so it outlives the source, and lookups by ID are one `rbd info`).
/// Each image's record is one image-meta key written after every other step, so an image without
/// it is the leftover of an interrupted call: the retry removes it (it never reached anyone) and
/// starts again. Clones come from an RBD snapshot of the parent named after the child.
public struct RbdBackend: ControllerBackend {
  public static let name = "rbd"
  static let volumePrefix = "swell-vol-"
  static let snapshotPrefix = "swell-snap-"
  static let recordKey = "swell.record"
  /// What krbd on Debian 12's kernel maps: layering (clones), exclusive-lock (one client writes at a time),
  /// deep-flatten (snapshots of a clone survive its flatten).
  static let features = "layering,exclusive-lock,deep-flatten"

  public let config: RbdConfig
  let exec: any Executor
  public let granularity: Int64 = Capacity.miB
  public let maximumBytes: Int64 = 64 * Capacity.tiB
  public let isLocal = false

  public init(config: RbdConfig, exec: any Executor) throws {
    precondition(!config.pools.isEmpty, "an rbd backend needs a pool")
    try Rbd.makeKeyDirectory(config.keyDir)
    self.config = config
    self.exec = exec
  }

  public static func imageName(_ id: String) -> String { volumePrefix + id }
  public static func snapshotImageName(_ id: String) -> String { snapshotPrefix + id }

  /// A client with the call's credentials, or the plugin's own; FAILED_PRECONDITION without either.
  func client() throws -> Rbd {
    guard let credentials = try CephCredentials(secrets: CallSecrets.current) ?? config.credentials else {
      throw SwellError.precondition(
        "no Ceph credentials: give the class a provisioner secret (userID, userKey) or the plugin --rbd-user and --rbd-key-file")
    }
    return Rbd(exec: exec, monitors: config.monitors, credentials: credentials, keyDir: config.keyDir)
  }

  /// The pool a class picked, or the default; one this plugin was not given is INVALID_ARGUMENT.
  func pool(named name: String?) throws -> String {
    guard let name else { return config.pools[0] }
    guard config.pools.contains(name) else {
      throw SwellError.invalid("pool \(name.debugDescription) is not one of this plugin's rbd pools: \(config.pools.joined(separator: ", "))")
    }
    return name
  }

  // MARK: Records

  /// The format of the records kept with images (`swell.record`, `swell.client`). Records written
  /// before 2026-12-06 carry no version field and are format 1.
  static let recordVersion = 1

  /// `version=1;key=value;…`: IDs, access kinds, filesystems and sources hold neither `;` nor `=`.
  static func encode(_ fields: [(String, String)]) -> String {
    ([("version", "\(recordVersion)")] + fields).filter { !$0.1.isEmpty }.map { "\($0.0)=\($0.1)" }
      .joined(separator: ";")
  }

  /// A record's fields, its format checked first: one written by a newer Swell is
  /// FAILED_PRECONDITION naming `what`, before anything reads (or, taking it for the leftover of an
  /// interrupted call, removes) the image.
  static func fields(_ text: String, what: String) throws -> [String: String] {
    let fields = decode(text)
    try RecordFormat.check(fields: fields, current: recordVersion, what: what)
    return fields
  }

  static func decode(_ text: String) -> [String: String] {
    var out: [String: String] = [:]
    for part in text.split(separator: ";") {
      let kv = part.split(separator: "=", maxSplits: 1)
      if kv.count == 2 { out[String(kv[0])] = String(kv[1]) }
    }
    return out
  }

  /// The image of volume `id` and its pool, finished or not.
  func locate(_ rbd: Rbd, image name: String) async throws -> (pool: String, image: RbdImage)? {
    for pool in config.pools {
      if let image = try await rbd.info("\(pool)/\(name)") { return (pool, image) }
    }
    return nil
  }

  func record(_ rbd: Rbd, pool: String, image: RbdImage) async throws -> VolumeRecord? {
    guard let text = try await rbd.meta("\(pool)/\(image.name)", Self.recordKey) else { return nil }
    let fields = try Self.fields(text, what: "the record of rbd image \(pool)/\(image.name)")
    guard let id = fields["volume"], Self.imageName(id) == image.name,
      let access = fields["access"].flatMap(AccessKind.init(rawValue:))
    else { return nil }
    return VolumeRecord(
      id: id, capacityBytes: image.size, access: access, fsType: fields["fstype"] ?? "", backend: Self.name,
      context: ["pool": pool, "image": image.name, "monitors": config.monitors], isLocal: false,
      source: fields["source"].flatMap(VolumeSource.init(encoded:)))
  }

  // MARK: Controller

  public func create(_ spec: VolumeSpec) async throws -> VolumeRecord {
    if spec.thick {
      throw SwellError.invalid("rbd images are thin: the cluster allocates objects as they are written; ask for provisioning=thin")
    }
    if spec.inodeLimit != 0 { try VolumeChanges(inodeLimit: spec.inodeLimit).refuseInodeLimit(spec.id, backend: Self.name) }
    let rbd = try client()
    let pool = try pool(named: spec.pool)
    let name = Self.imageName(spec.id)
    let image = "\(pool)/\(name)"
    if let found = try await locate(rbd, image: name) {
      guard found.pool == pool else {
        throw SwellError(.alreadyExists, "volume \(spec.id) exists in rbd pool \(found.pool), not \(pool)")
      }
      if let record = try await record(rbd, pool: pool, image: found.image) {
        try checkCompatible(record, with: spec)
        return record
      }
      // The leftover of a create that did not finish: nobody has seen it, so it starts again.
      try await removeImage(rbd, pool: pool, image: found.image)
    }
    guard let size = Capacity.roundUp(spec.capacityBytes, to: granularity), spec.limitBytes == 0 || size <= spec.limitBytes else {
      throw SwellError(.outOfRange, "\(spec.capacityBytes) bytes rounds up over limit_bytes \(spec.limitBytes)")
    }
    if let source = spec.source {
      let parent = try await sourceImage(rbd, source)
      try await clone(rbd, parent: parent, child: image, childName: name, size: size)
    } else {
      try await rbd.rbd("create", "--no-progress", "--size", "\(size)B", "--image-feature", Self.features, image)
      Failpoints.hit("rbd-create-after-create")
    }
    let fields = [("volume", spec.id), ("access", spec.access.rawValue), ("fstype", spec.fsType), ("source", spec.source?.encoded ?? "")]
    try await rbd.setMeta(image, Self.recordKey, Self.encode(fields))
    guard let made = try await rbd.info(image), let record = try await record(rbd, pool: pool, image: made) else {
      throw SwellError(.internal, "rbd image \(image) was made but cannot be read back")
    }
    return record
  }

  /// The RBD image a source's bytes are cloned from: the snapshot's image, or the volume's.
  func sourceImage(_ rbd: Rbd, _ source: VolumeSource) async throws -> (pool: String, image: RbdImage) {
    switch source {
    case .snapshot(let id):
      guard let found = try await locate(rbd, image: Self.snapshotImageName(id)),
        try await snapshotRecord(rbd, pool: found.pool, image: found.image) != nil
      else { throw SwellError.notFound("source snapshot \(id) does not exist") }
      return found
    case .volume(let id):
      guard let found = try await locate(rbd, image: Self.imageName(id)),
        try await record(rbd, pool: found.pool, image: found.image) != nil
      else { throw SwellError.notFound("source volume \(id) does not exist") }
      return found
    }
  }

  /// Clones `parent` into `child` through an RBD snapshot of the parent named after the child
  /// (each step is skipped when a crashed attempt did it), flattens the child when its chain of
  /// parents would be deeper than ``RbdConfig/maxCloneDepth``, and grows it to `size`.
  func clone(_ rbd: Rbd, parent: (pool: String, image: RbdImage), child: String, childName: String, size: Int64) async throws {
    let parentSpec = "\(parent.pool)/\(parent.image.name)"
    let snap = "\(parentSpec)@\(childName)"
    guard parent.image.size <= size else {
      throw SwellError(.outOfRange, "the source holds \(parent.image.size) bytes, more than the \(size) asked")
    }
    // A snapshot of that name with no clone is from an earlier attempt, or from an earlier child of
    // that name whose delete was interrupted: its bytes are from then, so it is taken again now.
    if try await rbd.snapshots(parentSpec).contains(where: { $0.name == childName }) {
      try await releaseParentSnapshot(rbd, snap: snap)
    }
    try await rbd.rbd("snap", "create", "--no-progress", snap)
    Failpoints.hit("rbd-clone-after-snap")
    try await rbd.rbd("snap", "protect", snap)
    try await rbd.rbd("clone", "--image-feature", Self.features, snap, child)
    Failpoints.hit("rbd-clone-after-clone")
    if try await depth(rbd, child) > config.maxCloneDepth {
      try await rbd.rbd("flatten", "--no-progress", child)
      try await releaseParentSnapshot(rbd, snap: snap)
    }
    if size > parent.image.size { try await rbd.rbd("resize", "--no-progress", "--size", "\(size)B", child) }
  }

  /// How many parents the image's reads may walk.
  func depth(_ rbd: Rbd, _ spec: String) async throws -> Int {
    var depth = 0
    var current = try await rbd.info(spec)
    while let parent = current?.parent {
      depth += 1
      current = try await rbd.info("\(parent.pool)/\(parent.image)")
    }
    return depth
  }

  func checkCompatible(_ record: VolumeRecord, with spec: VolumeSpec) throws {
    if record.source != spec.source {
      throw SwellError(
        .alreadyExists, "volume \(spec.id) exists with content source \(record.source?.encoded ?? "none"), not \(spec.source?.encoded ?? "none")")
    }
    if record.access != spec.access {
      throw SwellError(.alreadyExists, "volume \(spec.id) exists for \(record.access.rawValue) access, not \(spec.access.rawValue)")
    }
    if record.capacityBytes < spec.requiredBytes || (spec.limitBytes > 0 && record.capacityBytes > spec.limitBytes) {
      throw SwellError(.alreadyExists, "volume \(spec.id) exists with \(record.capacityBytes) bytes, outside the capacity_range asked")
    }
    if !spec.fsType.isEmpty, !record.fsType.isEmpty, record.fsType != spec.fsType {
      throw SwellError(.alreadyExists, "volume \(spec.id) exists for \(record.fsType), not \(spec.fsType)")
    }
  }

  public func delete(_ id: String) async throws {
    let rbd = try client()
    guard let found = try await locate(rbd, image: Self.imageName(id)) else { return }
    try await removeImage(rbd, pool: found.pool, image: found.image)
  }

  /// Removes an image: refused while a node maps it; the images cloned from its snapshots are
  /// flattened first (they keep their bytes), then its snapshots go, then it, then the snapshot of
  /// its parent that it was cloned from. Each step is one a retry skips when it was done.
  func removeImage(_ rbd: Rbd, pool: String, image: RbdImage) async throws {
    let spec = "\(pool)/\(image.name)"
    let watchers = try await rbd.watchers(spec)
    if !watchers.isEmpty {
      throw SwellError.precondition("rbd image \(spec) is mapped by \(watchers.joined(separator: ", ")); unstage it first")
    }
    for snap in try await rbd.snapshots(spec) {
      for child in try await rbd.children("\(spec)@\(snap.name)") {
        try await rbd.rbd("flatten", "--no-progress", child)
        Failpoints.hit("rbd-delete-after-flatten")
      }
      if snap.isProtected { try await rbd.rbd("snap", "unprotect", "\(spec)@\(snap.name)") }
      try await rbd.rbd("snap", "rm", "--no-progress", "\(spec)@\(snap.name)")
    }
    do {
      try await rbd.rbd("rm", "--no-progress", spec)
    } catch let error as SwellError where error.kind == .notFound {}
    Failpoints.hit("rbd-delete-after-rm")
    if let parent = image.parent, parent.snapshot == image.name {
      try await releaseParentSnapshot(rbd, snap: "\(parent.pool)/\(parent.image)@\(parent.snapshot)")
    }
  }

  /// Removes the parent's snapshot a clone was made from, once no image is cloned from it.
  func releaseParentSnapshot(_ rbd: Rbd, snap: String) async throws {
    do {
      guard try await rbd.children(snap).isEmpty else { return }
      let parts = snap.split(separator: "@", maxSplits: 1).map(String.init)
      if try await rbd.snapshots(parts[0]).first(where: { $0.name == parts[1] })?.isProtected == true {
        try await rbd.rbd("snap", "unprotect", snap)
      }
      try await rbd.rbd("snap", "rm", "--no-progress", snap)
    } catch let error as SwellError where error.kind == .notFound {}
  }

  public func expand(_ id: String, to bytes: Int64) async throws -> VolumeRecord {
    let rbd = try client()
    guard let found = try await locate(rbd, image: Self.imageName(id)),
      var record = try await record(rbd, pool: found.pool, image: found.image)
    else { throw SwellError.notFound("volume \(id) does not exist") }
    guard bytes > found.image.size else { return record }
    guard let size = Capacity.roundUp(bytes, to: granularity) else { throw SwellError(.outOfRange, "\(bytes) bytes is too large") }
    // Never --allow-shrink: a size below the image's is refused by rbd itself.
    try await rbd.rbd("resize", "--no-progress", "--size", "\(size)B", "\(found.pool)/\(found.image.name)")
    Failpoints.hit("rbd-expand-after-resize")
    record.capacityBytes = size
    return record
  }

  public func modify(_ id: String, _ changes: VolumeChanges) async throws {
    guard try await volume(id) != nil else { throw SwellError.notFound("volume \(id) does not exist") }
    try changes.refuseInodeLimit(id, backend: Self.name)
    if changes.thick == true {
      throw SwellError.invalid("volume \(id) is an rbd image, which is thin: the cluster allocates objects as they are written")
    }
  }

  public func volume(_ id: String) async throws -> VolumeRecord? {
    let rbd = try client()
    guard let found = try await locate(rbd, image: Self.imageName(id)) else { return nil }
    return try await record(rbd, pool: found.pool, image: found.image)
  }

  /// Every image in the plugin's pools whose name starts with `prefix`, with its pool.
  func images(_ rbd: Rbd, prefix: String) async throws -> [(pool: String, image: RbdImage)] {
    var found: [(pool: String, image: RbdImage)] = []
    for pool in config.pools {
      for name in try await rbd.images(pool: pool) where name.hasPrefix(prefix) {
        if let image = try await rbd.info("\(pool)/\(name)") { found.append((pool, image)) }
      }
    }
    return found
  }

  public func list() async throws -> [VolumeRecord] {
    let rbd = try client()
    var all: [VolumeRecord] = []
    for (pool, image) in try await images(rbd, prefix: Self.volumePrefix) {
      if let record = try await record(rbd, pool: pool, image: image) { all.append(record) }
    }
    return all.sorted { $0.id < $1.id }
  }

  /// Abnormal when the image is gone or the cluster reports HEALTH_ERR (data unavailable or
  /// lost somewhere); a warning (an OSD down, PGs degraded but served) is still normal.
  public func health(_ id: String) async -> VolumeHealth {
    do {
      let rbd = try client()
      guard try await locate(rbd, image: Self.imageName(id)) != nil else { return .abnormal("rbd image of volume \(id) is gone") }
      let health = try await rbd.health()
      if health.status == "HEALTH_ERR" {
        return .abnormal("the Ceph cluster is HEALTH_ERR: \(health.checks.joined(separator: "; "))")
      }
      return .normal
    } catch {
      return .abnormal("the Ceph cluster cannot be asked: \(error)")
    }
  }

  public func availableBytes() async throws -> Int64 {
    try await client().poolUsage(config.pools[0]).available
  }

  public func availableBytes(parameters: [String: String]) async throws -> Int64 {
    try await client().poolUsage(try pool(named: parameters["pool"])).available
  }

  public func pools() async throws -> [PoolUsage] {
    let rbd = try client()
    var all: [PoolUsage] = []
    for pool in config.pools {
      let usage = try await rbd.poolUsage(pool)
      all.append(PoolUsage(name: "rbd:\(pool)", sizeBytes: usage.stored + usage.available, availableBytes: usage.available))
    }
    return all
  }

  public func checkReady() async throws {
    try Tools.require(["rbd", "ceph"])
  }

  /// Interrupted calls are finished or undone by their retry (an image without its record);
  /// nothing is swept at start, when the cluster may not be reachable yet.
  public func sweepLeftovers() throws -> [String] { [] }
}
