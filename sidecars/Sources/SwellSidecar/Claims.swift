import CSIProto
import SwellKube

/// Well-known annotation, finalizer and condition names, as Kubernetes spells them.
public enum K8sNames {
  public static let storageProvisioner = "volume.kubernetes.io/storage-provisioner"
  public static let betaStorageProvisioner = "volume.beta.kubernetes.io/storage-provisioner"
  public static let selectedNode = "volume.kubernetes.io/selected-node"
  /// The plugin's backend when a class names none.
  public static let defaultBackend = "loop"
  public static let provisionedBy = "pv.kubernetes.io/provisioned-by"
  public static let provisionerFinalizer = "external-provisioner.volume.kubernetes.io/finalizer"
  public static let csiParameterPrefix = "csi.storage.k8s.io/"
  public static let fsTypeParameter = "csi.storage.k8s.io/fstype"
  /// Where csi-provisioner records the class's controller-modify secret on the PV, for the resizer.
  public static let modifySecretName = "volume.kubernetes.io/controller-modify-secret-name"
  public static let modifySecretNamespace = "volume.kubernetes.io/controller-modify-secret-namespace"
  /// Where csi-provisioner records the class's provisioner secret on the PV, for DeleteVolume once
  /// the class may be gone. Both are written on every PV it makes, empty when the class names none.
  public static let deletionSecretName = "volume.kubernetes.io/provisioner-deletion-secret-name"
  public static let deletionSecretNamespace = "volume.kubernetes.io/provisioner-deletion-secret-namespace"
}

/// The secrets a StorageClass names for the calls a volume will see, resolved at provisioning.
public struct ClassSecrets: Sendable {
  public typealias Ref = (namespace: String, name: String)
  public var provisioner: Ref?
  public var nodeStage: Ref?
  public var controllerExpand: Ref?
  public var controllerModify: Ref?
  public var controllerPublish: Ref?
  public init(
    provisioner: Ref? = nil, nodeStage: Ref? = nil, controllerExpand: Ref? = nil, controllerModify: Ref? = nil,
    controllerPublish: Ref? = nil
  ) {
    self.provisioner = provisioner
    self.nodeStage = nodeStage
    self.controllerExpand = controllerExpand
    self.controllerModify = controllerModify
    self.controllerPublish = controllerPublish
  }
}

/// What the sidecar reads from a PVC and its StorageClass, and what it builds from them: the
/// CreateVolume request and the PersistentVolume. Pure functions, unit-tested without a cluster.
public enum Claims {
  public struct Invalid: Error, CustomStringConvertible {
    public let description: String
  }

  /// The CSI volume name for a claim: `pvc-<uid>`, as external-provisioner names it.
  public static func volumeName(_ claim: JSON) -> String { "pvc-\(claim.uid)" }

  public static func provisionerOf(_ claim: JSON) -> String? {
    let a = claim.annotations
    return a[K8sNames.storageProvisioner] ?? a[K8sNames.betaStorageProvisioner]
  }

  public static func requestedBytes(_ claim: JSON) throws -> Int64 {
    guard let text = claim[path: "spec", "resources", "requests", "storage"]?.string else {
      throw Invalid(description: "claim has no storage request")
    }
    do { return try Quantity.parse(text) } catch { throw Invalid(description: "\(error)") }
  }

  public static func bytes(_ value: JSON?) -> Int64? {
    value?.string.flatMap { try? Quantity.parse($0) }
  }

  public static func isBlock(_ object: JSON) -> Bool { object[path: "spec", "volumeMode"]?.string == "Block" }

  /// As external-provisioner maps them: to a driver with the SINGLE_NODE_MULTI_WRITER capability,
  /// ReadWriteOnce is SINGLE_NODE_MULTI_WRITER and ReadWriteOncePod SINGLE_NODE_SINGLE_WRITER; to
  /// any other, both are SINGLE_NODE_WRITER.
  public static func accessMode(_ mode: String, multiWriter: Bool) -> Csi_V1_VolumeCapability.AccessMode.Mode? {
    switch mode {
    case "ReadWriteOnce": multiWriter ? .singleNodeMultiWriter : .singleNodeWriter
    case "ReadWriteOncePod": multiWriter ? .singleNodeSingleWriter : .singleNodeWriter
    case "ReadOnlyMany": .multiNodeReaderOnly
    case "ReadWriteMany": .multiNodeMultiWriter
    default: nil
    }
  }

