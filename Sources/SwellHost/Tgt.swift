import Logging

/// One iSCSI target as `tgtadm --mode target --op show` reports it.
public struct TgtTarget: Sendable, Equatable {
  public struct LUN: Sendable, Equatable {
    public var number: Int
    /// The size tgt reports, in decimal megabytes, rounded: tgt's own unit.
    public var sizeMB: Int64
    /// The backing file or device; nil for the controller LUN 0.
    public var backingStore: String?
  }

  /// One logged-in session (an I_T nexus): its ID, the initiator's name, its connections' IDs.
  public struct Nexus: Sendable, Equatable {
    public var sid: Int
    public var initiator: String
    public var connections: [Int] = []
  }

  public var tid: Int
  public var iqn: String
  /// Logged-in sessions.
  public var nexuses: [Nexus] = []
  /// Logged-in initiators (I_T nexuses): one per session.
  public var sessions: [String] { nexuses.map(\.initiator) }
  public var luns: [LUN] = []
  /// CHAP accounts an initiator must log in with, and the one the target answers with (mutual).
  public var accounts: [String] = []
  public var outgoingAccounts: [String] = []
  /// Initiator addresses or names allowed in (`ALL` for any). tgt admits an initiator whose
  /// address matches an address entry or whose name matches a name entry; none admits no one.
  public var acl: [String] = []

  public func lun(_ number: Int) -> LUN? { luns.first { $0.number == number } }

  /// Whether an ACL entry is an initiator name (an `iqn.`, `eui.` or `naa.` name) rather than an
  /// address, a CIDR or `ALL`.
  public static func isInitiatorName(_ entry: String) -> Bool {
    ["iqn.", "eui.", "naa."].contains { entry.hasPrefix($0) }
  }

  /// tgt's rounding of a size to decimal megabytes; sizes a MiB apart never round alike.
  public static func megabytes(_ bytes: Int64) -> Int64 { (bytes + 500_000) / 1_000_000 }

  /// Parses the whole `show` output: targets, their sessions, LUNs, accounts and ACL.
  public static func parse(_ text: String) -> [TgtTarget] {
    enum Section { case none, system, nexus, lun, account, acl }
    var targets: [TgtTarget] = []
    var section = Section.none
    for raw in text.split(separator: "\n", omittingEmptySubsequences: true) {
      let line = raw.trimmingWhitespace()
      if raw.hasPrefix("Target "), let colon = line.firstIndex(of: ":") {
        let tid = Int(line[line.index(line.startIndex, offsetBy: 7)..<colon]) ?? -1
        let iqn = line[line.index(after: colon)...].trimmingWhitespace()
        targets.append(TgtTarget(tid: tid, iqn: iqn))
        section = .none
        continue
      }
      guard !targets.isEmpty else { continue }
      switch line {
      case "System information:": section = .system; continue
      case "I_T nexus information:": section = .nexus; continue
      case "LUN information:": section = .lun; continue
      case "Account information:": section = .account; continue
      case "ACL information:": section = .acl; continue
      default: break
      }
      let last = targets.count - 1
      switch section {
      case .nexus:
        if line.hasPrefix("I_T nexus:"), let sid = Int(line.dropFirst("I_T nexus:".count).trimmingWhitespace()) {
          targets[last].nexuses.append(Nexus(sid: sid, initiator: ""))
        } else if line.hasPrefix("Initiator:"), !targets[last].nexuses.isEmpty {
          let name = line.dropFirst("Initiator:".count).trimmingWhitespace()
          targets[last].nexuses[targets[last].nexuses.count - 1].initiator = String(name.split(separator: " ").first ?? "")
        } else if line.hasPrefix("Connection:"), !targets[last].nexuses.isEmpty,
          let cid = Int(line.dropFirst("Connection:".count).trimmingWhitespace())
        {
          targets[last].nexuses[targets[last].nexuses.count - 1].connections.append(cid)
        }
      case .lun:
        if line.hasPrefix("LUN:"), let n = Int(line.dropFirst(4).trimmingWhitespace()) {
          targets[last].luns.append(LUN(number: n, sizeMB: 0, backingStore: nil))
        } else if line.hasPrefix("Size:"), !targets[last].luns.isEmpty {
          let value = line.dropFirst(5).split(separator: " ").first.flatMap { Int64($0) } ?? 0
          targets[last].luns[targets[last].luns.count - 1].sizeMB = value
        } else if line.hasPrefix("Backing store path:"), !targets[last].luns.isEmpty {
          let path = line.dropFirst("Backing store path:".count).trimmingWhitespace()
          targets[last].luns[targets[last].luns.count - 1].backingStore = path == "None" ? nil : path
        }
      case .account:
        let name = String(line.split(separator: " ").first ?? "")
        if line.hasSuffix("(outgoing)") {
          targets[last].outgoingAccounts.append(name)
        } else {
          targets[last].accounts.append(name)
        }
      case .acl:
        targets[last].acl.append(line)
      case .none, .system:
        break
      }
    }
    return targets
  }
}

