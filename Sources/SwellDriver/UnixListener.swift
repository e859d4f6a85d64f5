#if canImport(Glibc)
  import Glibc
#endif
import SwellHost

/// A listening unix socket that this process bound itself.
///
/// NIO would unlink the path at bind and at close by name, so a second instance could silently
/// take over a live socket, and an old pod shutting down could delete a new pod's socket. Instead:
/// a stale file is removed only when nothing answers on it, the socket is made mode 0660 (never
/// world-writable), and at shutdown the path is unlinked only if it is still the same inode.
public struct UnixListener: Sendable {
  public let path: String
  /// The listening descriptor; its ownership passes to the gRPC transport.
  public let descriptor: Int32
  let device: UInt64
  let inode: UInt64

  /// Parses `unix:///csi/csi.sock`, `unix:/csi/csi.sock` or a bare absolute path.
  public static func socketPath(fromEndpoint endpoint: String) throws -> String {
    var path = endpoint
    if path.hasPrefix("unix://") {
      path = String(path.dropFirst("unix://".count))
    } else if path.hasPrefix("unix:") {
      path = String(path.dropFirst("unix:".count))
    }
    guard path.hasPrefix("/") else {
      throw SwellError.invalid("endpoint \(endpoint.debugDescription) must be unix:///absolute/path")
    }
    guard path.utf8.count < 108 else { throw SwellError.invalid("socket path \(path) is too long for a unix socket") }
    return path
  }

  public static func bind(path: String, mode: mode_t = 0o660) throws -> UnixListener {
    if let existing = try FileInfo.of(path, followLinks: false) {
      guard existing.isSocket else {
        throw SwellError.precondition("\(path) exists and is not a socket; refusing to remove it")
      }
      if isAnswering(path) {
        throw SwellError.precondition("another process is serving on \(path)")
      }
      guard unlink(path) == 0 || errno == ENOENT else { throw SystemCallError("unlink", path) }
    }
    try makeDirectories(parentDirectory(of: path), mode: 0o755)
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw SystemCallError("socket", path) }
    var ok = false
    defer { if !ok { close(fd) } }
    var address = try socketAddress(path)
    let oldMask = umask(0o177)
    let rc = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    umask(oldMask)
    guard rc == 0 else { throw SystemCallError("bind", path) }
    guard chmod(path, mode) == 0 else { throw SystemCallError("chmod", path) }
    guard listen(fd, 128) == 0 else { throw SystemCallError("listen", path) }
    guard let info = try FileInfo.of(path, followLinks: false) else { throw SystemCallError("stat", path, errno: ENOENT) }
    ok = true
    return UnixListener(path: path, descriptor: fd, device: info.device, inode: info.inode)
  }

  /// Removes the socket file if it is still the one this listener made.
  public func removeIfUnchanged() {
    guard let info = try? FileInfo.of(path, followLinks: false), info.device == device, info.inode == inode else {
      return
    }
    unlink(path)
  }

  /// True when a process accepts connections on `path`.
  static func isAnswering(_ path: String) -> Bool {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    guard var address = try? socketAddress(path) else { return false }
    let rc = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    return rc == 0
  }

  static func socketAddress(_ path: String) throws -> sockaddr_un {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    let capacity = MemoryLayout.size(ofValue: address.sun_path)
    guard bytes.count < capacity else { throw SwellError.invalid("socket path \(path) is too long") }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
      raw.copyBytes(from: bytes)
      raw[bytes.count] = 0
    }
    return address
  }
}
