import CSIProto
import Glibc
import SwellKube

/// The names csi-snapshotter and the common snapshot-controller use on group snapshot objects
/// (`groupsnapshot.storage.k8s.io/v1`, recorded in the 09- samples).
public enum GroupSnapshotNames {
  /// Set by the common controller on a group content; removed by the sidecar once the group is
  /// deleted (or retained).
  public static let boundFinalizer = "groupsnapshot.storage.kubernetes.io/volumegroupsnapshotcontent-bound-protection"
  /// Set by the sidecar while CreateVolumeGroupSnapshot may be running.
  public static let beingCreated = "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-being-created"
  /// Set by the common controller when the VolumeGroupSnapshot is being deleted.
  public static let beingDeleted = "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-being-deleted"
  /// On a member's VolumeSnapshotContent, which the common controller makes and fills itself.
  public static let memberAnnotation = "groupsnapshot.storage.k8s.io/volumeGroupSnapshotHandle"
  public static let deletionSecretName = "groupsnapshot.storage.kubernetes.io/deletion-secret-name"
  public static let deletionSecretNamespace = "groupsnapshot.storage.kubernetes.io/deletion-secret-namespace"
  public static let secretName = "csi.storage.k8s.io/group-snapshotter-secret-name"
  public static let secretNamespace = "csi.storage.k8s.io/group-snapshotter-secret-namespace"
  public static let getSecretName = "csi.storage.k8s.io/group-snapshotter-get-secret-name"
  public static let getSecretNamespace = "csi.storage.k8s.io/group-snapshotter-get-secret-namespace"
}

/// What the sidecar reads from a VolumeGroupSnapshotContent and its class, and writes back. Pure
/// functions, unit-tested without a cluster.
public enum GroupSnapshots {
  /// `groupsnapshot-<VolumeGroupSnapshot uid>`, as csi-snapshotter names it: a retry or a restart
  /// asks for the same group.
  public static func name(_ content: JSON) -> String? {
    guard let uid = content[path: "spec", "volumeGroupSnapshotRef", "uid"]?.string, !uid.isEmpty else { return nil }
    return "groupsnapshot-\(uid)"
  }

  /// The class parameters without the sidecar's own `csi.storage.k8s.io/*` keys, plus what
  /// csi-snapshotter adds with `--extra-create-metadata`: the group's name and namespace, and the
  /// content's name.
  public static func pluginParameters(_ groupClass: JSON?, content: JSON) -> [String: String] {
    var out = (groupClass?["parameters"]?.stringMap ?? [:]).filter { !$0.key.hasPrefix(K8sNames.csiParameterPrefix) }
    out["csi.storage.k8s.io/volumegroupsnapshot/name"] = content[path: "spec", "volumeGroupSnapshotRef", "name"]?.string ?? ""
    out["csi.storage.k8s.io/volumegroupsnapshot/namespace"] =
      content[path: "spec", "volumeGroupSnapshotRef", "namespace"]?.string ?? ""
    out["csi.storage.k8s.io/volumegroupsnapshotcontent/name"] = content.name
    return out
  }

  /// A secret a class names under `nameKey` and `namespaceKey`; nil when it names none.
  public static func secretReference(_ groupClass: JSON?, nameKey: String, namespaceKey: String) throws -> (
    namespace: String, name: String
  )? {
    let params = groupClass?["parameters"]?.stringMap ?? [:]
    switch (params[nameKey], params[namespaceKey]) {
    case (nil, nil): return nil
    case (let name?, let namespace?): return (namespace, name)
    default: throw Claims.Invalid(description: "the group snapshot class names only one of \(nameKey) and \(namespaceKey)")
    }
  }

  /// The secret the content's deletion annotations name (copied from the class at creation).
  public static func deletionSecretReference(_ content: JSON) -> (namespace: String, name: String)? {
    guard let name = content.annotations[GroupSnapshotNames.deletionSecretName],
      let namespace = content.annotations[GroupSnapshotNames.deletionSecretNamespace]
    else { return nil }
    return (namespace, name)
  }

  /// The status csi-snapshotter writes: the group's handle, readiness, creation time (RFC 3339) and,
  /// for a dynamic content, one entry per member in the order of `spec.source.volumeHandles`, with
  /// its creation time in nanoseconds.
  public static func setStatus(_ content: inout JSON, _ group: Csi_V1_VolumeGroupSnapshot, members: Bool) {
    content[path: "status", "volumeGroupSnapshotHandle"] = .string(group.groupSnapshotID)
    content[path: "status", "readyToUse"] = .bool(group.readyToUse)
    content[path: "status", "creationTime"] = .string(rfc3339(seconds: group.creationTime.seconds))
    content[path: "status", "error"] = nil
    guard members else { return }
    let order = content[path: "spec", "source", "volumeHandles"]?.array?.compactMap(\.string) ?? []
    let sorted = group.snapshots.sorted {
      (order.firstIndex(of: $0.sourceVolumeID) ?? .max) < (order.firstIndex(of: $1.sourceVolumeID) ?? .max)
    }
    content[path: "status", "volumeSnapshotInfoList"] = .array(
      sorted.map { s in
        [
          "creationTime": .int(s.creationTime.seconds * 1_000_000_000 + Int64(s.creationTime.nanos)),
          "readyToUse": .bool(s.readyToUse), "restoreSize": .int(s.sizeBytes), "snapshotHandle": .string(s.snapshotID),
          "volumeHandle": .string(s.sourceVolumeID),
        ]
      })
  }

  /// The group's handle and its members' snapshot handles, from the status or, for a
  /// pre-provisioned content, from `spec.source.groupSnapshotHandles`.
  public static func handles(_ content: JSON) -> (group: String, snapshots: [String])? {
    if let group = content[path: "status", "volumeGroupSnapshotHandle"]?.string, !group.isEmpty,
      let list = content[path: "status", "volumeSnapshotInfoList"]?.array
    {
      return (group, list.compactMap { $0["snapshotHandle"]?.string })
    }
    if let pre = content[path: "spec", "source", "groupSnapshotHandles"],
      let group = pre["volumeGroupSnapshotHandle"]?.string, !group.isEmpty
    {
      return (group, pre["volumeSnapshotHandles"]?.array?.compactMap(\.string) ?? [])
    }
    return nil
  }

  /// True when a group content being deleted should have its group deleted (or retained) and its
  /// finalizer removed: the common controller marked it, or it is a pre-provisioned content that
  /// was never bound.
  public static func shouldFinalize(_ content: JSON) -> Bool {
    guard content.isBeingDeleted else { return false }
    if content.annotations[GroupSnapshotNames.beingDeleted] != nil { return true }
    let preProvisioned = content[path: "spec", "source", "groupSnapshotHandles"] != nil
    let bound = !(content[path: "spec", "volumeGroupSnapshotRef", "uid"]?.string ?? "").isEmpty
    return preProvisioned && !bound
  }

  /// True for a member's VolumeSnapshotContent: the common controller makes it and writes its
  /// status from the group's; the group's deletion deletes its snapshot.
  public static func isMember(_ content: JSON) -> Bool {
    content.annotations[GroupSnapshotNames.memberAnnotation] != nil
      || content[path: "status", "volumeGroupSnapshotHandle"]?.string?.isEmpty == false
  }

  static func rfc3339(seconds: Int64) -> String {
    Timestamp.format(timespec(tv_sec: Int(seconds), tv_nsec: 0), micros: false)
  }
}
