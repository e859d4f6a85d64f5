#if canImport(Glibc)
  import Glibc
#endif

/// How a file was copied.
public enum CloneMethod: String, Sendable, Equatable {
  /// FICLONE: the copy shares the source's blocks (xfs with reflink=1, btrfs); instant.
  case reflink
  /// Only the source's written extents (SEEK_DATA/SEEK_HOLE), read and written; holes stay holes.
  case copy
}

enum IoctlRequest {
  /// `_IOW(0x94, 9, int)`
  static let ficlone: UInt = 0x4004_9409
  /// `_IOWR('X', 119, int)`
  static let fifreeze: UInt = 0xC004_5877
  /// `_IOWR('X', 120, int)`
  static let fithaw: UInt = 0xC004_5878
  /// `LOOP_GET_STATUS64` (linux/loop.h)
  static let loopGetStatus64: UInt = 0x4C05
}

let seekData: Int32 = 3
let seekHole: Int32 = 4

/// The bytes a file really occupies on disk (its allocated blocks), which a sparse copy needs free.
public func allocatedBytes(_ path: String) throws -> Int64 {
  var st = stat()
  guard stat(path, &st) == 0 else { throw SystemCallError("stat", path) }
  return Int64(st.st_blocks) * 512
}

/// Copies `source` to the new file `dest`: a reflink where the filesystem can, else the written
/// extents only. `beforeCopy` runs when a reflink is impossible, before any byte is copied, so the
/// caller can refuse (no room, or a source in use that only an atomic reflink may copy). The copy
/// checks `deadline` between chunks and stops with ABORTED when it passes. `dest` is fsynced.
public func cloneFile(
  _ source: String, to dest: String, deadline: ContinuousClock.Instant? = nil,
  beforeCopy: () throws -> Void = {}
) throws -> CloneMethod {
  let src = open(source, O_RDONLY | O_CLOEXEC)
  guard src >= 0 else { throw SystemCallError("open", source) }
  defer { close(src) }
  let dst = open(dest, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
  guard dst >= 0 else { throw SystemCallError("open", dest) }
  defer { close(dst) }
  if ioctl(dst, IoctlRequest.ficlone, src) == 0 {
    guard fsync(dst) == 0 else { throw SystemCallError("fsync", dest) }
    return .reflink
  }
  let reason = errno
  guard [EOPNOTSUPP, ENOTTY, EXDEV, EINVAL, ENOSYS, EBADF].contains(reason) else {
    throw SystemCallError("ioctl(FICLONE)", dest, errno: reason)
  }
  try beforeCopy()
  var st = stat()
  guard fstat(src, &st) == 0 else { throw SystemCallError("fstat", source) }
  let size = Int64(st.st_size)
  guard ftruncate(dst, off_t(size)) == 0 else { throw SystemCallError("ftruncate", dest) }
  let clock = ContinuousClock()
  var offset: Int64 = 0
  while offset < size {
    let data = lseek(src, off_t(offset), seekData)
    if data < 0 {
      if errno == ENXIO { break }  // only a hole is left
      throw SystemCallError("lseek(SEEK_DATA)", source)
    }
    var end = Int64(lseek(src, data, seekHole))
    if end < 0 { end = size }
    try copyRange(src, dst, from: Int64(data), to: min(end, size), source: source, dest: dest) {
      if let deadline, clock.now > deadline {
        throw SwellError(.aborted, "copying \(source) took longer than allowed; retry, or use a data directory with reflink")
      }
    }
    offset = end
  }
  guard fsync(dst) == 0 else { throw SystemCallError("fsync", dest) }
  return .copy
}

/// Copies bytes [start, end) at the same offsets, 4 MiB at a time, with pread and pwrite.
private func copyRange(
  _ src: Int32, _ dst: Int32, from start: Int64, to end: Int64, source: String, dest: String,
  check: () throws -> Void
) throws {
  var offset = start
  var buffer = [UInt8](repeating: 0, count: 4 << 20)
  while offset < end {
    try check()
    let want = Int(min(Int64(buffer.count), end - offset))
    let r = buffer.withUnsafeMutableBytes { pread(src, $0.baseAddress, want, off_t(offset)) }
    if r < 0 {
      if errno == EINTR { continue }
      throw SystemCallError("pread", source)
    }
    if r == 0 { return }
    var written = 0
    while written < r {
      let w = buffer.withUnsafeBytes { pwrite(dst, $0.baseAddress! + written, r - written, off_t(offset) + off_t(written)) }
      if w < 0 {
        if errno == EINTR { continue }
        throw SystemCallError("pwrite", dest)
      }
      written += w
    }
    offset += Int64(r)
  }
}

/// Freezes and thaws a mounted filesystem (FIFREEZE, FITHAW): while frozen, writers block and
/// the filesystem on disk is clean, so a copy of its device is consistent.
public enum FileSystemFreeze {
  /// Freezes the filesystem mounted at `mountPoint`. A filesystem already frozen counts as frozen.
  public static func freeze(_ mountPoint: String) throws {
    let fd = open(mountPoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { throw SystemCallError("open", mountPoint) }
    defer { close(fd) }
    var arg: Int32 = 0
    if ioctl(fd, IoctlRequest.fifreeze, &arg) != 0, errno != EBUSY {
      throw SystemCallError("ioctl(FIFREEZE)", mountPoint)
    }
  }

  /// Thaws it; a filesystem that is not frozen (EINVAL), or no longer mounted, is fine. A plain
  /// system call, so it runs to the end even in a cancelled task.
  public static func thaw(_ mountPoint: String) throws {
    let fd = open(mountPoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else {
      if errno == ENOENT || errno == ENOTDIR { return }
      throw SystemCallError("open", mountPoint)
    }
    defer { close(fd) }
    var arg: Int32 = 0
    if ioctl(fd, IoctlRequest.fithaw, &arg) != 0, errno != EINVAL {
      throw SystemCallError("ioctl(FITHAW)", mountPoint)
    }
  }
}

/// The current wall-clock time in nanoseconds since the Unix epoch.
public func unixNanoseconds() -> Int64 {
  var ts = timespec()
  clock_gettime(CLOCK_REALTIME, &ts)
  return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}