  /// One capability per access mode of the object (a PVC or a PV): block, or mount with fsType and flags.
  public static func capabilities(_ object: JSON, fsType: String, mountFlags: [String], multiWriter: Bool) throws
    -> [Csi_V1_VolumeCapability]
  {
    let modes = (object[path: "spec", "accessModes"]?.array ?? []).compactMap(\.string)
    guard !modes.isEmpty else { throw Invalid(description: "no access modes") }
    return try modes.map { text in
      guard let mode = accessMode(text, multiWriter: multiWriter) else {
        throw Invalid(description: "unknown access mode \(text)")
      }
      return Csi_V1_VolumeCapability.with {
        if isBlock(object) {
          $0.block = .init()
        } else {
          $0.mount = .with {
            $0.fsType = fsType
            $0.mountFlags = mountFlags
          }
        }
        $0.accessMode.mode = mode
      }
    }
  }

  /// StorageClass parameters for the plugin: all but the `csi.storage.k8s.io/` keys.
  public static func pluginParameters(_ storageClass: JSON) -> [String: String] {
    storageClass["parameters"]?.stringMap.filter { !$0.key.hasPrefix(K8sNames.csiParameterPrefix) } ?? [:]
  }

  public static func fsType(_ storageClass: JSON, defaultFSType: String) -> String {
    storageClass["parameters"]?.stringMap[K8sNames.fsTypeParameter] ?? defaultFSType
  }

  public static func mountOptions(_ storageClass: JSON) -> [String] {
    (storageClass["mountOptions"]?.array ?? []).compactMap(\.string)
  }

  /// The CreateVolume request for a claim; `topology` is the selected node's segments, if any.
  public static func createRequest(
    claim: JSON, storageClass: JSON, topology: [String: String]?, defaultFSType: String, multiWriter: Bool
  ) throws -> Csi_V1_CreateVolumeRequest {
    let bytes = try requestedBytes(claim)
    guard bytes > 0 else { throw Invalid(description: "storage request must be positive") }
    let caps = try capabilities(
      claim, fsType: fsType(storageClass, defaultFSType: defaultFSType), mountFlags: mountOptions(storageClass),
      multiWriter: multiWriter)
    return Csi_V1_CreateVolumeRequest.with {
      $0.name = volumeName(claim)
      $0.capacityRange.requiredBytes = bytes
      $0.volumeCapabilities = caps
      $0.parameters = pluginParameters(storageClass)
      if let topology {
        let segment = Csi_V1_Topology.with { $0.segments = topology }
        $0.accessibilityRequirements.requisite = [segment]
        $0.accessibilityRequirements.preferred = [segment]
      } else if let allowed = allowedTopologies(storageClass), !allowed.isEmpty {
        $0.accessibilityRequirements.requisite = allowed.map { t in .with { $0.segments = t } }
      }
    }
  }

  /// The class's allowedTopologies, one segment map per combination of values.
  public static func allowedTopologies(_ storageClass: JSON) -> [[String: String]]? {
    guard let terms = storageClass["allowedTopologies"]?.array else { return nil }
    var out: [[String: String]] = []
    for term in terms {
      var combos: [[String: String]] = [[:]]
      for expr in term["matchLabelExpressions"]?.array ?? [] {
        guard let key = expr["key"]?.string else { continue }
        let values = (expr["values"]?.array ?? []).compactMap(\.string)
        combos = combos.flatMap { base in values.map { v in base.merging([key: v]) { _, new in new } } }
      }
      out += combos.filter { !$0.isEmpty }
    }
    return out
  }

