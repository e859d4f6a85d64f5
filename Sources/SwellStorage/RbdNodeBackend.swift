import SwellHost

/// The node side of rbd volumes: the kernel's RBD client (krbd, `rbd device map`), not rbd-nbd.
/// A krbd mapping lives in the kernel, so it survives a restart or an upgrade of the node plugin's
/// pod; an rbd-nbd mapping is served by a process in that pod, and dies with it.
///
/// A map is refused unless the image's owner (``RbdBackend/publish(_:_:)``) is this node, and while
/// any other client watches the image (a mapping on another node holds a watch), so that two nodes
/// never take turns writing one filesystem. Each mapping has a client of its own (`noshare`),
/// recorded with the image, which unpublishing the node fences. The mapping is not
/// `--exclusive`: the node hands the image's exclusive lock over when the controller asks for it,
/// which `rbd resize` and `rbd snap create` of a mapped image need (with `--exclusive` both fail
/// with EROFS, measured in the VM tier). What is mapped where is read from sysfs
/// (`/sys/bus/rbd/devices`), which needs no credentials; only the map itself talks to the cluster.
public struct RbdNodeBackend: NodeBackend {
  let exec: any Executor
  /// The node's own client, when the class gives no node-stage secret.
  let credentials: CephCredentials?
  let keyDir: String
  let sysfs: String
  /// How long a grow may take to reach the mapping (krbd rereads the header when told).
  let resizeWait: Duration = .seconds(30)

  public init(exec: any Executor, credentials: CephCredentials?, keyDir: String, sysfs: String = "/sys/bus/rbd/devices") throws {
    try Rbd.makeKeyDirectory(keyDir)
    self.exec = exec
    self.credentials = credentials
    self.keyDir = keyDir
    self.sysfs = sysfs
  }

  /// The kernel's mapping of volume `id`: its device ID under /sys/bus/rbd/devices.
  func mapping(_ id: String) throws -> String? {
    let image = RbdBackend.imageName(id)
    guard let entries = try? listDirectory(sysfs) else { return nil }
    for entry in entries.sorted() {
      guard let name = try? readSmallFile("\(sysfs)/\(entry)/name").trimmingWhitespace(), name == image,
        (try? readSmallFile("\(sysfs)/\(entry)/current_snap").trimmingWhitespace()) ?? "-" == "-"
      else { continue }
      return entry
    }
    return nil
  }

  func device(_ entry: String) throws -> AttachedDevice {
    let path = "/dev/rbd\(entry)"
    guard let info = try FileInfo.of(path), info.isBlockDevice else {
      throw SwellError(.internal, "rbd device \(entry) is mapped but \(path) is not a block device")
    }
    let sectors = try readSmallFile("/sys/block/rbd\(entry)/size").trimmingWhitespace()
    return AttachedDevice(
      path: path, major: Int(info.rdevMajor), minor: Int(info.rdevMinor), sizeBytes: (Int64(sectors) ?? 0) * 512)
  }

  public func exists(_ id: String) async throws -> Bool { try mapping(id) != nil }

