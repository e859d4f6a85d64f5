#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif
import Synchronization

/// One line of `/proc/self/mountinfo`.
public struct MountEntry: Sendable, Equatable {
  public var mountID: Int
  public var major: Int
  public var minor: Int
  /// The root of the mount within its filesystem (`/` for a whole device; a subpath for a bind).
  public var root: String
  public var mountPoint: String
  public var options: [String]
  public var fsType: String
  public var source: String
  public var superOptions: [String]

  /// True when the mount point itself is read-only.
  public var isReadOnly: Bool { options.contains("ro") }
}

/// Parses the kernel's mount table; the kernel, not a state file, says what is mounted.
public enum MountInfo {
  /// Parses the text of `/proc/self/mountinfo`. Lines that do not have the documented shape are skipped.
  public static func parse(_ text: String) -> [MountEntry] {
    text.split(separator: "\n").compactMap { parseLine(String($0)) }
  }

  static func parseLine(_ line: String) -> MountEntry? {
    let fields = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
    // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    guard fields.count >= 10, let dash = fields.firstIndex(of: "-"), dash >= 6,
      fields.count >= dash + 4
    else { return nil }
    let devParts = fields[2].split(separator: ":")
    guard let id = Int(fields[0]), devParts.count == 2,
      let major = Int(devParts[0]), let minor = Int(devParts[1])
    else { return nil }
    return MountEntry(
      mountID: id, major: major, minor: minor,
      root: unescape(fields[3]), mountPoint: unescape(fields[4]),
      options: fields[5].split(separator: ",").map(String.init),
      fsType: fields[dash + 1], source: unescape(fields[dash + 2]),
      superOptions: fields[dash + 3].split(separator: ",").map(String.init))
  }

  /// Undoes the kernel's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
  static func unescape(_ field: String) -> String {
    guard field.contains("\\") else { return field }
    var bytes: [UInt8] = []
    let utf8 = Array(field.utf8)
    var i = 0
    while i < utf8.count {
      if utf8[i] == UInt8(ascii: "\\"), i + 3 < utf8.count {
        let digits = utf8[(i + 1)...(i + 3)]
        if digits.allSatisfy({ $0 >= 48 && $0 <= 55 }) {
          let value = digits.reduce(0) { $0 * 8 + Int($1 - 48) }
          bytes.append(UInt8(truncatingIfNeeded: value))
          i += 4
          continue
        }
      }
      bytes.append(utf8[i])
      i += 1
    }
    return String(decoding: bytes, as: UTF8.self)
  }

  /// The current mount table, read again only when the kernel says it changed (``MountTable``).
  public static func current() throws -> [MountEntry] {
    KernelCaches.enabled ? try MountTable.shared.current() : parse(try readSmallFile("/proc/self/mountinfo"))
  }

  /// The topmost mount whose mount point is exactly `path`, if any.
  public static func mount(at path: String, in table: [MountEntry]) -> MountEntry? {
    table.last { $0.mountPoint == path }
  }
}

/// Whether the plugin keeps its loop index and mount table between calls (the default), or reads
/// sysfs and mountinfo afresh on every call: `SWELL_KERNEL_CACHES=off`, for benchmarks that compare
/// the two in one run, and as a way out should a kernel not report its changes.
public enum KernelCaches {
  public static let enabled: Bool = getenv("SWELL_KERNEL_CACHES").map { String(cString: $0) } != "off"
}

/// The mount table, parsed once and kept while the kernel reports no change.
///
/// The kernel marks an open `mountinfo` file when any mount or unmount happens in its namespace,
/// and `poll` reports the mark (POLLPRI) and clears it. The table is read again only after a mark:
/// the poll comes before the read, so a change during the read leaves a mark for the next call.
public final class MountTable: Sendable {
  public static let shared = MountTable(path: "/proc/self/mountinfo")
  public let path: String
  private struct State {
    var fd: Int32 = -1
    var entries: [MountEntry]?
  }
  private let state = Mutex(State())
  /// How many times the table was read and parsed, for tests and spans.
  public var reads: Int { readCount.withLock { $0 } }
  private let readCount = Mutex(0)

  public init(path: String) { self.path = path }

  public func current() throws -> [MountEntry] {
    try state.withLock { (s: inout State) throws -> [MountEntry] in
      if s.fd < 0 {
        s.fd = open(path, O_RDONLY | O_CLOEXEC)
        s.entries = nil
        guard s.fd >= 0 else { throw SystemCallError("open", path) }
      }
      var watch = pollfd(fd: s.fd, events: Int16(POLLPRI), revents: 0)
      let ready = poll(&watch, 1, 0)
      if ready == 0, let entries = s.entries { return entries }
      guard lseek(s.fd, 0, SEEK_SET) == 0 else {
        close(s.fd)
        s.fd = -1
        throw SystemCallError("lseek", path)
      }
      do {
        let entries = MountInfo.parse(try readToEnd(s.fd, path: path))
        s.entries = entries
        readCount.withLock { $0 += 1 }
        return entries
      } catch {
        close(s.fd)
        s.fd = -1
        throw error
      }
    }
  }
}

extension MountInfo {
  /// The mount that holds `path` (the topmost mount at the deepest mount point that is `path` or
  /// one of its ancestors) and `path`'s place inside that mount's filesystem, as the table's
  /// `root` field names a bind mount of it. `path` must be canonical (no symlinks, no `..`).
  public static func location(of path: String, in table: [MountEntry]) -> (mount: MountEntry, root: String)? {
    var best: MountEntry?
    for entry in table {
      let mp = entry.mountPoint
      guard mp == "/" || path == mp || path.hasPrefix(mp + "/") else { continue }
      if best == nil || mp.count >= best!.mountPoint.count { best = entry }
    }
    guard let mount = best else { return nil }
    let rest = mount.mountPoint == "/" ? (path == "/" ? "" : path) : String(path.dropFirst(mount.mountPoint.count))
    let base = mount.root == "/" ? "" : mount.root
    let root = base + rest
    return (mount, root.isEmpty ? "/" : root)
  }
}
