import CSIProto
import GRPCCore
import Logging
import SwellKube

/// A kind of content and its classes, each behind an informer: the snapshot informers
/// (`--snapshots`) or the group snapshot ones (`--group-snapshots`). Their CRDs are optional.
public struct ContentCaches: Sendable {
  let contents: Informer
  let classes: Informer

  /// Informers that queue a content's key on each of its changes, and the keys of every content
  /// naming a class (in `spec.<classField>`) when that class changes.
  static func watching(
    _ contentResource: KubeResource, classes classResource: KubeResource, classField: String, kube: KubeClient,
    queue: WorkQueue, logger: Logger, key: @escaping @Sendable (JSON) -> String
  ) -> ContentCaches {
    let contents = Informer(client: kube, resource: contentResource, logger: logger) { old, new in
      if let content = new ?? old { Task { await queue.add(key(content)) } }
    }
    let classes = Informer(client: kube, resource: classResource, logger: logger) { _, new in
      guard let name = new?.name else { return }
      Task {
        for content in contents.list() where content[path: "spec", classField]?.string == name {
          await queue.add(key(content))
        }
      }
    }
    return ContentCaches(contents: contents, classes: classes)
  }
}

/// The csi-snapshotter half of snapshots: the common snapshot-controller turns a VolumeSnapshot into
/// a VolumeSnapshotContent; this loop takes the content to the plugin and writes the answer back.
extension Reconciler {
  static func contentKey(_ content: JSON) -> String { "content/\(content.name)" }

  func syncContent(_ content: JSON) async throws {
    guard content[path: "spec", "driver"]?.string == driver else { return }
    if content.isBeingDeleted {
      try await finalizeContent(content)
      return
    }
    if content[path: "status", "readyToUse"]?.bool == true, content[path: "status", "snapshotHandle"]?.string != nil {
      return
    }
    // A group's member: the common controller fills its status from the group's (09i samples).
    if GroupSnapshots.isMember(content) { return }
    if let volumeHandle = content[path: "spec", "source", "volumeHandle"]?.string {
      try await createSnapshot(content, of: volumeHandle)
    } else if let handle = content[path: "spec", "source", "snapshotHandle"]?.string {
      try await importSnapshot(content, handle: handle)
    }
  }

  /// Deletes the snapshot under the Delete policy (keeps it under Retain), then removes the bound
  /// finalizer so that the content can go.
  func finalizeContent(_ content: JSON) async throws {
    guard Snapshots.shouldFinalize(content), content.finalizers.contains(SnapshotNames.boundFinalizer),
      try await holdsSnapshot(content)
    else { return }
    // A group's member is deleted with its group (DeleteVolumeGroupSnapshot), never alone (09z).
    if content[path: "spec", "deletionPolicy"]?.string == "Delete", !GroupSnapshots.isMember(content),
      let handle = Snapshots.handle(content)
    {
      let secrets = try await snapshotterSecrets(content)
      let started = ContinuousClock.now
      do {
        _ = try await callCSI("DeleteSnapshot") {
          try await $0.controller.deleteSnapshot(.with {
            $0.snapshotID = handle
            $0.secrets = secrets
          }, options: $1)
        }
        metrics.record(operation: "delete-snapshot", success: true, duration: ContinuousClock.now - started)
        capacityChanged.nudge()
      } catch {
        metrics.record(operation: "delete-snapshot", success: false, duration: ContinuousClock.now - started)
        events.record(content, .warning, reason: "SnapshotDeleteError", message: "Failed to delete snapshot: \(CSICodes.describe(error))")
        throw error
      }
    }
    try await rewrite(.volumeSnapshotContents, content, status: false) { c in
      c[path: "metadata", "finalizers"] = .strings(c.finalizers.filter { $0 != SnapshotNames.boundFinalizer })
    }
  }

  /// Whether this sidecar answers for a content's snapshot: the node named on it, the owner of its
  /// source volume, or the plugin that holds it.
  func holdsSnapshot(_ content: JSON) async throws -> Bool {
    if let node = content.annotations[SnapshotNames.nodeAnnotation] {
      if case .node(let name, _) = scope { return node == name }
      return false
    }
    if let handle = content[path: "spec", "source", "volumeHandle"]?.string, let pv = sourceVolume(handle) {
      return owns(pv)
    }
    guard let handle = Snapshots.handle(content) else { return scope == .central }
    return try await listSnapshot(content, handle: handle) != nil || scope == .central
  }

  func sourceVolume(_ handle: String) -> JSON? {
    volumes.list().first {
      $0[path: "spec", "csi", "volumeHandle"]?.string == handle && $0[path: "spec", "csi", "driver"]?.string == driver
    }
  }

