#if canImport(Glibc)
  import Glibc
#endif
import GRPCCore
import SwellHost

/// The one place that decides which gRPC status code each error becomes.
///
/// Domain errors carry a ``SwellError/Kind`` chosen where the failure was understood; a failed
/// command or system call that nobody classified is INTERNAL, except that a full disk is
/// RESOURCE_EXHAUSTED, never INTERNAL.
public enum ErrorMapping {
  public static func code(for kind: SwellError.Kind) -> RPCError.Code {
    switch kind {
    case .invalidArgument: .invalidArgument
    case .notFound: .notFound
    case .alreadyExists: .alreadyExists
    case .outOfRange: .outOfRange
    case .resourceExhausted: .resourceExhausted
    case .failedPrecondition: .failedPrecondition
    case .aborted: .aborted
    case .permissionDenied: .permissionDenied
    case .unavailable: .unavailable
    case .internal: .internalError
    }
  }

  /// The canonical gRPC name of a code (`NOT_FOUND`), as logs, metrics and the CLI print it.
  public static func name(of code: RPCError.Code) -> String {
    switch code {
    case .cancelled: "CANCELLED"
    case .unknown: "UNKNOWN"
    case .invalidArgument: "INVALID_ARGUMENT"
    case .deadlineExceeded: "DEADLINE_EXCEEDED"
    case .notFound: "NOT_FOUND"
    case .alreadyExists: "ALREADY_EXISTS"
    case .permissionDenied: "PERMISSION_DENIED"
    case .resourceExhausted: "RESOURCE_EXHAUSTED"
    case .failedPrecondition: "FAILED_PRECONDITION"
    case .aborted: "ABORTED"
    case .outOfRange: "OUT_OF_RANGE"
    case .unimplemented: "UNIMPLEMENTED"
    case .internalError: "INTERNAL"
    case .unavailable: "UNAVAILABLE"
    case .dataLoss: "DATA_LOSS"
    case .unauthenticated: "UNAUTHENTICATED"
    default: "\(code)"
    }
  }

  public static func rpcError(_ error: any Error) -> RPCError {
    switch error {
    case let error as RPCError:
      return error
    case let error as SwellError:
      if case .internal = error.kind, let cause = error.cause, isDiskFull(cause) {
        return RPCError(code: .resourceExhausted, message: error.description)
      }
      return RPCError(code: code(for: error.kind), message: error.description)
    case let error as SystemCallError:
      return RPCError(code: isDiskFull(error) ? .resourceExhausted : .internalError, message: error.description)
    case let error as CommandError:
      return RPCError(code: isDiskFull(error) ? .resourceExhausted : .internalError, message: error.description)
    case is CancellationError:
      return RPCError(code: .cancelled, message: "the call was cancelled")
    default:
      return RPCError(code: .internalError, message: String(describing: error))
    }
  }

  static func isDiskFull(_ error: any Error) -> Bool {
    switch error {
    case let e as SystemCallError: return e.errno == ENOSPC || e.errno == EDQUOT
    case let e as CommandError: return e.stderr.contains("No space left on device")
    default: return false
    }
  }
}
