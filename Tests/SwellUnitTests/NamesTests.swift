import Testing
import SwellHost
import SwellStorage

@Suite struct NamesTests {
  @Test(arguments: ["pvc-3f1c9d1e-0b7a-4a47-9c1e-2d3a4b5c6d7e", "a", "vol_1.img", String(repeating: "x", count: 128)])
  func acceptsPlainNames(name: String) throws {
    try Names.validateVolumeID(name)
  }

  @Test(arguments: [
    "", "..", ".", ".hidden", "a/b", "../../etc/passwd", "a\u{0}b", String(repeating: "x", count: 129), "sp ace",
    "semi;colon", "new\nline", "ünïcode", "-rf", "--help", "-",
  ])
  func rejectsNamesThatCouldEscapeOrConfuse(name: String) {
    let error = #expect(throws: SwellError.self) { try Names.validateVolumeID(name) }
    #expect(error?.kind == .invalidArgument)
  }

  @Test(arguments: ["/var/lib/kubelet/pods/x/mount", "/a", "/a/b/"])
  func acceptsCleanAbsolutePaths(path: String) throws {
    try Names.validateAbsolutePath(path, field: "target_path")
  }

  @Test(arguments: ["", "relative/path", "/", "/a/../b", "/a/./b", "/a//b", "/a\u{0}b", "/..", "./a"])
  func rejectsOtherPaths(path: String) {
    let error = #expect(throws: SwellError.self) { try Names.validateAbsolutePath(path, field: "target_path") }
    #expect(error?.kind == .invalidArgument)
    #expect(error?.message.contains("target_path") == true)
  }

  @Test func mountFlags() throws {
    try Names.validateMountFlags(["noatime", "discard", "data=ordered"])
    #expect(throws: SwellError.self) { try Names.validateMountFlags([""]) }
    #expect(throws: SwellError.self) { try Names.validateMountFlags(["a\nb"]) }
  }
}

@Suite struct SnapshotMetadataTests {
  @Test func volumeSourcesRoundTrip() {
    for source in [VolumeSource.snapshot("snap-1"), .volume("pvc-a")] {
      #expect(VolumeSource(encoded: source.encoded) == source)
    }
    #expect(VolumeSource(encoded: "disk:x") == nil)
  }

  @Test func volumeMetadataKeepsItsSourceAndOlderFilesHaveNone() throws {
    let meta = VolumeMeta(access: .mount, fsType: "xfs", capacityBytes: 1 << 20, source: .snapshot("s"))
    #expect(try VolumeMeta.decode(meta.encoded()) == meta)
    let old = "version=1\naccess=block\nfs_type=\ncapacity_bytes=1048576\n"
    #expect(try VolumeMeta.decode(old).source == nil)
    #expect(throws: SwellError.self) { try VolumeMeta.decode(old + "source=bogus\n") }
  }

  @Test func snapshotMetadataRoundTripsAndRefusesWhatIsIncomplete() throws {
    let meta = SnapshotMeta(sourceVolumeID: "v", sizeBytes: 4096, createdUnixNanos: 1_796_153_550_370_043_995, method: .reflink)
    #expect(try SnapshotMeta.decode(meta.encoded()) == meta)
    #expect(throws: SwellError.self) { try SnapshotMeta.decode("version=1\nsource_volume=v\n") }
    #expect(throws: SwellError.self) { try SnapshotMeta.decode(meta.encoded().replacing("method=reflink", with: "method=dd")) }
  }
}
