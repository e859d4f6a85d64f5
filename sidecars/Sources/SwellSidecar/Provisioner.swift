import CSIProto
import GRPCCore
import SwellKube

extension Reconciler {
  /// A pending claim for our driver: create the volume and its PV, already bound to the claim; the
  /// persistent-volume controller then binds the claim.
  func provisionIfNeeded(_ claim: JSON, key: String) async throws {
    guard !claim.isBeingDeleted, let storageClass = storageClass(of: claim), storageClass["provisioner"]?.string == driver,
      serves(backend: storageClass["parameters"]?.stringMap["backend"])
    else { return }
    let waitForConsumer = storageClass["volumeBindingMode"]?.string == "WaitForFirstConsumer"
    let selectedNode = claim.annotations[K8sNames.selectedNode]
    // kube-controller-manager names the provisioner of such a claim only once the scheduler has chosen.
    if waitForConsumer && selectedNode == nil { return metrics.deferred("provision", reason: "waiting-for-node") }
    guard Claims.provisionerOf(claim) == driver else { return }
    var topology: [String: String]?
    switch scope {
    case .central:
      if waitForConsumer, let selectedNode { topology = try await nodeTopology(selectedNode) }
    case .node(let name, let nodeTopology):
      // Local volumes are made by the node that will use them, once the scheduler has chosen it.
      guard waitForConsumer else { return }
      guard selectedNode == name else { return metrics.deferred("provision", reason: "other-node") }
      topology = nodeTopology
    }
    // Provisioned already, and waiting for the binder? The cache may lag our own create, so a miss
    // there is checked with the API server before the volume is made.
    var existing = volumes.get(Claims.volumeName(claim))
    if existing == nil { existing = try await kube.get(.persistentVolumes, name: Claims.volumeName(claim)) }
    if let existing, existing[path: "spec", "claimRef", "uid"]?.string == claim.uid { return }

    let started = ContinuousClock.now
    var request: Csi_V1_CreateVolumeRequest
    let secrets: ClassSecrets
    do {
      // As external-provisioner: a selector cannot be honoured by a new volume. A data source (a
      // snapshot, or a claim to clone) is resolved to its handle, or refused: never an empty volume.
      if claim[path: "spec", "selector"].map({ $0 != .null }) == true {
        throw Claims.Invalid(description: "claim Selector is not supported")
      }
      request = try Claims.createRequest(
        claim: claim, storageClass: storageClass, topology: topology, defaultFSType: defaultFSType,
        multiWriter: multiWriter)
      if let source = try await contentSource(for: claim, storageClass: storageClass) {
        request.volumeContentSource = source
      }
      secrets = try Claims.classSecrets(storageClass: storageClass, claim: claim)
      if let ref = secrets.provisioner {
        request.secrets = try await readSecret(ref, what: "provisioner")
      }
      // A VolumeAttributesClass's parameters go to CreateVolume as its mutable parameters.
      if let name = claim[path: "spec", "volumeAttributesClassName"]?.string, !name.isEmpty {
        guard let parameters = try await attributesClassParameters(name) else {
          throw Claims.Invalid(description: "VolumeAttributesClass \"\(name)\" does not exist")
        }
        request.mutableParameters = parameters
      }
    } catch {
      events.record(claim, .warning, reason: "ProvisioningFailed", message: "failed to provision volume: \(error)")
      throw error
    }
    let classDescription = "with StorageClass \"\(storageClass.name)\""
    events.record(
      claim, .normal, reason: "Provisioning",
      message: "External provisioner is provisioning volume for claim \"\(objectKey(claim))\"")
    inFlight.withLock { $0[key] = request }
    let volume: Csi_V1_Volume
    do {
      volume = try await callCSI("CreateVolume") { try await $0.controller.createVolume(request, options: $1) }.volume
    } catch {
      if !CSICodes.mayStillBeRunning(error) { inFlight.withLock { $0[key] = nil } }
      metrics.record(operation: "provision", success: false, duration: ContinuousClock.now - started)
      events.record(
        claim, .warning, reason: "ProvisioningFailed",
        message: "failed to provision volume \(classDescription): \(CSICodes.describe(error))")
      throw error
    }
    let pv = Claims.persistentVolume(
      claim: claim, storageClass: storageClass, volume: volume, driver: driver,
      requestedBytes: request.capacityRange.requiredBytes, defaultFSType: defaultFSType,
      secrets: secrets)
    do {
      try await kube.create(.persistentVolumes, pv)
    } catch let error as KubeError where error.isAlreadyExists {
      let existing = try await kube.get(.persistentVolumes, name: pv.name)
      guard existing?[path: "spec", "claimRef", "uid"]?.string == claim.uid else {
        throw KubeError(code: 409, reason: "AlreadyExists", message: "PV \(pv.name) exists for another claim")
      }
    }
    inFlight.withLock { $0[key] = nil }
    metrics.record(operation: "provision", success: true, duration: ContinuousClock.now - started)
    capacityChanged.nudge()
    events.record(
      claim, .normal, reason: "ProvisioningSucceeded", message: "Successfully provisioned volume \(pv.name)")
  }

