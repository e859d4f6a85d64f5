import AsyncHTTPClient
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization
import SwellHost

/// One event of a watch stream.
public struct WatchEvent: Sendable {
  public enum Kind: String, Sendable {
    case added = "ADDED", modified = "MODIFIED", deleted = "DELETED", bookmark = "BOOKMARK"
  }
  public let kind: Kind
  public let object: JSON
}

/// The bearer token, re-read from its file once a minute and after every 401, so a rotated projected
/// service-account token is picked up without a restart.
final class TokenSource: Sendable {
  let fixed: String?
  let file: String?
  private let cached = Mutex<(token: String, readAt: ContinuousClock.Instant)?>(nil)

  init(fixed: String?, file: String?) {
    self.fixed = fixed
    self.file = file
  }

  func token() throws -> String? {
    guard let file else { return fixed }
    let now = ContinuousClock.now
    if let current = cached.withLock({ $0 }), now - current.readAt < .seconds(60) { return current.token }
    let token = try readSmallFile(file).trimmingWhitespace()
    cached.withLock { $0 = (token, now) }
    return token
  }

  func invalidate() { cached.withLock { $0 = nil } }
}

/// A Kubernetes API client over AsyncHTTPClient: get, paged list, watch, create, update, status update
/// and delete, on whole JSON objects.
public final class KubeClient: Sendable {
  let http: HTTPClient
  let server: String
  let tokens: TokenSource
  let logger: Logger
  /// The deadline of one ordinary request.
  let requestTimeout: TimeAmount = .seconds(30)
  /// Objects per page of a list (`limit`); external-provisioner's informers ask for 500.
  let pageSize: Int

