import CSIProto
import GRPCCore
import SwiftProtobuf

/// The CSI Identity service: who the plugin is, what it can do, and whether it is ready.
public struct IdentityService: Csi_V1_Identity.SimpleServiceProtocol {
  let config: DriverConfig
  /// Throws when a backend this process serves cannot take requests.
  let readiness: @Sendable () async throws -> Void

  public init(config: DriverConfig, readiness: @escaping @Sendable () async throws -> Void) {
    self.config = config
    self.readiness = readiness
  }

  public func getPluginInfo(
    request: Csi_V1_GetPluginInfoRequest, context: ServerContext
  ) async throws -> Csi_V1_GetPluginInfoResponse {
    .with {
      $0.name = config.driverName
      $0.vendorVersion = SwellVersion.version
      $0.manifest = ["csi-spec": SwellVersion.csiSpec, "mode": config.mode.rawValue]
    }
  }

  public func getPluginCapabilities(
    request: Csi_V1_GetPluginCapabilitiesRequest, context: ServerContext
  ) async throws -> Csi_V1_GetPluginCapabilitiesResponse {
    var caps: [Csi_V1_PluginCapability] = [
      .with { $0.service.type = .volumeAccessibilityConstraints },
      .with { $0.volumeExpansion.type = .online },
    ]
    if config.mode.servesController {
      caps.insert(.with { $0.service.type = .controllerService }, at: 0)
      caps.insert(.with { $0.service.type = .groupControllerService }, at: 1)
    }
    return .with { $0.capabilities = caps }
  }

  public func probe(request: Csi_V1_ProbeRequest, context: ServerContext) async throws -> Csi_V1_ProbeResponse {
    do {
      try await readiness()
    } catch {
      // The spec's answer for an unhealthy plugin; the message says which check failed.
      throw RPCError(code: .failedPrecondition, message: "not ready: \(ErrorMapping.rpcError(error).message)")
    }
    return .with { $0.ready = Google_Protobuf_BoolValue(true) }
  }
}