  /// The claim is gone while its CreateVolume may still be running: repeat the call to learn the
  /// volume, then delete it.
  func abandonInFlight(_ key: String) async throws {
    guard let request = inFlight.withLock({ $0[key] }) else { return }
    let volume = try await callCSI("CreateVolume") { try await $0.controller.createVolume(request, options: $1) }
    _ = try await callCSI("DeleteVolume") {
      try await $0.controller.deleteVolume(
        .with {
          $0.volumeID = volume.volume.volumeID
          $0.secrets = request.secrets
        }, options: $1)
    }
    inFlight.withLock { $0[key] = nil }
    logger.notice("deleted the volume of a claim deleted during provisioning", metadata: ["volume": "\(request.name)"])
  }

  /// The selected node's topology segments: the keys our driver registered in the node's CSINode,
  /// with their values from the node's labels, as external-provisioner reads them.
  func nodeTopology(_ nodeName: String) async throws -> [String: String] {
    guard let csiNode = try await kube.get(.csiNodes, name: nodeName) else {
      throw KubeError(code: 404, reason: "NotFound", message: "CSINode \(nodeName) not found")
    }
    let entry = (csiNode[path: "spec", "drivers"]?.array ?? []).first { $0["name"]?.string == driver }
    guard let entry else {
      throw KubeError(code: 404, reason: "NotFound", message: "driver \(driver) is not registered on node \(nodeName)")
    }
    let keys = (entry["topologyKeys"]?.array ?? []).compactMap(\.string)
    guard !keys.isEmpty else { return [:] }
    guard let node = try await kube.get(.nodes, name: nodeName) else {
      throw KubeError(code: 404, reason: "NotFound", message: "node \(nodeName) not found")
    }
    let labels = node.labels
    var segments: [String: String] = [:]
    for key in keys {
      guard let value = labels[key] else {
        throw KubeError(code: 404, reason: "NotFound", message: "node \(nodeName) has no label \(key)")
      }
      segments[key] = value
    }
    return segments
  }

