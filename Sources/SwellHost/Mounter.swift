/// What `blkid` finds on a device.
public enum DeviceContents: Sendable, Equatable {
  /// No signature at all: the only state in which a device may be formatted.
  case empty
  /// A filesystem of this type.
  case filesystem(String)
  /// Something else (a partition table, RAID or LVM member, an ambivalent result).
  case other(String)
}

/// The filesystems Swell formats and grows.
public enum FileSystemType: String, Sendable, CaseIterable {
  case ext4
  case xfs
}

/// Mounts, probes, formats and grows filesystems through the standard tools, as argv arrays.
public struct Mounter: Sendable {
  private let exec: any Executor

  public init(exec: any Executor) {
    self.exec = exec
  }

  /// Probes a device with `blkid -p`. Exit 2 means nothing was found; any other failure throws,
  /// so that a device blkid cannot read is never taken for an empty one.
  public func probe(_ device: String) async throws -> DeviceContents {
    let argv = ["blkid", "-p", "-o", "export", device]
    let out = try await exec.output(argv)
    switch out.exitCode {
    case 0: return Self.parseBlkid(out.stdout)
    case 2: return .empty
    default:
      throw SwellError(
        .internal, "blkid could not probe \(device); refusing to treat it as empty",
        cause: CommandError(argv: argv, exitCode: out.exitCode, stderr: out.stderr, reason: "failed"))
    }
  }

  /// Reads `blkid -o export` output (KEY=value lines).
  public static func parseBlkid(_ text: String) -> DeviceContents {
    var fields: [String: String] = [:]
    for line in text.split(separator: "\n") {
      guard let eq = line.firstIndex(of: "=") else { continue }
      fields[String(line[..<eq])] = String(line[line.index(after: eq)...])
    }
    if let type = fields["TYPE"], fields["USAGE"] == nil || fields["USAGE"] == "filesystem" {
      return .filesystem(type)
    }
    if fields.isEmpty { return .other("unrecognised blkid output") }
    let summary = fields.keys.sorted().map { "\($0)=\(fields[$0]!)" }.joined(separator: " ")
    return .other(summary)
  }

  /// Makes a filesystem. The caller must have seen ``DeviceContents/empty`` from ``probe(_:)``;
  /// neither tool is forced, so each also refuses a device on which it finds a signature.
  public func format(_ device: String, as type: FileSystemType, extraOptions: [String] = []) async throws {
    switch type {
    case .ext4:
      try await exec.run(["mkfs.ext4", "-q", "-m", "0"] + extraOptions + [device])
    case .xfs:
      try await exec.run(["mkfs.xfs", "-q"] + extraOptions + [device])
    }
  }

  public func mount(_ source: String, at target: String, type: String, options: [String]) async throws {
    var argv = ["mount", "-t", type]
    if !options.isEmpty { argv += ["-o", options.joined(separator: ",")] }
    try await exec.run(argv + ["--", source, target])
  }

  /// Bind-mounts `source` on `target`, then makes the bind read-only when asked.
  public func bindMount(_ source: String, at target: String, readOnly: Bool, options: [String] = []) async throws {
    try await exec.run(["mount", "--bind", "--", source, target])
    if readOnly || !options.isEmpty {
      let opts = (["remount", "bind"] + (readOnly ? ["ro"] : []) + options).joined(separator: ",")
      do {
        try await exec.run(["mount", "-o", opts, "--", target])
      } catch {
        try? await unmount(target)
        throw error
      }
    }
  }

  public func unmount(_ target: String) async throws {
    try await exec.run(["umount", "--", target])
  }

  /// Grows a mounted filesystem to fill its device.
  public func growFilesystem(type: String, device: String, mountPoint: String) async throws {
    switch type {
    case "ext4", "ext3", "ext2":
      do {
        try await exec.run(["resize2fs", device])
      } catch let error as CommandError where error.stderr.contains("Permission denied to resize") {
        // The kernel's ext4 online resize demands CAP_SYS_RESOURCE, which this container lacks.
        throw SwellError(
          .failedPrecondition,
          "ext4 cannot grow online here: the node plugin lacks CAP_SYS_RESOURCE (run it privileged); "
            + "the device already has its new size and the data is untouched", cause: error)
      }
    case "xfs":
      try await exec.run(["xfs_growfs", "-d", mountPoint])
    default:
      throw SwellError(.failedPrecondition, "cannot grow a \(type) filesystem")
    }
  }
}