/// The tgt target daemon, driven through `tgtadm` on its control socket.
///
/// Every call is one argv; tgtadm answers exit 22 with a message for "already exists" and
/// "can't find", which the idempotent callers here tell apart.
public struct TgtAdmin: Sendable {
  let exec: any Executor
  /// tgtd's control port (`tgtd -C N`): the socket `/var/run/tgtd/socket.N`.
  public let controlPort: Int

  public init(exec: any Executor, controlPort: Int = 0) {
    self.exec = exec
    self.controlPort = controlPort
  }

  func tgtadm(_ args: [String]) -> [String] {
    ["tgtadm", "-C", String(controlPort), "--lld", "iscsi"] + args
  }

  /// Every target, or UNAVAILABLE when tgtd does not answer.
  public func targets() async throws -> [TgtTarget] {
    let out = try await exec.output(tgtadm(["--mode", "target", "--op", "show"]))
    guard out.exitCode == 0 else {
      throw SwellError(.unavailable, "tgtd on control port \(controlPort) does not answer: \(out.stderr.trimmingWhitespace())")
    }
    return TgtTarget.parse(out.stdout)
  }

  public func newTarget(tid: Int, iqn: String) async throws {
    try await tolerate("already exists", tgtadm(["--mode", "target", "--op", "new", "--tid", String(tid), "--targetname", iqn]))
  }

  public func deleteTarget(tid: Int) async throws {
    try await tolerate("can't find", tgtadm(["--mode", "target", "--op", "delete", "--tid", String(tid)]))
  }

  public func newLUN(tid: Int, lun: Int, backingStore: String) async throws {
    try await exec.run(
      tgtadm([
        "--mode", "logicalunit", "--op", "new", "--tid", String(tid), "--lun", String(lun), "--backing-store", backingStore,
      ]))
  }

  public func deleteLUN(tid: Int, lun: Int) async throws {
    try await tolerate(
      "can't find", tgtadm(["--mode", "logicalunit", "--op", "delete", "--tid", String(tid), "--lun", String(lun)]))
  }

  /// Allows an initiator in by address (an IP, a CIDR, or `ALL`).
  public func bind(tid: Int, initiatorAddress: String) async throws {
    try await tolerate(
      "already exists",
      tgtadm(["--mode", "target", "--op", "bind", "--tid", String(tid), "--initiator-address", initiatorAddress]))
  }

  /// Allows an initiator in by its name; bound already is fine.
  public func bind(tid: Int, initiatorName: String) async throws {
    try await tolerate(
      "already exists", tgtadm(["--mode", "target", "--op", "bind", "--tid", String(tid), "--initiator-name", initiatorName]))
  }

  /// Removes one ACL entry, a name or an address; not bound is fine. Logged-in sessions stay: tgt
  /// checks the ACL only at login (``closeConnection(tid:sid:cid:)`` ends them).
  public func unbind(tid: Int, aclEntry entry: String) async throws {
    let flag = TgtTarget.isInitiatorName(entry) ? "--initiator-name" : "--initiator-address"
    try await tolerate("does not exist", tgtadm(["--mode", "target", "--op", "unbind", "--tid", String(tid), flag, entry]))
  }

