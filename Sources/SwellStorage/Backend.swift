import SwellHost

/// How a volume is consumed: a filesystem, or the raw block device.
public enum AccessKind: String, Sendable, Equatable {
  case mount
  case block
}

/// What CreateVolume asks a backend for, already validated and rounded.
public struct VolumeSpec: Sendable, Equatable {
  public var id: String
  public var capacityBytes: Int64
  /// The smallest and largest sizes an existing volume of this name may have to count as the same volume.
  public var requiredBytes: Int64
  public var limitBytes: Int64
  public var access: AccessKind
  /// The filesystem asked for at creation; empty when the request named none.
  public var fsType: String
  /// The backend the StorageClass picked (its `backend` parameter).
  public var backend: String
  /// The thin pool the StorageClass picked (`pool`), for backends that have pools.
  public var pool: String?
  /// The snapshot or volume whose bytes the new volume starts with; nil for an empty volume.
  public var source: VolumeSource?
  /// True for a preallocated volume (`provisioning: thick`): every byte is reserved on disk at
  /// creation and at each grow, so that writes inside it never meet a full disk.
  public var thick: Bool
  /// True when the volume's size is not reserved (`overcommit: "true"`, dir volumes): it is neither
  /// checked against free space nor counted against other volumes' room.
  public var overcommit: Bool = false
  /// CHAP credentials for the volume's target (iscsi), from the request's secrets.
  public var chap: ChapCredentials?
  /// The most files and directories a dir volume may hold (`inodeLimit`, its project quota's inode
  /// limit); 0: no limit. Other backends have the inode count their filesystem was made with.
  public var inodeLimit: Int64 = 0

  public init(
    id: String, capacityBytes: Int64, requiredBytes: Int64, limitBytes: Int64, access: AccessKind, fsType: String,
    backend: String = LoopBackend.name, pool: String? = nil, source: VolumeSource? = nil, thick: Bool = false
  ) {
    self.id = id
    self.capacityBytes = capacityBytes
    self.requiredBytes = requiredBytes
    self.limitBytes = limitBytes
    self.access = access
    self.fsType = fsType
    self.backend = backend
    self.pool = pool
    self.source = source
    self.thick = thick
  }
}

/// A volume as its backend stores it.
public struct VolumeRecord: Sendable, Equatable {
  public var id: String
  public var capacityBytes: Int64
  public var access: AccessKind
  public var fsType: String
  public var backend: String
  /// What a node needs to attach it (the `volume_context`), besides the backend's name.
  public var context: [String: String] = [:]
  /// True when only the node that holds it can use it; false for network volumes.
  public var isLocal: Bool = true
  /// The snapshot or volume it was made from, if any.
  public var source: VolumeSource? = nil
  /// True for a preallocated volume (``VolumeSpec/thick``).
  public var thick: Bool = false
}

/// What NodeStageVolume passes to a backend's attach.
public struct AttachContext: Sendable, Equatable {
  public var volumeContext: [String: String]
  public var secrets: [String: String]
  /// What ControllerPublishVolume answered for this node (``PublishContext``).
  public var publishContext: [String: String]
  /// This node's ID, the one the volume must be published to.
  public var nodeID: String

  public init(
    volumeContext: [String: String] = [:], secrets: [String: String] = [:], publishContext: [String: String] = [:],
    nodeID: String = ""
  ) {
    self.volumeContext = volumeContext
    self.secrets = secrets
    self.publishContext = publishContext
    self.nodeID = nodeID
  }
}

/// A backend's verdict on one volume's health.
public enum VolumeHealth: Sendable, Equatable {
  case normal
  case abnormal(String)
}

/// A block device on this node that backs a volume.
public struct AttachedDevice: Sendable, Equatable {
  public var path: String
  public var major: Int
  public var minor: Int
  public var sizeBytes: Int64
  /// For a loop device: whether it does direct I/O to its backing file (false: buffered, through
  /// the page cache). Nil for devices that are not loop devices.
  public var directIO: Bool? = nil
  /// For a directory volume: its place inside the filesystem whose device is `major:minor`, as the
  /// mount table's `root` field shows a bind mount of it. `path` is then the directory itself, which
  /// stage bind-mounts rather than formats. Nil for block devices.
  public var subtree: String? = nil

  public var isDirectory: Bool { subtree != nil }
}

/// The controller side of a backend: makes, grows, lists and removes volumes.
///
/// Every method is idempotent; each doc comment says what a repeat returns.
public protocol ControllerBackend: Sendable {
  /// The granularity sizes are rounded up to.
  var granularity: Int64 { get }
  /// The largest volume this backend makes.
  var maximumBytes: Int64 { get }

