import CSIProto
import GRPCCore
import Logging
import SwellKube

/// Publishes CSIStorageCapacity objects, as kubernetes-csi's external-provisioner does with
/// `--enable-capacity`, so that the scheduler puts a WaitForFirstConsumer claim only on a node
/// whose storage can hold it.
///
/// One object per StorageClass of this driver and topology segment: a per-node sidecar publishes
/// its node's segment for the local backends (loop, lvm); the central one publishes the network
/// backends (iscsi) with an empty `nodeTopology`, which matches every node. `capacity` and
/// `maximumVolumeSize` come from GetCapacity with the class's parameters. The objects carry the
/// provisioner's labels and a controller ownerReference to the sidecar's DaemonSet or Deployment,
/// so that they are found by label and garbage-collected with their owner.
///
/// Level-triggered: each pass lists what is published (by label) and what should be, and writes
/// only the difference: a create for what is missing, an update for a changed figure (409 re-reads
/// and compares again), a delete for a class that is gone or a duplicate. A pass runs every
/// ``interval`` and right after the sidecar creates, deletes, grows or snapshots a volume.
final class CapacityPublisher: Sendable {
  let reconciler: Reconciler
  let namespace: String
  /// The ownerReference every object carries.
  let owner: JSON
  let interval: Duration
  let nudge: Nudge
  let logger: Logger

  static let driverLabel = "csi.storage.k8s.io/drivername"
  static let managedByLabel = "csi.storage.k8s.io/managed-by"
  /// Backends whose volumes live on one node; the others are reachable from every node.
  static let localBackends: Set<String> = ["loop", "lvm"]

  init(reconciler: Reconciler, namespace: String, owner: JSON, interval: Duration, nudge: Nudge, logger: Logger) {
    self.reconciler = reconciler
    self.namespace = namespace
    self.owner = owner
    self.interval = interval
    self.nudge = nudge
    self.logger = logger
  }

  /// `external-provisioner`, or `external-provisioner-<node>` for a per-node sidecar, as the
  /// kubernetes-csi provisioner labels them; a value over 63 characters is shortened with a hash.
  static func managedBy(_ scope: Scope) -> String {
    guard case .node(let name, _) = scope else { return "external-provisioner" }
    let value = "external-provisioner-\(name)"
    guard value.count > 63 else { return value }
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in name.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
    return "external-provisioner-" + String(hash, radix: 16)
  }

  var labels: [String: String] {
    [Self.driverLabel: reconciler.driver, Self.managedByLabel: Self.managedBy(reconciler.scope)]
  }

  var labelSelector: String {
    labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
  }

  func run() async throws {
    try await repeatPasses("capacity", logger: logger) {
      try await sync()
      reconciler.metrics.pass("capacity")
    } between: {
      await nudge.wait(timeout: interval)
      try Task.checkCancellation()
    }
  }

  /// One object as it should be published.
  struct Wanted: Equatable {
    var storageClass: String
    var topology: [String: String]
    var capacity: Int64
    var maximum: Int64?

    var key: String { CapacityPublisher.key(storageClass, topology) }
  }

