#if canImport(Glibc)
  import Glibc
#endif
import CSwellSys

/// One project's quota on a filesystem: its hard byte limit (0: none) and what it uses.
public struct ProjectUsage: Sendable, Equatable {
  public var limitBytes: Int64
  public var usedBytes: Int64
  public var usedInodes: Int64
  /// The hard inode limit; 0: none.
  public var limitInodes: Int64

  public init(limitBytes: Int64, usedBytes: Int64, usedInodes: Int64, limitInodes: Int64 = 0) {
    self.limitBytes = limitBytes
    self.usedBytes = usedBytes
    self.usedInodes = usedInodes
    self.limitInodes = limitInodes
  }

  /// Nothing charged and nothing limited: an ID no one uses.
  public var isUnused: Bool { limitBytes == 0 && usedBytes == 0 && usedInodes == 0 && limitInodes == 0 }
}

/// Project quotas on the filesystem that holds a directory (xfs or ext4 mounted with `prjquota`):
/// a directory tagged with a project ID and the inherit flag charges everything made under it to
/// that ID, and the ID's hard limit caps it. `statfs` under such a directory reports the limit as
/// the filesystem's size, so `df` and kubelet's volume stats see the volume's size.
public struct ProjectQuotas: Sendable {
  /// The block device of the filesystem (for quotactl), found from the directory's `st_dev`; nil
  /// when there is none (tmpfs, overlay), and `problem` says so.
  public let blockDevice: String?
  public let problem: String?
  public let root: String

  /// Finds the block device of the filesystem holding `root`, through sysfs: the mount table's
  /// source may be a name such as /dev/root that does not exist in this mount namespace.
  public init(root: String) {
    self.root = root
    do {
      blockDevice = try Self.findDevice(root)
      problem = nil
    } catch {
      blockDevice = nil
      problem = "\(error)"
    }
  }

  static func findDevice(_ root: String) throws -> String {
    guard let info = try FileInfo.of(root) else { throw SystemCallError("stat", root, errno: ENOENT) }
    let major = deviceMajor(info.device), minor = deviceMinor(info.device)
    guard let uevent = try? readSmallFile("/sys/dev/block/\(major):\(minor)/uevent"),
      let name = uevent.split(separator: "\n").first(where: { $0.hasPrefix("DEVNAME=") })?.dropFirst(8), !name.isEmpty
    else {
      throw SwellError.precondition("the filesystem holding \(root) (device \(major):\(minor)) is not on a block device, so it has no quotas")
    }
    let path = "/dev/\(name)"
    guard let node = try FileInfo.of(path), node.isBlockDevice, node.rdevMajor == major, node.rdevMinor == minor else {
      throw SwellError.precondition("\(path), the block device holding \(root), is missing from /dev")
    }
    return path
  }

  /// The block device, or FAILED_PRECONDITION saying why there is none.
  public var device: String {
    get throws {
      guard let blockDevice else { throw SwellError.precondition(problem ?? "no block device holds \(root)") }
      return blockDevice
    }
  }

  /// Whether project quotas are accounted and enforced there; nil when this kernel has no quota
  /// support at all.
  public func state() throws -> (accounted: Bool, enforced: Bool)? {
    var state: Int32 = 0
    let device = try device
    let rc = swell_quota_project_state(device, &state)
    if rc == -ENOSYS { return nil }
    guard rc == 0 else { throw SystemCallError("quotactl(Q_XGETQSTAT)", device, errno: -rc) }
    return (state & 1 != 0, state & 2 != 0)
  }

  public func usage(project: UInt32) throws -> ProjectUsage {
    var limit: UInt64 = 0, used: UInt64 = 0, inodes: UInt64 = 0, inodeLimit: UInt64 = 0
    let device = try device
    let rc = swell_quota_get(device, project, &limit, &used, &inodes, &inodeLimit)
    // No quota record yet for this ID: nothing charged, nothing limited.
    if rc == -ENOENT { return ProjectUsage(limitBytes: 0, usedBytes: 0, usedInodes: 0) }
    guard rc == 0 else { throw SystemCallError("quotactl(Q_GETQUOTA, project \(project))", device, errno: -rc) }
    return ProjectUsage(
      limitBytes: Int64(limit), usedBytes: Int64(used), usedInodes: Int64(inodes), limitInodes: Int64(inodeLimit))
  }

  /// Sets the project's hard byte limit (a multiple of 1 KiB) and inode limit; 0 removes either.
  public func setLimit(project: UInt32, bytes: Int64, inodes: Int64 = 0) throws {
    let device = try device
    let rc = swell_quota_set(device, project, UInt64(bytes), UInt64(inodes))
    guard rc == 0 else { throw SystemCallError("quotactl(Q_SETQUOTA, project \(project))", device, errno: -rc) }
  }

  /// Tags a directory with a project ID that its new entries inherit.
  public static func tag(_ directory: String, project: UInt32) throws {
    let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
    guard fd >= 0 else { throw SystemCallError("open", directory) }
    defer { close(fd) }
    let rc = swell_project_set(fd, project)
    guard rc == 0 else { throw SystemCallError("ioctl(FS_IOC_FSSETXATTR)", directory, errno: -rc) }
  }

  /// A directory's project ID and whether its entries inherit it.
  public static func project(of directory: String) throws -> (id: UInt32, inherit: Bool) {
    let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
    guard fd >= 0 else { throw SystemCallError("open", directory) }
    defer { close(fd) }
    var id: UInt32 = 0
    var inherit: Int32 = 0
    let rc = swell_project_get(fd, &id, &inherit)
    guard rc == 0 else { throw SystemCallError("ioctl(FS_IOC_FSGETXATTR)", directory, errno: -rc) }
    return (id, inherit != 0)
  }
}