  /// Makes the volume, or returns the existing one when it is compatible with `spec`;
  /// an incompatible existing volume is ALREADY_EXISTS.
  func create(_ spec: VolumeSpec) async throws -> VolumeRecord
  /// Removes the volume; a missing volume is success. A volume still attached somewhere is FAILED_PRECONDITION.
  func delete(_ id: String) async throws
  /// Grows the volume to at least `bytes` and returns its real size; never shrinks, so a repeat,
  /// or a smaller request, returns the current size.
  func expand(_ id: String, to bytes: Int64) async throws -> VolumeRecord
  /// Changes what a VolumeAttributesClass may change on a live volume (ControllerModifyVolume).
  /// A missing volume is NOT_FOUND; a change this backend cannot make is INVALID_ARGUMENT and
  /// changes nothing; a repeat, or a value the volume already has, does nothing.
  func modify(_ id: String, _ changes: VolumeChanges) async throws
  /// The volume, or nil when it does not exist.
  func volume(_ id: String) async throws -> VolumeRecord?
  /// Every volume, sorted by ID.
  func list() async throws -> [VolumeRecord]
  /// Whether the volume's storage looks intact.
  func health(_ id: String) async -> VolumeHealth
  /// Bytes free for new volumes.
  func availableBytes() async throws -> Int64
  /// Throws when the backend cannot serve requests now.
  func checkReady() async throws
  /// The storage this backend carves volumes from (a data filesystem, a volume group, a thin pool),
  /// with its size and free bytes now: what the pool-full alert watches. Empty where the storage
  /// is another host's.
  func pools() async throws -> [PoolUsage]

  /// True when a volume is reachable only from the node that holds it, so that CreateVolume
  /// answers this node's topology and honours topology requirements; false for network volumes.
  var isLocal: Bool { get }
  /// Bytes free for a new volume made with these StorageClass parameters (a pool's, for LVM).
  func availableBytes(parameters: [String: String]) async throws -> Int64

  /// Takes a snapshot of a volume, or returns the existing one of that name when its source is
  /// the same; another source is ALREADY_EXISTS, a missing source NOT_FOUND, no room
  /// RESOURCE_EXHAUSTED. Whatever was written to the volume before the call is in the snapshot.
  func createSnapshot(_ spec: SnapshotSpec) async throws -> SnapshotRecord
  /// Takes one snapshot of each source volume, all at one instant (every volume's writes are held
  /// from before the first copy until after the last), or returns the group when it exists whole
  /// with the same sources; other sources are ALREADY_EXISTS, a missing source NOT_FOUND, volumes
  /// that cannot be held together FAILED_PRECONDITION, no room RESOURCE_EXHAUSTED. A failed call
  /// leaves no member behind. The members carry the group's ID (``SnapshotRecord/groupID``).
  func createGroupSnapshot(_ group: GroupSnapshotSpec) async throws -> [SnapshotRecord]
  /// Removes a snapshot; a missing one is success.
  func deleteSnapshot(_ id: String) async throws
  /// The snapshot, or nil when it does not exist.
  func snapshot(_ id: String) async throws -> SnapshotRecord?
  /// Every snapshot, sorted by ID.
  func listSnapshots() async throws -> [SnapshotRecord]
  /// Removes what interrupted calls left behind (thawing what a crashed snapshot left frozen) and
  /// returns what it removed. Called at start, before serving.
  func sweepLeftovers() throws -> [String]
}

/// The node side of a backend: makes the volume a block device on this node.
public protocol NodeBackend: Sendable {
  /// True when the volume's storage exists.
  func exists(_ id: String) async throws -> Bool
  /// Attaches the volume, or returns the device it is already attached to.
  func attach(_ id: String, context: AttachContext) async throws -> AttachedDevice
  /// The device the volume is attached to on this node, if any.
  func attachedDevice(_ id: String) async throws -> AttachedDevice?
  /// Detaches the volume from this node; not attached is success.
  func detach(_ id: String) async throws
  /// Makes the kernel see the volume's current size and returns the device. A backend whose
  /// devices learn their size asynchronously waits, with a deadline, until it reaches `atLeast`.
  func rescan(_ id: String, atLeast: Int64) async throws -> AttachedDevice
  /// Whether the volume's storage looks intact.
  func health(_ id: String) async -> VolumeHealth
  /// Throws when this node cannot attach volumes now.
  func checkReady() async throws
}

/// One pool's size and the bytes still free in it.
public struct PoolUsage: Sendable, Equatable {
  public var name: String
  public var sizeBytes: Int64
  public var availableBytes: Int64

  public init(name: String, sizeBytes: Int64, availableBytes: Int64) {
    self.name = name
    self.sizeBytes = sizeBytes
    self.availableBytes = availableBytes
  }

  /// The filesystem holding `path`, as statvfs sees it.
  public static func fileSystem(_ path: String) async throws -> PoolUsage {
    let usage = try await BlockingIO.run { try FileSystemUsage.of(path) }
    return PoolUsage(name: path, sizeBytes: usage.totalBytes, availableBytes: usage.availableBytes)
  }
}

/// What ControllerModifyVolume asks to change; nil leaves a property as it is (the spec: keys that
/// are absent change nothing).
public struct VolumeChanges: Sendable, Equatable {
  /// `provisioning`: true for thick (every block reserved), false for thin.
  public var thick: Bool?
  /// `inodeLimit`: a dir volume's new inode limit; 0 removes it.
  public var inodeLimit: Int64?

  public init(thick: Bool? = nil, inodeLimit: Int64? = nil) {
    self.thick = thick
    self.inodeLimit = inodeLimit
  }

  /// INVALID_ARGUMENT for an inode limit on a volume with a filesystem of its own.
  public func refuseInodeLimit(_ id: String, backend: String) throws {
    guard inodeLimit != nil else { return }
    throw SwellError.invalid(
      "volume \(id) is a \(backend) volume, whose filesystem has the inodes mkfs gave it; inodeLimit is for dir volumes")
  }
}
