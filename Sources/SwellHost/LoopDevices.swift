import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A file's identity on this machine: its filesystem's device number and its inode. Unlike a path,
/// it does not depend on the mount namespace the file is seen from.
public struct FileID: Hashable, Sendable {
  public var device: UInt64
  public var inode: UInt64

  public init(device: UInt64, inode: UInt64) {
    self.device = device
    self.inode = inode
  }

  /// The identity of the file at `path`, or nil when it cannot be stat'ed.
  public static func of(_ path: String) -> FileID? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    return FileID(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
  }
}

/// A loop device node and its numbers.
public struct LoopDevice: Sendable, Equatable, CustomStringConvertible {
  /// The kernel name, such as `loop3`.
  public var name: String
  public var major: Int
  public var minor: Int
  public var path: String { "/dev/" + name }
  public var description: String { path }
}

/// Loop devices, read from sysfs and changed with `losetup`.
///
/// The kernel is the truth: a device is attached to a file when the device's backing file (the
/// LOOP_GET_STATUS64 ioctl's device and inode) is that file, or, where the device node cannot be
/// opened, when `/sys/block/loopN/loop/backing_file` names it. The identity matters: the kernel
/// prints `backing_file` as seen from the mount namespace that attached it, and once that namespace
/// is gone (the node plugin's previous pod, after a DaemonSet update or a pod deletion) it prints a
/// path relative to a detached mount, such as `/volumes/<id>/disk.img`. Lookups go through a
/// ``LoopIndex`` of one full pass, which is used again only while the kernel's uevent counter says
/// no device has changed since, so the index needs no state of its own that could outlive a restart.
public struct LoopDevices: Sendable {
  private let exec: any Executor
  private let sysBlock: String
  /// Where the device nodes are, for the identity ioctl; nil reads sysfs only (a stand-in sysfs in tests).
  private let devDir: String?
  let index: LoopIndex

  /// `ueventCounter` is the kernel's count of device events (attach and detach each make one);
  /// nil, or a file that cannot be read, makes every lookup a full pass.
  public init(
    exec: any Executor, sysBlock: String = "/sys/block",
    ueventCounter: String? = KernelCaches.enabled ? "/sys/kernel/uevent_seqnum" : nil, devDir: String? = nil
  ) {
    self.exec = exec
    self.sysBlock = sysBlock
    self.devDir = devDir ?? (sysBlock == "/sys/block" ? "/dev" : nil)
    self.index = LoopIndex(counter: ueventCounter)
  }

  /// Every loop device whose backing file is `file` (a canonical path), including one whose file was
  /// deleted, and one attached from another mount namespace.
  ///
  /// From the index; each device it names is checked again (one ioctl or one read), and any
  /// mismatch makes a fresh pass.
  public func attached(to file: String) throws -> [LoopDevice] {
    let id = FileID.of(file)
    let devices = try table().devices(path: file, id: id)
    if devices.allSatisfy({ backs($0, path: file, id: id) }) { return devices }
    index.invalidate()
    return try table().devices(path: file, id: id)
  }

  /// For each of `files` (canonical paths) that is attached, its first device, from one pass.
  public func attachedDevices(of files: [String]) throws -> [String: LoopDevice] {
    let table = try table()
    var out: [String: LoopDevice] = [:]
    for file in files {
      if let device = table.devices(path: file, id: FileID.of(file)).first { out[file] = device }
    }
    return out
  }

  /// True when `device` is still attached to the file (by identity where it can be read, else by path).
  private func backs(_ device: LoopDevice, path: String, id: FileID?) -> Bool {
    if let id, let backing = backingID(of: device.name) { return backing == id }
    return backingFile(of: device.name) == path
  }

