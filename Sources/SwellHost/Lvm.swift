import FoundationEssentials

/// One logical volume from `lvs --reportformat json --units b --nosuffix`.
public struct LogicalVolume: Sendable, Equatable {
  public var name: String
  public var vg: String
  /// `/dev/<vg>/<lv>`; empty for hidden LVs such as a thin pool.
  public var path: String
  public var sizeBytes: Int64
  public var tags: [String]
  public var active: Bool
  /// The thin pool of a thin LV; empty otherwise.
  public var pool: String
  /// For a thin pool, how full its data and metadata are (0 to 100); nil when LVM leaves them blank.
  public var dataPercent: Double?
  public var metadataPercent: Double?
  /// `thin`, `thin-pool`, `linear`, …
  public var segmentType: String
  /// `lv_attr`: the sixth character is `o` while the device is open (mounted, or held by a process).
  public var attributes: String

  public var isOpen: Bool {
    let chars = Array(attributes)
    return chars.count > 5 && chars[5] == "o"
  }

  /// The value of a `key=value` tag, if present.
  public func tag(_ key: String) -> String? {
    tags.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
  }
}

/// One volume group from `vgs --reportformat json --units b --nosuffix`.
public struct VolumeGroup: Sendable, Equatable {
  public var name: String
  public var sizeBytes: Int64
  public var freeBytes: Int64
  public var extentBytes: Int64
}

/// LVM's JSON reports: `{"report": [{"lv": [{...}]}]}`, every value a string.
public enum LvmReport {
  struct Report<Row: Decodable>: Decodable {
    struct Section: Decodable {
      var lv: [Row]?
      var vg: [Row]?
    }
    var report: [Section]
  }

  static let lvFields = [
    "lv_name", "vg_name", "lv_path", "lv_size", "lv_tags", "lv_active", "pool_lv", "data_percent",
    "metadata_percent", "segtype", "lv_attr",
  ]
  static let vgFields = ["vg_name", "vg_size", "vg_free", "vg_extent_size"]

  /// Parses an `lvs` report; throws INTERNAL on anything that is not one.
  public static func logicalVolumes(_ json: String) throws -> [LogicalVolume] {
    let rows = try decode(json, \.lv)
    return try rows.map { row in
      func field(_ name: String) throws -> String {
        guard let value = row[name] else { throw SwellError(.internal, "lvs report lacks \(name)") }
        return value
      }
      guard let size = Int64(try field("lv_size")) else {
        throw SwellError(.internal, "lvs reported a size that is not bytes: \(row["lv_size"] ?? "")")
      }
      let tags = try field("lv_tags")
      return LogicalVolume(
        name: try field("lv_name"), vg: try field("vg_name"), path: try field("lv_path"), sizeBytes: size,
        tags: tags.isEmpty ? [] : tags.split(separator: ",").map(String.init),
        active: try field("lv_active") == "active", pool: try field("pool_lv"),
        dataPercent: Double(try field("data_percent")), metadataPercent: Double(try field("metadata_percent")),
        segmentType: try field("segtype"), attributes: try field("lv_attr"))
    }
  }

  /// Parses a `vgs` report.
  public static func volumeGroups(_ json: String) throws -> [VolumeGroup] {
    try decode(json, \.vg).map { row in
      guard let name = row["vg_name"], let size = row["vg_size"].flatMap({ Int64($0) }),
        let free = row["vg_free"].flatMap({ Int64($0) }), let extent = row["vg_extent_size"].flatMap({ Int64($0) }),
        extent > 0
      else { throw SwellError(.internal, "vgs report row is incomplete: \(row)") }
      return VolumeGroup(name: name, sizeBytes: size, freeBytes: free, extentBytes: extent)
    }
  }