  /// A Released volume of ours with reclaim policy Delete: delete the volume, the PV, and then our
  /// finalizer. Any other volume of ours with that policy gets the finalizer, so a PV deleted while
  /// the sidecar is down cannot leak its volume.
  func deleteIfReleased(_ pv: JSON) async throws {
    guard owns(pv), pv.annotations[K8sNames.provisionedBy] == driver else { return }
    let hasFinalizer = pv.finalizers.contains(K8sNames.provisionerFinalizer)
    guard pv[path: "spec", "persistentVolumeReclaimPolicy"]?.string == "Delete" else {
      if hasFinalizer { try await removeFinalizer(pv) }
      if pv[path: "status", "phase"]?.string == "Released" { metrics.deferred("delete", reason: "retained") }
      return
    }
    let phase = pv[path: "status", "phase"]?.string ?? ""
    guard phase == "Released" || phase == "Failed" || (pv.isBeingDeleted && phase != "Bound") else {
      if !hasFinalizer && !pv.isBeingDeleted {
        try await rewrite(.persistentVolumes, pv, status: false) { object in
          object[path: "metadata", "finalizers"] = .strings(object.finalizers + [K8sNames.provisionerFinalizer])
        }
      }
      return
    }
    guard let handle = pv[path: "spec", "csi", "volumeHandle"]?.string else { return }
    // As external-provisioner: no DeleteVolume while a VolumeAttachment names the volume (it is
    // still published to that node); the detach comes first, and its event brings the PV back here.
    if let attached = attachments?.list().first(where: {
      $0[path: "spec", "source", "persistentVolumeName"]?.string == pv.name
    }) {
      let error = Claims.Invalid(
        description: "persistentvolume \(pv.name) is still attached to node \(attached[path: "spec", "nodeName"]?.string ?? "?")")
      events.record(pv, .warning, reason: "VolumeFailedDelete", message: error.description)
      throw error
    }
    // The cache can lag a delete this sidecar just finished; ask the API server before deleting. A PV
    // being deleted without our finalizer has had its volume deleted already: the finalizer comes off
    // only after DeleteVolume, and other finalizers (kubernetes.io/pv-protection) may keep the PV a while.
    guard let live = try await kube.get(.persistentVolumes, name: pv.name), live.uid == pv.uid,
      !live.isBeingDeleted || live.finalizers.contains(K8sNames.provisionerFinalizer)
    else { return }
    let started = ContinuousClock.now
    do {
      let secrets = try await deletionSecrets(pv)
      _ = try await callCSI("DeleteVolume") {
        try await $0.controller.deleteVolume(
          .with {
            $0.volumeID = handle
            $0.secrets = secrets
          }, options: $1)
      }
    } catch {
      metrics.record(operation: "delete", success: false, duration: ContinuousClock.now - started)
      events.record(pv, .warning, reason: "VolumeFailedDelete", message: CSICodes.describe(error))
      throw error
    }
    if !pv.isBeingDeleted { try await kube.delete(.persistentVolumes, name: pv.name, uid: pv.uid) }
    if let current = try await kube.get(.persistentVolumes, name: pv.name), current.uid == pv.uid {
      try await removeFinalizer(current)
    }
    metrics.record(operation: "delete", success: true, duration: ContinuousClock.now - started)
    capacityChanged.nudge()
    logger.info("deleted volume", metadata: ["pv": "\(pv.name)", "volume": "\(handle)"])
  }

  /// The provisioner secret's data for a PV's DeleteVolume; none when neither the PV's annotations
  /// nor its class (when the annotations predate it) name one.
  func deletionSecrets(_ pv: JSON) async throws -> [String: String] {
    switch Claims.deletionSecret(pv) {
    case .none: return [:]
    case .ref(let ref): return try await readSecret(ref, what: "provisioner")
    case .fromClass(let name):
      guard let storageClass = try await kube.get(.storageClasses, name: name),
        let ref = try Claims.secretReference("provisioner", storageClass: storageClass, claim: Claims.boundClaim(pv))
      else { return [:] }
      return try await readSecret(ref, what: "provisioner")
    }
  }

  func removeFinalizer(_ pv: JSON) async throws {
    do {
      try await rewrite(.persistentVolumes, pv, status: false) { object in
        object[path: "metadata", "finalizers"] = .strings(
          object.finalizers.filter { $0 != K8sNames.provisionerFinalizer })
      }
    } catch let error as KubeError where error.isNotFound {
      return
    }
  }
}
