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

  /// Reads the current mount table.
  public static func current() throws -> [MountEntry] {
    parse(try readSmallFile("/proc/self/mountinfo"))
  }

  /// The topmost mount whose mount point is exactly `path`, if any.
  public static func mount(at path: String, in table: [MountEntry]) -> MountEntry? {
    table.last { $0.mountPoint == path }
  }
}