  /// Ends one connection of a session; the initiator sees it drop and logs in again, which the
  /// ACL then decides. Gone already is fine.
  public func closeConnection(tid: Int, sid: Int, cid: Int) async throws {
    try await tolerate(
      "can't find",
      tgtadm(["--mode", "conn", "--op", "delete", "--tid", String(tid), "--sid", String(sid), "--cid", String(cid)]))
  }

  // MARK: CHAP accounts (global in tgtd; bound to targets)

  /// The names of every CHAP account tgtd holds.
  public func accounts() async throws -> [String] {
    let out = try await exec.run(tgtadm(["--mode", "account", "--op", "show"]))
    return out.stdout.split(separator: "\n").dropFirst().map { $0.trimmingWhitespace() }.filter { !$0.isEmpty }
  }

  /// Creates an account; the password appears in no log or error.
  public func newAccount(user: String, password: String) async throws {
    try await exec.run(
      tgtadm(["--mode", "account", "--op", "new", "--user", user, "--password", password]), hiding: [password])
  }

  /// Deletes an account, which also unbinds it from every target; a missing one is fine.
  public func deleteAccount(user: String) async throws {
    try await tolerate("can't find", tgtadm(["--mode", "account", "--op", "delete", "--user", user]))
  }

  /// Binds an account to a target: one an initiator must log in with, or with `outgoing` the one
  /// the target answers mutual CHAP with. Already bound is fine.
  public func bindAccount(tid: Int, user: String, outgoing: Bool = false) async throws {
    try await tolerate(
      "already exists",
      tgtadm(["--mode", "account", "--op", "bind", "--tid", String(tid), "--user", user] + (outgoing ? ["--outgoing"] : [])))
  }

  public func unbindAccount(tid: Int, user: String, outgoing: Bool = false) async throws {
    try await tolerate(
      "can't find",
      tgtadm(["--mode", "account", "--op", "unbind", "--tid", String(tid), "--user", user] + (outgoing ? ["--outgoing"] : [])))
  }

  /// Runs `argv`, treating a failure whose message contains `benign` as success.
  private func tolerate(_ benign: String, _ argv: [String]) async throws {
    let out = try await exec.output(argv)
    if out.exitCode == 0 || out.stderr.contains(benign) { return }
    throw CommandError(argv: argv, exitCode: out.exitCode, stderr: out.stderr, reason: "failed")
  }
}

extension TgtAdmin {
  /// Stops tgtd cleanly, as its own init scripts do, since tgtd ignores SIGTERM: new logins are
  /// refused (state offline), every target is deleted with its sessions (initiators see the
  /// connection close and start retrying), then the daemon is told to exit, which it does with 0.
  /// Steps that fail are logged and the next one is tried; the last one's failure is thrown.
  public func shutDownDaemon(logger: Logger) async throws {
    let port = String(controlPort)
    let offline = try await exec.output(["tgtadm", "-C", port, "--mode", "sys", "--op", "update", "--name", "State", "-v", "offline"])
    if offline.exitCode != 0 { logger.warning("tgtd did not go offline", metadata: ["stderr": "\(offline.stderr.trimmingWhitespace())"]) }
    let existing = (try? await targets()) ?? []
    for target in existing {
      let out = try await exec.output(tgtadm(["--mode", "target", "--op", "delete", "--force", "--tid", String(target.tid)]))
      if out.exitCode != 0 && !out.stderr.contains("can't find") {
        logger.warning("could not delete a target", metadata: ["tid": "\(target.tid)", "stderr": "\(out.stderr.trimmingWhitespace())"])
      }
    }
    logger.notice("tgtd offline, targets removed", metadata: ["targets": "\(existing.count)", "sessions": "\(existing.reduce(0) { $0 + $1.sessions.count })"])
    try await exec.run(["tgtadm", "-C", port, "--mode", "system", "--op", "delete"])
  }
}
