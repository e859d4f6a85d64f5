import Testing
@testable import SwellHost
@testable import SwellStorage

@Suite struct TgtParseTests {
  // `tgtadm --lld iscsi --mode target --op show` from tgt 1.0.85 (Debian bookworm), with one
  // initiator logged in to the first target.
  let sample = """
    Target 1: iqn.2026-11.dev.swell:pvc-a1
        System information:
            Driver: iscsi
            State: ready
        I_T nexus information:
            I_T nexus: 2
                Initiator: iqn.2026-11.dev.swell:vm-guest alias: (none)
                Connection: 0
                    IP Address: 127.0.0.1
        LUN information:
            LUN: 0
                Type: controller
                SCSI ID: IET     00010000
                Size: 0 MB, Block size: 1
                Backing store type: null
                Backing store path: None
                Backing store flags:\u{20}
            LUN: 1
                Type: disk
                SCSI ID: IET     00010001
                Size: 67 MB, Block size: 512
                Online: Yes
                Backing store type: rdwr
                Backing store path: /var/lib/swell-iscsi/volumes/pvc-a1/disk.img
                Backing store flags:\u{20}
        Account information:
        ACL information:
            127.0.0.1
            10.0.0.0/8
    Target 3: iqn.2026-11.dev.swell:pvc-b2
        System information:
            Driver: iscsi
            State: ready
        I_T nexus information:
        LUN information:
            LUN: 0
                Size: 0 MB, Block size: 1
                Backing store path: None
        Account information:
        ACL information:
            ALL

    """

  @Test func targetsSessionsLunsAndACL() {
    let targets = TgtTarget.parse(sample)
    #expect(targets.map(\.tid) == [1, 3])
    #expect(targets[0].iqn == "iqn.2026-11.dev.swell:pvc-a1")
    #expect(targets[0].sessions == ["iqn.2026-11.dev.swell:vm-guest"])
    #expect(targets[0].lun(1) == .init(number: 1, sizeMB: 67, backingStore: "/var/lib/swell-iscsi/volumes/pvc-a1/disk.img"))
    #expect(targets[0].lun(0)?.backingStore == nil)
    #expect(targets[0].acl == ["127.0.0.1", "10.0.0.0/8"])
    #expect(targets[1].sessions.isEmpty)
    #expect(targets[1].lun(1) == nil)
    #expect(targets[1].acl == ["ALL"])
  }

  @Test func emptyAndGarbage() {
    #expect(TgtTarget.parse("").isEmpty)
    #expect(TgtTarget.parse("tgtadm: can't send the request to the tgt daemon\n").isEmpty)
  }

  @Test func megabytesMatchTgtRoundingAndTellMiBApart() {
    #expect(TgtTarget.megabytes(64 << 20) == 67)
    #expect(TgtTarget.megabytes(11 << 20) == 12)  // 11.53 MB: tgt showed 12
    #expect(TgtTarget.megabytes(1 << 20) == 1)
    for mib in Int64(1)...4096 {
      #expect(TgtTarget.megabytes(mib << 20) != TgtTarget.megabytes((mib + 1) << 20))
    }
  }
}

@Suite struct IscsiEndpointTests {
  func context(_ portal: String, _ iqn: String = "iqn.2026-11.dev.swell:pvc-1", _ lun: String = "1") -> [String: String] {
    ["portal": portal, "iqn": iqn, "lun": lun]
  }

  @Test func accepted() throws {
    let e = try IscsiEndpoint(context: context("10.0.2.2:3260"))
    #expect(e == IscsiEndpoint(portal: "10.0.2.2:3260", iqn: "iqn.2026-11.dev.swell:pvc-1", lun: 1))
    _ = try IscsiEndpoint(context: context("storage.example.com:3260"))
    _ = try IscsiEndpoint(context: context("[fd00::1]:3260"))
    #expect(try IscsiEndpoint.decode(e.encoded(), what: "r") == e)
    #expect(e.encoded().hasPrefix("version=1\n"))
  }