  static func key(_ storageClass: String, _ topology: [String: String]) -> String {
    ([storageClass] + topology.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }).joined(separator: "\u{1F}")
  }

  static func key(of object: JSON) -> String {
    key(object["storageClassName"]?.string ?? "", object[path: "nodeTopology", "matchLabels"]?.stringMap ?? [:])
  }

  /// The classes this sidecar publishes for, with GetCapacity's answer for each.
  func wanted() async throws -> [Wanted] {
    let r = reconciler
    let topology: [String: String]
    let local: Bool
    switch r.scope {
    case .node(_, let segment):
      topology = segment
      local = true
    case .central:
      topology = [:]
      local = false
    }
    var out: [Wanted] = []
    for storageClass in r.classes.list() where storageClass["provisioner"]?.string == r.driver {
      let backend = storageClass["parameters"]?.stringMap["backend"] ?? K8sNames.defaultBackend
      guard r.serves(backend: backend), Self.localBackends.contains(backend) == local else { continue }
      let answer = try await r.callCSI("GetCapacity") { csi, options in
        try await csi.controller.getCapacity(
          .with {
            $0.parameters = Claims.pluginParameters(storageClass)
            if local { $0.accessibleTopology = .with { $0.segments = topology } }
          }, options: options)
      }
      out.append(
        Wanted(
          storageClass: storageClass.name, topology: topology, capacity: answer.availableCapacity,
          maximum: answer.hasMaximumVolumeSize ? answer.maximumVolumeSize.value : nil))
    }
    return out
  }

  /// One pass: the published objects made to match `wanted()`, with as few writes as that takes.
  func sync() async throws {
    let want = try await wanted()
    let kube = reconciler.kube
    let (items, _) = try await kube.list(.csiStorageCapacities, namespace: namespace, labelSelector: labelSelector)
    var published: [String: [JSON]] = [:]
    for item in items.sorted(by: { $0.name < $1.name }) { published[Self.key(of: item), default: []].append(item) }
    for w in want {
      var found = published.removeValue(forKey: w.key) ?? []
      if found.isEmpty {
        try await kube.create(.csiStorageCapacities, namespace: namespace, object(for: w))
        continue
      }
      let kept = found.removeFirst()
      for duplicate in found {
        try await kube.delete(.csiStorageCapacities, namespace: namespace, name: duplicate.name, uid: duplicate.uid)
      }
      try await update(kept, to: w)
    }
    // Classes that are gone, or no longer this sidecar's.
    for object in published.values.joined() {
      try await kube.delete(.csiStorageCapacities, namespace: namespace, name: object.name, uid: object.uid)
    }
  }

  func object(for w: Wanted) -> JSON {
    var object: JSON = [
      "apiVersion": "storage.k8s.io/v1", "kind": "CSIStorageCapacity",
      "metadata": [
        "generateName": "csisc-", "namespace": .string(namespace),
        "labels": .object(labels.mapValues { .string($0) }), "ownerReferences": [owner],
      ],
      // Empty for the network backends: a selector that matches every node, as the provisioner writes it.
      "nodeTopology": w.topology.isEmpty ? .emptyObject : ["matchLabels": .object(w.topology.mapValues { .string($0) })],
      "storageClassName": .string(w.storageClass),
    ]
    apply(w, to: &object)
    return object
  }

  func apply(_ w: Wanted, to object: inout JSON) {
    object["capacity"] = .string(Quantity.format(w.capacity))
    object["maximumVolumeSize"] = w.maximum.map { .string(Quantity.format($0)) }
  }

  static func matches(_ object: JSON, _ w: Wanted) -> Bool {
    func bytes(_ field: String) -> Int64? { object[field]?.string.flatMap { try? Quantity.parse($0) } }
    return bytes("capacity") == w.capacity && bytes("maximumVolumeSize") == w.maximum
  }

  /// Writes the figures when they differ; a 409 means someone else wrote meanwhile: read it again
  /// and compare again.
  func update(_ object: JSON, to w: Wanted) async throws {
    var current = object
    for _ in 0..<5 {
      if Self.matches(current, w) { return }
      var changed = current
      apply(w, to: &changed)
      do {
        try await reconciler.kube.update(.csiStorageCapacities, changed)
        return
      } catch let error as KubeError where error.code == 409 {
        guard let latest = try await reconciler.kube.get(.csiStorageCapacities, namespace: namespace, name: object.name)
        else {
          try await reconciler.kube.create(.csiStorageCapacities, namespace: namespace, self.object(for: w))
          return
        }
        current = latest
      }
    }
    throw KubeError(code: 409, reason: "Conflict", message: "CSIStorageCapacity \(object.name) kept changing")
  }

  /// The controller ownerReference of the object that runs this pod: its DaemonSet, or the
  /// Deployment above its ReplicaSet. Read from the pod named by the downward API, never guessed.
  static func owner(kube: KubeClient, podNamespace: String, podName: String) async throws -> JSON {
    guard let pod = try await kube.get(.pods, namespace: podNamespace, name: podName) else {
      throw SidecarError.noOwner("pod \(podNamespace)/\(podName) does not exist")
    }
    guard var ref = controllerRef(pod) else {
      throw SidecarError.noOwner("pod \(podNamespace)/\(podName) has no controller")
    }
    if ref["kind"]?.string == "ReplicaSet", let name = ref["name"]?.string,
      let replicaSet = try await kube.get(.replicaSets, namespace: podNamespace, name: name),
      let deployment = controllerRef(replicaSet), deployment["kind"]?.string == "Deployment"
    {
      ref = deployment
    }
    return [
      "apiVersion": ref["apiVersion"] ?? .null, "kind": ref["kind"] ?? .null, "name": ref["name"] ?? .null,
      "uid": ref["uid"] ?? .null, "controller": true,
    ]
  }

  static func controllerRef(_ object: JSON) -> JSON? {
    (object[path: "metadata", "ownerReferences"]?.array ?? []).first { $0["controller"]?.bool == true }
  }
}
