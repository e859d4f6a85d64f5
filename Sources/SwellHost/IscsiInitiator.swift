/// One logged-in iSCSI session, as sysfs shows it.
public struct IscsiSession: Sendable, Equatable {
  /// The session number: `sessionN` in sysfs, the SID `iscsiadm -m session -r` takes.
  public var sid: Int
  public var targetName: String
  /// `LOGGED_IN`, `FAILED`, `FREE`.
  public var state: String
  /// Where the kernel's SCSI devices for this session live in sysfs.
  public var deviceDir: String
}

/// A SCSI disk reached through a session.
public struct IscsiDisk: Sendable, Equatable {
  /// The kernel name, such as `sdb`.
  public var name: String
  public var major: Int
  public var minor: Int
  public var sizeBytes: Int64
  public var path: String { "/dev/" + name }
}

/// The open-iscsi initiator: node records and logins through `iscsiadm`, sessions and their disks
/// read from sysfs (never guessed from `/dev/sdX` order, never from udev symlinks, which a node
/// plugin container may lack).
public struct IscsiInitiator: Sendable {
  let exec: any Executor
  let sysClass: String

  // iscsiadm's exit codes (iscsi_err.h) for the idempotent cases.
  static let sessionExists: Int32 = 15
  /// ISCSI_ERR_LOGIN_AUTH_FAILED: the target refused the CHAP credentials (or asked for some).
  static let loginAuthFailed: Int32 = 24
  static let noObjectsFound: Int32 = 21

  public init(exec: any Executor, sysClass: String = "/sys/class") {
    self.exec = exec
    self.sysClass = sysClass
  }

  /// Makes the iface `name` log in as `initiatorName`: a software (tcp) iface whose only setting
  /// is the initiator name, made when missing and corrected when it names another.
  public func ensureIface(_ name: String, initiatorName: String) async throws {
    let shown = try await exec.output(["iscsiadm", "-m", "iface", "-I", name, "-o", "show"])
    if shown.exitCode == 0,
      shown.stdout.split(separator: "\n").contains(where: { $0.trimmingWhitespace() == "iface.initiatorname = \(initiatorName)" })
    {
      return
    }
    if shown.exitCode != 0 { try await exec.run(["iscsiadm", "-m", "iface", "-I", name, "-o", "new"]) }
    try await exec.run(["iscsiadm", "-m", "iface", "-I", name, "-o", "update", "-n", "iface.initiatorname", "-v", initiatorName])
  }

  /// Creates the node record for `iqn` at `portal` through `iface` by hand (discovery on a NAT'd
  /// or multi-homed portal may return an address this node cannot reach), with manual startup.
  public func addNode(iqn: String, portal: String, iface: String) async throws {
    try await exec.run(["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "-I", iface, "-o", "new"])
    try await exec.run(
      ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "-I", iface, "-o", "update", "-n", "node.startup", "-v", "manual"])
  }

  /// Sets a node record's fields. The values in `secrets` (CHAP passwords) never reach a log or
  /// an error: the executor shows them as `***`.
  public func setNode(
    iqn: String, portal: String, iface: String, _ settings: [(String, String)], secrets: [String] = []
  ) async throws {
    for (name, value) in settings {
      let out = try await exec.output(
        ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "-I", iface, "-o", "update", "-n", name, "-v", value],
        hiding: secrets)
      guard out.exitCode == 0 else {
        throw SwellError(.internal, "iscsiadm could not set \(name) on \(iqn): exit \(out.exitCode): \(out.stderr.trimmingWhitespace())")
      }
    }
  }

  /// Logs in through `iface`; already logged in is success.
  public func login(iqn: String, portal: String, iface: String) async throws {
    let argv = ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "-I", iface, "--login"]
    let out = try await exec.output(argv)
    if out.exitCode == Self.loginAuthFailed {
      throw SwellError(.permissionDenied, "the iSCSI target \(iqn) at \(portal) refused the login: CHAP credentials missing or wrong (node-stage secret)")
    }
    guard out.exitCode == 0 || out.exitCode == Self.sessionExists else {
      throw SwellError(.unavailable, "iSCSI login to \(iqn) at \(portal) failed (exit \(out.exitCode)): \(out.stderr.trimmingWhitespace())")
    }
  }

  /// Logs out; no session is success.
  public func logout(iqn: String, portal: String) async throws {
    let argv = ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "--logout"]
    let out = try await exec.output(argv)
    guard out.exitCode == 0 || out.exitCode == Self.noObjectsFound else {
      throw CommandError(argv: argv, exitCode: out.exitCode, stderr: out.stderr, reason: "failed")
    }
  }

  /// Deletes the node record; no record is success.
  public func deleteNode(iqn: String, portal: String) async throws {
    let argv = ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "-o", "delete"]
    let out = try await exec.output(argv)
    guard out.exitCode == 0 || out.exitCode == Self.noObjectsFound else {
      throw CommandError(argv: argv, exitCode: out.exitCode, stderr: out.stderr, reason: "failed")
    }
  }

  /// Asks the target for the session's LUN sizes again.
  public func rescan(_ session: IscsiSession) async throws {
    try await exec.run(["iscsiadm", "-m", "session", "-r", String(session.sid), "--rescan"])
  }

  /// Every session the kernel has; none when the iSCSI transport is not loaded.
  public func sessions() throws -> [IscsiSession] {
    let dir = sysClass + "/iscsi_session"
    guard (try? FileInfo.of(dir)) != nil else { return [] }
    return try listDirectory(dir).filter { $0.hasPrefix("session") }.sorted().compactMap { name in
      guard let sid = Int(name.dropFirst("session".count)),
        let target = try? readSmallFile("\(dir)/\(name)/targetname").trimmingWhitespace()
      else { return nil }
      let state = (try? readSmallFile("\(dir)/\(name)/state").trimmingWhitespace()) ?? "unknown"
      return IscsiSession(sid: sid, targetName: target, state: state, deviceDir: "\(dir)/\(name)/device")
    }
  }

  /// The session logged in to `iqn`, if any.
  public func session(iqn: String) throws -> IscsiSession? {
    try sessions().first { $0.targetName == iqn }
  }

  /// The disk for `lun` on `session`: `device/targetH:C:T/H:C:T:L/block/<name>` in sysfs.
  public func disk(lun: Int, of session: IscsiSession) throws -> IscsiDisk? {
    for target in (try? listDirectory(session.deviceDir)) ?? [] where target.hasPrefix("target") {
      let targetDir = "\(session.deviceDir)/\(target)"
      for unit in try listDirectory(targetDir) {
        let parts = unit.split(separator: ":")
        guard parts.count == 4, Int(parts[3]) == lun else { continue }
        guard let names = try? listDirectory("\(targetDir)/\(unit)/block"), let name = names.sorted().first else {
          continue
        }
        let block = "\(targetDir)/\(unit)/block/\(name)"
        let numbers = try readSmallFile(block + "/dev").trimmingWhitespace().split(separator: ":")
        guard numbers.count == 2, let major = Int(numbers[0]), let minor = Int(numbers[1]),
          let sectors = Int64(try readSmallFile(block + "/size").trimmingWhitespace())
        else { throw SwellError(.internal, "unexpected sysfs entries under \(block)") }
        return IscsiDisk(name: name, major: major, minor: minor, sizeBytes: sectors * 512)
      }
    }
    return nil
  }
}