  /// A dynamic content: CreateSnapshot named from the VolumeSnapshot's UID, so a retry or a restart
  /// makes no second snapshot; then the status.
  func createSnapshot(_ content: JSON, of volumeHandle: String) async throws {
    let pv = sourceVolume(volumeHandle)
    if let pv {
      guard owns(pv) else { return }
    } else if case .node = scope {
      return  // a volume this node cannot see is another node's
    }
    var current = content
    let started = ContinuousClock.now
    do {
      guard let name = Snapshots.snapshotName(content) else {
        throw Claims.Invalid(description: "the content has no spec.volumeSnapshotRef.uid to name the snapshot by")
      }
      let parameters = Snapshots.pluginParameters(try snapshotClass(of: content))
      let secrets = try await snapshotterSecrets(content)
      current = try await rewrite(.volumeSnapshotContents, current, status: false) { c in
        c[path: "metadata", "annotations", SnapshotNames.beingCreated] = "yes"
        if case .node(let node, _) = scope { c[path: "metadata", "annotations", SnapshotNames.nodeAnnotation] = .string(node) }
      }
      let snapshot = try await callCSI("CreateSnapshot") {
        try await $0.controller.createSnapshot(.with {
          $0.name = name
          $0.sourceVolumeID = volumeHandle
          $0.parameters = parameters
          $0.secrets = secrets
        }, options: $1)
      }.snapshot
      current = try await rewrite(.volumeSnapshotContents, current, status: true) { Snapshots.setStatus(&$0, snapshot) }
      try await rewrite(.volumeSnapshotContents, current, status: false) { c in
        c[path: "metadata", "annotations", SnapshotNames.beingCreated] = nil
      }
      metrics.record(operation: "snapshot", success: true, duration: ContinuousClock.now - started)
      capacityChanged.nudge()
      events.record(
        content, .normal, reason: "SnapshotCreated",
        message: "Snapshot \(snapshot.snapshotID) of volume \(volumeHandle) is ready, \(snapshot.sizeBytes) bytes")
    } catch {
      metrics.record(operation: "snapshot", success: false, duration: ContinuousClock.now - started)
      let message = "Failed to check and update snapshot content: \(CSICodes.describe(error))"
      events.record(content, .warning, reason: "SnapshotCreationFailed", message: message)
      await recordCreateFailure(
        .volumeSnapshotContents, content, marker: SnapshotNames.beingCreated, message: message, error: error)
      throw error
    }
  }

  /// A pre-provisioned content: the plugin's record of the snapshot it names becomes the status.
  func importSnapshot(_ content: JSON, handle: String) async throws {
    guard let found = try await listSnapshot(content, handle: handle) else {
      if case .node = scope { return }  // another node's plugin holds it
      let message = "snapshot \(handle) does not exist in the storage system"
      events.record(content, .warning, reason: "SnapshotContentCheckandUpdateFailed", message: message)
      try await rewrite(.volumeSnapshotContents, content, status: true) { Snapshots.setError(&$0, message) }
      throw Claims.Invalid(description: message)
    }
    var current = content
    if case .node(let node, _) = scope, content.annotations[SnapshotNames.nodeAnnotation] != node {
      current = try await rewrite(.volumeSnapshotContents, current, status: false) { c in
        c[path: "metadata", "annotations", SnapshotNames.nodeAnnotation] = .string(node)
      }
    }
    try await rewrite(.volumeSnapshotContents, current, status: true) { Snapshots.setStatus(&$0, found) }
  }

  /// After a failed create: the error in the content's status and, unless the call may still be
  /// running, its being-created marker removed. Best effort: the retry writes both again.
  func recordCreateFailure(_ resource: KubeResource, _ content: JSON, marker: String, message: String, error: Error) async {
    guard let latest = try? await kube.get(resource, name: content.name), latest.uid == content.uid else { return }
    let current = (try? await rewrite(resource, latest, status: true) { Snapshots.setError(&$0, message) }) ?? latest
    if !CSICodes.mayStillBeRunning(error) {
      _ = try? await rewrite(resource, current, status: false) { c in c[path: "metadata", "annotations", marker] = nil }
    }
  }

  func snapshotClass(of content: JSON) throws -> JSON? {
    guard let name = content[path: "spec", "volumeSnapshotClassName"]?.string, !name.isEmpty else { return nil }
    guard let found = snapshotCaches?.classes.get(name) else {
      throw Claims.Invalid(description: "VolumeSnapshotClass \(name) does not exist")
    }
    return found
  }

  /// The snapshotter secret the content's class names (or with `list`, its list secret),
  /// decoded; empty when it names none.
  func snapshotterSecrets(_ content: JSON, list: Bool = false) async throws -> [String: String] {
    guard let ref = try Snapshots.secretReference(try snapshotClass(of: content), content: content, list: list) else {
      return [:]
    }
    return try await readSecret(ref, what: list ? "snapshotter list" : "snapshotter")
  }

