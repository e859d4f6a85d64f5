/// A domain error with the CSI meaning it carries.
///
/// The kinds name what went wrong in CSI's terms; `SwellDriver/ErrorMapping.swift` is the one
/// place that turns them (and any other error) into gRPC status codes.
public struct SwellError: Error, CustomStringConvertible, Sendable {
  public enum Kind: Sendable, Equatable {
    case invalidArgument
    case notFound
    case alreadyExists
    case outOfRange
    case resourceExhausted
    case failedPrecondition
    case aborted
    /// Credentials were refused (an iSCSI target's CHAP).
    case permissionDenied
    case unavailable
    case `internal`
  }

  public var kind: Kind
  public var message: String
  public var cause: (any Error & Sendable)?

  public init(_ kind: Kind, _ message: String, cause: (any Error & Sendable)? = nil) {
    self.kind = kind
    self.message = message
    self.cause = cause
  }

  public var description: String {
    cause.map { "\(message): \($0)" } ?? message
  }

  public static func invalid(_ message: String) -> SwellError { .init(.invalidArgument, message) }
  public static func notFound(_ message: String) -> SwellError { .init(.notFound, message) }
  public static func precondition(_ message: String) -> SwellError { .init(.failedPrecondition, message) }
}
