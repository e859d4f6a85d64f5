#if canImport(Glibc)
  import Glibc
#endif
import FoundationEssentials

/// A Ceph client identity: `userID` and `userKey`, the keys ceph-csi's Secrets use.
public struct CephCredentials: Sendable, Equatable {
  public var user: String
  public var key: String

  public init(user: String, key: String) {
    self.user = user
    self.key = key
  }

  /// The credentials in a CSI request's secrets, or nil when it carries none. A user ID must be a
  /// plain Ceph name and a key base64 text: anything else is INVALID_ARGUMENT (never a command line).
  public init?(secrets: [String: String]) throws {
    guard let user = secrets["userID"] ?? secrets["adminID"], let key = secrets["userKey"] ?? secrets["adminKey"] else {
      if secrets["userID"] != nil || secrets["userKey"] != nil {
        throw SwellError.invalid("the secrets must carry both userID and userKey")
      }
      return nil
    }
    let name = user.hasPrefix("client.") ? String(user.dropFirst(7)) : user
    guard !name.isEmpty, name.utf8.count <= 64, !name.hasPrefix("-"),
      name.utf8.allSatisfy({ $0.isLetterOrDigit || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E })
    else { throw SwellError.invalid("secret userID \(user.debugDescription) is not a Ceph client name") }
    guard !key.isEmpty, key.utf8.count <= 256, key.utf8.allSatisfy({ $0.isLetterOrDigit || $0 == 0x2B || $0 == 0x2F || $0 == 0x3D })
    else { throw SwellError.invalid("secret userKey is not a Ceph key (base64 text)") }
    self.init(user: name, key: key)
  }
}

extension UInt8 {
  public var isLetterOrDigit: Bool { (self >= 0x30 && self <= 0x39) || (self >= 0x41 && self <= 0x5A) || (self >= 0x61 && self <= 0x7A) }
}

/// One RBD image as `rbd info --format json` reports it.
public struct RbdImage: Sendable, Equatable, Decodable {
  public struct Parent: Sendable, Equatable, Decodable {
    public var pool: String
    public var image: String
    public var snapshot: String
  }
  public var name: String
  public var size: Int64
  public var features: [String]
  public var parent: Parent?
}

/// One snapshot of an image (`rbd snap ls --format json`).
public struct RbdSnapshot: Sendable, Equatable, Decodable {
  public var name: String
  public var size: Int64
  public var protected: String

  public var isProtected: Bool { protected == "true" }
}

/// The `rbd` and `ceph` command-line clients, run as argv arrays against the monitors given, never
/// reading the host's /etc/ceph. The key reaches them in a file (`--keyfile`) that only root can
/// read and that is removed after the command: never on a command line, never in a log.
///
/// Errors are classified from the clients' own errno: ENOENT is NOT_FOUND, a refused key
/// PERMISSION_DENIED, an unreachable cluster UNAVAILABLE (after `--client_mount_timeout`, instead
/// of the clients' default of 300 s), EBUSY FAILED_PRECONDITION, a full pool RESOURCE_EXHAUSTED.
public struct Rbd: Sendable {
  let exec: any Executor
  public let monitors: String
  public let credentials: CephCredentials
  /// Where key files are written for the length of one command (a directory only root can enter).
  let keyDir: String
  public static let mountTimeoutSeconds = 15

  /// Makes `dir` (and its parents) for key files: 0700, whatever its mode was.
  public static func makeKeyDirectory(_ dir: String) throws {
    try makeDirectories(dir, mode: 0o700)
    guard chmod(dir, 0o700) == 0 else { throw SystemCallError("chmod", dir) }
  }

  public init(exec: any Executor, monitors: String, credentials: CephCredentials, keyDir: String) {
    self.exec = exec
    self.monitors = monitors
    self.credentials = credentials
    self.keyDir = keyDir
  }

