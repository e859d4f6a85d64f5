import SwellHost
import Synchronization

/// What a directory volume records beside its data: its project ID and size.
public struct DirectoryMeta: Sendable, Equatable {
  public static let version = 1
  public var project: UInt32
  public var capacityBytes: Int64
  /// The snapshot or volume its first contents were copied from.
  public var source: VolumeSource?
  /// Its limit is not reserved out of the free space (``VolumeSpec/overcommit``).
  public var overcommit: Bool
  /// Its project's inode limit (``VolumeSpec/inodeLimit``); 0: none.
  public var inodeLimit: Int64

  public init(
    project: UInt32, capacityBytes: Int64, source: VolumeSource? = nil, overcommit: Bool = false, inodeLimit: Int64 = 0
  ) {
    self.project = project
    self.capacityBytes = capacityBytes
    self.source = source
    self.overcommit = overcommit
    self.inodeLimit = inodeLimit
  }

  public func encoded() -> String {
    "version=\(Self.version)\nproject=\(project)\ncapacity_bytes=\(capacityBytes)\n"
      + (source.map { "source=\($0.encoded)\n" } ?? "") + (overcommit ? "overcommit=true\n" : "")
      + (inodeLimit > 0 ? "inode_limit=\(inodeLimit)\n" : "")
  }

  public static func decode(_ text: String) throws -> DirectoryMeta {
    let fields = try metadataFields(text)
    try RecordFormat.check(fields["version"], current: version, what: "its metadata")
    guard let project = fields["project"].flatMap(UInt32.init),
      let capacity = fields["capacity_bytes"].flatMap(Int64.init), capacity > 0
    else { throw SwellError(.internal, "directory volume metadata is incomplete") }
    var source: VolumeSource? = nil
    if let text = fields["source"] {
      guard let decoded = VolumeSource(encoded: text) else { throw SwellError(.internal, "directory volume metadata names source \(text)") }
      source = decoded
    }
    return DirectoryMeta(
      project: project, capacityBytes: capacity, source: source, overcommit: fields["overcommit"] == "true",
      inodeLimit: fields["inode_limit"].flatMap(Int64.init) ?? 0)
  }
}

/// One caller at a time, across copies of the backend value.
final class Serial: Sendable {
  private let mutex = Mutex(())
  func run<T>(_ body: () throws -> T) throws -> T { try mutex.withLock { _ in try body() } }
}
