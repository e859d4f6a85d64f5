import CSIProto
import GRPCCore
import SwellKube

/// csi-snapshotter's group role: the common snapshot-controller turns a VolumeGroupSnapshot into a
/// VolumeGroupSnapshotContent; this loop takes the content to the plugin's GroupController (one
/// CreateVolumeGroupSnapshot named from the group's UID) and writes the answer back, members
/// included, from which the controller makes one VolumeSnapshotContent and VolumeSnapshot per member.
/// Deleting the group deletes every member with DeleteVolumeGroupSnapshot; the members' own contents
/// are then only released (``Reconciler/finalizeContent(_:)``).
extension Reconciler {
  static func groupContentKey(_ content: JSON) -> String { "groupcontent/\(content.name)" }

  func syncGroupContent(_ content: JSON) async throws {
    guard content[path: "spec", "driver"]?.string == driver else { return }
    if content.isBeingDeleted {
      try await finalizeGroupContent(content)
      return
    }
    if content[path: "status", "readyToUse"]?.bool == true,
      content[path: "status", "volumeGroupSnapshotHandle"]?.string != nil
    {
      return
    }
    if let handles = content[path: "spec", "source", "volumeHandles"]?.array?.compactMap(\.string), !handles.isEmpty {
      try await createGroupSnapshot(content, of: handles)
    } else if let (group, snapshots) = GroupSnapshots.handles(content) {
      try await importGroupSnapshot(content, group: group, snapshots: snapshots)
    }
  }

  /// Whether this sidecar serves the group: it owns every source volume. A group whose volumes
  /// this sidecar owns only some of cannot be held at one instant by one plugin.
  func ownsGroup(_ handles: [String]) throws -> Bool {
    let owned = handles.filter { handle in sourceVolume(handle).map(owns) ?? (scope == .central) }
    if owned.isEmpty { return false }
    guard owned.count == handles.count else {
      throw Claims.Invalid(
        description: "volumes \(handles.filter { !owned.contains($0) }.joined(separator: ", ")) are not served by the same "
          + "plugin as \(owned.joined(separator: ", ")); a group snapshot holds the volumes of one node and one backend")
    }
    return true
  }

  func createGroupSnapshot(_ content: JSON, of handles: [String]) async throws {
    var current = content
    let started = ContinuousClock.now
    do {
      guard try ownsGroup(handles) else { return }
      guard let name = GroupSnapshots.name(content) else {
        throw Claims.Invalid(description: "the content has no spec.volumeGroupSnapshotRef.uid to name the group by")
      }
      let groupClass = try groupSnapshotClass(of: content)
      let secrets = try await groupSecrets(
        groupClass, nameKey: GroupSnapshotNames.secretName, namespaceKey: GroupSnapshotNames.secretNamespace)
      current = try await rewrite(.volumeGroupSnapshotContents, current, status: false) { c in
        c[path: "metadata", "annotations", GroupSnapshotNames.beingCreated] = "yes"
        if case .node(let node, _) = scope { c[path: "metadata", "annotations", SnapshotNames.nodeAnnotation] = .string(node) }
      }
      let group = try await callCSI("CreateVolumeGroupSnapshot") {
        try await $0.groupController.createVolumeGroupSnapshot(.with {
          $0.name = name
          $0.sourceVolumeIds = handles
          $0.parameters = GroupSnapshots.pluginParameters(groupClass, content: content)
          $0.secrets = secrets
        }, options: $1)
      }.groupSnapshot
      current = try await rewrite(.volumeGroupSnapshotContents, current, status: true) {
        GroupSnapshots.setStatus(&$0, group, members: true)
      }
      try await rewrite(.volumeGroupSnapshotContents, current, status: false) { c in
        c[path: "metadata", "annotations", GroupSnapshotNames.beingCreated] = nil
      }
      metrics.record(operation: "group-snapshot", success: true, duration: ContinuousClock.now - started)
      capacityChanged.nudge()
      events.record(
        content, .normal, reason: "GroupSnapshotCreated",
        message: "Group snapshot \(group.groupSnapshotID) of volumes \(handles.joined(separator: ", ")) is ready, "
          + "taken at one instant")
    } catch {
      metrics.record(operation: "group-snapshot", success: false, duration: ContinuousClock.now - started)
      let message = "Failed to create group snapshot: \(CSICodes.describe(error))"
      events.record(content, .warning, reason: "GroupSnapshotCreationFailed", message: message)
      await recordCreateFailure(
        .volumeGroupSnapshotContents, content, marker: GroupSnapshotNames.beingCreated, message: message, error: error)
      throw error
    }
  }

