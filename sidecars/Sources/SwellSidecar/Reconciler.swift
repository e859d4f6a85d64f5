import CSIProto
import GRPCCore
import Logging
import SwellClient
import SwellKube
import Synchronization

/// Which objects this sidecar answers for.
public enum Scope: Sendable, Equatable {
  /// Every claim and volume of the driver (the controller Deployment).
  case central
  /// Only claims whose selected node is this node, and volumes whose node affinity admits it.
  case node(name: String, topology: [String: String])
}

/// The level-triggered reconciler: each key is a claim (`claim/<ns>/<name>`), a volume
/// (`volume/<name>`) or a snapshot content (`content/<name>`); a worker re-reads the object from the
/// informer caches and takes the next step.
public final class Reconciler: KeyWorker {
  let kube: KubeClient
  let csi: CSIClient
  let driver: String
  let scope: Scope
  /// The backends whose classes and volumes this sidecar serves; empty for all.
  let backends: Set<String>
  let defaultFSType: String
  /// The plugin has the SINGLE_NODE_MULTI_WRITER controller capability.
  let multiWriter: Bool
  let csiTimeout: Duration
  let claims: Informer
  let volumes: Informer
  let classes: Informer
  /// VolumeSnapshotContents and VolumeSnapshotClasses, when the sidecar serves snapshots.
  let snapshotCaches: ContentCaches?
  /// VolumeGroupSnapshotContents and VolumeGroupSnapshotClasses, when the sidecar serves group snapshots.
  let groupCaches: ContentCaches?
  /// VolumeAttachments and CSINodes, when the sidecar attaches (`--attach`).
  let attachments: Informer?
  let csiNodes: Informer?
  let queue: WorkQueue
  let events: EventRecorder
  let metrics: SidecarMetrics
  /// Nudged after every change of free space this sidecar makes (create, delete, grow, snapshot).
  let capacityChanged: Nudge
  let logger: Logger
  /// CreateVolume requests that may still be running in the plugin, by claim key: if the claim goes
  /// away, the same request is repeated and the volume deleted, so nothing leaks.
  let inFlight = Mutex<[String: Csi_V1_CreateVolumeRequest]>([:])
  /// Keys in backoff after a failure, with what their object looked like then. Our own status writes
  /// after a failure come back as watch events; they must not cut the backoff short. A change by
  /// someone else (a new request size, a selected node, a new phase) does.
  let holds = Mutex<[String: (until: ContinuousClock.Instant, fingerprint: JSON?)]>([:])

  init(
    kube: KubeClient, csi: CSIClient, driver: String, scope: Scope, backends: Set<String> = [], defaultFSType: String,
    multiWriter: Bool = false, csiTimeout: Duration, claims: Informer, volumes: Informer, classes: Informer, snapshotCaches: ContentCaches? = nil,
    groupCaches: ContentCaches? = nil, attachments: Informer? = nil, csiNodes: Informer? = nil,
    queue: WorkQueue, events: EventRecorder, metrics: SidecarMetrics, capacityChanged: Nudge = Nudge(), logger: Logger
  ) {
    self.attachments = attachments
    self.csiNodes = csiNodes
    self.capacityChanged = capacityChanged
    self.kube = kube
    self.csi = csi
    self.driver = driver
    self.scope = scope
    self.backends = backends
    self.defaultFSType = defaultFSType
    self.multiWriter = multiWriter
    self.csiTimeout = csiTimeout
    self.claims = claims
    self.volumes = volumes
    self.classes = classes
    self.snapshotCaches = snapshotCaches
    self.groupCaches = groupCaches
    self.queue = queue
    self.events = events
    self.metrics = metrics
    self.logger = logger
  }

