import CSIProto
import GRPCCore
import SwellHost
import SwellStorage

/// The CSI Controller service: volumes made, grown, listed and removed.
///
/// Every handler reads the same way: check arguments, lock the volume, act through the backend
/// (whose methods are idempotent), respond.
public struct ControllerService: Csi_V1_Controller.SimpleServiceProtocol {
  let config: DriverConfig
  let backend: ControllerBackends
  let nodes: NodeDirectory
  let locks = VolumeLocks()

  public init(config: DriverConfig, backends: ControllerBackends) {
    self.config = config
    self.backend = backends
    self.nodes = NodeDirectory(ownNode: config.nodeID, file: config.nodesFile)
  }

  public func createVolume(
    request: Csi_V1_CreateVolumeRequest, context: ServerContext
  ) async throws -> Csi_V1_CreateVolumeResponse {
    let validating = ContinuousClock.now
    try Names.validateVolumeID(request.name, field: "name")
    let access = try Validation.access(request.volumeCapabilities)
    // A VolumeAttributesClass's parameters take precedence over the StorageClass's (the spec).
    _ = try Validation.mutableParameters(request.mutableParameters)
    let parameters = request.parameters.merging(request.mutableParameters) { _, mutable in mutable }
    try Validation.parameters(parameters, backends: backend.names)
    let backendName = parameters["backend"] ?? backend.defaultName
    let target = try backend.backend(named: backendName)
    let source = request.hasVolumeContentSource ? try Validation.contentSource(request.volumeContentSource) : nil
    if request.hasAccessibilityRequirements, target.isLocal {
      try Validation.accessibility(request.accessibilityRequirements, config: config)
    }
    // A volume made from a source is at least the source's size, and that size by default.
    var sourceBytes: Int64?
    if let source { sourceBytes = try await backend.sourceBytes(source, backend: backendName) }
    let size = try Capacity.resolve(
      required: request.capacityRange.requiredBytes, limit: request.capacityRange.limitBytes,
      granularity: target.granularity, defaultBytes: sourceBytes ?? config.defaultVolumeBytes, maximum: target.maximumBytes)
    if let sourceBytes, size < sourceBytes {
      throw SwellError(
        .outOfRange, "the source holds \(sourceBytes) bytes; capacity_range allows at most \(size), which cannot hold it")
    }
    var spec = VolumeSpec(
      id: request.name, capacityBytes: size, requiredBytes: request.capacityRange.requiredBytes,
      limitBytes: request.capacityRange.limitBytes, access: access.kind, fsType: access.fsType, backend: backendName,
      pool: parameters["pool"], source: source, thick: try Validation.thick(parameters))
    spec.overcommit = try Validation.overcommit(parameters)
    spec.inodeLimit = try Validation.inodeLimit(parameters) ?? 0
    if backendName == IscsiBackend.name { spec.chap = try ChapCredentials(secrets: request.secrets) }
    Spans.recorder?.record("validate", ContinuousClock.now - validating)
    var record = try await locks.withLock(request.name) {
      // The source is held too, so that it is neither deleted nor grown while it is copied.
      guard let source else { return try await backend.create(spec) }
      return try await locks.withLock(Self.lockKey(source)) { try await backend.create(spec) }
    }
    // The node formats with the class's options, and grows a copied filesystem to its volume:
    // both travel in the volume context.
    if let options = parameters["mkfsOptions"] { record.context["mkfsOptions"] = options }
    if let source = record.source { record.context["contentSource"] = source.encoded }
    return .with { $0.volume = csiVolume(record) }
  }

  public func deleteVolume(
    request: Csi_V1_DeleteVolumeRequest, context: ServerContext
  ) async throws -> Csi_V1_DeleteVolumeResponse {
    try Names.validateVolumeID(request.volumeID)
    try await locks.withLock(request.volumeID) { try await backend.delete(request.volumeID) }
    return .init()
  }

