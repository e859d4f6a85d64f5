import GRPCCore
import Logging

/// Maps every error a handler throws to its gRPC code (through ``ErrorMapping``), and logs one
/// line per RPC with the method, the duration and the code. Requests are never logged, so
/// secrets in them never reach a log.
public struct RPCInterceptor: ServerInterceptor {
  let logger: Logger

  public init(logger: Logger) {
    self.logger = logger
  }

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    let start = ContinuousClock.now
    let response: StreamingServerResponse<Output>
    do {
      response = try await next(request, context)
    } catch {
      response = StreamingServerResponse(error: ErrorMapping.rpcError(error))
    }
    let elapsed = ContinuousClock.now - start
    let ms = Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
    switch response.accepted {
    case .success:
      logger.info(
        "rpc", metadata: ["method": "\(context.descriptor.method)", "code": "OK", "ms": "\(rounded(ms))"])
    case .failure(let error):
      logger.warning(
        "rpc",
        metadata: [
          "method": "\(context.descriptor.method)", "code": "\(error.code)", "ms": "\(rounded(ms))",
          "error": "\(error.message)",
        ])
    }
    return response
  }

  private func rounded(_ ms: Double) -> Double { (ms * 1000).rounded() / 1000 }
}
