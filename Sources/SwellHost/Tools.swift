#if canImport(Glibc)
  import Glibc
#endif

/// The host tools Swell runs, the Debian packages that ship them, and a PATH lookup.
///
/// A tool that is not installed is the spec's "missing required dependency": FAILED_PRECONDITION,
/// with a message that names the tool and its package, never INTERNAL.
public enum Tools {
  /// Tool → the Debian package that provides it.
  public static let packages: [String: String] = [
    "blkid": "util-linux", "blockdev": "util-linux", "findmnt": "util-linux", "fsfreeze": "util-linux",
    "losetup": "mount", "mount": "mount", "umount": "mount",
    "mkfs.ext4": "e2fsprogs", "resize2fs": "e2fsprogs", "e2fsck": "e2fsprogs",
    "mkfs.xfs": "xfsprogs", "xfs_growfs": "xfsprogs",
    "iscsiadm": "open-iscsi", "tgtadm": "tgt", "lvm": "lvm2",
    "rbd": "ceph-common", "ceph": "ceph-common",
  ]

  /// What every node needs for loop volumes: attach, probe, format, mount and grow ext4 and xfs.
  public static let node = ["losetup", "blkid", "mount", "umount", "mkfs.ext4", "resize2fs", "mkfs.xfs", "xfs_growfs"]

  /// The full path of `name` on `PATH` (or `/usr/sbin:/usr/bin:/sbin:/bin` when PATH is unset), or nil.
  public static func locate(_ name: String, path: String? = nil) -> String? {
    if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
    let search = path ?? (getenv("PATH").map { String(cString: $0) } ?? "/usr/sbin:/usr/bin:/sbin:/bin")
    for dir in search.split(separator: ":", omittingEmptySubsequences: true) {
      let candidate = "\(dir)/\(name)"
      if access(candidate, X_OK) == 0 { return candidate }
    }
    return nil
  }

  /// The error for a tool that is not installed.
  public static func missing(_ name: String) -> SwellError {
    let package = packages[name].map { " (Debian package \($0))" } ?? ""
    return SwellError(.failedPrecondition, "\(name) is not installed on this node\(package); install it and retry")
  }

  /// Throws ``missing(_:)`` for the first of `names` that is not on PATH, naming every missing one.
  public static func require(_ names: [String]) throws {
    let absent = names.filter { locate($0) == nil }
    guard !absent.isEmpty else { return }
    if absent.count == 1 { throw missing(absent[0]) }
    let list = absent.map { name in packages[name].map { "\(name) (\($0))" } ?? name }.joined(separator: ", ")
    throw SwellError(.failedPrecondition, "required tools are not installed on this node: \(list)")
  }
}