  public func controllerExpandVolume(
    request: Csi_V1_ControllerExpandVolumeRequest, context: ServerContext
  ) async throws -> Csi_V1_ControllerExpandVolumeResponse {
    try Names.validateVolumeID(request.volumeID)
    guard request.hasCapacityRange else { throw SwellError.invalid("capacity_range is missing") }
    let required = request.capacityRange.requiredBytes
    let limit = request.capacityRange.limitBytes
    guard required >= 0, limit >= 0 else { throw SwellError.invalid("capacity_range must not be negative") }
    guard required > 0 else { throw SwellError.invalid("capacity_range.required_bytes must be set") }
    guard let target = Capacity.roundUp(required, to: backend.granularity), target <= backend.maximumBytes else {
      throw SwellError(.outOfRange, "required_bytes \(required) exceeds the largest volume (\(backend.maximumBytes) bytes)")
    }
    if limit > 0, target > limit {
      throw SwellError(.outOfRange, "required_bytes \(required) rounds up to \(target), over limit_bytes \(limit)")
    }
    let asked = request.hasVolumeCapability ? try Validation.access(request.volumeCapability) : nil
    let record = try await locks.withLock(request.volumeID) {
      // "Exceeds capabilities": a capability the volume was not made for is INVALID_ARGUMENT.
      if let asked, let existing = try await backend.volume(request.volumeID), existing.access != asked.kind {
        throw SwellError.invalid(
          "volume_capability asks for \(asked.kind.rawValue) access; volume \(existing.id) is a \(existing.access.rawValue) volume")
      }
      return try await backend.expand(request.volumeID, to: target)
    }
    return .with {
      $0.capacityBytes = record.capacityBytes
      // The node must see the new size (loop set-capacity, iSCSI rescan) and grow the filesystem;
      // a dir volume's raised quota holds at once, with nothing for the node to do.
      $0.nodeExpansionRequired = record.backend != DirectoryBackend.name
    }
  }

  public func validateVolumeCapabilities(
    request: Csi_V1_ValidateVolumeCapabilitiesRequest, context: ServerContext
  ) async throws -> Csi_V1_ValidateVolumeCapabilitiesResponse {
    try Names.validateVolumeID(request.volumeID)
    guard !request.volumeCapabilities.isEmpty else { throw SwellError.invalid("volume_capabilities is missing") }
    guard let record = try await backend.volume(request.volumeID) else {
      throw SwellError.notFound("volume \(request.volumeID) does not exist")
    }
    do {
      try Validation.parameters(request.parameters, backends: backend.names)
      _ = try Validation.mutableParameters(request.mutableParameters)
      let access = try Validation.access(request.volumeCapabilities)
      if access.kind != record.access {
        return .with { $0.message = "volume \(record.id) is a \(record.access.rawValue) volume, not \(access.kind.rawValue)" }
      }
      if !record.fsType.isEmpty, !access.fsType.isEmpty, record.fsType != access.fsType {
        return .with { $0.message = "volume \(record.id) was created for \(record.fsType), not \(access.fsType)" }
      }
    } catch let error as SwellError where error.kind == .invalidArgument {
      return .with { $0.message = error.message }
    }
    return .with {
      $0.confirmed = .with {
        $0.volumeContext = request.volumeContext
        $0.volumeCapabilities = request.volumeCapabilities
        $0.parameters = request.parameters
        $0.mutableParameters = request.mutableParameters
      }
    }
  }

  public func listVolumes(
    request: Csi_V1_ListVolumesRequest, context: ServerContext
  ) async throws -> Csi_V1_ListVolumesResponse {
    let (page, next) = try ListToken.page(
      try await backend.list(), id: \.id, maxEntries: request.maxEntries, startingToken: request.startingToken)
    var entries: [Csi_V1_ListVolumesResponse.Entry] = []
    for record in page {
      let health = await backend.health(record.id)
      let published = try await backend.publishedNodes(record)
      entries.append(.with {
        $0.volume = csiVolume(record)
        $0.status.volumeCondition = csiCondition(health)
        $0.status.publishedNodeIds = published
      })
    }
    return .with {
      $0.entries = entries
      $0.nextToken = next
    }
  }

  public func getCapacity(
    request: Csi_V1_GetCapacityRequest, context: ServerContext
  ) async throws -> Csi_V1_GetCapacityResponse {
    if !request.volumeCapabilities.isEmpty, (try? Validation.access(request.volumeCapabilities)) == nil {
      return .init()  // no capacity for volumes this driver cannot make
    }
    guard (try? Validation.parameters(request.parameters, backends: backend.names)) != nil else { return .init() }
    let target = try backend.backend(named: request.parameters["backend"])
    let available = Capacity.roundDown(
      try await target.availableBytes(parameters: request.parameters), to: target.granularity)
    if request.hasAccessibleTopology, target.isLocal,
      !Validation.topology(request.accessibleTopology, fits: config)
    {
      return .init()
    }
    return .with {
      $0.availableCapacity = available
      $0.maximumVolumeSize = .with { $0.value = min(available, target.maximumBytes) }
      $0.minimumVolumeSize = .with { $0.value = target.granularity }
    }
  }

