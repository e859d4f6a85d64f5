import CSIProto
import SwellHost
import SwellStorage

/// What a set of volume capabilities asks for, once validated.
struct RequestedAccess: Equatable {
  var kind: AccessKind
  /// The filesystem named by the capabilities, or empty.
  var fsType: String
  var mountFlags: [String]
}

/// Checks of request fields shared by the services. Each throws INVALID_ARGUMENT with a message
/// that names the field and says what is wrong.
enum Validation {
  static let supportedFileSystems: Set<String> = Set(FileSystemType.allCases.map(\.rawValue))
  static let singleNodeModes: Set<Csi_V1_VolumeCapability.AccessMode.Mode> = [
    .singleNodeWriter, .singleNodeReaderOnly, .singleNodeSingleWriter, .singleNodeMultiWriter,
  ]

  /// Validates a non-empty list of capabilities that must agree on access kind and filesystem.
  static func access(_ caps: [Csi_V1_VolumeCapability], field: String = "volume_capabilities") throws -> RequestedAccess {
    guard !caps.isEmpty else { throw SwellError.invalid("\(field) is missing") }
    var result: RequestedAccess?
    for cap in caps {
      let one = try access(cap, field: field)
      guard let previous = result else {
        result = one
        continue
      }
      if previous.kind != one.kind {
        throw SwellError.invalid("\(field) mixes block and mount access")
      }
      if !previous.fsType.isEmpty, !one.fsType.isEmpty, previous.fsType != one.fsType {
        throw SwellError.invalid("\(field) names two filesystems, \(previous.fsType) and \(one.fsType)")
      }
      if previous.fsType.isEmpty { result?.fsType = one.fsType }
    }
    return result!
  }

  /// The spec's name of a single-node access mode, as publication records keep it.
  static func modeName(_ mode: Csi_V1_VolumeCapability.AccessMode.Mode) -> String {
    switch mode {
    case .singleNodeWriter: "SINGLE_NODE_WRITER"
    case .singleNodeReaderOnly: "SINGLE_NODE_READER_ONLY"
    case .singleNodeSingleWriter: "SINGLE_NODE_SINGLE_WRITER"
    case .singleNodeMultiWriter: "SINGLE_NODE_MULTI_WRITER"
    default: "\(mode)"
    }
  }

  /// Validates one capability: an access type, a single-node access mode, and a supported filesystem.
  static func access(_ cap: Csi_V1_VolumeCapability, field: String = "volume_capability") throws -> RequestedAccess {
    guard cap.hasAccessMode else { throw SwellError.invalid("\(field) has no access_mode") }
    let mode = cap.accessMode.mode
    guard mode != .unknown else { throw SwellError.invalid("\(field) has an UNKNOWN access mode") }
    guard singleNodeModes.contains(mode) else {
      throw SwellError.invalid(
        "\(field): access mode \(mode) is not supported; Swell's local volumes attach to a single node")
    }
    switch cap.accessType {
    case .block:
      return RequestedAccess(kind: .block, fsType: "", mountFlags: [])
    case .mount(let mount):
      if !mount.fsType.isEmpty, !supportedFileSystems.contains(mount.fsType) {
        throw SwellError.invalid(
          "\(field): fs_type \(mount.fsType.debugDescription) is not supported (use ext4 or xfs)")
      }
      try Names.validateMountFlags(mount.mountFlags)
      return RequestedAccess(kind: .mount, fsType: mount.fsType, mountFlags: mount.mountFlags)
    case nil:
      throw SwellError.invalid("\(field) has neither block nor mount access type")
    }
  }

