import CSIProto
import GRPCCore
import SwellKube

/// The names csi-attacher uses on VolumeAttachments and PVs, so that Swell's sidecar and the
/// official csi-attacher can take over each other's objects.
public enum AttachNames {
  /// On the VolumeAttachment while the volume may be published, and on its PV while any
  /// VolumeAttachment may still name it: `external-attacher/<driver, sanitized>`.
  public static func finalizer(driver: String) -> String {
    "external-attacher/" + String(driver.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") ? $0 : "-" })
  }
  /// The CSI node ID the volume was published to, from the node's CSINode.
  public static let nodeIDAnnotation = "csi.alpha.kubernetes.io/node-id"
}

/// What the attacher reads and writes: pure functions on the recorded shapes (11- samples).
public enum Attachments {
  /// The node's CSI node ID for `driver`, from its CSINode; nil when the driver is not registered there.
  public static func nodeID(csiNode: JSON?, driver: String) -> String? {
    (csiNode?[path: "spec", "drivers"]?.array ?? []).first { $0["name"]?.string == driver }?["nodeID"]?.string
  }

  /// The status of an attached VolumeAttachment: attached, the publish context as its metadata
  /// (left out when empty), and no attach error.
  public static func setAttached(_ va: inout JSON, metadata: [String: String]) {
    va[path: "status", "attached"] = true
    va[path: "status", "attachmentMetadata"] = metadata.isEmpty ? nil : .object(metadata.mapValues { .string($0) })
    va[path: "status", "attachError"] = nil
  }

  /// An attach error as csi-attacher writes it: the message, the time, and the gRPC code.
  public static func setAttachError(_ va: inout JSON, _ error: any Error, time: String) {
    var entry: JSON = ["message": .string(CSICodes.describe(error)), "time": .string(time)]
    if let rpc = error as? RPCError { entry["errorCode"] = .int(Int64(rpc.code.rawValue)) }
    va[path: "status", "attachError"] = entry
  }

  /// A detach error as csi-attacher writes it: the message and the time, no code.
  public static func setDetachError(_ va: inout JSON, _ error: any Error, time: String) {
    va[path: "status", "detachError"] = ["message": .string(CSICodes.describe(error)), "time": .string(time)]
  }
}

/// The csi-attacher half of attaching: the attach/detach controller makes a VolumeAttachment for
/// each volume a pod on a node needs, and this loop publishes the volume to that node
/// (ControllerPublishVolume) and reports it attached; once the VolumeAttachment is being deleted
/// it unpublishes the volume and lets it go. The central sidecar serves network volumes, each
/// node's sidecar the local volumes of its node.
extension Reconciler {
  static func attachmentKey(_ va: JSON) -> String { "attachment/\(va.name)" }

  var attachFinalizer: String { AttachNames.finalizer(driver: driver) }

  func syncAttachment(_ va: JSON) async throws {
    guard va[path: "spec", "attacher"]?.string == driver else { return }
    guard let pvName = va[path: "spec", "source", "persistentVolumeName"]?.string, let pv = volumes.get(pvName) else {
      return  // inline volumes are not Swell's; a PV missing from the cache comes back with its event
    }
    guard owns(pv) else { return }
    let nodeName = va[path: "spec", "nodeName"]?.string ?? ""
    if case .node(let name, _) = scope, name != nodeName { return }
    if va.isBeingDeleted {
      try await detach(va, pv: pv)
    } else {
      try await attach(va, pv: pv, nodeName: nodeName)
    }
  }

  func attach(_ va: JSON, pv: JSON, nodeName: String) async throws {
    if va[path: "status", "attached"]?.bool == true, va.finalizers.contains(attachFinalizer) { return }
    var current = va
    do {
      guard let nodeID = Attachments.nodeID(csiNode: try await csiNode(nodeName), driver: driver) else {
        throw Claims.Invalid(description: "CSINode \(nodeName) does not contain driver \(driver)")
      }
      // The PV first, so that it cannot go while the volume may be published; then the attachment.
      if !pv.finalizers.contains(attachFinalizer) {
        try await rewrite(.persistentVolumes, pv, status: false) { object in
          object[path: "metadata", "finalizers"] = .strings(object.finalizers + [attachFinalizer])
        }
      }
      current = try await rewrite(.volumeAttachments, current, status: false) { object in
        if !object.finalizers.contains(attachFinalizer) {
          object[path: "metadata", "finalizers"] = .strings(object.finalizers + [attachFinalizer])
        }
        object[path: "metadata", "annotations", AttachNames.nodeIDAnnotation] = .string(nodeID)
      }
      let request = try await publishRequest(pv, nodeID: nodeID)
      let started = ContinuousClock.now
      let response: Csi_V1_ControllerPublishVolumeResponse
      do {
        response = try await callCSI("ControllerPublishVolume") {
          try await $0.controller.controllerPublishVolume(request, options: $1)
        }
      } catch {
        metrics.record(operation: "attach", success: false, duration: ContinuousClock.now - started)
        throw error
      }
      metrics.record(operation: "attach", success: true, duration: ContinuousClock.now - started)
      try await rewrite(.volumeAttachments, current, status: true) {
        Attachments.setAttached(&$0, metadata: response.publishContext)
      }
    } catch {
      // The error goes where the attach/detach controller reads it (FailedAttachVolume events).
      _ = try? await rewrite(.volumeAttachments, current, status: true) {
        Attachments.setAttachError(&$0, error, time: Timestamp.now())
      }
      throw error
    }
  }

