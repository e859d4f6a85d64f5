import Testing
@testable import SwellHost
import SwellStorage

@Suite struct MountInfoTests {
  let sample = """
    22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,errors=remount-ro
    130 22 7:3 / /var/lib/kubelet/plugins/kubernetes.io/csi/swell.csi.dev/abc/globalmount rw,relatime shared:70 - ext4 /dev/loop3 rw
    140 22 7:3 / /var/lib/kubelet/pods/p\\040q/volumes/mount ro,relatime shared:70 - ext4 /dev/loop3 rw
    150 22 0:5 /loop4 /var/lib/kubelet/pods/x/volumeDevices/dev rw,nosuid master:2 - devtmpfs udev rw,size=100k
    garbage line
    """

  @Test func parsesEveryWellFormedLine() {
    let entries = MountInfo.parse(sample)
    #expect(entries.count == 4)
    #expect(entries[1].major == 7 && entries[1].minor == 3)
    #expect(entries[1].fsType == "ext4")
    #expect(entries[1].source == "/dev/loop3")
    #expect(entries[3].root == "/loop4")
    #expect(entries[3].fsType == "devtmpfs")
  }

  @Test func unescapesOctal() {
    let entries = MountInfo.parse(sample)
    #expect(entries[2].mountPoint == "/var/lib/kubelet/pods/p q/volumes/mount")
    #expect(entries[2].isReadOnly)
    #expect(!entries[1].isReadOnly)
    #expect(MountInfo.unescape("a\\011b\\134c\\12") == "a\tb\\c\\12")
  }

  @Test func optionalFieldsMayBeAbsent() {
    let entry = MountInfo.parse("36 35 98:0 /mnt1 /mnt2 rw,noatime - ext3 /dev/root rw,errors=continue").first
    #expect(entry?.mountPoint == "/mnt2")
    #expect(entry?.source == "/dev/root")
  }

  @Test func findsTheTopmostMountAtAPath() {
    let table = MountInfo.parse("""
      1 0 7:1 / /a rw - ext4 /dev/loop1 rw
      2 0 7:2 / /a rw - xfs /dev/loop2 rw
      """)
    #expect(MountInfo.mount(at: "/a", in: table)?.minor == 2)
    #expect(MountInfo.mount(at: "/b", in: table) == nil)
  }
}

@Suite struct BlkidTests {
  @Test func aFilesystem() {
    #expect(Mounter.parseBlkid("DEVNAME=/dev/loop0\nUUID=1234\nBLOCK_SIZE=4096\nTYPE=ext4\nUSAGE=filesystem\n") == .filesystem("ext4"))
    #expect(Mounter.parseBlkid("TYPE=xfs\n") == .filesystem("xfs"))
  }

  @Test func aPartitionTableIsData() {
    guard case .other(let what) = Mounter.parseBlkid("DEVNAME=/dev/loop0\nPTUUID=ab\nPTTYPE=gpt\n") else {
      Issue.record("a partition table was not seen as data")
      return
    }
    #expect(what.contains("PTTYPE=gpt"))
  }

  @Test func raidAndLvmMembersAreData() {
    #expect(Mounter.parseBlkid("TYPE=LVM2_member\nUSAGE=raid\n") != .empty)
    if case .filesystem = Mounter.parseBlkid("TYPE=LVM2_member\nUSAGE=raid\n") {
      Issue.record("an LVM member was taken for a filesystem")
    }
  }

  @Test func unrecognisedOutputIsNeverEmpty() {
    #expect(Mounter.parseBlkid("") != .empty)
    #expect(Mounter.parseBlkid("nonsense") != .empty)
  }
}

@Suite struct VolumeMetaTests {
  @Test func roundTrips() throws {
    let meta = VolumeMeta(access: .block, fsType: "", capacityBytes: 5 << 20)
    #expect(try VolumeMeta.decode(meta.encoded()) == meta)
    let fs = VolumeMeta(access: .mount, fsType: "xfs", capacityBytes: 1 << 30)
    #expect(try VolumeMeta.decode(fs.encoded()) == fs)
  }

  @Test(arguments: [
    "", "version=2\naccess=mount\nfs_type=\ncapacity_bytes=1\n", "version=1\naccess=tape\nfs_type=\ncapacity_bytes=1\n",
    "version=1\naccess=mount\nfs_type=ext4\ncapacity_bytes=-5\n", "version=1\naccess=mount\ncapacity_bytes=1\n",
    "version=1\nbroken line\n",
  ])
  func rejectsDamage(text: String) {
    #expect(throws: SwellError.self) { try VolumeMeta.decode(text) }
  }
}