  public init(config: KubeConfig, logger: Logger, pageSize: Int = 500) throws {
    self.pageSize = pageSize
    var tls = TLSConfiguration.makeClientConfiguration()
    if let ca = config.caPEM {
      tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(ca))
    }
    if config.insecureSkipTLSVerify { tls.certificateVerification = .none }
    if let cert = config.clientCertificatePEM, let key = config.clientKeyPEM {
      tls.certificateChain = try NIOSSLCertificate.fromPEMBytes(cert).map { .certificate($0) }
      tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: key, format: .pem))
    }
    var configuration = HTTPClient.Configuration(
      tlsConfiguration: tls, timeout: .init(connect: .seconds(10), read: nil))
    configuration.connectionPool = .init(idleTimeout: .seconds(90), concurrentHTTP1ConnectionsPerHostSoftLimit: 16)
    http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    server = config.server
    tokens = TokenSource(fixed: config.token, file: config.tokenFile)
    self.logger = logger
  }

  public func shutdown() async {
    try? await http.shutdown()
  }

  // MARK: requests

  struct Response {
    let status: Int
    let body: [UInt8]
  }

  private func makeRequest(
    _ method: HTTPMethod, _ path: String, query: [(String, String)], body: JSON?,
    contentType: String = "application/json"
  ) throws -> HTTPClientRequest {
    var url = server + path
    if !query.isEmpty {
      url += "?" + query.map { "\($0.0)=\(percentEncode($0.1))" }.joined(separator: "&")
    }
    var request = HTTPClientRequest(url: url)
    request.method = method
    request.headers.add(name: "Accept", value: "application/json")
    request.headers.add(name: "User-Agent", value: "swell-sidecar")
    if let token = try tokens.token() { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
    if let body {
      request.headers.add(name: "Content-Type", value: contentType)
      request.body = .bytes(ByteBuffer(bytes: body.serialized()))
    }
    return request
  }

  func send(
    _ method: HTTPMethod, _ path: String, query: [(String, String)] = [], body: JSON? = nil,
    contentType: String = "application/json"
  ) async throws -> Response {
    var attempt = 0
    while true {
      attempt += 1
      let request = try makeRequest(method, path, query: query, body: body, contentType: contentType)
      let response = try await http.execute(request, deadline: .now() + requestTimeout)
      let bytes = try await response.body.collect(upTo: 64 << 20)
      let status = Int(response.status.code)
      if status == 401 && attempt == 1 && tokens.file != nil {
        tokens.invalidate()
        continue
      }
      return Response(status: status, body: Array(bytes.readableBytesView))
    }
  }

  /// Sends a request and returns the answer's JSON, or throws the server's Status as a KubeError.
  func call(
    _ method: HTTPMethod, _ path: String, query: [(String, String)] = [], body: JSON? = nil,
    contentType: String = "application/json"
  ) async throws -> JSON {
    let response = try await send(method, path, query: query, body: body, contentType: contentType)
    guard (200..<300).contains(response.status) else { throw KubeError(status: response.status, body: response.body) }
    return try JSON.parse(response.body)
  }

  // MARK: verbs

  /// The object, or nil when it does not exist.
  public func get(_ resource: KubeResource, namespace: String? = nil, name: String) async throws -> JSON? {
    do {
      return withKind(try await call(.GET, resource.path(namespace: namespace, name: name)), resource)
    } catch let error as KubeError where error.isNotFound {
      return nil
    }
  }

  /// Lists every object of a type, in pages; restarts the list when a continue token expires.
  public func list(
    _ resource: KubeResource, namespace: String? = nil, labelSelector: String? = nil
  ) async throws -> (items: [JSON], resourceVersion: String) {
    var restarts = 0
    while true {
      var items: [JSON] = []
      var continueToken: String?
      do {
        repeat {
          var query = [("limit", "\(pageSize)")]
          if let labelSelector { query.append(("labelSelector", labelSelector)) }
          if let continueToken { query.append(("continue", continueToken)) }
          let page = try await call(.GET, resource.path(namespace: namespace), query: query)
          items += (page["items"]?.array ?? []).map { withKind($0, resource) }
          continueToken = page[path: "metadata", "continue"]?.string.flatMap { $0.isEmpty ? nil : $0 }
          if continueToken == nil {
            return (items, page[path: "metadata", "resourceVersion"]?.string ?? "")
          }
        } while true
      } catch let error as KubeError where error.isGone && continueToken != nil && restarts < 5 {
        restarts += 1
        logger.info("list continue token expired; listing again", metadata: ["resource": "\(resource)"])
      }
    }
  }

  /// Watches from `resourceVersion` until the server ends the stream; calls `handle` for each event.
  /// An ERROR event throws its Status as a KubeError (410 Gone when the version is too old).
  public func watch(
    _ resource: KubeResource, resourceVersion: String, timeoutSeconds: Int,
    handle: (WatchEvent) async throws -> Void
  ) async throws {
    let query = [
      ("watch", "1"), ("resourceVersion", resourceVersion), ("allowWatchBookmarks", "true"),
      ("timeoutSeconds", "\(timeoutSeconds)"),
    ]
    var attempt = 0
    var response: HTTPClientResponse
    while true {
      attempt += 1
      let request = try makeRequest(.GET, resource.path(), query: query, body: nil)
      response = try await http.execute(request, deadline: .now() + .seconds(Int64(timeoutSeconds) + 30))
      if response.status.code == 401 && attempt == 1 && tokens.file != nil {
        tokens.invalidate()
        _ = try? await response.body.collect(upTo: 1 << 20)
        continue
      }
      break
    }
    guard response.status.code == 200 else {
      let body = try await response.body.collect(upTo: 1 << 20)
      throw KubeError(status: Int(response.status.code), body: Array(body.readableBytesView))
    }
    var pending: [UInt8] = []
    for try await chunk in response.body {
      pending += chunk.readableBytesView
      while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
        let line = pending[..<newline]
        defer { pending.removeSubrange(...newline) }
        if line.isEmpty { continue }
        try await handle(try parseWatchLine(line, resource))
      }
    }
    if !pending.isEmpty { try await handle(try parseWatchLine(pending[...], resource)) }
  }

  func parseWatchLine(_ line: ArraySlice<UInt8>, _ resource: KubeResource) throws -> WatchEvent {
    let event = try JSON.parse(line)
    let type = event["type"]?.string ?? ""
    let object = event["object"] ?? .null
    if type == "ERROR" {
      throw KubeError(
        code: Int(object["code"]?.int ?? 500), reason: object["reason"]?.string ?? "",
        message: object["message"]?.string ?? "watch error")
    }
    guard let kind = WatchEvent.Kind(rawValue: type) else {
      throw KubeError(code: 500, reason: "BadWatchEvent", message: "unknown watch event type \(type.debugDescription)")
    }
    return WatchEvent(kind: kind, object: withKind(object, resource))
  }

  @discardableResult
  public func create(_ resource: KubeResource, namespace: String? = nil, _ object: JSON) async throws -> JSON {
    withKind(try await call(.POST, resource.path(namespace: namespace), body: withKind(object, resource)), resource)
  }

  /// PUT of the whole object; its resourceVersion makes a stale write fail with 409 Conflict.
  @discardableResult
  public func update(_ resource: KubeResource, _ object: JSON) async throws -> JSON {
    let path = resource.path(namespace: object.namespace, name: object.name)
    return withKind(try await call(.PUT, path, body: withKind(object, resource)), resource)
  }

  /// PUT to the status subresource.
  @discardableResult
  public func updateStatus(_ resource: KubeResource, _ object: JSON) async throws -> JSON {
    let path = resource.path(namespace: object.namespace, name: object.name, subresource: "status")
    return withKind(try await call(.PUT, path, body: withKind(object, resource)), resource)
  }

  /// A JSON merge patch (RFC 7386): the fields in `patch` replace the object's, a null removes one.
  /// It carries no resourceVersion, so it applies to whatever the object is now.
  @discardableResult
  public func patch(_ resource: KubeResource, namespace: String? = nil, name: String, _ patch: JSON) async throws
    -> JSON
  {
    let path = resource.path(namespace: namespace, name: name)
    return withKind(
      try await call(.PATCH, path, body: patch, contentType: "application/merge-patch+json"), resource)
  }

  /// Deletes an object; with `uid`, only that incarnation of it. A missing object is not an error.
  public func delete(_ resource: KubeResource, namespace: String? = nil, name: String, uid: String? = nil)
    async throws
  {
    var body: JSON? = nil
    if let uid {
      body = ["kind": "DeleteOptions", "apiVersion": "v1", "preconditions": ["uid": .string(uid)]]
    }
    do {
      _ = try await call(.DELETE, resource.path(namespace: namespace, name: name), body: body)
    } catch let error as KubeError where error.isNotFound {
      return
    }
  }
}

/// List items come without kind and apiVersion, and the API server refuses a write without them.
func withKind(_ object: JSON, _ resource: KubeResource) -> JSON {
  guard case .object = object else { return object }
  var out = object
  if out["kind"] == nil { out["kind"] = .string(resource.kind) }
  if out["apiVersion"] == nil { out["apiVersion"] = .string(resource.apiVersion) }
  return out
}

func percentEncode(_ s: String) -> String {
  var out = ""
  for byte in s.utf8 {
    switch byte {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
      UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
      UInt8(ascii: "~"):
      out.unicodeScalars.append(Unicode.Scalar(byte))
    default:
      let hex = Array("0123456789ABCDEF".utf8)
      out += "%" + String(decoding: [hex[Int(byte >> 4)], hex[Int(byte & 15)]], as: UTF8.self)
    }
  }
  return out
}
