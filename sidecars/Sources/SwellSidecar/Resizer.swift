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
  static func setCondition(_ claim: inout JSON, _ type: String, message: String? = nil) {
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

extension Reconciler {
  /// A bound claim whose request exceeds its capacity: mark it, expand the volume, record the new
  /// size on the PV, and hand the filesystem to kubelet (or finish, when the node has nothing to do).
  func resizeIfNeeded(_ claim: JSON) async throws {
    guard claim[path: "status", "phase"]?.string == "Bound", !claim.isBeingDeleted,
      let pvName = claim[path: "spec", "volumeName"]?.string, let pv = volumes.get(pvName), owns(pv),
      pv[path: "spec", "claimRef", "uid"]?.string == claim.uid
    else { return }
    guard let storageClass = storageClass(of: claim), storageClass["allowVolumeExpansion"]?.bool == true else { return }
    let requested = try Claims.requestedBytes(claim)
    guard let capacity = Claims.bytes(claim[path: "status", "capacity", "storage"]) else { return }
    let state = claim[path: "status", "allocatedResourceStatuses", "storage"]?.string
    let pvCapacity = Claims.bytes(pv[path: "spec", "capacity", "storage"]) ?? 0

    if requested <= capacity {
      // Nothing to grow. A user who lowered the request after a failure gets the error cleared.
      if state == ResizeStatus.controllerInfeasible || state == ResizeStatus.controllerInProgress {
        try await rewrite(.persistentVolumeClaims, claim, status: true) { object in
          ResizeStatus.removeConditions(
            &object, [ResizeStatus.resizing, ResizeStatus.controllerResizeError])
          ResizeStatus.setAllocation(&object, bytes: capacity, state: nil)
        }
      }
      return
    }
    if (state == ResizeStatus.nodePending || state == ResizeStatus.nodeInProgress) && pvCapacity >= requested {
      return  // kubelet's turn.
    }
    if state == ResizeStatus.nodeInfeasible { return }

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
        mountFlags: (pv[path: "spec", "mountOptions"]?.array ?? []).compactMap(\.string)
      ).first
      response = try await callCSI("ControllerExpandVolume") { csi, options in
        try await csi.controller.controllerExpandVolume(
          .with {
            $0.volumeID = handle
            $0.capacityRange.requiredBytes = requested
            if let capability { $0.volumeCapability = capability }
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
  }
}
