import Testing
@testable import SwellHost
@testable import SwellStorage

@Suite struct LvmReportTests {
  // `lvm lvs --reportformat json --units b --nosuffix -o …` from lvm2 2.03.16 (Debian bookworm),
  // recorded in the VM tier: a thin pool and one of Swell's thin volumes.
  let lvs = """
      {
          "report": [
              {
                  "lv": [
                      {"lv_name":"pool0", "vg_name":"vg0", "lv_path":"", "lv_size":"268435456", "lv_tags":"", "lv_active":"active", "pool_lv":"", "data_percent":"0.00", "metadata_percent":"10.94", "segtype":"thin-pool", "lv_attr":"twi-aotz--"},
                      {"lv_name":"sw-pvc-1", "vg_name":"vg0", "lv_path":"/dev/vg0/sw-pvc-1", "lv_size":"104857600", "lv_tags":"swell.csi.dev/volume=pvc-1,swell.csi.dev/access=mount,swell.csi.dev/fstype=xfs", "lv_active":"active", "pool_lv":"pool0", "data_percent":"3.25", "metadata_percent":"", "segtype":"thin", "lv_attr":"Vwi-aotz--"},
                      {"lv_name":"other", "vg_name":"vg0", "lv_path":"/dev/vg0/other", "lv_size":"4194304", "lv_tags":"", "lv_active":"", "pool_lv":"", "data_percent":"", "metadata_percent":"", "segtype":"linear", "lv_attr":"-wi-------"}
                  ]
              }
          ]
      }
    """

  @Test func logicalVolumes() throws {
    let all = try LvmReport.logicalVolumes(lvs)
    #expect(all.map(\.name) == ["pool0", "sw-pvc-1", "other"])
    let pool = all[0]
    #expect(pool.segmentType == "thin-pool" && pool.sizeBytes == 256 << 20)
    #expect(pool.dataPercent == 0 && pool.metadataPercent == 10.94)
    let thin = all[1]
    #expect(thin.path == "/dev/vg0/sw-pvc-1" && thin.pool == "pool0" && thin.active && thin.isOpen)
    #expect(thin.tag("swell.csi.dev/volume") == "pvc-1" && thin.tag("swell.csi.dev/fstype") == "xfs")
    #expect(thin.tag("missing") == nil && thin.metadataPercent == nil)
    #expect(!all[2].active && !all[2].isOpen && all[2].tags.isEmpty)
  }

  @Test func volumeGroups() throws {
    let vgs = """
        {"report": [{"vg": [{"vg_name":"vg0", "vg_size":"1069547520", "vg_free":"792723456", "vg_extent_size":"4194304"}]}]}
      """
    #expect(try LvmReport.volumeGroups(vgs) == [
      VolumeGroup(name: "vg0", sizeBytes: 1_069_547_520, freeBytes: 792_723_456, extentBytes: 4 << 20)
    ])
  }

  @Test func emptyAndBrokenReports() throws {
    #expect(try LvmReport.logicalVolumes(#"{"report": [{"lv": []}]}"#).isEmpty)
    for bad in ["", "not json", #"{"report": [{"lv": [{"lv_name":"x"}]}]}"#,
                #"{"report": [{"lv": [{"lv_name":"x", "vg_name":"v", "lv_path":"", "lv_size":"12.5", "lv_tags":"", "lv_active":"", "pool_lv":"", "data_percent":"", "metadata_percent":"", "segtype":"thin", "lv_attr":""}]}]}"#] {
      #expect(throws: SwellError.self, "\(bad)") { try LvmReport.logicalVolumes(bad) }
    }
    #expect(throws: SwellError.self) { try LvmReport.volumeGroups(#"{"report": [{"vg": [{"vg_name":"v"}]}]}"#) }
  }

  @Test func recordsAreOnlyOurTaggedThinVolumes() throws {
    let backend = LvmBackend(config: LvmConfig(volumeGroup: "vg0", thinPools: ["pool0"]), exec: SystemExecutor())
    let all = try LvmReport.logicalVolumes(lvs)
    #expect(try backend.record(all[0]) == nil)
    #expect(try backend.record(all[2]) == nil)
    let record = try #require(try backend.record(all[1]))
    #expect(record.id == "pvc-1" && record.capacityBytes == 100 << 20 && record.access == .mount && record.fsType == "xfs")
    #expect(record.backend == "lvm" && record.isLocal)
    // A tag naming another volume than the LV's name says is not trusted.
    var forged = all[1]
    forged.tags = ["swell.csi.dev/volume=pvc-2", "swell.csi.dev/access=mount"]
    #expect(try backend.record(forged) == nil)
    // Nor is a volume in a pool this node was not told to use.
    let elsewhere = LvmBackend(config: LvmConfig(volumeGroup: "vg0", thinPools: ["fast"]), exec: SystemExecutor())
    #expect(try elsewhere.record(all[1]) == nil)
  }

  @Test func tagsOfANewerFormatAreRefusedAndThoseWithoutAFormatAreFormatOne() throws {
    let backend = LvmBackend(config: LvmConfig(volumeGroup: "vg0", thinPools: ["pool0"]), exec: SystemExecutor())
    var lv = try LvmReport.logicalVolumes(lvs)[1]
    #expect(!lv.tags.contains { $0.hasPrefix("swell.csi.dev/format=") }, "made before formats: format 1")
    #expect(try backend.record(lv)?.id == "pvc-1")
    lv.tags.append("swell.csi.dev/format=1")
    #expect(try backend.record(lv)?.id == "pvc-1")
    lv.tags[lv.tags.count - 1] = "swell.csi.dev/format=2"
    do {
      _ = try backend.record(lv)
      Issue.record("a newer format was read")
    } catch let error as SwellError {
      #expect(error.kind == .failedPrecondition && error.message.contains("format 2") && error.message.contains(lv.name))
    }
  }

  @Test func aTaggedLinearLVIsAThickVolumeWithNoPool() throws {
    let backend = LvmBackend(config: LvmConfig(volumeGroup: "vg0", thinPools: []), exec: SystemExecutor())
    var linear = try LvmReport.logicalVolumes(lvs)[2]
    #expect(try backend.record(linear) == nil, "untagged: not ours")
    linear.name = "sw-pvc-9"
    linear.tags = ["swell.csi.dev/volume=pvc-9", "swell.csi.dev/access=block"]
    let record = try #require(try backend.record(linear))
    #expect(record.thick && record.id == "pvc-9" && record.access == .block && record.context.isEmpty)
    // A thin LV of a pool this node does not use is still not ours, thick or not.
    #expect(try backend.record(try LvmReport.logicalVolumes(lvs)[1]) == nil)
    // With no thin pool, a thin class is refused with the way out named.
    #expect(throws: SwellError.self) { try backend.pool(named: nil) }
  }

  @Test func lvNames() throws {
    #expect(try LvmBackend.lvName("pvc-0b5e2c1a-7d4e-4a8b-9b7c-1f2e3d4c5b6a") == "sw-pvc-0b5e2c1a-7d4e-4a8b-9b7c-1f2e3d4c5b6a")
    #expect(throws: SwellError.self) { try LvmBackend.lvName(String(repeating: "a", count: 125)) }
    #expect(throws: SwellError.self) { try LvmBackend.lvName("x_tmeta") }
    let backend = LvmBackend(config: LvmConfig(volumeGroup: "vg0", thinPools: ["pool0", "fast"]), exec: SystemExecutor())
    #expect(try backend.pool(named: nil) == "pool0")
    #expect(try backend.pool(named: "fast") == "fast")
    #expect(throws: SwellError.self) { try backend.pool(named: "slow") }
  }
}
