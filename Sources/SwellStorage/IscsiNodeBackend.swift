#if canImport(Glibc)
  import Glibc
#endif
import SwellHost

/// Where an iSCSI volume is reached: what the controller put in its volume context.
public struct IscsiEndpoint: Sendable, Equatable {
  public var portal: String
  public var iqn: String
  public var lun: Int

  /// Validates the context's `portal`, `iqn` and `lun`; anything else is INVALID_ARGUMENT, since
  /// these become iscsiadm arguments on a node where the plugin is root.
  public init(context: [String: String]) throws {
    guard let portal = context["portal"], let iqn = context["iqn"], let lunText = context["lun"] else {
      throw SwellError.invalid("volume_context of an iSCSI volume needs portal, iqn and lun")
    }
    try Self.validatePortal(portal)
    try Self.validateIQN(iqn)
    guard let lun = Int(lunText), (0..<16384).contains(lun), String(lun) == lunText else {
      throw SwellError.invalid("volume_context lun \(lunText.debugDescription) is not a LUN number")
    }
    self.portal = portal
    self.iqn = iqn
    self.lun = lun
  }

  init(portal: String, iqn: String, lun: Int) {
    self.portal = portal
    self.iqn = iqn
    self.lun = lun
  }

  /// `HOST:PORT` with a DNS name or IPv4 address, or `[IPv6]:PORT`.
  static func validatePortal(_ portal: String) throws {
    let bad = SwellError.invalid("volume_context portal \(portal.debugDescription) is not HOST:PORT")
    guard let colon = portal.lastIndex(of: ":") else { throw bad }
    let host = portal[..<colon]
    guard let port = Int(portal[portal.index(after: colon)...]), (1...65535).contains(port), !host.isEmpty,
      host.utf8.count <= 253, host.first != "-"
    else { throw bad }
    let plain = host.utf8.allSatisfy { c in
      (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x2E
    }
    let bracketed = host.hasPrefix("[") && host.hasSuffix("]") && host.count > 2
      && host.dropFirst().dropLast().utf8.allSatisfy { c in
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66) || c == 0x3A || c == 0x2E
      }
    guard plain || bracketed else { throw bad }
  }

  /// An `iqn.`, `eui.` or `naa.` name of lowercase letters, digits, `.`, `-` and `:`.
  static func validateIQN(_ iqn: String, field: String = "volume_context iqn") throws {
    let prefixed = ["iqn.", "eui.", "naa."].contains { iqn.hasPrefix($0) }
    let chars = iqn.utf8.allSatisfy { c in
      (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x2E || c == 0x3A
    }
    guard prefixed, chars, iqn.utf8.count <= 223 else {
      throw SwellError.invalid("\(field) \(iqn.debugDescription) is not an iSCSI name")
    }
  }

  /// The node's record of a staged volume's endpoint; files written before 2026-12-06 carry no
  /// version line and are format 1.
  static let version = 1

  func encoded() -> String { "version=\(Self.version)\nportal=\(portal)\niqn=\(iqn)\nlun=\(lun)\n" }

  /// The endpoint in `text`; a newer format is FAILED_PRECONDITION naming `what`.
  static func decode(_ text: String, what: String) throws -> IscsiEndpoint {
    let fields = keyValueLines(text)
    try RecordFormat.check(fields: fields, current: version, what: what)
    return try IscsiEndpoint(context: fields)
  }
}

/// The node side of iSCSI volumes: log in, find the disk in sysfs, rescan, log out.
///
/// Stage writes `<data>/iscsi/<id>` (the endpoint) before it logs in, so that unstage, expand and
/// stats, which get only the volume ID, know the target; and so that a crash after the login still
/// leads the retried unstage to log out. The record goes last, after logout and node deletion.
public struct IscsiNodeBackend: NodeBackend {
  let stateDir: String
  let initiator: IscsiInitiator
  /// How long to wait for the disk to appear after login, or to show its new size after a rescan.
  let deviceTimeout: Duration

  public init(dataDir: String, exec: any Executor, deviceTimeout: Duration = .seconds(30)) throws {
    try makeDirectories(dataDir + "/iscsi")
    self.stateDir = try realPath(dataDir + "/iscsi")
    self.initiator = IscsiInitiator(exec: exec)
    self.deviceTimeout = deviceTimeout
  }

  func recordPath(_ id: String) -> String { "\(stateDir)/\(id)" }

  /// The endpoint stage recorded for `id`, or nil when it is not staged here.
  func endpoint(_ id: String) throws -> IscsiEndpoint? {
    guard try FileInfo.of(recordPath(id)) != nil else { return nil }
    return try IscsiEndpoint.decode(try readSmallFile(recordPath(id)), what: "the node's iSCSI record of volume \(id)")
  }

  /// The volumes with a stage record on this node.
  public func stagedIDs() throws -> [String] {
    try listDirectory(stateDir).filter { !$0.hasPrefix(".") && !$0.hasSuffix(".tmp") }.sorted()
  }

  /// True when this node holds a stage record for `id`: only staged iSCSI volumes are known here.
  public func exists(_ id: String) async throws -> Bool {
    try endpoint(id) != nil
  }

  /// The open-iscsi iface Swell logs in through: the default one's transport, with the initiator
  /// name the controller admitted this node as.
  static let iface = "swell"