  /// What a key's object looks like, leaving out what the sidecar itself writes (status details and
  /// the resourceVersion): its spec, annotations, labels, finalizers, deletion and phase.
  func fingerprint(_ key: String) -> JSON? {
    let object: JSON?
    if key.hasPrefix("claim/") {
      object = claims.get(String(key.dropFirst("claim/".count)))
    } else if key.hasPrefix("content/") {
      object = snapshotCaches?.contents.get(String(key.dropFirst("content/".count)))
    } else if key.hasPrefix("groupcontent/") {
      object = groupCaches?.contents.get(String(key.dropFirst("groupcontent/".count)))
    } else if key.hasPrefix("attachment/") {
      object = attachments?.get(String(key.dropFirst("attachment/".count)))
    } else {
      object = volumes.get(String(key.dropFirst("volume/".count)))
    }
    guard var object else { return nil }
    if key.hasPrefix("content/") {
      // The snapshotter's own markers on a content are its writes, like a claim's status.
      object[path: "metadata", "annotations", SnapshotNames.beingCreated] = nil
      object[path: "metadata", "annotations", SnapshotNames.nodeAnnotation] = nil
    }
    if key.hasPrefix("groupcontent/") {
      object[path: "metadata", "annotations", GroupSnapshotNames.beingCreated] = nil
      object[path: "metadata", "annotations", SnapshotNames.nodeAnnotation] = nil
    }
    if key.hasPrefix("attachment/") {
      // The attacher's finalizer and node ID are its own writes.
      object[path: "metadata", "annotations", AttachNames.nodeIDAnnotation] = nil
      object[path: "metadata", "finalizers"] = .strings(object.finalizers.filter { $0 != attachFinalizer })
    }
    return [
      "spec": object["spec"] ?? .null, "annotations": object[path: "metadata", "annotations"] ?? .null,
      "labels": object[path: "metadata", "labels"] ?? .null, "finalizers": object[path: "metadata", "finalizers"] ?? .null,
      "deletion": object[path: "metadata", "deletionTimestamp"] ?? .null, "phase": object[path: "status", "phase"] ?? .null,
      "uid": .string(object.uid),
    ]
  }

  /// When the key's backoff ends, if it is in one and its object has not changed since it failed.
  func heldUntil(_ key: String) -> ContinuousClock.Instant? {
    guard let hold = holds.withLock({ $0[key] }) else { return nil }
    if ContinuousClock.now >= hold.until { return nil }
    return hold.fingerprint == fingerprint(key) ? hold.until : nil
  }

  func hold(_ key: String, until: ContinuousClock.Instant) {
    let print = fingerprint(key)
    holds.withLock { $0[key] = (until, print) }
  }

  func release(_ key: String) {
    _ = holds.withLock { $0.removeValue(forKey: key) }
  }

  func queueDepthChanged(_ depth: Int) { metrics.setQueueDepth(depth) }

  static func claimKey(_ claim: JSON) -> String { "claim/\(objectKey(claim))" }
  static func volumeKey(_ pv: JSON) -> String { "volume/\(pv.name)" }

  /// Runs one step for a key. Returns normally when the key is done for now; throws to be retried
  /// with backoff.
  func reconcile(_ key: String) async throws {
    if key.hasPrefix("claim/") {
      let cacheKey = String(key.dropFirst("claim/".count))
      guard let claim = claims.get(cacheKey) else {
        try await abandonInFlight(key)
        return
      }
      if claim[path: "spec", "volumeName"]?.string?.isEmpty == false {
        try await resizeIfNeeded(claim)
        try await modifyIfNeeded(claim)
      } else {
        try await provisionIfNeeded(claim, key: key)
      }
    } else if key.hasPrefix("volume/") {
      if let pv = volumes.get(String(key.dropFirst("volume/".count))) {
        if owns(pv) { try await releaseAttachFinalizer(pv) }
        try await deleteIfReleased(pv)
      }
    } else if key.hasPrefix("attachment/") {
      if let va = attachments?.get(String(key.dropFirst("attachment/".count))) { try await syncAttachment(va) }
    } else if key.hasPrefix("content/") {
      if let content = snapshotCaches?.contents.get(String(key.dropFirst("content/".count))) { try await syncContent(content) }
    } else if key.hasPrefix("groupcontent/") {
      if let content = groupCaches?.contents.get(String(key.dropFirst("groupcontent/".count))) {
        try await syncGroupContent(content)
      }
    }
  }

