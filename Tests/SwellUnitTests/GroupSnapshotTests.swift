import Testing
import SwellHost
import SwellStorage

@Suite struct GroupSnapshotTests {
  func member(_ id: String, of source: String, group: String?, size: Int, created: Int64 = 1) -> SnapshotRecord {
    var r = SnapshotRecord(
      id: id, sourceVolumeID: source, sizeBytes: 4096, createdUnixNanos: created, readyToUse: true, backend: "loop",
      method: "reflink")
    r.groupID = group
    r.groupSize = size
    return r
  }

  @Test func membersFollowTheSortedSources() throws {
    let spec = try GroupSnapshotSpec(id: "g", sourceVolumeIDs: ["wal", "data"])
    #expect(spec.members == [SnapshotSpec(id: "g.0", sourceVolumeID: "data"), SnapshotSpec(id: "g.1", sourceVolumeID: "wal")])
  }

  @Test(arguments: [[String](), ["a", "a"], ["a", "../b"], ["a", ""]])
  func refusesSourcesThatAreNotADistinctList(sources: [String]) {
    let error = #expect(throws: SwellError.self) { try GroupSnapshotSpec(id: "g", sourceVolumeIDs: sources) }
    #expect(error?.kind == .invalidArgument)
  }

  @Test func refusesMoreMembersThanTheLimitAndNamesWithoutRoomForASuffix() {
    let many = (0...GroupSnapshotSpec.maxMembers).map { "v\($0)" }
    #expect(throws: SwellError.self) { try GroupSnapshotSpec(id: "g", sourceVolumeIDs: many) }
    #expect(throws: SwellError.self) { try GroupSnapshotSpec(id: String(repeating: "g", count: 126), sourceVolumeIDs: ["a"]) }
    #expect((try? GroupSnapshotSpec(id: String(repeating: "g", count: 125), sourceVolumeIDs: ["a"])) != nil)
  }

  @Test func aWholeGroupWithTheSameSourcesIsTheAnswer() throws {
    let spec = try GroupSnapshotSpec(id: "g", sourceVolumeIDs: ["b", "a"])
    let whole = [member("g.1", of: "b", group: "g", size: 2), member("g.0", of: "a", group: "g", size: 2)]
    #expect(try spec.resolve(whole) == .done(whole.reversed()))
  }

  @Test func aWholeGroupWithOtherSourcesOrAForeignMemberIsAlreadyExists() throws {
    let spec = try GroupSnapshotSpec(id: "g", sourceVolumeIDs: ["a", "c"])
    let whole = [member("g.0", of: "a", group: "g", size: 2), member("g.1", of: "b", group: "g", size: 2)]
    #expect(throws: SwellError.self) { try spec.resolve(whole) }
    let foreign = [member("g.0", of: "a", group: nil, size: 0)]
    let error = #expect(throws: SwellError.self) { try spec.resolve(foreign) }
    #expect(error?.kind == .alreadyExists)
  }

  @Test func aGroupThatIsNotWholeIsLeftoversToRemove() throws {
    let spec = try GroupSnapshotSpec(id: "g", sourceVolumeIDs: ["a", "b"])
    #expect(try spec.resolve([member("g.0", of: "a", group: "g", size: 2)]) == .take(leftovers: ["g.0"]))
    #expect(try spec.resolve([]) == .take(leftovers: []))
  }

  @Test func straysAreTheMembersOfGroupsThatAreNotWhole() {
    let snapshots = [
      member("g.0", of: "a", group: "g", size: 2), member("g.1", of: "b", group: "g", size: 2),
      member("h.1", of: "b", group: "h", size: 2), member("s", of: "a", group: nil, size: 0),
    ]
    #expect(GroupSnapshots.strays(snapshots) == ["h.1"])
    #expect(GroupSnapshots.visible(snapshots).map(\.id) == ["g.0", "g.1", "s"])
    #expect(GroupSnapshots.whole(Array(snapshots.prefix(2))) != nil)
    #expect(GroupSnapshots.whole([snapshots[0], snapshots[2]]) == nil)
  }

  @Test func theGroupTravelsInTheSnapshotsMetadata() throws {
    var meta = SnapshotMeta(sourceVolumeID: "v", sizeBytes: 4096, createdUnixNanos: 7, method: .copy)
    meta.group = ("g", 3)
    let decoded = try SnapshotMeta.decode(meta.encoded())
    #expect(decoded == meta && decoded.group?.id == "g" && decoded.group?.size == 3)
    #expect(throws: SwellError.self) { try SnapshotMeta.decode(meta.encoded().replacingOccurrences(of: "group_size=3\n", with: "")) }
  }
}
