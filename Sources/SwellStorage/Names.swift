import SwellHost

/// Rules for the IDs and paths that arrive in requests.
///
/// A volume ID is the CSI volume name itself, so that a retried CreateVolume after a crash finds
/// what the first attempt made. It becomes a directory name under the data directory, so it must be
/// a plain file name: letters, digits, `-`, `_` and `.`, not starting with `.` or `-`, at most 128 bytes.
public enum Names {
  public static let maxLength = 128

  /// Throws INVALID_ARGUMENT unless `id` is a safe volume ID; `what` names the field in the message.
  public static func validateVolumeID(_ id: String, field what: String = "volume_id") throws {
    if id.isEmpty { throw SwellError.invalid("\(what) is empty") }
    if id.utf8.count > maxLength {
      throw SwellError.invalid("\(what) is longer than \(maxLength) bytes")
    }
    if id.utf8.contains(0) { throw SwellError.invalid("\(what) contains a NUL byte") }
    if id.contains("/") { throw SwellError.invalid("\(what) \(id.debugDescription) contains '/'") }
    if id.hasPrefix(".") { throw SwellError.invalid("\(what) \(id.debugDescription) starts with '.'") }
    // Harmless in paths, but a name that reads as a command flag never reaches a command line.
    if id.hasPrefix("-") { throw SwellError.invalid("\(what) \(id.debugDescription) starts with '-'") }
    let allowed = id.utf8.allSatisfy { c in
      (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
        || c == 0x2D || c == 0x5F || c == 0x2E
    }
    if !allowed {
      throw SwellError.invalid(
        "\(what) \(id.debugDescription) may hold only letters, digits, '-', '_' and '.'")
    }
  }

  /// Throws INVALID_ARGUMENT unless `path` is absolute, clean (no `.` or `..` parts, no `//`), without NUL,
  /// and not `/` itself. Kubelet hands over such paths; anything else is refused before it is touched.
  public static func validateAbsolutePath(_ path: String, field what: String) throws {
    if path.isEmpty { throw SwellError.invalid("\(what) is empty") }
    if path.utf8.contains(0) { throw SwellError.invalid("\(what) contains a NUL byte") }
    if path.utf8.count > 4096 { throw SwellError.invalid("\(what) is longer than 4096 bytes") }
    guard path.hasPrefix("/") else { throw SwellError.invalid("\(what) \(path.debugDescription) is not absolute") }
    let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
    if parts.isEmpty || (parts.count == 1 && parts.first!.isEmpty) {
      throw SwellError.invalid("\(what) must not be /")
    }
    for (i, part) in parts.enumerated() {
      if part == "." || part == ".." {
        throw SwellError.invalid("\(what) \(path.debugDescription) has a '\(part)' component")
      }
      if part.isEmpty && i != parts.count - 1 {
        throw SwellError.invalid("\(what) \(path.debugDescription) has an empty component")
      }
    }
  }

  /// The path without a trailing slash.
  public static func normalized(_ path: String) -> String {
    path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
  }

  /// Throws INVALID_ARGUMENT unless every mount flag is printable text without commas' tricks:
  /// no NUL or control characters, none empty, none over 256 bytes.
  public static func validateMountFlags(_ flags: [String]) throws {
    for flag in flags {
      if flag.isEmpty { throw SwellError.invalid("a mount flag is empty") }
      if flag.utf8.count > 256 { throw SwellError.invalid("mount flag is longer than 256 bytes") }
      if flag.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F }) {
        throw SwellError.invalid("mount flag \(flag.debugDescription) contains a control character")
      }
    }
  }
}
