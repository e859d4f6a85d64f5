#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif
import CSwellSys

/// An error from a system call, with errno and the path it concerned.
public struct SystemCallError: Error, CustomStringConvertible, Sendable {
  public var call: String
  public var path: String
  public var errno: Int32

  public init(_ call: String, _ path: String, errno: Int32 = Glibc.errno) {
    self.call = call
    self.path = path
    self.errno = errno
  }

  public var description: String {
    "\(call) \(path): \(String(cString: strerror(errno)))"
  }
}

/// Reads a small text file (procfs, sysfs, metadata) in one go.
public func readSmallFile(_ path: String) throws -> String {
  let fd = open(path, O_RDONLY | O_CLOEXEC)
  guard fd >= 0 else { throw SystemCallError("open", path) }
  defer { close(fd) }
  return try readToEnd(fd, path: path)
}

/// Reads an open file from its current offset to its end, as UTF-8 text.
func readToEnd(_ fd: Int32, path: String) throws -> String {
  var bytes: [UInt8] = []
  var buffer = [UInt8](repeating: 0, count: 65536)
  while true {
    let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    if n < 0 {
      if errno == EINTR { continue }
      throw SystemCallError("read", path)
    }
    if n == 0 { break }
    bytes.append(contentsOf: buffer[0..<n])
  }
  return String(decoding: bytes, as: UTF8.self)
}

/// Writes `contents` to `path` atomically: a temp file beside it, fsync, rename, then (unless the
/// caller will sync a parent itself) fsync of the directory.
public func writeFileAtomically(
  _ path: String, _ contents: [UInt8], mode: mode_t = 0o600, syncDirectory: Bool = true
) throws {
  let tmp = path + ".tmp"
  let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
  guard fd >= 0 else { throw SystemCallError("open", tmp) }
  var ok = false
  defer {
    if !ok { unlink(tmp) }
  }
  var offset = 0
  while offset < contents.count {
    let n = contents.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
    if n < 0 {
      if errno == EINTR { continue }
      let e = SystemCallError("write", tmp)
      close(fd)
      throw e
    }
    offset += n
  }
  if fsync(fd) != 0 {
    let e = SystemCallError("fsync", tmp)
    close(fd)
    throw e
  }
  close(fd)
  guard rename(tmp, path) == 0 else { throw SystemCallError("rename", path) }
  ok = true
  if syncDirectory { try fsyncDirectory(parentDirectory(of: path)) }
}

/// fsyncs a directory, so that a rename or create inside it is durable.
public func fsyncDirectory(_ path: String) throws {
  let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
  guard fd >= 0 else { throw SystemCallError("open", path) }
  defer { close(fd) }
  guard fsync(fd) == 0 else { throw SystemCallError("fsync", path) }
}

/// Flushes the whole filesystem that holds `path` (syncfs): every file copied into it is durable.
public func syncFileSystem(of path: String) throws {
  let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
  guard fd >= 0 else { throw SystemCallError("open", path) }
  defer { close(fd) }
  let rc = swell_syncfs(fd)
  guard rc == 0 else { errno = -rc; throw SystemCallError("syncfs", path) }
}

/// Removes everything inside a directory, and keeps the directory (and its attributes).
public func emptyDirectory(_ path: String) throws {
  for name in try listDirectory(path) { try removeTree(path + "/" + name) }
}

/// The directory part of an absolute path ("/" for a top-level entry).
public func parentDirectory(of path: String) -> String {
  guard let slash = path.lastIndex(of: "/") else { return "." }
  let parent = String(path[..<slash])
  return parent.isEmpty ? "/" : parent
}

/// What `stat`/`lstat` says of a path, or nil when it does not exist.
public struct FileInfo: Sendable {
  public var mode: mode_t
  public var size: Int64
  public var device: UInt64
  public var inode: UInt64
  /// For a device node, its major and minor numbers.
  public var rdevMajor: UInt32
  public var rdevMinor: UInt32

  public var isDirectory: Bool { mode & S_IFMT == S_IFDIR }
  public var isRegular: Bool { mode & S_IFMT == S_IFREG }
  public var isBlockDevice: Bool { mode & S_IFMT == S_IFBLK }
  public var isSocket: Bool { mode & S_IFMT == S_IFSOCK }
  public var isSymlink: Bool { mode & S_IFMT == S_IFLNK }