  /// Runs `tool args…` with the connection arguments; returns stdout, or throws the classified error.
  @discardableResult
  public func run(_ tool: String, _ args: [String]) async throws -> String {
    let keyFile = try writeKeyFile()
    defer { unlink(keyFile) }
    let argv = [tool, "-c", "/dev/null", "-m", monitors, "--id", credentials.user, "--keyfile", keyFile,
                "--client_mount_timeout", "\(Self.mountTimeoutSeconds)"] + args
    let out = try await exec.output(argv, hiding: [credentials.key])
    guard out.exitCode == 0 else { throw Self.classify(argv: argv, shown: ([tool] + args).joined(separator: " "), out) }
    return out.stdout
  }

  /// Runs an `rbd` subcommand.
  @discardableResult
  public func rbd(_ args: String...) async throws -> String { try await run("rbd", args) }

  /// `rbd info` of `pool/image`, or nil when there is no such image.
  public func info(_ spec: String) async throws -> RbdImage? {
    do {
      return try decode(RbdImage.self, try await run("rbd", ["info", "--format", "json", spec]), spec)
    } catch let error as SwellError where error.kind == .notFound {
      return nil
    }
  }

  /// The value of one image-meta key, or nil when the image or the key is missing.
  public func meta(_ spec: String, _ key: String) async throws -> String? {
    do {
      return try await run("rbd", ["image-meta", "get", spec, key]).trimmingWhitespace()
    } catch let error as SwellError where error.kind == .notFound {
      return nil
    }
  }

  public func setMeta(_ spec: String, _ key: String, _ value: String) async throws {
    try await run("rbd", ["image-meta", "set", spec, key, value])
  }

  /// Removes one image-meta key; a missing key (or image) is success.
  public func removeMeta(_ spec: String, _ key: String) async throws {
    do {
      try await run("rbd", ["image-meta", "remove", spec, key])
    } catch let error as SwellError where error.kind == .notFound {}
  }

  /// Blocklists one client instance (`IP:PORT/NONCE`, as krbd's sysfs `client_addr` shows it):
  /// the OSDs refuse its every operation from the next OSD map on, and drop its watches. The entry
  /// expires after the cluster's `mon_osd_blocklist_default_expire` (an hour by default). Adding
  /// one that is there is success.
  public func blocklist(_ address: String) async throws {
    guard Self.isClientAddress(address) else {
      throw SwellError.invalid("\(address.debugDescription) is not a Ceph client address (IP:PORT/NONCE)")
    }
    try await run("ceph", ["osd", "blocklist", "add", address])
  }

  /// `IP:PORT/NONCE`, `[IPv6]:PORT/NONCE`, optionally with a `v1:` or `v2:` prefix.
  public static func isClientAddress(_ address: String) -> Bool {
    let parts = address.split(separator: "/")
    guard parts.count == 2, !parts[1].isEmpty, parts[1].utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
      address.utf8.count <= 80, !address.hasPrefix("-")
    else { return false }
    return parts[0].contains(":")
      && parts[0].utf8.allSatisfy { $0.isLetterOrDigit || $0 == 0x2E || $0 == 0x3A || $0 == 0x5B || $0 == 0x5D }
  }

  /// Every image name in `pool`.
  public func images(pool: String) async throws -> [String] {
    try decode([String].self, try await run("rbd", ["ls", "--format", "json", pool]), pool)
  }

  public func snapshots(_ spec: String) async throws -> [RbdSnapshot] {
    try decode([RbdSnapshot].self, try await run("rbd", ["snap", "ls", "--format", "json", spec]), spec)
  }

  /// The images cloned from `pool/image@snap`, as `pool/image`.
  public func children(_ snapSpec: String) async throws -> [String] {
    struct Child: Decodable { var pool: String; var image: String }
    return try decode([Child].self, try await run("rbd", ["children", "--format", "json", snapSpec]), snapSpec)
      .map { "\($0.pool)/\($0.image)" }
  }

  /// The clients watching the image (a node that maps it), as addresses.
  public func watchers(_ spec: String) async throws -> [String] {
    struct Status: Decodable {
      struct Watcher: Decodable { var address: String }
      var watchers: [Watcher]
    }
    return try decode(Status.self, try await run("rbd", ["status", "--format", "json", spec]), spec).watchers.map(\.address)
  }

