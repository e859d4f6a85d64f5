import CSIProto
import SwellHost
import Testing

@testable import SwellDriver

/// The spec's second NodePublishVolume table, as PublishRules applies it to what the mount table shows.
@Suite struct PublishRulesTests {
  typealias Mode = Csi_V1_VolumeCapability.AccessMode.Mode

  func bind(_ path: String, readOnly: Bool) -> MountEntry {
    MountInfo.parse("130 22 7:0 / \(path) \(readOnly ? "ro" : "rw"),relatime shared:70 - ext4 /dev/loop0 rw")[0]
  }

  func code(_ mode: Mode, readOnly: Bool, others: [MountEntry]) -> SwellError.Kind? {
    do {
      try PublishRules.check(volume: "v", mode: mode, readOnly: readOnly, others: others)
      return nil
    } catch let error as SwellError {
      return error.kind
    } catch {
      return .internal
    }
  }

  @Test(arguments: [Mode.singleNodeWriter, .singleNodeSingleWriter, .singleNodeMultiWriter])
  func theFirstPublishIsAlwaysAllowed(mode: Mode) {
    #expect(code(mode, readOnly: false, others: []) == nil)
    #expect(code(mode, readOnly: true, others: []) == nil)
  }

  @Test(arguments: [Mode.singleNodeWriter, .singleNodeSingleWriter])
  func singleWriterModesRefuseASecondTarget(mode: Mode) {
    #expect(code(mode, readOnly: false, others: [bind("/t1", readOnly: false)]) == .failedPrecondition)
    #expect(code(mode, readOnly: true, others: [bind("/t1", readOnly: true)]) == .failedPrecondition)
  }

  @Test func multiWriterAllowsManyTargetsWritableOrNot() {
    let others = [bind("/t1", readOnly: false), bind("/t2", readOnly: true)]
    #expect(code(.singleNodeMultiWriter, readOnly: false, others: others) == nil)
    #expect(code(.singleNodeMultiWriter, readOnly: true, others: others) == nil)
  }

  @Test func readerOnlyAllowsOnlyReadOnlyTargetsAndNoWritableNeighbour() {
    #expect(code(.singleNodeReaderOnly, readOnly: false, others: []) == .failedPrecondition)
    #expect(code(.singleNodeReaderOnly, readOnly: true, others: []) == nil)
    #expect(code(.singleNodeReaderOnly, readOnly: true, others: [bind("/t1", readOnly: true)]) == nil)
    #expect(code(.singleNodeReaderOnly, readOnly: true, others: [bind("/t1", readOnly: false)]) == .failedPrecondition)
  }
}

@Suite struct ToolsTests {
  @Test func findsToolsOnThePathAndNamesThePackageOfAMissingOne() throws {
    #expect(Tools.locate("sh", path: "/nonexistent:/bin:/usr/bin") != nil)
    #expect(Tools.locate("sh", path: "/nonexistent") == nil)
    let error = Tools.missing("mkfs.xfs")
    #expect(error.kind == .failedPrecondition)
    #expect(error.message.contains("mkfs.xfs") && error.message.contains("xfsprogs"))
    #expect(ErrorMapping.rpcError(error).code == .failedPrecondition)
  }

  @Test func everyNodeToolHasAPackage() {
    for tool in Tools.node { #expect(Tools.packages[tool] != nil, "\(tool)") }
  }
}