  /// The StorageClass parameters this driver knows: `backend` (one this controller has), `pool`
  /// (a thin pool, with the lvm backend), `mkfsOptions`, `provisioning` (thin or thick). Keys under `csi.storage.k8s.io/` are the
  /// provisioner's own and are accepted and ignored.
  static func parameters(_ parameters: [String: String], backends: [String]) throws {
    let known = ["backend", "pool", "mkfsOptions", "provisioning", "overcommit", "inodeLimit"]
    for key in parameters.keys.sorted() where !key.hasPrefix("csi.storage.k8s.io/") {
      guard known.contains(key) else {
        throw SwellError.invalid("unknown parameter \(key.debugDescription); known: \(known.joined(separator: ", "))")
      }
    }
    let backend = parameters["backend"] ?? "loop"
    guard backends.contains(backend) else {
      throw SwellError.invalid(
        "parameter backend=\(backend.debugDescription) is not one of \(backends.sorted().joined(separator: ", "))")
    }
    if parameters["inodeLimit"] != nil {
      guard backend == "dir" else {
        throw SwellError.invalid("parameter inodeLimit is only for backend dir (other volumes have the inodes mkfs gives them)")
      }
      _ = try inodeLimit(parameters)
    }
    if let pool = parameters["pool"] {
      guard backend == "lvm" || backend == "rbd" else { throw SwellError.invalid("parameter pool is only for backends lvm and rbd") }
      try Names.validateVolumeID(pool, field: "parameter pool")
    }
    if let options = parameters["mkfsOptions"] { _ = try mkfsOptions(options) }
    if try overcommit(parameters), backend != "dir" {
      throw SwellError.invalid("parameter overcommit is only for backend dir (thin LVs and sparse files are overcommitted already)")
    }
    if try thick(parameters), backend == "lvm", parameters["pool"] != nil {
      throw SwellError.invalid("parameter pool names a thin pool; a thick LVM volume (provisioning=thick) takes its extents from the volume group")
    }
  }

  /// The parameters a VolumeAttributesClass may set, at CreateVolume (`mutable_parameters`) and
  /// later through ControllerModifyVolume: those a backend can change on a live volume.
  static let mutableKeys = ["provisioning", "inodeLimit"]

  /// The changes `mutable_parameters` ask for; an unknown key or a bad value is INVALID_ARGUMENT.
  static func mutableParameters(_ parameters: [String: String]) throws -> VolumeChanges {
    for key in parameters.keys.sorted() where !mutableKeys.contains(key) {
      throw SwellError.invalid(
        "mutable parameter \(key.debugDescription) is not one a volume can change; mutable: \(mutableKeys.joined(separator: ", "))")
    }
    return VolumeChanges(
      thick: parameters["provisioning"] == nil ? nil : try thick(parameters), inodeLimit: try inodeLimit(parameters))
  }

  /// `inodeLimit`: the most files and directories a dir volume may hold, a whole number up to 2^40;
  /// `0` for no limit. Nil when absent.
  static func inodeLimit(_ parameters: [String: String]) throws -> Int64? {
    guard let text = parameters["inodeLimit"] else { return nil }
    guard let value = Int64(text), value >= 0, value <= 1 << 40 else {
      throw SwellError.invalid("parameter inodeLimit=\(text.debugDescription) is not a whole number of inodes (0 for no limit)")
    }
    return value
  }

  /// `provisioning`: `thin` (the default: sparse files, thin LVs) or `thick` (files preallocated with
  /// fallocate; linear LVs with their extents allocated at creation).
  static func thick(_ parameters: [String: String]) throws -> Bool {
    switch parameters["provisioning"] {
    case nil, "thin": return false
    case "thick": return true
    case let other?: throw SwellError.invalid("parameter provisioning=\(other.debugDescription) is neither thin nor thick")
    }
  }

  /// `overcommit`: `"false"` (the default: a dir volume's limit is reserved out of the free space)
  /// or `"true"` (limits may add up to more than the filesystem holds).
  static func overcommit(_ parameters: [String: String]) throws -> Bool {
    switch parameters["overcommit"] {
    case nil, "false": return false
    case "true": return true
    case let other?: throw SwellError.invalid("parameter overcommit=\(other.debugDescription) is neither true nor false")
    }
  }