  /// What `ceph df` says of one pool: the bytes stored and the bytes still available for data
  /// (`max_avail`: free raw space divided by the pool's replica count, as Ceph computes it).
  public func poolUsage(_ pool: String) async throws -> (stored: Int64, available: Int64) {
    struct DF: Decodable {
      struct Pool: Decodable {
        struct Stats: Decodable { var stored: Int64; var max_avail: Int64 }
        var name: String
        var stats: Stats
      }
      var pools: [Pool]
    }
    let df = try decode(DF.self, try await run("ceph", ["df", "--format", "json"]), "ceph df")
    guard let found = df.pools.first(where: { $0.name == pool }) else {
      throw SwellError.notFound("pool \(pool) does not exist in the Ceph cluster at \(monitors)")
    }
    return (found.stats.stored, found.stats.max_avail)
  }

  /// The cluster's health: `HEALTH_OK`, `HEALTH_WARN` or `HEALTH_ERR`, with its checks' summaries.
  public func health() async throws -> (status: String, checks: [String]) {
    struct Health: Decodable {
      struct Check: Decodable {
        struct Summary: Decodable { var message: String }
        var summary: Summary
      }
      var status: String
      var checks: [String: Check]
    }
    let health = try decode(Health.self, try await run("ceph", ["health", "--format", "json"]), "ceph health")
    return (health.status, health.checks.keys.sorted().map { "\($0): \(health.checks[$0]!.summary.message)" })
  }

  func decode<T: Decodable>(_ type: T.Type, _ json: String, _ what: String) throws -> T {
    do {
      return try JSONDecoder().decode(type, from: Data(json.utf8))
    } catch {
      throw SwellError(.internal, "the Ceph client printed for \(what) what is not the JSON expected: \(error)")
    }
  }

  func writeKeyFile() throws -> String {
    var template = Array("\(keyDir)/key.XXXXXX".utf8CString)
    let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
    guard fd >= 0 else { throw SystemCallError("mkstemp", keyDir, errno: errno) }
    defer { close(fd) }
    let path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let bytes = Array(credentials.key.utf8)
    guard fchmod(fd, 0o600) == 0, bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
      let err = errno
      unlink(path)
      throw SystemCallError("write", path, errno: err)
    }
    return path
  }

  /// The client's errno, as it prints `(N) text`, decides the kind.
  /// `shown` names the command without its connection arguments, for the message.
  static func classify(argv: [String], shown: String, _ out: CommandOutput) -> SwellError {
    let command = CommandError(argv: argv, exitCode: out.exitCode, stderr: out.stderr, reason: "failed")
    let stderr = out.stderr
    let code = out.exitCode
    func error(_ kind: SwellError.Kind, _ message: String) -> SwellError {
      SwellError(kind, "\(shown): \(message)", cause: command)
    }
    if stderr.contains("failed to decode key") {
      return error(.invalidArgument, "the client's key is not a Ceph key")
    }
    if stderr.contains("handle_auth_bad_method") || stderr.contains("(13) Permission denied")
      || stderr.contains("(1) Operation not permitted")
    {
      return error(.permissionDenied, "the Ceph cluster refused the client's credentials or capabilities")
    }
    if code == 110 || stderr.contains("couldn't connect to the cluster") || stderr.contains("(110)") {
      return error(.unavailable, "the Ceph cluster did not answer")
    }
    if stderr.contains("(2) No such file or directory") || code == 2 { return error(.notFound, "no such image, snapshot or pool") }
    if stderr.contains("(28) No space left") || stderr.contains("(122) Disk quota exceeded") {
      return error(.resourceExhausted, "the pool is full")
    }
    if stderr.contains("(16) Device or resource busy") || stderr.contains("still has watchers") {
      return error(.failedPrecondition, "the image is in use (mapped on a node)")
    }
    if stderr.contains("(17) File exists") { return error(.alreadyExists, "it exists already") }
    return error(.internal, "exit \(code)")
  }
}