  static func decode(
    _ json: String, _ section: KeyPath<Report<[String: String]>.Section, [[String: String]]?>
  ) throws -> [[String: String]] {
    do {
      let report = try JSONDecoder().decode(Report<[String: String]>.self, from: Data(json.utf8))
      return report.report.flatMap { $0[keyPath: section] ?? [] }
    } catch {
      throw SwellError(.internal, "LVM printed a report that is not JSON as expected: \(error)")
    }
  }
}

/// LVM, run as `lvm <command> …` (one binary, no symlinks needed), with `LC_ALL=C` and killed when
/// the RPC is cancelled (``Executor``).
public struct Lvm: Sendable {
  let exec: any Executor

  public init(exec: any Executor) {
    self.exec = exec
  }

  /// Every LV in `vg`.
  public func logicalVolumes(vg: String) async throws -> [LogicalVolume] {
    let out = try await exec.output(
      ["lvm", "lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", LvmReport.lvFields.joined(separator: ","), vg])
    guard out.exitCode == 0 else {
      throw SwellError(.unavailable, "lvs \(vg) failed (exit \(out.exitCode)): \(out.stderr.trimmingWhitespace())")
    }
    return try LvmReport.logicalVolumes(out.stdout)
  }

  public func volumeGroup(_ vg: String) async throws -> VolumeGroup {
    let out = try await exec.output(
      ["lvm", "vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", LvmReport.vgFields.joined(separator: ","), vg])
    guard out.exitCode == 0, let group = try LvmReport.volumeGroups(out.stdout).first else {
      throw SwellError(.unavailable, "volume group \(vg) is not available: \(out.stderr.trimmingWhitespace())")
    }
    return group
  }

  /// Creates a thin LV of `bytes` (a multiple of the extent size) in `vg/pool`, tagged, active.
  public func createThin(vg: String, pool: String, name: String, bytes: Int64, tags: [String]) async throws {
    var argv = ["lvm", "lvcreate", "-q", "-V", "\(bytes)b", "--thinpool", "\(vg)/\(pool)", "-n", name,
                "--setactivationskip", "n"]
    for tag in tags { argv += ["--addtag", tag] }
    try await exec.run(argv)
  }

  /// Creates a linear (thick) LV of `bytes` (a multiple of the extent size) in `vg`, tagged, active.
  /// Its extents are allocated now: writes go straight to the physical volume, with no pool
  /// metadata to commit on a flush.
  public func createLinear(vg: String, name: String, bytes: Int64, tags: [String]) async throws {
    var argv = ["lvm", "lvcreate", "-q", "-L", "\(bytes)b", "-n", name, "--setactivationskip", "n", "--wipesignatures", "y", "-Zy"]
    for tag in tags { argv += ["--addtag", tag] }
    try await exec.run(argv + [vg])
  }

  /// Creates a thin snapshot `name` of the thin LV `vg/origin`, in the origin's pool, tagged.
  /// `active` makes it an ordinary LV that activates (a volume); otherwise it keeps LVM's
  /// activation-skip flag, as snapshots do. Device-mapper suspends the origin for it, which
  /// freezes a filesystem mounted on it, so the snapshot is consistent.
  public func createThinSnapshot(vg: String, origin: String, name: String, tags: [String], active: Bool) async throws {
    var argv = ["lvm", "lvcreate", "-q", "-s", "-n", name, "--setactivationskip", active ? "n" : "y"]
    for tag in tags { argv += ["--addtag", tag] }
    try await exec.run(argv + ["\(vg)/\(origin)"])
  }

  public func extend(vg: String, name: String, to bytes: Int64) async throws {
    try await exec.run(["lvm", "lvextend", "-q", "-L", "\(bytes)b", "\(vg)/\(name)"])
  }

  public func remove(vg: String, name: String) async throws {
    try await exec.run(["lvm", "lvremove", "-q", "-y", "\(vg)/\(name)"])
  }

  public func activate(vg: String, name: String) async throws {
    try await exec.run(["lvm", "lvchange", "-ay", "\(vg)/\(name)"])
  }
}
