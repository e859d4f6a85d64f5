#if canImport(Glibc)
  import Glibc
#endif
import Testing
import SwellHost

/// The loop index and the mount table cache: each answers like a fresh read of the kernel's
/// tables, and reads them again only when the kernel says something changed.
@Suite struct LoopIndexTests {
  /// A stand-in for `/sys/block` and `/sys/kernel/uevent_seqnum` under a temporary directory.
  struct FakeSysfs {
    let root: String
    var sysBlock: String { root + "/block" }
    var counter: String { root + "/uevent_seqnum" }
    private var events: UInt64 = 100

    init() throws {
      root = try makeTemporaryDirectory(prefix: "swell-loopindex-")
      try makeDirectories(sysBlock)
      try writeFileAtomically(counter, Array("100\n".utf8), syncDirectory: false)
    }

    /// Attaches (or re-points) `loopN`, without the uevent a real attach makes.
    func setBacking(_ n: Int, _ file: String) throws {
      try makeDirectories("\(sysBlock)/loop\(n)/loop")
      try writeFileAtomically("\(sysBlock)/loop\(n)/dev", Array("7:\(n)\n".utf8), syncDirectory: false)
      try writeFileAtomically("\(sysBlock)/loop\(n)/loop/backing_file", Array("\(file)\n".utf8), syncDirectory: false)
    }

    /// The uevent the kernel sends for an attach or detach.
    mutating func event() throws {
      events += 1
      try writeFileAtomically(counter, Array("\(events)\n".utf8), syncDirectory: false)
    }

    func devices(counter: String?) -> LoopDevices {
      LoopDevices(exec: SystemExecutor(), sysBlock: sysBlock, ueventCounter: counter)
    }
  }

  @Test func aDeviceAttachedLaterIsFoundOnceTheKernelCountsAnEvent() throws {
    var sys = try FakeSysfs()
    defer { try? removeTree(sys.root) }
    try sys.setBacking(0, "/data/a/disk.img")
    let loops = sys.devices(counter: sys.counter)
    #expect(try loops.attached(to: "/data/a/disk.img").map(\.name) == ["loop0"])
    #expect(try loops.attached(to: "/data/b/disk.img").isEmpty)

    try sys.setBacking(1, "/data/b/disk.img")
    // No event yet: the stored pass still answers, which is what saves the per-call scan.
    #expect(try loops.attached(to: "/data/b/disk.img").isEmpty)
    try sys.event()
    #expect(try loops.attached(to: "/data/b/disk.img").map(\.name) == ["loop1"])
    #expect(try loops.attachedDevices(of: ["/data/a/disk.img", "/data/b/disk.img", "/data/c/disk.img"]).mapValues(\.name) == ["/data/a/disk.img": "loop0", "/data/b/disk.img": "loop1"])
  }

  @Test func aDeviceThatNoLongerBacksTheFileIsNeverReportedFromTheStoredPass() throws {
    let sys = try FakeSysfs()
    defer { try? removeTree(sys.root) }
    try sys.setBacking(0, "/data/a/disk.img")
    let loops = sys.devices(counter: sys.counter)
    #expect(try loops.attached(to: "/data/a/disk.img").map(\.name) == ["loop0"])
    // Re-pointed with no event counted: the check of the device's own backing_file catches it.
    try sys.setBacking(0, "/data/c/disk.img")
    #expect(try loops.attached(to: "/data/a/disk.img").isEmpty)
    #expect(try loops.attached(to: "/data/c/disk.img").map(\.name) == ["loop0"])
  }

  @Test func aDeletedBackingFileStillNamesItsDevice() throws {
    let sys = try FakeSysfs()
    defer { try? removeTree(sys.root) }
    try sys.setBacking(3, "/data/a/disk.img (deleted)")
    let loops = sys.devices(counter: sys.counter)
    #expect(try loops.attached(to: "/data/a/disk.img").map(\.name) == ["loop3"])
  }

  @Test func withoutAnEventCounterEveryLookupReadsSysfs() throws {
    let sys = try FakeSysfs()
    defer { try? removeTree(sys.root) }
    for counter in [nil, sys.root + "/missing"] {
      let loops = sys.devices(counter: counter)
      #expect(try loops.attached(to: "/data/z/disk.img").isEmpty)
      try sys.setBacking(9, "/data/z/disk.img")
      #expect(try loops.attached(to: "/data/z/disk.img").map(\.name) == ["loop9"])
      try removeTree("\(sys.sysBlock)/loop9")
    }
  }

  @Test(.enabled(if: getuid() == 0, "mounts need root"))
  func theMountTableIsReadAgainExactlyWhenAMountChanges() throws {
    let dir = try makeTemporaryDirectory(prefix: "swell-mounttable-")
    defer {
      _ = umount2(dir, Int32(MNT_DETACH))
      try? removeTree(dir)
    }
    let table = MountTable(path: "/proc/self/mountinfo")
    #expect(try MountInfo.mount(at: dir, in: table.current()) == nil)
    #expect(try MountInfo.mount(at: dir, in: table.current()) == nil)
    #expect(table.reads == 1, "nothing changed, so the second call did not read")

    try #require(mount("swell-test", dir, "tmpfs", 0, nil) == 0)
    #expect(try MountInfo.mount(at: dir, in: table.current())?.fsType == "tmpfs")
    #expect(table.reads == 2)
    #expect(try MountInfo.mount(at: dir, in: table.current())?.fsType == "tmpfs")
    #expect(table.reads == 2)

    try #require(umount2(dir, 0) == 0)
    #expect(try MountInfo.mount(at: dir, in: table.current()) == nil)
    #expect(table.reads == 3)
  }
}
