import CSIProto
import GRPCCore
import GRPCNIOTransportHTTP2Posix

/// A CSI client for a plugin on a unix socket: the four services over one connection.
public struct CSIClient: Sendable {
  public typealias Transport = HTTP2ClientTransport.Posix
  public let identity: Csi_V1_Identity.Client<Transport>
  public let controller: Csi_V1_Controller.Client<Transport>
  public let groupController: Csi_V1_GroupController.Client<Transport>
  public let node: Csi_V1_Node.Client<Transport>

  init(_ client: GRPCClient<Transport>) {
    identity = .init(wrapping: client)
    controller = .init(wrapping: client)
    groupController = .init(wrapping: client)
    node = .init(wrapping: client)
  }
}

extension CSIClient {
  /// True when the plugin offers ControllerPublishVolume.
  public func offersPublish() async -> Bool {
    guard let caps = try? await controller.controllerGetCapabilities(.init()) else { return false }
    return caps.capabilities.contains { $0.rpc.type == .publishUnpublishVolume }
  }

  /// What the CO does before NodeStageVolume, when one plugin serves the controller and this node
  /// (`--mode all`): publishes `id` to the plugin's own node and returns the publish context to
  /// stage with; nil when the plugin publishes nothing.
  public func publishHere(_ id: String, capability: Csi_V1_VolumeCapability) async throws -> [String: String]? {
    guard await offersPublish() else { return nil }
    let node = try await self.node.nodeGetInfo(.init()).nodeID
    return try await controller.controllerPublishVolume(.with {
      $0.volumeID = id
      $0.nodeID = node
      $0.volumeCapability = capability
    }).publishContext
  }

  /// What the CO does after NodeUnstageVolume: unpublishes `id` from the plugin's own node.
  public func unpublishHere(_ id: String) async throws {
    guard await offersPublish() else { return }
    let node = try await self.node.nodeGetInfo(.init()).nodeID
    _ = try await controller.controllerUnpublishVolume(.with {
      $0.volumeID = id
      $0.nodeID = node
    })
  }
}

/// Connects to the plugin at `socketPath`, runs `body`, then closes the connection.
public func withCSIClient<Result: Sendable>(
  socketPath: String, _ body: (CSIClient) async throws -> Result
) async throws -> Result {
  var config = HTTP2ClientTransport.Posix.Config.defaults
  config.connection.flushCoalescing = nil
  let transport = try HTTP2ClientTransport.Posix(
    target: .unixDomainSocket(path: socketPath), transportSecurity: .plaintext, config: config)
  return try await withGRPCClient(transport: transport) { client in
    try await body(CSIClient(client))
  }
}

/// Small builders for the requests a CO sends, shared by the CLI, the demo and the tests.
public enum CSIRequests {
  public static func mountCapability(
    fsType: String = "ext4", mode: Csi_V1_VolumeCapability.AccessMode.Mode = .singleNodeWriter,
    flags: [String] = []
  ) -> Csi_V1_VolumeCapability {
    .with {
      $0.mount = .with {
        $0.fsType = fsType
        $0.mountFlags = flags
      }
      $0.accessMode.mode = mode
    }
  }

  public static func blockCapability(
    mode: Csi_V1_VolumeCapability.AccessMode.Mode = .singleNodeWriter
  ) -> Csi_V1_VolumeCapability {
    .with {
      $0.block = .init()
      $0.accessMode.mode = mode
    }
  }

  public static func create(name: String, bytes: Int64, capability: Csi_V1_VolumeCapability) -> Csi_V1_CreateVolumeRequest {
    .with {
      $0.name = name
      $0.capacityRange.requiredBytes = bytes
      $0.volumeCapabilities = [capability]
    }
  }
}