  /// The PersistentVolume for a provisioned volume, bound in advance to its claim.
  public static func persistentVolume(
    claim: JSON, storageClass: JSON, volume: Csi_V1_Volume, driver: String, requestedBytes: Int64,
    defaultFSType: String, secrets: ClassSecrets = ClassSecrets()
  ) -> JSON {
    let reclaim = storageClass["reclaimPolicy"]?.string ?? "Delete"
    let capacity = volume.capacityBytes > 0 ? volume.capacityBytes : requestedBytes
    var csi: JSON = ["driver": .string(driver), "volumeHandle": .string(volume.volumeID)]
    if !isBlock(claim) { csi["fsType"] = .string(fsType(storageClass, defaultFSType: defaultFSType)) }
    if !volume.volumeContext.isEmpty { csi["volumeAttributes"] = .strings(volume.volumeContext) }
    // Kubelet reads this secret and hands it to NodeStageVolume (CHAP for iSCSI, a Ceph key for rbd);
    // the resizer reads controllerExpandSecretRef for ControllerExpandVolume, the attacher
    // controllerPublishSecretRef for ControllerPublishVolume and ControllerUnpublishVolume.
    func secretRef(_ ref: ClassSecrets.Ref?) -> JSON? {
      ref.map { ["name": .string($0.name), "namespace": .string($0.namespace)] }
    }
    csi["nodeStageSecretRef"] = secretRef(secrets.nodeStage)
    csi["controllerExpandSecretRef"] = secretRef(secrets.controllerExpand)
    csi["controllerPublishSecretRef"] = secretRef(secrets.controllerPublish)
    var spec: JSON = [
      "accessModes": claim[path: "spec", "accessModes"] ?? [],
      "capacity": ["storage": .string(Quantity.format(capacity))],
      "claimRef": [
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": .string(claim.namespace ?? ""),
        "name": .string(claim.name), "uid": .string(claim.uid), "resourceVersion": .string(claim.resourceVersion),
      ],
      "csi": csi,
      "persistentVolumeReclaimPolicy": .string(reclaim),
      "storageClassName": .string(storageClass.name),
      "volumeMode": .string(isBlock(claim) ? "Block" : "Filesystem"),
    ]
    let options = mountOptions(storageClass)
    if !options.isEmpty { spec["mountOptions"] = .strings(options) }
    if let attributes = claim[path: "spec", "volumeAttributesClassName"]?.string, !attributes.isEmpty {
      spec["volumeAttributesClassName"] = .string(attributes)
    }
    if !volume.accessibleTopology.isEmpty {
      let terms: [JSON] = volume.accessibleTopology.map { topology in
        let exprs: [JSON] = topology.segments.keys.sorted().map { key in
          ["key": .string(key), "operator": "In", "values": [.string(topology.segments[key]!)]]
        }
        return ["matchExpressions": .array(exprs)]
      }
      spec["nodeAffinity"] = ["required": ["nodeSelectorTerms": .array(terms)]]
    }
    var annotations: JSON = [.init(stringLiteral: K8sNames.provisionedBy): .string(driver)]
    if let ref = secrets.controllerModify {
      annotations[K8sNames.modifySecretName] = .string(ref.name)
      annotations[K8sNames.modifySecretNamespace] = .string(ref.namespace)
    }
    annotations[K8sNames.deletionSecretName] = .string(secrets.provisioner?.name ?? "")
    annotations[K8sNames.deletionSecretNamespace] = .string(secrets.provisioner?.namespace ?? "")
    var metadata: JSON = ["name": .string(volumeName(claim)), "annotations": annotations]
    if reclaim == "Delete" { metadata["finalizers"] = [.string(K8sNames.provisionerFinalizer)] }
    return ["apiVersion": "v1", "kind": "PersistentVolume", "metadata": metadata, "spec": spec]
  }