  public func attach(_ id: String, context: AttachContext) async throws -> AttachedDevice {
    let wanted = try IscsiEndpoint(context: context.volumeContext)
    let chap = try ChapCredentials(secrets: context.secrets)
    // The target admits only the initiator name it was published to (the publish context's).
    guard let initiatorName = context.publishContext[PublishContext.initiator] else {
      throw SwellError.precondition("the publish context of iSCSI volume \(id) names no initiator: publish it to this node first")
    }
    try IscsiEndpoint.validateIQN(initiatorName, field: "publish_context initiator")
    if let recorded = try endpoint(id), recorded != wanted {
      throw SwellError(.alreadyExists, "volume \(id) is staged here from \(recorded.iqn) at \(recorded.portal)")
    }
    try writeFileAtomically(recordPath(id), Array(wanted.encoded().utf8))
    if let device = try attachedDevice(id, wanted) { return device }
    try await initiator.ensureIface(Self.iface, initiatorName: initiatorName)
    try await initiator.addNode(iqn: wanted.iqn, portal: wanted.portal, iface: Self.iface)
    // Set every time, CHAP or not, so that a record left by an earlier stage says what this one asks.
    try await initiator.setNode(
      iqn: wanted.iqn, portal: wanted.portal, iface: Self.iface, Self.authSettings(chap), secrets: chap?.secretValues ?? [])
    try await initiator.login(iqn: wanted.iqn, portal: wanted.portal, iface: Self.iface)
    Failpoints.hit("iscsi-stage-after-login")
    return try await waitForDevice(id, wanted) { _ in true }
  }

  /// The node record's `node.session.auth.*` fields for `chap` (CHAP, mutual when it has the `_in`
  /// pair), or no authentication.
  static func authSettings(_ chap: ChapCredentials?) -> [(String, String)] {
    guard let chap else { return [("node.session.auth.authmethod", "None")] }
    var settings = [
      ("node.session.auth.authmethod", "CHAP"), ("node.session.auth.username", chap.username),
      ("node.session.auth.password", chap.password),
    ]
    if let user = chap.usernameIn, let password = chap.passwordIn {
      settings += [("node.session.auth.username_in", user), ("node.session.auth.password_in", password)]
    }
    return settings
  }

  public func attachedDevice(_ id: String) async throws -> AttachedDevice? {
    guard let endpoint = try endpoint(id) else { return nil }
    return try attachedDevice(id, endpoint)
  }

  private func attachedDevice(_ id: String, _ endpoint: IscsiEndpoint) throws -> AttachedDevice? {
    guard let session = try initiator.session(iqn: endpoint.iqn),
      let disk = try initiator.disk(lun: endpoint.lun, of: session)
    else { return nil }
    return AttachedDevice(path: disk.path, major: disk.major, minor: disk.minor, sizeBytes: disk.sizeBytes)
  }

  public func detach(_ id: String) async throws {
    guard let endpoint = try endpoint(id) else { return }
    try await initiator.logout(iqn: endpoint.iqn, portal: endpoint.portal)
    try await initiator.deleteNode(iqn: endpoint.iqn, portal: endpoint.portal)
    try removeIfPresent(recordPath(id))
  }

  public func rescan(_ id: String, atLeast: Int64) async throws -> AttachedDevice {
    guard let endpoint = try endpoint(id), let session = try initiator.session(iqn: endpoint.iqn) else {
      throw SwellError.precondition("volume \(id) is not logged in on this node; stage it first")
    }
    try await initiator.rescan(session)
    return try await waitForDevice(id, endpoint) { $0.sizeBytes >= atLeast }
  }

  public func health(_ id: String) async -> VolumeHealth {
    guard let endpoint = try? endpoint(id) else { return .abnormal("volume \(id) is not staged on this node") }
    guard let session = try? initiator.session(iqn: endpoint.iqn) else {
      return .abnormal("no iSCSI session to \(endpoint.iqn)")
    }
    return session.state == "LOGGED_IN" ? .normal : .abnormal("iSCSI session \(session.sid) is \(session.state)")
  }

  public func checkReady() async throws {
    guard access(stateDir, W_OK) == 0 else {
      throw SwellError(.unavailable, "iSCSI state directory \(stateDir) is not writable")
    }
  }

  /// Polls sysfs until the volume's disk exists and satisfies `ready`, or the deadline passes
  /// (DEADLINE_EXCEEDED-like UNAVAILABLE, so the caller retries).
  private func waitForDevice(
    _ id: String, _ endpoint: IscsiEndpoint, until ready: (AttachedDevice) -> Bool
  ) async throws -> AttachedDevice {
    let clock = ContinuousClock()
    let deadline = clock.now + deviceTimeout
    var last: AttachedDevice?
    while true {
      last = try attachedDevice(id, endpoint)
      if let device = last, ready(device) { return device }
      guard clock.now < deadline else { break }
      try await Task.sleep(for: .milliseconds(50))
    }
    if let last {
      throw SwellError(.unavailable, "\(last.path) for \(endpoint.iqn) still shows \(last.sizeBytes) bytes after \(deviceTimeout)")
    }
    throw SwellError(.unavailable, "no disk for LUN \(endpoint.lun) of \(endpoint.iqn) appeared within \(deviceTimeout)")
  }
}
