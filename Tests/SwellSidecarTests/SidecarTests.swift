import CSIProto
import Testing
import Logging
import Synchronization
@testable import SwellKube
@testable import SwellSidecar

struct WorkQueueTests {
  @Test func aKeyIsQueuedOnceAndNeverHandedOutTwiceAtOnce() async {
    let queue = WorkQueue()
    await queue.add("a")
    await queue.add("a")
    await queue.add("b")
    #expect(await queue.depth == 2)
    let first = await queue.get()
    #expect(first == "a")
    await queue.add("a")  // while "a" is being worked on
    #expect(await queue.get() == "b")
    #expect(await queue.depth == 0)
    await queue.done("a")  // now it goes back in
    #expect(await queue.get() == "a")
  }

  @Test func backoffDoublesFromOneSecondToFiveMinutes() async {
    let queue = WorkQueue()
    var delays: [Duration] = []
    for _ in 0..<12 { delays.append(await queue.nextDelay(for: "k")) }
    #expect(Array(delays.prefix(9)) == [1, 2, 4, 8, 16, 32, 64, 128, 256].map { Duration.seconds($0) })
    #expect(delays.suffix(3).allSatisfy { $0 == .seconds(300) })
    await queue.forget("k")
    #expect(await queue.nextDelay(for: "k") == .seconds(1))
  }

  @Test func shutdownWakesWaitingWorkers() async {
    let queue = WorkQueue()
    async let waiting = queue.get()
    try? await Task.sleep(for: .milliseconds(20))
    await queue.shutDown()
    #expect(await waiting == nil)
  }
}

struct ClaimTests {
  let claim: JSON = [
    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
    "metadata": [
      "name": "data", "namespace": "db", "uid": "1234", "resourceVersion": "7",
      "annotations": ["volume.beta.kubernetes.io/storage-provisioner": "swell.csi.dev"],
    ],
    "spec": [
      "accessModes": ["ReadWriteOnce"], "resources": ["requests": ["storage": "1536Mi"]],
      "storageClassName": "fast", "volumeMode": "Filesystem",
    ],
  ]
  let storageClass: JSON = [
    "metadata": ["name": "fast"], "provisioner": "swell.csi.dev", "reclaimPolicy": "Retain",
    "mountOptions": ["noatime"],
    "parameters": ["csi.storage.k8s.io/fstype": "xfs", "csi.storage.k8s.io/provisioner-secret-name": "s", "tier": "gold"],
  ]

  @Test func createRequestFollowsExternalProvisioner() throws {
    let request = try Claims.createRequest(
      claim: claim, storageClass: storageClass, topology: ["topology.swell.csi.dev/node": "n1"], defaultFSType: "ext4",
      multiWriter: true)
    #expect(request.name == "pvc-1234")
    #expect(request.capacityRange.requiredBytes == 1536 << 20)
    #expect(request.parameters == ["tier": "gold"])
    #expect(request.volumeCapabilities.count == 1)
    #expect(request.volumeCapabilities[0].mount.fsType == "xfs")
    #expect(request.volumeCapabilities[0].mount.mountFlags == ["noatime"])
    // As the recorded calls of external-provisioner v6.3 show: to a driver advertising
    // SINGLE_NODE_MULTI_WRITER, ReadWriteOnce is SINGLE_NODE_MULTI_WRITER.
    #expect(request.volumeCapabilities[0].accessMode.mode == .singleNodeMultiWriter)
    let plain = try Claims.createRequest(
      claim: claim, storageClass: storageClass, topology: nil, defaultFSType: "ext4", multiWriter: false)
    #expect(plain.volumeCapabilities[0].accessMode.mode == .singleNodeWriter)
    #expect(request.accessibilityRequirements.requisite.map(\.segments) == [["topology.swell.csi.dev/node": "n1"]])
    #expect(Claims.provisionerOf(claim) == "swell.csi.dev")
  }

  @Test func persistentVolumeCarriesEverythingTheBinderNeeds() {
    let volume = Csi_V1_Volume.with {
      $0.volumeID = "pvc-1234"
      $0.capacityBytes = 2 << 30
      $0.volumeContext = ["k": "v"]
      $0.accessibleTopology = [.with { $0.segments = ["topology.swell.csi.dev/node": "n1"] }]
    }
    let pv = Claims.persistentVolume(
      claim: claim, storageClass: storageClass, volume: volume, driver: "swell.csi.dev", requestedBytes: 1,
      defaultFSType: "ext4")
    #expect(pv.name == "pvc-1234")
    #expect(pv[path: "spec", "capacity", "storage"]?.string == "2Gi")
    #expect(pv[path: "spec", "csi"] == ["driver": "swell.csi.dev", "volumeHandle": "pvc-1234", "fsType": "xfs", "volumeAttributes": ["k": "v"]])
    #expect(pv[path: "spec", "claimRef", "uid"]?.string == "1234")
    #expect(pv[path: "spec", "claimRef", "namespace"]?.string == "db")
    #expect(pv[path: "spec", "persistentVolumeReclaimPolicy"]?.string == "Retain")
    #expect(pv[path: "spec", "mountOptions"] == ["noatime"])
    #expect(pv.annotations["pv.kubernetes.io/provisioned-by"] == "swell.csi.dev")
    #expect(pv.finalizers.isEmpty, "Retain volumes need no deletion finalizer")
    #expect(Claims.nodeAffinityAdmits(pv, labels: ["topology.swell.csi.dev/node": "n1"]))
    #expect(!Claims.nodeAffinityAdmits(pv, labels: ["topology.swell.csi.dev/node": "n2"]))
  }