  /// The plugin's snapshot of that handle (ListSnapshots with the class's list secret, as
  /// csi-snapshotter calls it), or nil when the plugin has none.
  func listSnapshot(_ content: JSON, handle: String) async throws -> Csi_V1_Snapshot? {
    let secrets = try await snapshotterSecrets(content, list: true)
    return try await callCSI("ListSnapshots") {
      try await $0.controller.listSnapshots(.with {
        $0.snapshotID = handle
        $0.secrets = secrets
      }, options: $1)
    }.entries.first?.snapshot
  }

  // MARK: The provisioner's side: claims restored from a snapshot, or cloned from a claim

  /// What a claim's data source becomes in CreateVolume, or nil for an empty volume. What the
  /// kubernetes-csi provisioner refuses is refused here too, as `Claims.Invalid`.
  func contentSource(for claim: JSON, storageClass: JSON) async throws -> Csi_V1_VolumeContentSource? {
    guard let source = Snapshots.dataSource(claim) else { return nil }
    let namespace = claim.namespace ?? "default"
    if let other = source.namespace, other != namespace {
      throw Claims.Invalid(
        description: "data source \(source.kind) \(other)/\(source.name) is in another namespace; "
          + "cross-namespace sources need a ReferenceGrant, which this provisioner does not support")
    }
    let requested = try Claims.requestedBytes(claim)
    switch (source.group, source.kind) {
    case (SnapshotNames.group, "VolumeSnapshot"):
      guard let caches = snapshotCaches else {
        throw Claims.Invalid(description: "snapshots are not enabled on this sidecar (--snapshots)")
      }
      guard caches.contents.hasSynced else {
        throw Claims.Invalid(description: "the snapshot CRDs (snapshot.storage.k8s.io/v1) are not installed in this cluster")
      }
      guard let snapshot = try await kube.get(.volumeSnapshots, namespace: namespace, name: source.name) else {
        throw Claims.Invalid(description: "VolumeSnapshot \(namespace)/\(source.name) does not exist")
      }
      guard snapshot[path: "status", "readyToUse"]?.bool == true,
        let contentName = snapshot[path: "status", "boundVolumeSnapshotContentName"]?.string
      else { throw Claims.Invalid(description: "VolumeSnapshot \(namespace)/\(source.name) is not ready to use yet") }
      var found = snapshotCaches?.contents.get(contentName)
      if found == nil { found = try await kube.get(.volumeSnapshotContents, name: contentName) }
      guard let content = found else {
        throw Claims.Invalid(description: "VolumeSnapshotContent \(contentName) does not exist")
      }
      guard content[path: "spec", "driver"]?.string == driver else {
        throw Claims.Invalid(description: "VolumeSnapshot \(namespace)/\(source.name) belongs to driver \(content[path: "spec", "driver"]?.string ?? "?"), not \(driver)")
      }
      guard let handle = content[path: "status", "snapshotHandle"]?.string else {
        throw Claims.Invalid(description: "VolumeSnapshotContent \(contentName) has no snapshot handle yet")
      }
      let restoreSize = content[path: "status", "restoreSize"]?.int
        ?? Claims.bytes(snapshot[path: "status", "restoreSize"]) ?? 0
      guard requested >= restoreSize else {
        throw Claims.Invalid(description: "requested volume size \(requested) is less than the size \(restoreSize) for the source snapshot \(source.name)")
      }
      return .with { $0.snapshot.snapshotID = handle }
    case ("", "PersistentVolumeClaim"):
      guard let sourceClaim = claims.get("\(namespace)/\(source.name)") else {
        throw Claims.Invalid(description: "source claim \(namespace)/\(source.name) does not exist")
      }
      guard sourceClaim[path: "status", "phase"]?.string == "Bound", let pvName = sourceClaim[path: "spec", "volumeName"]?.string,
        let pv = volumes.get(pvName)
      else { throw Claims.Invalid(description: "source claim \(namespace)/\(source.name) is not bound yet") }
      guard pv[path: "spec", "csi", "driver"]?.string == driver, let handle = pv[path: "spec", "csi", "volumeHandle"]?.string else {
        throw Claims.Invalid(description: "source claim \(namespace)/\(source.name) is not a volume of \(driver)")
      }
      guard sourceClaim[path: "spec", "storageClassName"]?.string == storageClass.name else {
        throw Claims.Invalid(description: "the source claim's StorageClass \(sourceClaim[path: "spec", "storageClassName"]?.string ?? "") is not \(storageClass.name); a clone must use the same class")
      }
      let sourceBytes = Claims.bytes(pv[path: "spec", "capacity", "storage"]) ?? 0
      guard requested >= sourceBytes else {
        throw Claims.Invalid(description: "requested volume size \(requested) is less than the size \(sourceBytes) of the source claim \(source.name)")
      }
      return .with { $0.volume.volumeID = handle }
    default:
      throw Claims.Invalid(description: "data source \(source.group.isEmpty ? "" : source.group + "/")\(source.kind) is not supported by \(driver)")
    }
  }
}
