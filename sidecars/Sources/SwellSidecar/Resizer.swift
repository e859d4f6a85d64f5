import CSIProto
import GRPCCore
import SwellKube

/// The PVC status fields of a resize, as Kubernetes names them.
enum ResizeStatus {
  static let controllerInProgress = "ControllerResizeInProgress"
  static let controllerInfeasible = "ControllerResizeInfeasible"
  static let nodePending = "NodeResizePending"
  static let nodeInProgress = "NodeResizeInProgress"
  static let nodeInfeasible = "NodeResizeInfeasible"
  static let resizing = "Resizing"
  static let fileSystemResizePending = "FileSystemResizePending"
  static let controllerResizeError = "ControllerResizeError"
  static let waitingForNode = "Waiting for user to (re-)start a pod to finish file system resize of volume on node."

  /// Sets a condition to True, keeping its transition time when it already was True.
  static func setCondition(_ claim: inout JSON, _ type: String, message: String? = nil, reason: String? = nil) {
    var conditions = claim[path: "status", "conditions"]?.array ?? []
    let existing = conditions.firstIndex { $0["type"]?.string == type }
    var condition: JSON = ["type": .string(type), "status": "True", "lastProbeTime": nil]
    if let existing, conditions[existing]["status"]?.string == "True",
      let since = conditions[existing]["lastTransitionTime"]
    {
      condition["lastTransitionTime"] = since
    } else {
      condition["lastTransitionTime"] = .string(Timestamp.now())
    }
    if let reason { condition["reason"] = .string(reason) }
    if let message { condition["message"] = .string(message) }
    if let existing { conditions[existing] = condition } else { conditions.append(condition) }
    claim[path: "status", "conditions"] = .array(conditions)
  }

  static func removeConditions(_ claim: inout JSON, _ types: Set<String>) {
    guard let conditions = claim[path: "status", "conditions"]?.array else { return }
    let kept = conditions.filter { !types.contains($0["type"]?.string ?? "") }
    claim[path: "status", "conditions"] = kept.isEmpty ? nil : .array(kept)
  }

  static func setAllocation(_ claim: inout JSON, bytes: Int64?, state: String?) {
    if let bytes { claim[path: "status", "allocatedResources", "storage"] = .string(Quantity.format(bytes)) }
    claim[path: "status", "allocatedResourceStatuses", "storage"] = state.map { .string($0) }
    if claim[path: "status", "allocatedResourceStatuses"]?.object?.isEmpty == true {
      claim[path: "status", "allocatedResourceStatuses"] = nil
    }
  }
}

enum ResizeStep: Equatable {
  case grow(Int64)
  case clearError
}

extension Reconciler {
  /// The PV name, the PV and the capacity of a bound claim of ours whose class allows expansion.
  func resizeTarget(_ claim: JSON) -> (String, JSON, Int64)? {
    guard claim[path: "status", "phase"]?.string == "Bound", !claim.isBeingDeleted,
      let pvName = claim[path: "spec", "volumeName"]?.string, let pv = volumes.get(pvName), owns(pv),
      pv[path: "spec", "claimRef", "uid"]?.string == claim.uid,
      let storageClass = storageClass(of: claim), storageClass["allowVolumeExpansion"]?.bool == true,
      let capacity = Claims.bytes(claim[path: "status", "capacity", "storage"])
    else { return nil }
    return (pvName, pv, capacity)
  }

  /// What a claim needs next from the resizer, if anything.
  func resizeStep(_ claim: JSON, _ pv: JSON) -> ResizeStep? {
    guard let requested = try? Claims.requestedBytes(claim),
      let capacity = Claims.bytes(claim[path: "status", "capacity", "storage"])
    else { return nil }
    let state = claim[path: "status", "allocatedResourceStatuses", "storage"]?.string
    if requested <= capacity {
      let stale = state == ResizeStatus.controllerInfeasible || state == ResizeStatus.controllerInProgress
      return stale ? .clearError : nil
    }
    let pvCapacity = Claims.bytes(pv[path: "spec", "capacity", "storage"]) ?? 0
    if (state == ResizeStatus.nodePending || state == ResizeStatus.nodeInProgress) && pvCapacity >= requested {
      return nil  // kubelet's turn.
    }
    if state == ResizeStatus.nodeInfeasible { return nil }
    return .grow(requested)
  }