  /// The backing file's identity, from LOOP_GET_STATUS64 on the device node; nil when it cannot be read.
  private func backingID(of name: String) -> FileID? {
    guard let devDir else { return nil }
    let fd = open("\(devDir)/\(name)", O_RDONLY | O_CLOEXEC | O_NONBLOCK)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    // struct loop_info64: lo_device and lo_inode (each __u64) first; 232 bytes in all.
    var info = [UInt8](repeating: 0, count: 232)
    let result = info.withUnsafeMutableBytes { ioctl(fd, IoctlRequest.loopGetStatus64, $0.baseAddress!) }
    guard result == 0 else { return nil }
    return info.withUnsafeBytes {
      FileID(device: $0.loadUnaligned(fromByteOffset: 0, as: UInt64.self), inode: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
    }
  }

  /// A device's backing file, without a deleted file's ` (deleted)` suffix; nil when it has none.
  private func backingFile(of name: String) -> String? {
    guard let backing = try? readSmallFile("\(sysBlock)/\(name)/loop/backing_file").trimmingWhitespace(),
      !backing.isEmpty
    else { return nil }
    return backing.hasSuffix(" (deleted)") ? String(backing.dropLast(" (deleted)".count)) : backing
  }

  /// The index, refreshed by one pass over sysfs (and the devices' identities) when the uevent
  /// counter has moved.
  private func table() throws -> LoopTable {
    try index.current {
      var out = LoopTable()
      for name in try listDirectory(sysBlock).filter({ $0.hasPrefix("loop") }).sorted() {
        guard let file = backingFile(of: name), let device = try? device(named: name) else { continue }
        out.byPath[file, default: []].append(device)
        if let id = backingID(of: name) { out.byID[id, default: []].append(device) }
      }
      return out
    }
  }

  /// The device for a kernel name, with its numbers from sysfs.
  public func device(named name: String) throws -> LoopDevice {
    let numbers = try readSmallFile("\(sysBlock)/\(name)/dev").trimmingWhitespace().split(separator: ":")
    guard numbers.count == 2, let major = Int(numbers[0]), let minor = Int(numbers[1]) else {
      throw SwellError(.internal, "unexpected \(sysBlock)/\(name)/dev")
    }
    return LoopDevice(name: name, major: major, minor: minor)
  }

  /// The sector size every volume's loop device has, whatever the backing disk's, so that a
  /// filesystem made on one attach mounts on the next.
  public static let sectorSize = 512

  /// Attaches `file` with direct I/O, or returns the device it is already attached to.
  ///
  /// With direct I/O the loop device reads and writes its backing file with O_DIRECT: only the
  /// volume's own filesystem caches, and an O_DIRECT read in the volume reaches the disk. A device
  /// found attached in buffered mode (by an older plugin, or before a restart) is switched to direct
  /// I/O in place. Where the backing filesystem cannot do direct I/O at 512-byte sectors, the device
  /// is buffered: newer kernels leave it so themselves, and when an older one refuses the attach
  /// it is attached again without direct I/O. ``directIO(_:)`` tells which mode it is in.
  public func attach(_ file: String) async throws -> LoopDevice {
    defer { index.invalidate() }
    if let existing = try attached(to: file).first {
      if directIO(existing) == false {
        // Best effort: a device that cannot switch stays buffered and is reported as such.
        _ = try? await exec.output(["losetup", "--direct-io=on", existing.path])
      }
      return existing
    }
    let base = ["losetup", "--find", "--show", "--nooverlap", "--sector-size", String(Self.sectorSize)]
    var out = try await exec.output(base + ["--direct-io=on", file])
    if out.exitCode != 0 {
      // Older kernels refuse the whole attach (EINVAL) when the backing file cannot do O_DIRECT,
      // where newer ones attach it buffered: attach buffered then, and let the caller see the mode.
      index.invalidate()
      if let existing = try attached(to: file).first { return existing }
      let buffered = try await exec.output(base + [file])
      guard buffered.exitCode == 0 else {
        throw CommandError(
          argv: base + ["--direct-io=on", file], exitCode: out.exitCode, stderr: out.stderr, reason: "failed")
      }
      out = buffered
    }
    let path = out.stdout.trimmingWhitespace()
    guard path.hasPrefix("/dev/loop") else {
      throw SwellError(.internal, "losetup printed \(path.debugDescription) for \(file)")
    }
    return try device(named: String(path.dropFirst("/dev/".count)))
  }

  /// True when the device does direct I/O to its backing file (`loop/dio`), false when it is
  /// buffered, nil when sysfs does not say.
  public func directIO(_ device: LoopDevice) -> Bool? {
    switch (try? readSmallFile("\(sysBlock)/\(device.name)/loop/dio"))?.trimmingWhitespace() {
    case "1": return true
    case "0": return false
    default: return nil
    }
  }

  /// Detaches a device; a device already detached is fine.
  public func detach(_ device: LoopDevice) async throws {
    defer { index.invalidate() }
    let out = try await exec.output(["losetup", "--detach", device.path])
    if out.exitCode != 0, (try? readSmallFile("\(sysBlock)/\(device.name)/loop/backing_file")) != nil {
      throw CommandError(
        argv: ["losetup", "--detach", device.path], exitCode: out.exitCode, stderr: out.stderr,
        reason: "failed")
    }
  }

  /// Makes the kernel re-read the backing file's size (LOOP_SET_CAPACITY).
  public func refreshCapacity(_ device: LoopDevice) async throws {
    try await exec.run(["losetup", "--set-capacity", device.path])
  }

  /// The device's size in bytes, as the kernel sees it now.
  public func sizeBytes(_ device: LoopDevice) throws -> Int64 {
    let sectors = try readSmallFile("\(sysBlock)/\(device.name)/size").trimmingWhitespace()
    guard let count = Int64(sectors) else {
      throw SwellError(.internal, "unexpected \(sysBlock)/\(device.name)/size: \(sectors)")
    }
    return count * 512
  }

  /// True when the kernel can make loop devices here.
  public var isUsable: Bool {
    (try? FileInfo.of("/dev/loop-control")) != nil
  }
}

/// Backing file → loop devices, from one pass over sysfs, with the kernel's uevent counter read just
/// before that pass.
///
/// Attaching and detaching a loop device each send a uevent, so while the counter reads the same
/// the pass still holds; when it moves (for any device), the next lookup makes a new pass. The
/// counter is read first, so a change during a pass moves it past the value stored with the pass.
/// The plugin's own attaches and detaches also drop the index, for a kernel that would not count
/// them.
/// One pass: attached devices by the path sysfs prints and by their backing file's identity.
struct LoopTable: Sendable {
  var byPath: [String: [LoopDevice]] = [:]
  var byID: [FileID: [LoopDevice]] = [:]

  /// The devices whose backing file has identity `id`, then any others sysfs names by `path`.
  func devices(path: String, id: FileID?) -> [LoopDevice] {
    var found = id.flatMap { byID[$0] } ?? []
    for device in byPath[path] ?? [] where !found.contains(device) { found.append(device) }
    return found
  }
}

final class LoopIndex: Sendable {
  private let counter: String?
  private struct Pass {
    var counter: UInt64
    var table: LoopTable
  }
  private let pass = Mutex<Pass?>(nil)

  init(counter: String?) { self.counter = counter }

  func invalidate() { pass.withLock { $0 = nil } }

  /// The stored pass when the counter has not moved since; otherwise `scan`'s, stored.
  func current(scan: () throws -> LoopTable) throws -> LoopTable {
    guard let path = counter, let now = (try? readSmallFile(path)).flatMap({ UInt64($0.trimmingWhitespace()) }) else {
      return try scan()
    }
    if let stored = pass.withLock({ $0 }), stored.counter == now { return stored.table }
    let table = try scan()
    pass.withLock { stored in
      if (stored?.counter ?? 0) <= now { stored = Pass(counter: now, table: table) }
    }
    return table
  }
}
