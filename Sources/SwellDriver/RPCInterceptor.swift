import CSIProto
import GRPCCore
import Logging
import SwellHost
import Synchronization

/// Maps every error a handler throws to its gRPC code (through ``ErrorMapping``), counts the call
/// in the metrics, and logs one line per RPC: the method, the volume, the duration, the code, and
/// where the time went (``Spans``).
/// Only the volume ID is taken from a request, so secrets in requests never reach a log.
public struct RPCInterceptor: ServerInterceptor {
  let logger: Logger
  let metrics: DriverMetrics?

  public init(logger: Logger, metrics: DriverMetrics? = nil) {
    self.logger = logger
    self.metrics = metrics
  }

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    let start = ContinuousClock.now
    let volume = Mutex<String?>(nil)
    let observed = StreamingServerRequest(
      metadata: request.metadata,
      messages: RPCAsyncSequence(wrapping: request.messages.map { message in
        if let named = message as? any NamesVolume { volume.withLock { $0 = named.volumeName } }
        return message
      }))
    let response: StreamingServerResponse<Output>
    let spans = SpanRecorder()
    do {
      response = try await Spans.$recorder.withValue(spans) { try await next(observed, context) }
    } catch {
      response = StreamingServerResponse(error: ErrorMapping.rpcError(error))
    }
    let elapsed = ContinuousClock.now - start
    let method = context.descriptor.method
    var metadata: Logger.Metadata = ["method": "\(method)", "ms": "\((elapsed.milliseconds * 1000).rounded() / 1000)"]
    if let id = volume.withLock({ $0 }), !id.isEmpty { metadata["volume"] = "\(id)" }
    let steps = spans.summary
    if !steps.isEmpty { metadata["spans"] = "\(steps)" }
    switch response.accepted {
    case .success:
      metadata["code"] = "OK"
      metrics?.record(method: method, code: "OK", duration: elapsed)
      logger.info("rpc", metadata: metadata)
    case .failure(let error):
      let code = ErrorMapping.name(of: error.code)
      metadata["code"] = "\(code)"
      metadata["error"] = "\(error.message)"
      metrics?.record(method: method, code: code, duration: elapsed)
      logger.warning("rpc", metadata: metadata)
    }
    return response
  }
}

/// A request that names one volume, for the log line.
protocol NamesVolume {
  var volumeName: String { get }
}

extension Csi_V1_CreateVolumeRequest: NamesVolume { var volumeName: String { name } }
extension Csi_V1_DeleteVolumeRequest: NamesVolume { var volumeName: String { volumeID } }
extension Csi_V1_ControllerExpandVolumeRequest: NamesVolume { var volumeName: String { volumeID } }
extension Csi_V1_ValidateVolumeCapabilitiesRequest: NamesVolume { var volumeName: String { volumeID } }
extension Csi_V1_ControllerGetVolumeRequest: NamesVolume { var volumeName: String { volumeID } }
extension Csi_V1_NodeStageVolumeRequest: NamesVolume { var volumeName: String { volumeID } }
extension Csi_V1_NodeUnstageVolumeRequest: NamesVolume { var volumeName: String { volumeID } }
extension Csi_V1_NodePublishVolumeRequest: NamesVolume { var volumeName: String { volumeID } }
extension Csi_V1_NodeUnpublishVolumeRequest: NamesVolume { var volumeName: String { volumeID } }
extension Csi_V1_NodeGetVolumeStatsRequest: NamesVolume { var volumeName: String { volumeID } }
extension Csi_V1_NodeExpandVolumeRequest: NamesVolume { var volumeName: String { volumeID } }
