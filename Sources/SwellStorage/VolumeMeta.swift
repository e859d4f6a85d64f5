import SwellHost

/// The small record kept beside each backing file: what the volume was created as.
///
/// Stored as `key=value` lines, written atomically. The backing file's own size is the truth
/// for capacity; `capacityBytes` here is what the driver last set, used to spot truncation.
public struct VolumeMeta: Sendable, Equatable {
  public static let version = 1
  public var access: AccessKind
  public var fsType: String
  public var capacityBytes: Int64
  /// The snapshot or volume it was made from; absent for an empty volume.
  public var source: VolumeSource?
  /// Preallocated (`provisioning=thick`); absent means thin, as every volume before it was.
  public var thick: Bool

  public init(access: AccessKind, fsType: String, capacityBytes: Int64, source: VolumeSource? = nil, thick: Bool = false) {
    self.access = access
    self.fsType = fsType
    self.capacityBytes = capacityBytes
    self.source = source
    self.thick = thick
  }

  public func encoded() -> String {
    "version=\(Self.version)\naccess=\(access.rawValue)\nfs_type=\(fsType)\ncapacity_bytes=\(capacityBytes)\n"
      + (source.map { "source=\($0.encoded)\n" } ?? "") + (thick ? "provisioning=thick\n" : "")
  }

  /// Parses ``encoded()``; throws on any missing, unknown or malformed field.
  public static func decode(_ text: String) throws -> VolumeMeta {
    let fields = try metadataFields(text)
    try RecordFormat.check(fields["version"], current: version, what: "its metadata")
    guard let access = fields["access"].flatMap(AccessKind.init(rawValue:)),
      let fsType = fields["fs_type"],
      let capacity = fields["capacity_bytes"].flatMap(Int64.init), capacity > 0
    else { throw SwellError(.internal, "metadata is incomplete") }
    var source: VolumeSource?
    if let text = fields["source"] {
      guard let parsed = VolumeSource(encoded: text) else { throw SwellError(.internal, "metadata source \(text) is malformed") }
      source = parsed
    }
    let thick: Bool
    switch fields["provisioning"] {
    case nil, "thin": thick = false
    case "thick": thick = true
    case let other?: throw SwellError(.internal, "metadata provisioning \(other) is neither thin nor thick")
    }
    return VolumeMeta(access: access, fsType: fsType, capacityBytes: capacity, source: source, thick: thick)
  }
}

/// The fields of a metadata file (`key=value` lines, as volumes and snapshots keep them); a line
/// without `=` is INTERNAL.
func metadataFields(_ text: String) throws -> [String: String] {
  var fields: [String: String] = [:]
  for line in text.split(separator: "\n") {
    guard let eq = line.firstIndex(of: "=") else { throw SwellError(.internal, "malformed metadata line \(line)") }
    fields[String(line[..<eq])] = String(line[line.index(after: eq)...])
  }
  return fields
}