  @Test func recordsOfEveryFormatStillReadAndNoNewer() throws {
    let e = IscsiEndpoint(portal: "10.0.2.2:3260", iqn: "iqn.2026-11.dev.swell:pvc-1", lun: 1)
    // Written before records had versions: format 1.
    #expect(try IscsiEndpoint.decode("portal=10.0.2.2:3260\niqn=iqn.2026-11.dev.swell:pvc-1\nlun=1\n", what: "r") == e)
    let newer = "version=2\nportal=10.0.2.2:3260\niqn=iqn.2026-11.dev.swell:pvc-1\nlun=1\n"
    #expect(throws: SwellError.self) { try IscsiEndpoint.decode(newer, what: "r") }
    do {
      _ = try IscsiEndpoint.decode(newer, what: "the node's iSCSI record of volume pvc-1")
    } catch let error as SwellError {
      #expect(error.kind == .failedPrecondition)
      #expect(error.message.contains("pvc-1") && error.message.contains("format 2"))
    }
    #expect(try ChapNames.decode("username=alice\n", what: "c") == ChapNames(username: "alice", usernameIn: nil))
    let names = ChapNames(username: "alice", usernameIn: "target-swell")
    #expect(try ChapNames.decode(names.encoded(), what: "c") == names)
    #expect(throws: SwellError.self) { try ChapNames.decode("version=2\nusername=alice\n", what: "c") }
  }

  @Test func refusedBeforeReachingIscsiadm() {
    let bad: [[String: String]] = [
      [:],
      context("10.0.2.2"), context("10.0.2.2:0"), context("10.0.2.2:99999"), context(":3260"),
      context("-oProxyCommand=x:3260"), context("a b:3260"), context("host;rm:3260"), context("[zz::1]:3260"),
      context("10.0.2.2:3260", "IQN.upper:x"), context("10.0.2.2:3260", "iqn.x y"), context("10.0.2.2:3260", "notiqn"),
      context("10.0.2.2:3260", "iqn.2026-11.dev.swell:pvc-1", "-1"),
      context("10.0.2.2:3260", "iqn.2026-11.dev.swell:pvc-1", "01"),
      context("10.0.2.2:3260", "iqn.2026-11.dev.swell:pvc-1", "x"),
    ]
    for ctx in bad {
      #expect(throws: SwellError.self, "\(ctx)") { try IscsiEndpoint(context: ctx) }
    }
  }

  @Test func targetNamesFromVolumeIDs() throws {
    try IscsiBackend.validateForIQN("pvc-0b5e2c1a-7d4e-4a8b-9b7c-1f2e3d4c5b6a")
    #expect(throws: SwellError.self) { try IscsiBackend.validateForIQN("PVC-1") }
    #expect(throws: SwellError.self) { try IscsiBackend.validateForIQN("pvc_1") }
  }
}

@Suite struct IscsiSysfsTests {
  /// A sysfs tree shaped as the kernel lays out one session with LUN 0 (none) and LUN 1 (sdb).
  @Test func findsTheDiskOfALunThroughTheSession() throws {
    let root = try makeTemporaryDirectory(prefix: "swell-unit-sysfs-")
    defer { try? removeTree(root) }
    let session = "\(root)/iscsi_session/session4"
    try makeDirectories(session + "/device/target2:0:0/2:0:0:0")
    try makeDirectories(session + "/device/target2:0:0/2:0:0:1/block/sdb")
    try writeFileAtomically(session + "/targetname", Array("iqn.2026-11.dev.swell:pvc-1\n".utf8))
    try writeFileAtomically(session + "/state", Array("LOGGED_IN\n".utf8))
    let block = session + "/device/target2:0:0/2:0:0:1/block/sdb"
    try writeFileAtomically(block + "/dev", Array("8:16\n".utf8))
    try writeFileAtomically(block + "/size", Array("131072\n".utf8))

    let initiator = IscsiInitiator(exec: SystemExecutor(), sysClass: root)
    let found = try #require(try initiator.session(iqn: "iqn.2026-11.dev.swell:pvc-1"))
    #expect(found.sid == 4 && found.state == "LOGGED_IN")
    #expect(try initiator.session(iqn: "iqn.2026-11.dev.swell:other") == nil)
    #expect(try initiator.disk(lun: 1, of: found) == IscsiDisk(name: "sdb", major: 8, minor: 16, sizeBytes: 64 << 20))
    #expect(try initiator.disk(lun: 0, of: found) == nil)
    #expect(try initiator.disk(lun: 2, of: found) == nil)
  }

  @Test func noTransportMeansNoSessions() throws {
    let root = try makeTemporaryDirectory(prefix: "swell-unit-sysfs-")
    defer { try? removeTree(root) }
    #expect(try IscsiInitiator(exec: SystemExecutor(), sysClass: root).sessions().isEmpty)
  }
}