  public func controllerGetCapabilities(
    request: Csi_V1_ControllerGetCapabilitiesRequest, context: ServerContext
  ) async throws -> Csi_V1_ControllerGetCapabilitiesResponse {
    let types: [Csi_V1_ControllerServiceCapability.RPC.TypeEnum] = [
      .createDeleteVolume, .expandVolume, .listVolumes, .getCapacity, .getVolume, .volumeCondition,
      .singleNodeMultiWriter, .createDeleteSnapshot, .listSnapshots, .getSnapshot, .cloneVolume, .modifyVolume,
      .publishUnpublishVolume, .listVolumesPublishedNodes,
    ]
    return .with { $0.capabilities = types.map { t in .with { $0.rpc.type = t } } }
  }

  public func controllerGetVolume(
    request: Csi_V1_ControllerGetVolumeRequest, context: ServerContext
  ) async throws -> Csi_V1_ControllerGetVolumeResponse {
    try Names.validateVolumeID(request.volumeID)
    guard let record = try await backend.volume(request.volumeID) else {
      throw SwellError.notFound("volume \(request.volumeID) does not exist")
    }
    let health = await backend.health(record.id)
    let published = try await backend.publishedNodes(record)
    return .with {
      $0.volume = csiVolume(record)
      $0.status.volumeCondition = csiCondition(health)
      $0.status.publishedNodeIds = published
    }
  }

  // MARK: Helpers

  func csiVolume(_ record: VolumeRecord) -> Csi_V1_Volume {
    .with {
      $0.volumeID = record.id
      $0.capacityBytes = record.capacityBytes
      $0.volumeContext = record.context.merging(["backend": record.backend]) { _, fixed in fixed }
      // A local volume lives on this node; a network volume is reachable from any.
      if record.isLocal { $0.accessibleTopology = [.with { $0.segments = config.topologySegment }] }
      switch record.source {
      case .snapshot(let id)?: $0.contentSource = .with { $0.snapshot = .with { $0.snapshotID = id } }
      case .volume(let id)?: $0.contentSource = .with { $0.volume = .with { $0.volumeID = id } }
      case nil: break
      }
    }
  }

  /// The lock that keeps a source from changing while a volume is made from it. Snapshot keys
  /// hold a `/`, which no volume ID can, so the two never collide.
  static func lockKey(_ source: VolumeSource) -> String {
    switch source {
    case .snapshot(let id): "snapshot/\(id)"
    case .volume(let id): id
    }
  }
}

/// ListVolumes' opaque paging token: the ID of the next volume to return.
enum ListToken {
  static let prefix = "swell-next:"

  static func encode(_ id: String) -> String { prefix + id }

  static func decode(_ token: String) -> String? {
    guard token.hasPrefix(prefix) else { return nil }
    let id = String(token.dropFirst(prefix.count))
    return (try? Names.validateVolumeID(id)) == nil ? nil : id
  }

  /// One page of `items` (sorted by ID) from `startingToken`, and the token of the next page
  /// (empty at the end). A negative `maxEntries` is INVALID_ARGUMENT, a token this plugin did not
  /// issue ABORTED.
  static func page<T>(
    _ items: [T], id: (T) -> String, maxEntries: Int32, startingToken: String
  ) throws -> (page: [T], next: String) {
    guard maxEntries >= 0 else { throw SwellError.invalid("max_entries must not be negative") }
    var rest = items
    if !startingToken.isEmpty {
      guard let after = decode(startingToken) else {
        throw SwellError(.aborted, "starting_token \(startingToken.debugDescription) is not one this plugin issued")
      }
      rest = rest.filter { id($0) >= after }
    }
    let page = maxEntries > 0 ? Array(rest.prefix(Int(maxEntries))) : rest
    return (page, page.count < rest.count ? encode(id(rest[page.count])) : "")
  }
}

func csiCondition(_ health: VolumeHealth) -> Csi_V1_VolumeCondition {
  switch health {
  case .normal: return .with { $0.message = "volume is healthy" }
  case .abnormal(let why): return .with {
      $0.abnormal = true
      $0.message = why
    }
  }
}