  /// The storage class of a claim or volume, from the cache.
  func storageClass(of object: JSON) -> JSON? {
    guard let name = object[path: "spec", "storageClassName"]?.string, !name.isEmpty else { return nil }
    return classes.get(name)
  }

  /// True when this sidecar serves `backend` (the class parameter, or the volume context entry;
  /// absent means the plugin's default, loop).
  func serves(backend: String?) -> Bool {
    backends.isEmpty || backends.contains(backend ?? K8sNames.defaultBackend)
  }

  /// True when the PV is this driver's and in this sidecar's scope.
  func owns(_ pv: JSON) -> Bool {
    guard pv[path: "spec", "csi", "driver"]?.string == driver,
      serves(backend: pv[path: "spec", "csi", "volumeAttributes", "backend"]?.string)
    else { return false }
    if case .node(_, let topology) = scope { return Claims.nodeAffinityAdmits(pv, labels: topology) }
    return true
  }

  /// Calls the plugin with the CSI timeout, counting failures by code.
  func callCSI<R: Sendable>(_ method: String, _ body: (CSIClient, CallOptions) async throws -> R) async throws -> R {
    var options = CallOptions.defaults
    options.timeout = csiTimeout
    do {
      return try await body(csi, options)
    } catch let error as RPCError {
      metrics.csiError(method: method, code: CSICodes.name(error.code))
      throw error
    }
  }

  /// Re-reads and rewrites an object until the write is not stale (409), at most five times.
  @discardableResult
  func rewrite(
    _ resource: KubeResource, _ object: JSON, status: Bool, _ change: (inout JSON) -> Void
  ) async throws -> JSON {
    var current = object
    var attempt = 0
    while true {
      var next = current
      change(&next)
      if next == current { return current }
      do {
        return status ? try await kube.updateStatus(resource, next) : try await kube.update(resource, next)
      } catch let error as KubeError where error.isConflict && attempt < 5 {
        attempt += 1
        guard let fresh = try await kube.get(resource, namespace: object.namespace, name: object.name),
          fresh.uid == object.uid
        else { throw error }
        current = fresh
      }
    }
  }
}

/// The gRPC codes as the CSI spec names them, and how external-provisioner classifies them.
enum CSICodes {
  static func name(_ code: RPCError.Code) -> String {
    switch code {
    case .cancelled: "Canceled"
    case .unknown: "Unknown"
    case .invalidArgument: "InvalidArgument"
    case .deadlineExceeded: "DeadlineExceeded"
    case .notFound: "NotFound"
    case .alreadyExists: "AlreadyExists"
    case .permissionDenied: "PermissionDenied"
    case .resourceExhausted: "ResourceExhausted"
    case .failedPrecondition: "FailedPrecondition"
    case .aborted: "Aborted"
    case .outOfRange: "OutOfRange"
    case .unimplemented: "Unimplemented"
    case .internalError: "Internal"
    case .unavailable: "Unavailable"
    case .dataLoss: "DataLoss"
    case .unauthenticated: "Unauthenticated"
    default: "Unknown"
    }
  }

  /// DeadlineExceeded, Unavailable, Canceled and Aborted: the call may still be running in the plugin,
  /// so the same call must be repeated.
  static func mayStillBeRunning(_ error: any Error) -> Bool {
    guard let rpc = error as? RPCError else { return false }
    return [.deadlineExceeded, .unavailable, .cancelled, .aborted].contains(rpc.code)
  }

  /// A resize the plugin can never do as asked: mark it infeasible on the claim.
  static func infeasible(_ error: any Error) -> Bool {
    guard let rpc = error as? RPCError else { return false }
    return [.invalidArgument, .outOfRange, .notFound].contains(rpc.code)
  }

  static func describe(_ error: any Error) -> String {
    if let rpc = error as? RPCError { return "rpc error: code = \(name(rpc.code)) desc = \(rpc.message)" }
    return "\(error)"
  }
}
