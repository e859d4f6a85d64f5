import CSIProto
import GRPCCore
import SwellKube

/// The PVC status fields of a VolumeAttributesClass change, as csi-resizer writes them (10- samples).
enum ModifyStatus {
  static let inProgress = "InProgress"
  static let infeasible = "Infeasible"
  static let pending = "Pending"
  static let modifying = "ModifyingVolume"
  static let modifyError = "ModifyVolumeError"
}

/// What a bound claim needs next for its attributes class.
enum ModifyStep: Equatable {
  /// Apply this class (the claim's, or the current one again after a failed change was rolled back).
  case apply(String)
  /// The class does not exist yet: say so, and look again at the next change or resync.
  case pending(String)
}

extension Reconciler {
  /// Decides from the claim alone. Nothing when the claim names no class, or the class it names is
  /// the current one with nothing outstanding; nothing while a change to this same class is
  /// Infeasible (sticky, as in csi-resizer: only a new class name clears it).
  static func modifyStep(_ claim: JSON, classExists: (String) -> Bool) -> ModifyStep? {
    guard let wanted = claim[path: "spec", "volumeAttributesClassName"]?.string, !wanted.isEmpty else { return nil }
    let current = claim[path: "status", "currentVolumeAttributesClassName"]?.string
    let status = claim[path: "status", "modifyVolumeStatus"]
    let target = status?["targetVolumeAttributesClassName"]?.string
    if wanted == current && status == nil { return nil }
    if status?["status"]?.string == ModifyStatus.infeasible && target == wanted { return nil }
    return classExists(wanted) ? .apply(wanted) : .pending(wanted)
  }

  /// A VolumeAttributesClass's parameters, or nil when the class does not exist.
  func attributesClassParameters(_ name: String) async throws -> [String: String]? {
    try await kube.get(.volumeAttributesClasses, name: name).map { $0["parameters"]?.stringMap ?? [:] }
  }

  /// A bound claim of ours whose `spec.volumeAttributesClassName` differs from its current class:
  /// ControllerModifyVolume with the whole new class, then the PV's class, then the claim's status,
  /// with csi-resizer's conditions and Events.
  func modifyIfNeeded(_ cached: JSON) async throws {
    guard Self.modifyStep(cached, classExists: { _ in true }) != nil else {
      if cached[path: "status", "modifyVolumeStatus", "status"]?.string == ModifyStatus.infeasible {
        metrics.deferred("modify", reason: "infeasible")  // looked, and left it: only a new class name clears it
      }
      return
    }
    guard let claim = try await kube.get(.persistentVolumeClaims, namespace: cached.namespace, name: cached.name),
      claim.uid == cached.uid, claim[path: "status", "phase"]?.string == "Bound", !claim.isBeingDeleted,
      let pvName = claim[path: "spec", "volumeName"]?.string,
      let pv = try await kube.get(.persistentVolumes, name: pvName), owns(pv),
      pv[path: "spec", "claimRef", "uid"]?.string == claim.uid
    else { return }
    let vac = try await kube.get(.volumeAttributesClasses, name: claim[path: "spec", "volumeAttributesClassName"]?.string ?? "")
    guard let step = Self.modifyStep(claim, classExists: { _ in vac != nil }) else { return }
    guard case .apply(let className) = step, let vac else {
      if case .pending(let name) = step, claim[path: "status", "modifyVolumeStatus", "status"]?.string != ModifyStatus.pending {
        let marked = try await rewrite(.persistentVolumeClaims, claim, status: true) { object in
          object[path: "status", "modifyVolumeStatus"] = ["status": .string(ModifyStatus.pending)]
        }
        events.record(marked, .warning, reason: "VolumeModifyFailed", message: "VAC \"\(name)\" does not exist.")
      }
      return
    }
    if let driverName = vac["driverName"]?.string, driverName != driver { return }

    let started = ContinuousClock.now
    let marked = try await rewrite(.persistentVolumeClaims, claim, status: true) { object in
      object[path: "status", "modifyVolumeStatus"] = [
        "targetVolumeAttributesClassName": .string(className), "status": .string(ModifyStatus.inProgress),
      ]
      ResizeStatus.setCondition(
        &object, ModifyStatus.modifying, message: "Modifying volume to \"\(className)\" is in progress.")
    }
    events.record(
      marked, .normal, reason: "VolumeModify",
      message: "external resizer is modifying volume \(claim.name) with vac \(className)")
    do {
      var secrets: [String: String] = [:]
      if let name = pv.annotations[K8sNames.modifySecretName], let namespace = pv.annotations[K8sNames.modifySecretNamespace] {
        secrets = try await readSecret((namespace, name), what: "controller-modify")
      }
      let parameters = vac["parameters"]?.stringMap ?? [:]
      _ = try await callCSI("ControllerModifyVolume") { csi, options in
        try await csi.controller.controllerModifyVolume(
          .with {
            $0.volumeID = pv[path: "spec", "csi", "volumeHandle"]?.string ?? ""
            $0.mutableParameters = parameters
            $0.secrets = secrets
          }, options: options)
      }
    } catch {
      metrics.record(operation: "modify", success: false, duration: ContinuousClock.now - started)
      let infeasible = CSICodes.infeasible(error)
      let code = (error as? RPCError).map { CSICodes.name($0.code) } ?? "Invalid"
      let detail = (error as? RPCError)?.message ?? "\(error)"
      try await rewrite(.persistentVolumeClaims, marked, status: true) { object in
        object[path: "status", "modifyVolumeStatus", "status"] =
          .string(infeasible ? ModifyStatus.infeasible : ModifyStatus.inProgress)
        ResizeStatus.setCondition(
          &object, ModifyStatus.modifying, message: "Modifying volume to \"\(className)\" failed. Waiting for retry.")
        ResizeStatus.setCondition(&object, ModifyStatus.modifyError, message: detail, reason: code)
      }
      events.record(marked, .warning, reason: "VolumeModifyFailed", message: CSICodes.describe(error))
      if infeasible { return }  // sticky until the claim names another class
      throw error
    }
    // The PV first, then the claim, as csi-resizer does.
    if pv[path: "spec", "volumeAttributesClassName"]?.string != className {
      try await rewrite(.persistentVolumes, pv, status: false) { object in
        object[path: "spec", "volumeAttributesClassName"] = .string(className)
      }
    }
    let fresh = try await kube.get(.persistentVolumeClaims, namespace: claim.namespace, name: claim.name) ?? marked
    guard fresh.uid == claim.uid else { return }
    let done = try await rewrite(.persistentVolumeClaims, fresh, status: true) { object in
      object[path: "status", "currentVolumeAttributesClassName"] = .string(className)
      object[path: "status", "modifyVolumeStatus"] = nil
      ResizeStatus.removeConditions(&object, [ModifyStatus.modifying, ModifyStatus.modifyError])
    }
    events.record(
      done, .normal, reason: "VolumeModifySuccessful",
      message: "external resizer modified volume \(claim.name) with vac \(className) successfully")
    metrics.record(operation: "modify", success: true, duration: ContinuousClock.now - started)
  }
}