@Suite struct CapabilityParsingTests {
  @Test func readsTheEffectiveMask() {
    let status = "Name:\tswell\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\nCapBnd:\t000001ffffffffff\n"
    let mask = ProcessCapabilities.parseEffective(status)
    #expect(mask == 0x1fffeffffff)
    #expect(mask! & (1 << UInt64(ProcessCapabilities.sysResource)) == 0)
    #expect(mask! & (1 << UInt64(ProcessCapabilities.sysAdmin)) != 0)
    #expect(ProcessCapabilities.parseEffective("Name: x\n") == nil)
  }
}

@Suite struct MountLocationTests {
  // /proc/self/mountinfo of a node plugin's pod: the host's /var/lib/swell-dirs (the root of its
  // own xfs) bind-mounted at the same path, and a dir volume staged by kubelet.
  let table = MountInfo.parse("""
    20 1 0:30 / / rw,relatime - overlay overlay rw
    31 20 259:1 / /var/lib/swell-dirs rw,noatime - xfs /dev/nvme1n1 rw,prjquota
    32 20 259:2 /kubelet /var/lib/kubelet rw - ext4 /dev/nvme0n1p1 rw
    40 32 259:1 /volumes/pvc-1/data /var/lib/kubelet/plugins/kubernetes.io/csi/swell.csi.dev/abc/globalmount rw - xfs /dev/nvme1n1 rw,prjquota
    """)

  @Test func aDirectoryIsNamedInsideItsFilesystem() throws {
    let place = try #require(MountInfo.location(of: "/var/lib/swell-dirs/volumes/pvc-1/data", in: table))
    #expect(place.mount.mountID == 31 && place.root == "/volumes/pvc-1/data")
    // The bind mount kubelet sees shows that same root.
    #expect(table.contains { $0.root == place.root && $0.major == 259 && $0.minor == 1 })
    // A mount point itself, and a path under a mount whose own root is a subdirectory.
    #expect(MountInfo.location(of: "/var/lib/swell-dirs", in: table)?.root == "/")
    #expect(MountInfo.location(of: "/var/lib/kubelet/pods/x", in: table)?.root == "/kubelet/pods/x")
    // A sibling whose name merely starts alike is not under the mount.
    #expect(MountInfo.location(of: "/var/lib/swell-dirs2/x", in: table)?.mount.mountID == 20)
  }

  @Test func directoryMetadataRoundTripsAndRefusesTheIncomplete() throws {
    let meta = DirectoryMeta(project: 0x5E11_0003, capacityBytes: 64 << 20)
    #expect(try DirectoryMeta.decode(meta.encoded()) == meta)
    let restored = DirectoryMeta(project: 7, capacityBytes: 1 << 20, source: .snapshot("snap-1"), overcommit: true)
    #expect(try DirectoryMeta.decode(restored.encoded()) == restored)
    let limited = DirectoryMeta(project: 9, capacityBytes: 1 << 20, inodeLimit: 200)
    #expect(limited.encoded().contains("inode_limit=200\n") && !meta.encoded().contains("inode_limit"))
    #expect(try DirectoryMeta.decode(limited.encoded()) == limited)
    #expect(throws: SwellError.self) { try DirectoryMeta.decode("version=1\nproject=1\ncapacity_bytes=1\nsource=x\n") }
    #expect(throws: SwellError.self) { try DirectoryMeta.decode("version=1\ncapacity_bytes=1\n") }
    #expect(throws: SwellError.self) { try DirectoryMeta.decode("version=2\nproject=1\ncapacity_bytes=1\n") }
  }
}

@Suite struct FailpointTests {
  @Test func aPauseHoldsForTheSecondsItNames() {
    #expect(Failpoints.parse("pause") == .pause(seconds: 1))
    #expect(Failpoints.parse("pause=30") == .pause(seconds: 30))
  }

  @Test func anythingElseIsACrash() {
    #expect(Failpoints.parse("pause=") == .crash)
    #expect(Failpoints.parse("pause=-1") == .crash)
    #expect(Failpoints.parse("crash") == .crash)
  }
}