  func detach(_ va: JSON, pv: JSON) async throws {
    guard va.finalizers.contains(attachFinalizer) else { return }
    do {
      guard let handle = pv[path: "spec", "csi", "volumeHandle"]?.string else {
        throw Claims.Invalid(description: "PV \(pv.name) has no CSI volume handle")
      }
      var nodeID = va.annotations[AttachNames.nodeIDAnnotation]
      if nodeID == nil, let nodeName = va[path: "spec", "nodeName"]?.string {
        nodeID = Attachments.nodeID(csiNode: try await csiNode(nodeName), driver: driver)
      }
      let secrets = try await publishSecrets(pv)
      let started = ContinuousClock.now
      do {
        _ = try await callCSI("ControllerUnpublishVolume") {
          try await $0.controller.controllerUnpublishVolume(.with {
            $0.volumeID = handle
            $0.nodeID = nodeID ?? ""
            $0.secrets = secrets
          }, options: $1)
        }
      } catch {
        metrics.record(operation: "detach", success: false, duration: ContinuousClock.now - started)
        throw error
      }
      metrics.record(operation: "detach", success: true, duration: ContinuousClock.now - started)
      try await rewrite(.volumeAttachments, va, status: false) { object in
        object[path: "metadata", "finalizers"] = .strings(object.finalizers.filter { $0 != attachFinalizer })
      }
    } catch {
      _ = try? await rewrite(.volumeAttachments, va, status: true) {
        Attachments.setDetachError(&$0, error, time: Timestamp.now())
      }
      throw error
    }
  }

  /// A PV being deleted keeps the attacher's finalizer while any VolumeAttachment names it.
  func releaseAttachFinalizer(_ pv: JSON) async throws {
    guard let attachments, pv.isBeingDeleted, pv.finalizers.contains(attachFinalizer) else { return }
    let named = attachments.list().contains { $0[path: "spec", "source", "persistentVolumeName"]?.string == pv.name }
    guard !named else { return }
    try await rewrite(.persistentVolumes, pv, status: false) { object in
      object[path: "metadata", "finalizers"] = .strings(object.finalizers.filter { $0 != attachFinalizer })
    }
  }

  /// ControllerPublishVolume as csi-attacher builds it from the PV: its handle, one capability
  /// from its access mode, volume mode and filesystem, its volume context, and the secret its
  /// `controllerPublishSecretRef` names.
  func publishRequest(_ pv: JSON, nodeID: String) async throws -> Csi_V1_ControllerPublishVolumeRequest {
    guard let handle = pv[path: "spec", "csi", "volumeHandle"]?.string else {
      throw Claims.Invalid(description: "PV \(pv.name) has no CSI volume handle")
    }
    let fsType = pv[path: "spec", "csi", "fsType"]?.string ?? defaultFSType
    let flags = (pv[path: "spec", "mountOptions"]?.array ?? []).compactMap(\.string)
    guard let capability = try Claims.capabilities(pv, fsType: fsType, mountFlags: flags, multiWriter: multiWriter).first
    else { throw Claims.Invalid(description: "PV \(pv.name) has no access mode") }
    let secrets = try await publishSecrets(pv)
    return .with {
      $0.volumeID = handle
      $0.nodeID = nodeID
      $0.volumeCapability = capability
      $0.volumeContext = pv[path: "spec", "csi", "volumeAttributes"]?.stringMap ?? [:]
      $0.secrets = secrets
    }
  }

  /// The secret the PV's `controllerPublishSecretRef` names (for publish and unpublish alike).
  func publishSecrets(_ pv: JSON) async throws -> [String: String] {
    guard let ref = pv[path: "spec", "csi", "controllerPublishSecretRef"], let name = ref["name"]?.string,
      let namespace = ref["namespace"]?.string
    else { return [:] }
    return try await readSecret((namespace, name), what: "controller-publish")
  }

  /// A node's CSINode, from the cache when the sidecar watches them.
  func csiNode(_ name: String) async throws -> JSON? {
    if let csiNodes, csiNodes.hasSynced { return csiNodes.get(name) }
    return try await kube.get(.csiNodes, name: name)
  }
}