  @Test func persistentVolumeRecordsTheClassSecretsAsExternalProvisionerDoes() throws {
    let volume = Csi_V1_Volume.with { $0.volumeID = "pvc-1234" }
    let bare = Claims.persistentVolume(
      claim: claim, storageClass: storageClass, volume: volume, driver: "swell.csi.dev", requestedBytes: 1 << 30,
      defaultFSType: "ext4")
    // No secret named: both deletion annotations are written, empty, and no ref appears in csi.
    #expect(bare.annotations[K8sNames.deletionSecretName] == "")
    #expect(bare.annotations[K8sNames.deletionSecretNamespace] == "")
    #expect(bare[path: "spec", "csi", "controllerExpandSecretRef"] == nil)
    guard case .none = Claims.deletionSecret(bare) else { Issue.record("empty annotations name no secret"); return }

    var sc = storageClass
    sc["parameters"] = [
      "csi.storage.k8s.io/provisioner-secret-name": "${pvc.name}-key",
      "csi.storage.k8s.io/provisioner-secret-namespace": "${pvc.namespace}",
      "csi.storage.k8s.io/controller-expand-secret-name": "grow",
      "csi.storage.k8s.io/controller-expand-secret-namespace": "ops",
    ]
    let secrets = try Claims.classSecrets(storageClass: sc, claim: claim)
    let pv = Claims.persistentVolume(
      claim: claim, storageClass: sc, volume: volume, driver: "swell.csi.dev", requestedBytes: 1 << 30,
      defaultFSType: "ext4", secrets: secrets)
    #expect(pv[path: "spec", "csi", "controllerExpandSecretRef"] == ["name": "grow", "namespace": "ops"])
    #expect(pv[path: "spec", "csi", "nodeStageSecretRef"] == nil)
    guard case .ref(let ref) = Claims.deletionSecret(pv) else { Issue.record("the annotations name the secret"); return }
    #expect(ref.namespace == "db" && ref.name == "\(claim.name)-key")

    // A PV made before the annotations existed: its class is asked, templates resolved on the
    // claim it was bound to.
    var old = pv
    old[path: "metadata", "annotations"] = ["pv.kubernetes.io/provisioned-by": "swell.csi.dev"]
    guard case .fromClass(let className) = Claims.deletionSecret(old) else { Issue.record("falls back to the class"); return }
    #expect(className == storageClass.name)
    let resolved = try Claims.secretReference("provisioner", storageClass: sc, claim: Claims.boundClaim(old))
    #expect(resolved?.namespace == "db" && resolved?.name == "\(claim.name)-key")
  }

  @Test func allowedTopologiesExpandToEveryCombination() {
    let sc: JSON = [
      "allowedTopologies": [[
        "matchLabelExpressions": [["key": "zone", "values": ["a", "b"]], ["key": "rack", "values": ["1"]]]
      ]]
    ]
    #expect(Claims.allowedTopologies(sc) == [["zone": "a", "rack": "1"], ["zone": "b", "rack": "1"]])
  }

  @Test func resizeConditionsKeepTheirTransitionTime() {
    var pvc: JSON = ["status": ["conditions": [["type": "Resizing", "status": "True", "lastTransitionTime": "then"]]]]
    ResizeStatus.setCondition(&pvc, "Resizing")
    #expect(pvc[path: "status", "conditions"]?.array?.first?["lastTransitionTime"]?.string == "then")
    ResizeStatus.setCondition(&pvc, "FileSystemResizePending", message: "m")
    ResizeStatus.removeConditions(&pvc, ["Resizing"])
    #expect(pvc[path: "status", "conditions"]?.array?.map { $0["type"]?.string } == ["FileSystemResizePending"])
    ResizeStatus.setAllocation(&pvc, bytes: 2 << 30, state: "NodeResizePending")
    #expect(pvc[path: "status", "allocatedResources", "storage"]?.string == "2Gi")
    ResizeStatus.setAllocation(&pvc, bytes: nil, state: nil)
    #expect(pvc[path: "status", "allocatedResourceStatuses"] == nil)
  }
}

