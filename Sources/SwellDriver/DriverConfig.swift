/// Which CSI services one plugin process serves.
public enum PluginMode: String, Sendable, CaseIterable {
  case controller
  case node
  case all

  public var servesController: Bool { self != .node }
  public var servesNode: Bool { self != .controller }
}

/// What every service needs to know about this driver and node.
public struct DriverConfig: Sendable {
  public var driverName: String
  public var version: String
  public var nodeID: String
  public var mode: PluginMode
  public var maxVolumesPerNode: Int64
  /// The default size of a volume whose request names none.
  public var defaultVolumeBytes: Int64
  /// The list of nodes a network volume may be published to (one node ID a line), which the
  /// sidecar keeps from the cluster's CSINodes; nil: every well-formed node ID.
  public var nodesFile: String? = nil
  /// Stage local volumes (loop, lvm, dir) with no publish context: for a CSIDriver without attach
  /// (`attachRequired: false`), where nothing calls ControllerPublishVolume. Network volumes always
  /// need their publication.
  public var stageUnpublishedLocal = false

  public init(
    driverName: String, version: String, nodeID: String, mode: PluginMode, maxVolumesPerNode: Int64 = 256,
    defaultVolumeBytes: Int64 = 1 << 30
  ) {
    self.driverName = driverName
    self.version = version
    self.nodeID = nodeID
    self.mode = mode
    self.maxVolumesPerNode = maxVolumesPerNode
    self.defaultVolumeBytes = defaultVolumeBytes
  }

  /// The topology key whose value names the node a local volume lives on.
  public var topologyKey: String { "topology.\(driverName)/node" }
  public var topologySegment: [String: String] { [topologyKey: nodeID] }
}