  public func attach(_ id: String, context: AttachContext) async throws -> AttachedDevice {
    let image = RbdBackend.imageName(id)
    guard let pool = context.volumeContext["pool"], let monitors = context.volumeContext["monitors"] else {
      throw SwellError.invalid("the volume context of rbd volume \(id) lacks pool or monitors")
    }
    try Names.validateVolumeID(pool, field: "volume context pool")
    guard context.volumeContext["image"] ?? image == image else {
      throw SwellError.invalid("the volume context names image \(context.volumeContext["image"]!.debugDescription), not \(image)")
    }
    guard !monitors.hasPrefix("-"), monitors.utf8.allSatisfy({ $0.isLetterOrDigit || ":.,[]-_".utf8.contains($0) }) else {
      throw SwellError.invalid("the volume context's monitors \(monitors.debugDescription) are not host:port addresses")
    }
    guard let credentials = try CephCredentials(secrets: context.secrets) ?? credentials else {
      throw SwellError.precondition("no Ceph credentials: give the class a node-stage secret (userID, userKey) or the plugin --rbd-user and --rbd-key-file")
    }
    let rbd = Rbd(exec: exec, monitors: monitors, credentials: credentials, keyDir: keyDir)
    let spec = "\(pool)/\(image)"
    // The image's owner, as ControllerPublishVolume recorded it, must be this node.
    let owner = try await rbd.meta(spec, RbdBackend.publicationKey).map { try Publication.decode($0) }
    guard let owner, owner.nodeID == context.nodeID else {
      throw SwellError.precondition(
        "rbd image \(spec) is published to \(owner.map { "node \($0.nodeID)" } ?? "no node"), not to this node (\(context.nodeID))")
    }
    if let entry = try mapping(id) {
      try await recordClient(rbd, spec, entry: entry, node: context.nodeID)
      return try device(entry)
    }
    // One node at a time: another client's watch means the image is mapped (or opened) elsewhere.
    let watchers = try await rbd.watchers(spec)
    if !watchers.isEmpty {
      throw SwellError.precondition(
        "rbd image \(pool)/\(image) is in use by \(watchers.joined(separator: ", ")); a volume is mapped on one node at a time "
          + "(a dead node's watch lapses after about 30 s)")
    }
    // noudev: the map waits on sysfs, not on udev's events; a node plugin's container has no udevd,
    // and the kernel's devtmpfs makes /dev/rbdN by itself. ms_mode=prefer-crc: the kernel speaks
    // msgr2 to the monitors' v2 addresses (every cluster since Nautilus has them; a cluster with
    // msgr1 turned off has nothing else).
    // noshare: a client instance of its own for this image, so that the controller's fence of this
    // mapping (a blocklist of its address) leaves the node's other volumes alone.
    try await rbd.rbd("device", "map", "--options", "noudev,ms_mode=prefer-crc,noshare", spec)
    guard let entry = try mapping(id) else {
      throw SwellError(.internal, "rbd device map of \(spec) succeeded but no mapping is in \(sysfs)")
    }
    Failpoints.hit("rbd-stage-after-map")
    try await recordClient(rbd, spec, entry: entry, node: context.nodeID)
    return try device(entry)
  }

  /// Records with the image the client this node maps it with (`swell.client`: the node and the
  /// client's address from sysfs), which ControllerUnpublishVolume blocklists.
  func recordClient(_ rbd: Rbd, _ spec: String, entry: String, node: String) async throws {
    let address = try readSmallFile("\(sysfs)/\(entry)/client_addr").trimmingWhitespace()
    guard Rbd.isClientAddress(address) else {
      throw SwellError(.internal, "krbd shows \(address.debugDescription) as the client address of rbd\(entry)")
    }
    let record = RbdBackend.encode([("node", node), ("addr", address)])
    guard try await rbd.meta(spec, RbdBackend.clientKey) != record else { return }
    try await rbd.setMeta(spec, RbdBackend.clientKey, record)
  }

  public func attachedDevice(_ id: String) async throws -> AttachedDevice? {
    try mapping(id).map(device)
  }

  public func detach(_ id: String) async throws {
    guard let entry = try mapping(id) else { return }
    try await exec.run(["rbd", "device", "unmap", "--options", "noudev", "/dev/rbd\(entry)"])
  }

  public func rescan(_ id: String, atLeast: Int64) async throws -> AttachedDevice {
    guard let entry = try mapping(id) else { throw SwellError.notFound("rbd volume \(id) is not mapped on this node") }
    let deadline = ContinuousClock.now + resizeWait
    while true {
      let found = try device(entry)
      if found.sizeBytes >= atLeast { return found }
      if ContinuousClock.now > deadline {
        throw SwellError(.unavailable, "rbd\(entry) still shows \(found.sizeBytes) bytes, not \(atLeast), after \(resizeWait)")
      }
      try await Task.sleep(for: .milliseconds(200))
    }
  }

  public func health(_ id: String) async -> VolumeHealth {
    guard let entry = try? mapping(id) else { return .abnormal("rbd volume \(id) is not mapped on this node") }
    return (try? FileInfo.of("/dev/rbd\(entry)")) != nil ? .normal : .abnormal("/dev/rbd\(entry) is gone")
  }

  /// Nothing to check until an rbd volume is staged: a node without ceph-common serves every other
  /// backend, and a map there is FAILED_PRECONDITION naming the package.
  public func checkReady() async throws {}
}