  /// A pre-provisioned group content: GetVolumeGroupSnapshot with its handles becomes the status
  /// (as recorded, without the member list).
  func importGroupSnapshot(_ content: JSON, group: String, snapshots: [String]) async throws {
    let groupClass = try groupSnapshotClass(of: content)
    let secrets = try await groupSecrets(
      groupClass, nameKey: GroupSnapshotNames.getSecretName, namespaceKey: GroupSnapshotNames.getSecretNamespace)
    let found: Csi_V1_VolumeGroupSnapshot
    do {
      found = try await callCSI("GetVolumeGroupSnapshot") {
        try await $0.groupController.getVolumeGroupSnapshot(.with {
          $0.groupSnapshotID = group
          $0.snapshotIds = snapshots
          $0.secrets = secrets
        }, options: $1)
      }.groupSnapshot
    } catch let error as RPCError where error.code == .notFound {
      if case .node = scope { return }  // another node's plugin holds it
      let message = "group snapshot \(group) does not exist in the storage system"
      events.record(content, .warning, reason: "GroupSnapshotContentCheckandUpdateFailed", message: message)
      try await rewrite(.volumeGroupSnapshotContents, content, status: true) { Snapshots.setError(&$0, message) }
      throw Claims.Invalid(description: message)
    }
    var current = content
    if case .node(let node, _) = scope, content.annotations[SnapshotNames.nodeAnnotation] != node {
      current = try await rewrite(.volumeGroupSnapshotContents, current, status: false) { c in
        c[path: "metadata", "annotations", SnapshotNames.nodeAnnotation] = .string(node)
      }
    }
    try await rewrite(.volumeGroupSnapshotContents, current, status: true) {
      GroupSnapshots.setStatus(&$0, found, members: false)
    }
  }

  /// Deletes the group under the Delete policy (keeps it under Retain), then removes the bound
  /// finalizer so that the content can go.
  func finalizeGroupContent(_ content: JSON) async throws {
    guard GroupSnapshots.shouldFinalize(content), content.finalizers.contains(GroupSnapshotNames.boundFinalizer) else {
      return
    }
    if let node = content.annotations[SnapshotNames.nodeAnnotation] {
      guard case .node(let name, _) = scope, name == node else { return }
    } else if case .node = scope {
      return  // never taken by a per-node sidecar: the central one answers for it
    }
    if content[path: "spec", "deletionPolicy"]?.string == "Delete", let (group, snapshots) = GroupSnapshots.handles(content) {
      var secrets: [String: String] = [:]
      if let ref = GroupSnapshots.deletionSecretReference(content) {
        secrets = try await readSecret(ref, what: "group snapshot deletion")
      }
      let started = ContinuousClock.now
      do {
        _ = try await callCSI("DeleteVolumeGroupSnapshot") {
          try await $0.groupController.deleteVolumeGroupSnapshot(.with {
            $0.groupSnapshotID = group
            $0.snapshotIds = snapshots
            $0.secrets = secrets
          }, options: $1)
        }
        metrics.record(operation: "delete-group-snapshot", success: true, duration: ContinuousClock.now - started)
        capacityChanged.nudge()
      } catch {
        metrics.record(operation: "delete-group-snapshot", success: false, duration: ContinuousClock.now - started)
        events.record(
          content, .warning, reason: "GroupSnapshotDeleteError",
          message: "Failed to delete group snapshot: \(CSICodes.describe(error))")
        throw error
      }
    }
    try await rewrite(.volumeGroupSnapshotContents, content, status: false) { c in
      c[path: "metadata", "finalizers"] = .strings(c.finalizers.filter { $0 != GroupSnapshotNames.boundFinalizer })
    }
  }

  func groupSnapshotClass(of content: JSON) throws -> JSON? {
    guard let name = content[path: "spec", "volumeGroupSnapshotClassName"]?.string, !name.isEmpty else { return nil }
    guard let found = groupCaches?.classes.get(name) else {
      throw Claims.Invalid(description: "VolumeGroupSnapshotClass \(name) does not exist")
    }
    return found
  }

  func groupSecrets(_ groupClass: JSON?, nameKey: String, namespaceKey: String) async throws -> [String: String] {
    guard let ref = try GroupSnapshots.secretReference(groupClass, nameKey: nameKey, namespaceKey: namespaceKey) else {
      return [:]
    }
    return try await readSecret(ref, what: "group snapshotter")
  }
}