  public static func of(_ path: String, followLinks: Bool = true) throws -> FileInfo? {
    var st = stat()
    let rc = followLinks ? stat(path, &st) : lstat(path, &st)
    if rc != 0 {
      if errno == ENOENT || errno == ENOTDIR { return nil }
      throw SystemCallError("stat", path)
    }
    return FileInfo(
      mode: st.st_mode, size: Int64(st.st_size), device: UInt64(st.st_dev), inode: UInt64(st.st_ino),
      rdevMajor: deviceMajor(UInt64(st.st_rdev)), rdevMinor: deviceMinor(UInt64(st.st_rdev)))
  }
}

/// The major number of a dev_t, in glibc's encoding.
public func deviceMajor(_ dev: UInt64) -> UInt32 {
  UInt32(truncatingIfNeeded: ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff)))
}

/// The minor number of a dev_t, in glibc's encoding.
public func deviceMinor(_ dev: UInt64) -> UInt32 {
  UInt32(truncatingIfNeeded: (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff)))
}

/// Creates a directory and its missing parents (like `mkdir -p`).
public func makeDirectories(_ path: String, mode: mode_t = 0o750) throws {
  if let info = try FileInfo.of(path) {
    guard info.isDirectory else { throw SystemCallError("mkdir", path, errno: ENOTDIR) }
    return
  }
  let parent = parentDirectory(of: path)
  if parent != path { try makeDirectories(parent, mode: mode) }
  if mkdir(path, mode) != 0 && errno != EEXIST { throw SystemCallError("mkdir", path) }
}

/// Removes a file, an empty directory, or nothing: a missing path is fine.
public func removeIfPresent(_ path: String) throws {
  guard let info = try FileInfo.of(path, followLinks: false) else { return }
  let rc = info.isDirectory ? rmdir(path) : unlink(path)
  if rc != 0 && errno != ENOENT { throw SystemCallError("remove", path) }
}

/// Removes a directory tree. Refuses to follow symlinks out of it.
public func removeTree(_ path: String) throws {
  guard let info = try FileInfo.of(path, followLinks: false) else { return }
  if info.isDirectory {
    for name in try listDirectory(path) { try removeTree(path + "/" + name) }
  }
  try removeIfPresent(path)
}

/// The names in a directory, without `.` and `..`.
public func listDirectory(_ path: String) throws -> [String] {
  guard let dir = opendir(path) else { throw SystemCallError("opendir", path) }
  defer { closedir(dir) }
  var names: [String] = []
  while let entry = readdir(dir) {
    let name = withUnsafePointer(to: entry.pointee.d_name) {
      $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
    }
    if name != "." && name != ".." { names.append(name) }
  }
  return names
}

/// Makes a fresh directory `/tmp/<prefix>XXXXXX` (mode 0700) and returns its path.
public func makeTemporaryDirectory(prefix: String) throws -> String {
  var template = Array("/tmp/\(prefix)XXXXXX".utf8CString)
  guard let made = mkdtemp(&template) else { throw SystemCallError("mkdtemp", "/tmp") }
  return String(cString: made)
}

/// The canonical absolute path, with symlinks resolved.
public func realPath(_ path: String) throws -> String {
  guard let resolved = realpath(path, nil) else { throw SystemCallError("realpath", path) }
  defer { free(resolved) }
  return String(cString: resolved)
}

/// Space and inode figures of the filesystem holding `path`.
public struct FileSystemUsage: Sendable, Equatable {
  public var totalBytes: Int64
  public var availableBytes: Int64
  public var usedBytes: Int64
  public var totalInodes: Int64
  public var freeInodes: Int64
  public var usedInodes: Int64

  public static func of(_ path: String) throws -> FileSystemUsage {
    var s = statvfs()
    guard statvfs(path, &s) == 0 else { throw SystemCallError("statvfs", path) }
    let frsize = Int64(s.f_frsize)
    let total = Int64(s.f_blocks) * frsize
    let free = Int64(s.f_bfree) * frsize
    return FileSystemUsage(
      totalBytes: total, availableBytes: Int64(s.f_bavail) * frsize, usedBytes: total - free,
      totalInodes: Int64(s.f_files), freeInodes: Int64(s.f_ffree),
      usedInodes: Int64(s.f_files) - Int64(s.f_ffree))
  }
}
