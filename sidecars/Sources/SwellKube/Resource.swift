/// A Kubernetes resource type: where its objects live in the REST API.
public struct KubeResource: Sendable, Hashable, CustomStringConvertible {
  public let group: String
  public let version: String
  public let plural: String
  public let kind: String
  public let namespaced: Bool

  public var apiVersion: String { group.isEmpty ? version : "\(group)/\(version)" }
  public var description: String { group.isEmpty ? plural : "\(plural).\(group)" }

  public static let persistentVolumeClaims = KubeResource(
    group: "", version: "v1", plural: "persistentvolumeclaims", kind: "PersistentVolumeClaim", namespaced: true)
  public static let persistentVolumes = KubeResource(
    group: "", version: "v1", plural: "persistentvolumes", kind: "PersistentVolume", namespaced: false)
  public static let storageClasses = KubeResource(
    group: "storage.k8s.io", version: "v1", plural: "storageclasses", kind: "StorageClass", namespaced: false)
  public static let events = KubeResource(group: "", version: "v1", plural: "events", kind: "Event", namespaced: true)
  public static let leases = KubeResource(
    group: "coordination.k8s.io", version: "v1", plural: "leases", kind: "Lease", namespaced: true)
  public static let nodes = KubeResource(group: "", version: "v1", plural: "nodes", kind: "Node", namespaced: false)
  public static let csiNodes = KubeResource(
    group: "storage.k8s.io", version: "v1", plural: "csinodes", kind: "CSINode", namespaced: false)
  /// A volume to attach to a node, made by the attach/detach controller (shapes in k8s-samples/11*).
  public static let volumeAttachments = KubeResource(
    group: "storage.k8s.io", version: "v1", plural: "volumeattachments", kind: "VolumeAttachment", namespaced: false)

  /// The mutable parameters a claim asks for by name (storage.k8s.io/v1, GA since Kubernetes 1.34).
  public static let volumeAttributesClasses = KubeResource(
    group: "storage.k8s.io", version: "v1", plural: "volumeattributesclasses", kind: "VolumeAttributesClass",
    namespaced: false)
  /// What a node's storage can still hold, for the scheduler (storage.k8s.io/v1).
  public static let csiStorageCapacities = KubeResource(
    group: "storage.k8s.io", version: "v1", plural: "csistoragecapacities", kind: "CSIStorageCapacity",
    namespaced: true)
  /// The sidecar's own pod, and the ReplicaSet between a Deployment and its pods: how the sidecar
  /// finds the object that owns what it publishes.
  public static let pods = KubeResource(group: "", version: "v1", plural: "pods", kind: "Pod", namespaced: true)
  public static let replicaSets = KubeResource(
    group: "apps", version: "v1", plural: "replicasets", kind: "ReplicaSet", namespaced: true)
  public static let secrets = KubeResource(group: "", version: "v1", plural: "secrets", kind: "Secret", namespaced: true)
  /// The snapshot CRDs of kubernetes-csi/external-snapshotter (v8, `snapshot.storage.k8s.io/v1`).
  public static let volumeSnapshots = KubeResource(
    group: "snapshot.storage.k8s.io", version: "v1", plural: "volumesnapshots", kind: "VolumeSnapshot", namespaced: true)
  public static let volumeSnapshotContents = KubeResource(
    group: "snapshot.storage.k8s.io", version: "v1", plural: "volumesnapshotcontents", kind: "VolumeSnapshotContent",
    namespaced: false)
  public static let volumeSnapshotClasses = KubeResource(
    group: "snapshot.storage.k8s.io", version: "v1", plural: "volumesnapshotclasses", kind: "VolumeSnapshotClass",
    namespaced: false)

  /// The group snapshot CRDs of external-snapshotter v8 (`groupsnapshot.storage.k8s.io/v1`).
  public static let volumeGroupSnapshots = KubeResource(
    group: "groupsnapshot.storage.k8s.io", version: "v1", plural: "volumegroupsnapshots", kind: "VolumeGroupSnapshot",
    namespaced: true)
  public static let volumeGroupSnapshotContents = KubeResource(
    group: "groupsnapshot.storage.k8s.io", version: "v1", plural: "volumegroupsnapshotcontents",
    kind: "VolumeGroupSnapshotContent", namespaced: false)
  public static let volumeGroupSnapshotClasses = KubeResource(
    group: "groupsnapshot.storage.k8s.io", version: "v1", plural: "volumegroupsnapshotclasses",
    kind: "VolumeGroupSnapshotClass", namespaced: false)

  /// The collection path, or an object's path when `name` is given.
  public func path(namespace: String? = nil, name: String? = nil, subresource: String? = nil) -> String {
    var path = group.isEmpty ? "/api/\(version)" : "/apis/\(group)/\(version)"
    if namespaced, let namespace { path += "/namespaces/\(namespace)" }
    path += "/\(plural)"
    if let name { path += "/\(name)" }
    if let subresource { path += "/\(subresource)" }
    return path
  }
}

/// An object's cache key: `namespace/name`, or `name` for cluster-scoped objects.
public func objectKey(_ object: JSON) -> String {
  let name = object[path: "metadata", "name"]?.string ?? ""
  if let ns = object[path: "metadata", "namespace"]?.string, !ns.isEmpty { return "\(ns)/\(name)" }
  return name
}

/// Accessors for the metadata every object has.
extension JSON {
  public var name: String { self[path: "metadata", "name"]?.string ?? "" }
  public var namespace: String? { self[path: "metadata", "namespace"]?.string }
  public var uid: String { self[path: "metadata", "uid"]?.string ?? "" }
  public var resourceVersion: String { self[path: "metadata", "resourceVersion"]?.string ?? "" }
  public var annotations: [String: String] { self[path: "metadata", "annotations"]?.stringMap ?? [:] }
  public var labels: [String: String] { self[path: "metadata", "labels"]?.stringMap ?? [:] }
  public var finalizers: [String] { (self[path: "metadata", "finalizers"]?.array ?? []).compactMap(\.string) }
  public var isBeingDeleted: Bool { self[path: "metadata", "deletionTimestamp"]?.string != nil }
}
