import CSIProto
import SwellKube

/// The names the kubernetes-csi snapshot controllers use on VolumeSnapshotContents, and Swell's own.
public enum SnapshotNames {
  /// Set by the common snapshot-controller on a content it binds; removed by the sidecar once the
  /// snapshot is deleted (or retained).
  public static let boundFinalizer = "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"
  /// Set by the common controller when the VolumeSnapshot is being deleted.
  public static let beingDeleted = "snapshot.storage.kubernetes.io/volumesnapshot-being-deleted"
  /// Set by the sidecar while CreateSnapshot may be running, so that the common controller does not
  /// delete the content under it.
  public static let beingCreated = "snapshot.storage.kubernetes.io/volumesnapshot-being-created"
  /// Which node's plugin holds the snapshot, on contents handled by a per-node sidecar.
  public static let nodeAnnotation = "swell.csi.dev/snapshot-node"
  public static let secretName = "csi.storage.k8s.io/snapshotter-secret-name"
  public static let secretNamespace = "csi.storage.k8s.io/snapshotter-secret-namespace"
  /// The secret csi-snapshotter passes to ListSnapshots (and so GetSnapshot's lookups).
  public static let listSecretName = "csi.storage.k8s.io/snapshotter-list-secret-name"
  public static let listSecretNamespace = "csi.storage.k8s.io/snapshotter-list-secret-namespace"
  public static let group = "snapshot.storage.k8s.io"
}

/// What the sidecar reads from a VolumeSnapshotContent and its class, and what it writes back. Pure
/// functions, unit-tested without a cluster.
public enum Snapshots {
  /// The CSI snapshot name of a dynamic content: `snapshot-<VolumeSnapshot uid>`, as csi-snapshotter
  /// names it, so that a retry or a restart never makes a second snapshot.
  public static func snapshotName(_ content: JSON) -> String? {
    guard let uid = content[path: "spec", "volumeSnapshotRef", "uid"]?.string, !uid.isEmpty else { return nil }
    return "snapshot-\(uid)"
  }

  /// The class parameters the plugin gets: every key but the snapshotter's own `csi.storage.k8s.io/*`.
  public static func pluginParameters(_ snapshotClass: JSON?) -> [String: String] {
    (snapshotClass?["parameters"]?.stringMap ?? [:]).filter { !$0.key.hasPrefix(K8sNames.csiParameterPrefix) }
  }

  /// The snapshotter secret a class names (CreateSnapshot, DeleteSnapshot), or with `list` its
  /// list secret (ListSnapshots), with csi-snapshotter's templates resolved:
  /// `${volumesnapshotcontent.name}`, `${volumesnapshot.namespace}`, `${volumesnapshot.name}`.
  public static func secretReference(
    _ snapshotClass: JSON?, content: JSON, list: Bool = false
  ) throws -> (namespace: String, name: String)? {
    let params = snapshotClass?["parameters"]?.stringMap ?? [:]
    let nameKey = list ? SnapshotNames.listSecretName : SnapshotNames.secretName
    let namespaceKey = list ? SnapshotNames.listSecretNamespace : SnapshotNames.secretNamespace
    guard let name = params[nameKey], let namespace = params[namespaceKey] else {
      if params[nameKey] != nil || params[namespaceKey] != nil {
        throw Claims.Invalid(
          description: "the snapshot class names only one of the snapshotter\(list ? " list" : "") secret's name and namespace")
      }
      return nil
    }
    func resolve(_ text: String) -> String {
      text.replacing("${volumesnapshotcontent.name}", with: content.name)
        .replacing("${volumesnapshot.namespace}", with: content[path: "spec", "volumeSnapshotRef", "namespace"]?.string ?? "")
        .replacing("${volumesnapshot.name}", with: content[path: "spec", "volumeSnapshotRef", "name"]?.string ?? "")
    }
    return (resolve(namespace), resolve(name))
  }

  /// Sets the content's status from the plugin's snapshot: handle, readiness, restore size and the
  /// creation time in nanoseconds, clearing an earlier error.
  public static func setStatus(_ content: inout JSON, _ snapshot: Csi_V1_Snapshot) {
    content[path: "status", "snapshotHandle"] = .string(snapshot.snapshotID)
    content[path: "status", "readyToUse"] = .bool(snapshot.readyToUse)
    content[path: "status", "restoreSize"] = .int(snapshot.sizeBytes)
    content[path: "status", "creationTime"] = .int(snapshot.creationTime.seconds * 1_000_000_000 + Int64(snapshot.creationTime.nanos))
    content[path: "status", "error"] = nil
  }

  public static func setError(_ content: inout JSON, _ message: String) {
    content[path: "status", "error"] = ["time": .string(Timestamp.now()), "message": .string(message)]
  }

  /// True when a content being deleted should have its snapshot deleted (or, under Retain, kept)
  /// and its finalizer removed: the common controller marked it, or it is a pre-provisioned content
  /// that was never bound.
  public static func shouldFinalize(_ content: JSON) -> Bool {
    guard content.isBeingDeleted else { return false }
    if content.annotations[SnapshotNames.beingDeleted] != nil { return true }
    let preProvisioned = content[path: "spec", "source", "snapshotHandle"]?.string != nil
    let bound = !(content[path: "spec", "volumeSnapshotRef", "uid"]?.string ?? "").isEmpty
    return preProvisioned && !bound
  }

  /// The snapshot a content stands for: the handle in its status, or its pre-provisioned handle.
  public static func handle(_ content: JSON) -> String? {
    if let h = content[path: "status", "snapshotHandle"]?.string, !h.isEmpty { return h }
    if let h = content[path: "spec", "source", "snapshotHandle"]?.string, !h.isEmpty { return h }
    return nil
  }

  /// A claim's data source, as the API server keeps it (`dataSourceRef`, else `dataSource`).
  public struct DataSource: Equatable, Sendable {
    public var group: String
    public var kind: String
    public var name: String
    public var namespace: String?
  }

  public static func dataSource(_ claim: JSON) -> DataSource? {
    for field in ["dataSourceRef", "dataSource"] {
      guard let ref = claim[path: "spec", field], ref != .null, let kind = ref["kind"]?.string,
        let name = ref["name"]?.string
      else { continue }
      return DataSource(group: ref["apiGroup"]?.string ?? "", kind: kind, name: name, namespace: ref["namespace"]?.string)
    }
    return nil
  }
}