  /// A secret a StorageClass names through `csi.storage.k8s.io/<kind>-secret-name` and
  /// `-namespace` (`kind` is `provisioner`, `node-stage`, `controller-expand`, `controller-modify` or `controller-publish`), with external-provisioner's templates
  /// resolved: `${pv.name}`, `${pvc.namespace}` and `${pvc.name}`. Nil when the class names none.
  public static func secretReference(_ kind: String, storageClass: JSON, claim: JSON) throws
    -> (namespace: String, name: String)?
  {
    let params = storageClass["parameters"]?.stringMap ?? [:]
    let nameKey = "\(K8sNames.csiParameterPrefix)\(kind)-secret-name"
    let namespaceKey = "\(K8sNames.csiParameterPrefix)\(kind)-secret-namespace"
    guard let name = params[nameKey], let namespace = params[namespaceKey] else {
      if params[nameKey] != nil || params[namespaceKey] != nil {
        throw Invalid(description: "the StorageClass names only one of the \(kind) secret's name and namespace")
      }
      return nil
    }
    func resolve(_ text: String) -> String {
      text.replacing("${pv.name}", with: volumeName(claim)).replacing("${pvc.namespace}", with: claim.namespace ?? "")
        .replacing("${pvc.name}", with: claim.name)
    }
    let ref = (namespace: resolve(namespace), name: resolve(name))
    guard !ref.namespace.isEmpty, !ref.name.isEmpty, !ref.name.contains("$"), !ref.namespace.contains("$") else {
      throw Invalid(description: "the StorageClass's \(kind) secret reference \(namespace)/\(name) does not resolve")
    }
    return ref
  }

  /// Every secret a class names, resolved for this claim.
  public static func classSecrets(storageClass: JSON, claim: JSON) throws -> ClassSecrets {
    try ClassSecrets(
      provisioner: secretReference("provisioner", storageClass: storageClass, claim: claim),
      nodeStage: secretReference("node-stage", storageClass: storageClass, claim: claim),
      controllerExpand: secretReference("controller-expand", storageClass: storageClass, claim: claim),
      controllerModify: secretReference("controller-modify", storageClass: storageClass, claim: claim),
      controllerPublish: secretReference("controller-publish", storageClass: storageClass, claim: claim))
  }

  /// The provisioner secret for a PV's DeleteVolume, as external-provisioner finds it: the PV's
  /// deletion annotations when it has them (both empty: no secret), else its class, if the class is
  /// still there, resolved against the claim the PV was bound to.
  public enum DeletionSecret {
    case none
    case ref(ClassSecrets.Ref)
    case fromClass(String)
  }

  public static func deletionSecret(_ pv: JSON) -> DeletionSecret {
    let a = pv.annotations
    if let name = a[K8sNames.deletionSecretName], let namespace = a[K8sNames.deletionSecretNamespace] {
      return name.isEmpty || namespace.isEmpty ? .none : .ref((namespace, name))
    }
    guard let className = pv[path: "spec", "storageClassName"]?.string, !className.isEmpty else { return .none }
    return .fromClass(className)
  }

  /// The claim a PV was bound to, as much of it as secret templates read.
  public static func boundClaim(_ pv: JSON) -> JSON {
    let ref = pv[path: "spec", "claimRef"] ?? [:]
    return ["metadata": ["name": ref["name"] ?? "", "namespace": ref["namespace"] ?? "", "uid": ref["uid"] ?? ""]]
  }

  /// True when a PV's required node affinity admits a node with these topology labels.
  public static func nodeAffinityAdmits(_ pv: JSON, labels: [String: String]) -> Bool {
    guard let terms = pv[path: "spec", "nodeAffinity", "required", "nodeSelectorTerms"]?.array else { return true }
    return terms.contains { term in
      (term["matchExpressions"]?.array ?? []).allSatisfy { expr in
        guard let key = expr["key"]?.string else { return false }
        let values = (expr["values"]?.array ?? []).compactMap(\.string)
        switch expr["operator"]?.string {
        case "In": return labels[key].map(values.contains) ?? false
        case "NotIn": return !(labels[key].map(values.contains) ?? false)
        case "Exists": return labels[key] != nil
        case "DoesNotExist": return labels[key] == nil
        default: return false
        }
      }
    }
  }
}
