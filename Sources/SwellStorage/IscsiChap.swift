#if canImport(Glibc)
  import Glibc
#endif
import SwellHost
import Synchronization

/// CHAP on the controller: tgt accounts, bound to the targets of the volumes created with
/// credentials.
///
/// tgtd keeps accounts by name for all targets, so the storage directory does too:
///
///     chap/<hex of the username>   its password (mode 0600, in a 0700 directory)
///     volumes/<id>/chap            the volume's usernames: `username=…`, and `username_in=…` for mutual CHAP
///
/// A volume created with a new password for a username changes it for every volume that uses
/// that name, as the account itself does. tgtd cannot be asked for a password, so the one this
/// process last set is remembered, and an account it did not set (after a restart of the plugin)
/// is set again once.
final class ChapAccounts: Sendable {
  let dir: String
  private let setHere = Mutex<[String: String]>([:])

  init(storageDir: String) throws {
    dir = storageDir + "/chap"
    try makeDirectories(dir, mode: 0o700)
    _ = chmod(dir, 0o700)
  }

  /// The username in hex: any name, even one with `/` or `..`, is one plain file name.
  static func fileName(_ user: String) -> String {
    user.utf8.map { byte in
      let hex = String(byte, radix: 16)
      return hex.count == 1 ? "0" + hex : hex
    }.joined()
  }

  func password(_ user: String) throws -> String? {
    let path = dir + "/" + Self.fileName(user)
    guard try FileInfo.of(path) != nil else { return nil }
    return try readSmallFile(path)
  }

  func store(_ user: String, _ password: String) throws {
    if try self.password(user) == password { return }
    try writeFileAtomically(dir + "/" + Self.fileName(user), Array(password.utf8), mode: 0o600)
  }

  func forget(_ user: String) throws {
    try removeIfPresent(dir + "/" + Self.fileName(user))
    setHere.withLock { $0[user] = nil }
  }

  /// True when this process set `user` in tgtd with the password stored now: nothing to do.
  func isCurrent(_ user: String) throws -> Bool {
    guard let stored = try password(user) else { return false }
    return setHere.withLock { $0[user] } == stored
  }

  /// Makes tgtd hold `user` with its stored password. Returns true when an existing account had to
  /// be replaced, which unbinds it from every target.
  func ensure(_ user: String, in tgt: TgtAdmin, known: [String]) async throws -> Bool {
    guard let password = try password(user) else {
      throw SwellError(.internal, "no password stored for CHAP user \(user)")
    }
    if known.contains(user) {
      if setHere.withLock({ $0[user] }) == password { return false }
      try await tgt.deleteAccount(user: user)
      try await tgt.newAccount(user: user, password: password)
      setHere.withLock { $0[user] = password }
      return true
    }
    try await tgt.newAccount(user: user, password: password)
    setHere.withLock { $0[user] = password }
    return false
  }
}

/// The usernames a volume's target binds.
struct ChapNames: Equatable {
  var username: String
  var usernameIn: String?

  /// The record's format; files written before 2026-12-06 carry no version line and are format 1.
  static let version = 1

  func encoded() -> String {
    "version=\(Self.version)\nusername=\(username)\n" + (usernameIn.map { "username_in=\($0)\n" } ?? "")
  }

  /// The names in `text`; a newer format is FAILED_PRECONDITION naming `what`.
  static func decode(_ text: String, what: String) throws -> ChapNames? {
    let fields = keyValueLines(text)
    try RecordFormat.check(fields: fields, current: version, what: what)
    return fields["username"].map { ChapNames(username: $0, usernameIn: fields["username_in"]) }
  }
}

extension IscsiBackend {
  func chapPath(_ id: String) -> String { files.volumeDir(id) + "/chap" }

  /// The usernames the volume was created with, or nil for a volume without CHAP.
  func chapNames(_ id: String) throws -> ChapNames? {
    guard try FileInfo.of(chapPath(id)) != nil else { return nil }
    return try ChapNames.decode(try readSmallFile(chapPath(id)), what: "the CHAP record of volume \(id)")
  }

  /// Records the request's credentials for the volume (or that it has none): passwords under
  /// `chap/`, the names beside the volume.
  func storeChap(_ id: String, _ chap: ChapCredentials?) throws {
    guard let chap else { return try removeIfPresent(chapPath(id)) }
    try accounts.store(chap.username, chap.password)
    if let user = chap.usernameIn, let password = chap.passwordIn { try accounts.store(user, password) }
    let names = ChapNames(username: chap.username, usernameIn: chap.usernameIn)
    if try chapNames(id) != names {
      try writeFileAtomically(chapPath(id), Array(names.encoded().utf8), mode: 0o600)
    }
  }

  /// Binds the volume's accounts to its target and unbinds any other; returns (changed, reset),
  /// where reset says an account was replaced and every target must be looked at again.
  func exportChap(_ id: String, tid: Int, target: TgtTarget?) async throws -> (changed: Bool, reset: Bool) {
    let names = try chapNames(id)
    let wantIn = names.map { [$0.username] } ?? []
    let wantOut = names?.usernameIn.map { [$0] } ?? []
    var changed = false
    var reset = false
    for user in target?.accounts ?? [] where !wantIn.contains(user) {
      try await tgt.unbindAccount(tid: tid, user: user)
      changed = true
    }
    for user in target?.outgoingAccounts ?? [] where !wantOut.contains(user) {
      try await tgt.unbindAccount(tid: tid, user: user, outgoing: true)
      changed = true
    }
    guard let names else { return (changed, reset) }
    // The usual case on every readiness check: bound here and set by this process as stored. Only
    // otherwise is tgtd asked for its accounts.
    var known: [String]?
    for (user, outgoing) in [(names.username, false)] + wantOut.map({ ($0, true) }) {
      let bound = outgoing ? target?.outgoingAccounts ?? [] : target?.accounts ?? []
      if !reset, bound.contains(user), try accounts.isCurrent(user) { continue }
      if known == nil { known = try await tgt.accounts() }
      if try await accounts.ensure(user, in: tgt, known: known ?? []) { reset = true }
      if reset || !bound.contains(user) {
        try await tgt.bindAccount(tid: tid, user: user, outgoing: outgoing)
        changed = true
      }
    }
    return (changed, reset)
  }

  /// After a volume is deleted: accounts no volume names any more leave tgtd and the directory.
  func dropUnusedAccounts(_ removed: ChapNames?) async throws {
    guard let removed else { return }
    var used = Set<String>()
    for record in try await files.list() {
      if let names = try chapNames(record.id) {
        used.insert(names.username)
        if let user = names.usernameIn { used.insert(user) }
      }
    }
    for user in [removed.username] + (removed.usernameIn.map { [$0] } ?? []) where !used.contains(user) {
      try await tgt.deleteAccount(user: user)
      try accounts.forget(user)
    }
  }
}