  /// mkfs flags a class may pass: tuning only (block and inode sizes, features, reserved space,
  /// stripe geometry), for ext4 and xfs.
  static let mkfsFlags: Set<String> = ["-b", "-E", "-O", "-i", "-I", "-N", "-m", "-T", "-d", "-l", "-n", "-s", "-j"]
  /// Sub-option keys that would point mkfs at another file or device (xfs `-d name=`, `-l logdev=`…).
  static let mkfsForbiddenKeys: Set<String> = ["name", "file", "logdev", "rtdev", "device", "journal_dev"]

  /// Splits `mkfsOptions` (from a class, or a volume context) into mkfs arguments: tuning flags
  /// from ``mkfsFlags``, each followed by plain values (letters, digits, `_=,.:-`) that name no
  /// file or device; at most 16 words.
  static func mkfsOptions(_ text: String) throws -> [String] {
    let words = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
    guard words.count <= 16 else { throw SwellError.invalid("mkfsOptions has more than 16 words") }
    for word in words {
      if word.hasPrefix("-") {
        guard mkfsFlags.contains(word) else {
          throw SwellError.invalid("mkfsOptions flag \(word.debugDescription) is not one of \(mkfsFlags.sorted().joined(separator: " "))")
        }
        continue
      }
      let plain = word.utf8.count <= 64 && word.utf8.allSatisfy { c in
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || c == 0x3D
          || c == 0x2C || c == 0x2E || c == 0x3A || c == 0x2D
      }
      let keys = word.split(separator: ",").map { String($0.split(separator: "=", maxSplits: 1).first ?? "") }
      guard plain, !keys.contains(where: mkfsForbiddenKeys.contains) else {
        throw SwellError.invalid("mkfsOptions value \(word.debugDescription) is not a plain tuning value")
      }
    }
    return words
  }

  /// The snapshot or volume a CreateVolume names as its content; INVALID_ARGUMENT for an empty
  /// source or a malformed ID.
  static func contentSource(_ source: Csi_V1_VolumeContentSource) throws -> VolumeSource {
    switch source.type {
    case .snapshot(let snapshot)?:
      try Names.validateVolumeID(snapshot.snapshotID, field: "volume_content_source.snapshot.snapshot_id")
      return .snapshot(snapshot.snapshotID)
    case .volume(let volume)?:
      try Names.validateVolumeID(volume.volumeID, field: "volume_content_source.volume.volume_id")
      return .volume(volume.volumeID)
    case nil:
      throw SwellError.invalid("volume_content_source names neither a snapshot nor a volume")
    }
  }

  /// The VolumeSnapshotClass parameters this driver knows: none of its own yet; the snapshotter's
  /// `csi.storage.k8s.io/*` keys are accepted and ignored.
  static func snapshotParameters(_ parameters: [String: String]) throws {
    for key in parameters.keys.sorted() where !key.hasPrefix("csi.storage.k8s.io/") {
      throw SwellError.invalid("unknown snapshot parameter \(key.debugDescription); Swell's snapshot classes take none")
    }
  }

  /// True when `topology` may be satisfied by this node: it names this node under our key, or
  /// does not constrain our key at all.
  static func topology(_ topology: Csi_V1_Topology, fits config: DriverConfig) -> Bool {
    guard let node = topology.segments[config.topologyKey] else { return topology.segments.isEmpty }
    return node == config.nodeID
  }

  /// Throws RESOURCE_EXHAUSTED when a CreateVolume's requisite topology excludes this node.
  static func accessibility(_ req: Csi_V1_TopologyRequirement, config: DriverConfig) throws {
    guard !req.requisite.isEmpty else { return }
    guard req.requisite.contains(where: { topology($0, fits: config) }) else {
      throw SwellError(
        .resourceExhausted,
        "the requisite topology excludes node \(config.nodeID.debugDescription) (key \(config.topologyKey))")
    }
  }
}
