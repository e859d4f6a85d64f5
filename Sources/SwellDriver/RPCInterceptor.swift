import CSIProto
import GRPCCore
import Logging
import SwellHost
import SwellStorage

/// Maps every error a handler throws to its gRPC code (through ``ErrorMapping``), counts the call
/// in the metrics, and logs one line per RPC: the method, the volume, the duration, the code, and
/// where the time went (``Spans``).
/// It also opens the scope of the call's secrets (``CallSecrets``) around the handler, for every
/// RPC whose request carries them. Only the volume ID is taken from a request for the log, so
/// secrets in requests never reach a log.
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
    // Every CSI call is unary: its one message is read here, before the handler runs, so that the
    // secrets it carries are in scope for the whole call (``CallSecrets``) and no handler can
    // step outside them.
    var volume: String?
    let response: StreamingServerResponse<Output>
    let spans = SpanRecorder()
    do {
      var messages: [Input] = []
      for try await message in request.messages { messages.append(message) }
      if let named = messages.first as? any NamesVolume { volume = named.volumeName }
      let secrets = (messages.first as? any CarriesSecrets)?.callSecrets ?? [:]
      let (stream, continuation) = AsyncThrowingStream<Input, any Error>.makeStream()
      for message in messages { continuation.yield(message) }
      continuation.finish()
      let replayed = StreamingServerRequest(metadata: request.metadata, messages: RPCAsyncSequence(wrapping: stream))
      response = try await CallSecrets.$current.withValue(secrets) {
        try await Spans.$recorder.withValue(spans) { try await next(replayed, context) }
      }
    } catch {
      response = StreamingServerResponse(error: ErrorMapping.rpcError(error))
    }
    let elapsed = ContinuousClock.now - start
    let method = context.descriptor.method
    var metadata: Logger.Metadata = ["method": "\(method)", "ms": "\((elapsed.milliseconds * 1000).rounded() / 1000)"]
    if let id = volume, !id.isEmpty { metadata["volume"] = "\(id)" }
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

/// A request that carries the CO's secrets for the call (`secrets`, a `csi_secret` field).
protocol CarriesSecrets {
  var callSecrets: [String: String] { get }
}

extension Csi_V1_CreateVolumeRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
extension Csi_V1_DeleteVolumeRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
extension Csi_V1_ControllerPublishVolumeRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
extension Csi_V1_ControllerUnpublishVolumeRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
extension Csi_V1_ValidateVolumeCapabilitiesRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
extension Csi_V1_ControllerModifyVolumeRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
extension Csi_V1_ControllerExpandVolumeRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
extension Csi_V1_CreateSnapshotRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
extension Csi_V1_DeleteSnapshotRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
extension Csi_V1_ListSnapshotsRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
extension Csi_V1_GetSnapshotRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
extension Csi_V1_NodeStageVolumeRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
extension Csi_V1_NodePublishVolumeRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
extension Csi_V1_NodeExpandVolumeRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
extension Csi_V1_CreateVolumeGroupSnapshotRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
extension Csi_V1_DeleteVolumeGroupSnapshotRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
extension Csi_V1_GetVolumeGroupSnapshotRequest: CarriesSecrets { var callSecrets: [String: String] { secrets } }
