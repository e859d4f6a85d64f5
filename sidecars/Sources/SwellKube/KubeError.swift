/// A failure answered by the API server (a `Status` object), or a transport failure around it.
public struct KubeError: Error, CustomStringConvertible, Sendable {
  public let code: Int
  public let reason: String
  public let message: String

  public init(code: Int, reason: String, message: String) {
    self.code = code
    self.reason = reason
    self.message = message
  }

  /// Reads a `Status` body; falls back to the HTTP status when the body is something else.
  public init(status: Int, body: [UInt8]) {
    if let json = try? JSON.parse(body), json["kind"]?.string == "Status" {
      self.init(
        code: Int(json["code"]?.int ?? Int64(status)), reason: json["reason"]?.string ?? "",
        message: json["message"]?.string ?? "")
    } else {
      self.init(code: status, reason: "", message: String(decoding: body.prefix(300), as: UTF8.self))
    }
  }

  public var isNotFound: Bool { code == 404 }
  public var isConflict: Bool { code == 409 && reason != "AlreadyExists" }
  public var isAlreadyExists: Bool { code == 409 && reason == "AlreadyExists" }
  /// 410 Gone: a watch or list from a resourceVersion the server no longer has.
  public var isGone: Bool { code == 410 }
  /// A watch from a version the server has not reached yet: client-go lists again.
  public var isTooLargeResourceVersion: Bool { code == 504 && message.contains("Too large resource version") }

  public var description: String { "\(code) \(reason): \(message)" }
}