/// The modify decision, on the claim states recorded from csi-resizer (../shared/k8s-samples/10*).
struct ModifyStepTests {
  func claim(_ wanted: String?, current: String?, status: JSON? = nil) -> JSON {
    var c: JSON = ["spec": [:], "status": ["phase": "Bound"]]
    if let wanted { c[path: "spec", "volumeAttributesClassName"] = .string(wanted) }
    if let current { c[path: "status", "currentVolumeAttributesClassName"] = .string(current) }
    if let status { c[path: "status", "modifyVolumeStatus"] = status }
    return c
  }

  @Test func decidesAsTheRecordedResizer() {
    let exists: (String) -> Bool = { $0 != "rec-vac-later" }
    // 10b: bound at its class, nothing outstanding.
    #expect(Reconciler.modifyStep(claim("rec-vac-silver", current: "rec-vac-silver"), classExists: exists) == nil)
    #expect(Reconciler.modifyStep(claim(nil, current: nil), classExists: exists) == nil)
    // 10c: a new class name.
    #expect(Reconciler.modifyStep(claim("rec-vac-gold", current: "rec-vac-silver"), classExists: exists) == .apply("rec-vac-gold"))
    // 10d: a class that does not exist yet.
    #expect(Reconciler.modifyStep(claim("rec-vac-later", current: "rec-vac-gold"), classExists: exists) == .pending("rec-vac-later"))
    // 10e: Infeasible is sticky for its target...
    let infeasible: JSON = ["targetVolumeAttributesClassName": "rec-vac-bad", "status": "Infeasible"]
    #expect(Reconciler.modifyStep(claim("rec-vac-bad", current: "rec-vac-silver", status: infeasible), classExists: exists) == nil)
    // ...and going back to the current class applies it again.
    #expect(
      Reconciler.modifyStep(claim("rec-vac-silver", current: "rec-vac-silver", status: infeasible), classExists: exists)
        == .apply("rec-vac-silver"))
  }
}

/// A worker whose reconcile fails a set number of times, recording when each try ran.
final class FlakyWorker: KeyWorker {
  let failuresLeft = Mutex(0)
  let tries = Mutex<[ContinuousClock.Instant]>([])
  let holds = Mutex<[String: ContinuousClock.Instant]>([:])
  init(failures: Int) { failuresLeft.withLock { $0 = failures } }

  func reconcile(_ key: String) async throws {
    tries.withLock { $0.append(.now) }
    let fail = failuresLeft.withLock { left in
      defer { left -= 1 }
      return left > 0
    }
    if fail { throw CancellationError() }
  }
  func heldUntil(_ key: String) -> ContinuousClock.Instant? {
    holds.withLock { $0[key] }.flatMap { $0 > .now ? $0 : nil }
  }
  func hold(_ key: String, until: ContinuousClock.Instant) { holds.withLock { $0[key] = until } }
  func release(_ key: String) { _ = holds.withLock { $0.removeValue(forKey: key) } }
  func queueDepthChanged(_ depth: Int) {}
}

struct WorkerTests {
  /// Runs a worker loop on the queue until the worker has tried `count` times (or 5 s have passed),
  /// then shuts the queue down; returns when each try began.
  func run(_ worker: FlakyWorker, on queue: WorkQueue, untilTries count: Int) async -> [ContinuousClock.Instant] {
    let run = Task { await Workers.run(queue: queue, worker: worker, logger: .init(label: "test")) }
    let deadline = ContinuousClock.now + .seconds(5)
    while ContinuousClock.now < deadline, worker.tries.withLock({ $0.count }) < count {
      try? await Task.sleep(for: .milliseconds(10))
    }
    await queue.shutDown()
    await run.value
    return worker.tries.withLock { $0 }
  }

  @Test func aKeyTakenOutWhileHeldIsTriedWhenItsHoldEndsNotDropped() async {
    // An event for the key arrives during its backoff, and no timer is left to bring it back (the
    // case that left a PV undeleted for minutes: the retry's timer fired a moment before its hold ended).
    let queue = WorkQueue()
    let worker = FlakyWorker(failures: 0)
    let holdEnds = ContinuousClock.now + .milliseconds(300)
    worker.hold("volume/pv", until: holdEnds)
    await queue.add("volume/pv")
    let tries = await run(worker, on: queue, untilTries: 1)
    #expect(tries.count == 1)
    #expect(tries.allSatisfy { $0 >= holdEnds }, "tried while still held")
  }

  @Test func aFailedKeyIsTriedAgainAfterEachBackoff() async {
    let queue = WorkQueue(baseDelay: .milliseconds(100))
    let worker = FlakyWorker(failures: 2)
    await queue.add("claim/db/data")
    let tries = await run(worker, on: queue, untilTries: 3)
    #expect(tries.count == 3)
    if tries.count == 3 {
      // 100 ms, then 200 ms: the backoff doubles, and no try comes before its hold ends.
      #expect(tries[1] - tries[0] >= .milliseconds(100))
      #expect(tries[2] - tries[1] >= .milliseconds(200))
    }
    #expect(worker.holds.withLock { $0.isEmpty }, "a success releases the hold")
  }
}