  /// A bound claim whose request exceeds its capacity: mark it, expand the volume, record the new
  /// size on the PV, and hand the filesystem to kubelet (or finish, when the node has nothing to do).
  func resizeIfNeeded(_ cached: JSON) async throws {
    guard let (_, cachedPV, _) = resizeTarget(cached), resizeStep(cached, cachedPV) != nil else { return }
    // The cache may lag this sidecar's own last write; decide again on the live claim.
    guard let claim = try await kube.get(.persistentVolumeClaims, namespace: cached.namespace, name: cached.name),
      claim.uid == cached.uid, let (pvName, _, capacity) = resizeTarget(claim),
      let pv = try await kube.get(.persistentVolumes, name: pvName), owns(pv), let step = resizeStep(claim, pv)
    else { return }
    guard case .grow(let requested) = step else {
      // Nothing to grow. A user who lowered the request after a failure gets the error cleared.
      try await rewrite(.persistentVolumeClaims, claim, status: true) { object in
        ResizeStatus.removeConditions(&object, [ResizeStatus.resizing, ResizeStatus.controllerResizeError])
        ResizeStatus.setAllocation(&object, bytes: capacity, state: nil)
      }
      return
    }
    let pvCapacity = Claims.bytes(pv[path: "spec", "capacity", "storage"]) ?? 0

    let started = ContinuousClock.now
    let marked = try await rewrite(.persistentVolumeClaims, claim, status: true) { object in
      ResizeStatus.removeConditions(&object, [ResizeStatus.fileSystemResizePending])
      ResizeStatus.setCondition(&object, ResizeStatus.resizing)
      ResizeStatus.setAllocation(&object, bytes: requested, state: ResizeStatus.controllerInProgress)
    }
    events.record(marked, .normal, reason: "Resizing", message: "External resizer is resizing volume \(pvName)")

    let handle = pv[path: "spec", "csi", "volumeHandle"]?.string ?? ""
    let response: Csi_V1_ControllerExpandVolumeResponse
    do {
      let capability = try Claims.capabilities(
        pv, fsType: pv[path: "spec", "csi", "fsType"]?.string ?? defaultFSType,
        mountFlags: (pv[path: "spec", "mountOptions"]?.array ?? []).compactMap(\.string), multiWriter: multiWriter
      ).first
      // external-resizer's source: the PV's controllerExpandSecretRef, set at provisioning.
      var secrets: [String: String] = [:]
      if let ref = pv[path: "spec", "csi", "controllerExpandSecretRef"],
        let name = ref["name"]?.string, let namespace = ref["namespace"]?.string
      {
        secrets = try await readSecret((namespace, name), what: "controller-expand")
      }
      response = try await callCSI("ControllerExpandVolume") { csi, options in
        try await csi.controller.controllerExpandVolume(
          .with {
            $0.volumeID = handle
            $0.capacityRange.requiredBytes = requested
            if let capability { $0.volumeCapability = capability }
            $0.secrets = secrets
          }, options: options)
      }
    } catch {
      metrics.record(operation: "resize", success: false, duration: ContinuousClock.now - started)
      let message = "resize volume \"\(pvName)\" by resizer \"\(driver)\" failed: \(CSICodes.describe(error))"
      let infeasible = CSICodes.infeasible(error)
      try await rewrite(.persistentVolumeClaims, marked, status: true) { object in
        ResizeStatus.removeConditions(&object, [ResizeStatus.resizing])
        ResizeStatus.setCondition(&object, ResizeStatus.controllerResizeError, message: message)
        ResizeStatus.setAllocation(
          &object, bytes: nil,
          state: infeasible ? ResizeStatus.controllerInfeasible : ResizeStatus.controllerInProgress)
      }
      events.record(marked, .warning, reason: "VolumeResizeFailed", message: message)
      throw error
    }

    let newSize = max(response.capacityBytes, requested)
    if newSize > pvCapacity {
      try await rewrite(.persistentVolumes, pv, status: false) { object in
        object[path: "spec", "capacity", "storage"] = .string(Quantity.format(newSize))
      }
    }
    let fresh = try await kube.get(.persistentVolumeClaims, namespace: claim.namespace, name: claim.name) ?? marked
    guard fresh.uid == claim.uid else { return }
    if response.nodeExpansionRequired {
      try await rewrite(.persistentVolumeClaims, fresh, status: true) { object in
        ResizeStatus.removeConditions(&object, [ResizeStatus.resizing, ResizeStatus.controllerResizeError])
        ResizeStatus.setCondition(&object, ResizeStatus.fileSystemResizePending, message: ResizeStatus.waitingForNode)
        ResizeStatus.setAllocation(&object, bytes: nil, state: ResizeStatus.nodePending)
      }
      events.record(
        fresh, .normal, reason: "FileSystemResizeRequired", message: "Require file system resize of volume on node")
    } else {
      try await rewrite(.persistentVolumeClaims, fresh, status: true) { object in
        object[path: "status", "capacity", "storage"] = .string(Quantity.format(newSize))
        ResizeStatus.removeConditions(
          &object, [ResizeStatus.resizing, ResizeStatus.controllerResizeError, ResizeStatus.fileSystemResizePending])
        ResizeStatus.setAllocation(&object, bytes: nil, state: nil)
      }
      events.record(fresh, .normal, reason: "VolumeResizeSuccessful", message: "Resize volume succeeded")
    }
    metrics.record(operation: "resize", success: true, duration: ContinuousClock.now - started)
    capacityChanged.nudge()
  }
}
