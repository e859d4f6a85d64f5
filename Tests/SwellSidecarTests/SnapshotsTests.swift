import CSIProto
import SwellKube
import Testing

@testable import SwellSidecar

/// The snapshotter's reading and writing of VolumeSnapshotContents, on the shapes recorded from a
/// real kube-apiserver with the external-snapshotter v8 CRDs (k8s-samples 07d, 07e, 07h).
@Suite struct SnapshotsTests {
  let dynamic: JSON = [
    "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
    "metadata": ["name": "snapcontent-edb44c6b", "uid": "969fda4b"],
    "spec": [
      "deletionPolicy": "Delete", "driver": "swell.csi.dev", "source": ["volumeHandle": "pvc-907a930c"],
      "volumeSnapshotClassName": "swell-snapclass",
      "volumeSnapshotRef": ["kind": "VolumeSnapshot", "name": "db-snap-1", "namespace": "default", "uid": "edb44c6b"],
    ],
  ]

  @Test func aDynamicSnapshotIsNamedFromItsVolumeSnapshotsUID() {
    #expect(Snapshots.snapshotName(dynamic) == "snapshot-edb44c6b")
    var unbound = dynamic
    unbound[path: "spec", "volumeSnapshotRef", "uid"] = nil
    #expect(Snapshots.snapshotName(unbound) == nil)
  }

  @Test func theStatusCarriesHandleReadinessSizeAndNanoseconds() {
    var content = dynamic
    Snapshots.setError(&content, "earlier failure")
    let snapshot = Csi_V1_Snapshot.with {
      $0.snapshotID = "snapshot-edb44c6b"
      $0.sizeBytes = 1 << 30
      $0.readyToUse = true
      $0.creationTime = .with {
        $0.seconds = 1_796_153_550
        $0.nanos = 370_043_995
      }
    }
    Snapshots.setStatus(&content, snapshot)
    #expect(content[path: "status", "snapshotHandle"] == "snapshot-edb44c6b")
    #expect(content[path: "status", "readyToUse"] == .bool(true))
    #expect(content[path: "status", "restoreSize"] == .int(1 << 30))
    #expect(content[path: "status", "creationTime"] == .int(1_796_153_550_370_043_995))
    #expect(content[path: "status", "error"] == nil)
  }

  @Test func onlyMarkedOrUnboundPreProvisionedContentsAreFinalized() {
    var content = dynamic
    #expect(!Snapshots.shouldFinalize(content))
    content[path: "metadata", "deletionTimestamp"] = "2026-12-01T19:40:00Z"
    #expect(!Snapshots.shouldFinalize(content), "being deleted, but not marked by the common controller")
    content[path: "metadata", "annotations", SnapshotNames.beingDeleted] = "yes"
    #expect(Snapshots.shouldFinalize(content))
    var pre: JSON = [
      "metadata": ["name": "pre", "deletionTimestamp": "2026-12-01T19:40:00Z"],
      "spec": ["source": ["snapshotHandle": "made-by-hand"], "volumeSnapshotRef": ["name": "s", "namespace": "default"]],
    ]
    #expect(Snapshots.shouldFinalize(pre))
    #expect(Snapshots.handle(pre) == "made-by-hand")
    pre[path: "spec", "volumeSnapshotRef", "uid"] = "bound"
    #expect(!Snapshots.shouldFinalize(pre))
  }

  @Test func secretReferencesResolveTheTemplatesAndRefuseHalfOfOne() throws {
    let snapshotClass: JSON = ["parameters": [
      "csi.storage.k8s.io/snapshotter-secret-name": "${volumesnapshot.name}-creds",
      "csi.storage.k8s.io/snapshotter-secret-namespace": "${volumesnapshot.namespace}",
      "tier": "gold",
    ]]
    let ref = try Snapshots.secretReference(snapshotClass, content: dynamic)
    #expect(ref?.namespace == "default" && ref?.name == "db-snap-1-creds")
    #expect(Snapshots.pluginParameters(snapshotClass) == ["tier": "gold"])
    let half: JSON = ["parameters": ["csi.storage.k8s.io/snapshotter-secret-name": "x"]]
    #expect(throws: Claims.Invalid.self) { try Snapshots.secretReference(half, content: dynamic) }
    #expect(try Snapshots.secretReference(nil, content: dynamic) == nil)
  }

  @Test func aClaimsDataSourceIsReadFromDataSourceRefFirst() {
    // 07j: the API server copies dataSource into dataSourceRef; 07k: a clone's apiGroup is null.
    let restore: JSON = ["spec": [
      "dataSource": ["apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "db-snap-1"],
      "dataSourceRef": ["apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "db-snap-1"],
    ]]
    #expect(Snapshots.dataSource(restore) == .init(group: "snapshot.storage.k8s.io", kind: "VolumeSnapshot", name: "db-snap-1", namespace: nil))
    let clone: JSON = ["spec": ["dataSource": ["apiGroup": nil, "kind": "PersistentVolumeClaim", "name": "db-data"]]]
    #expect(Snapshots.dataSource(clone) == .init(group: "", kind: "PersistentVolumeClaim", name: "db-data", namespace: nil))
    #expect(Snapshots.dataSource(["spec": ["dataSource": nil]]) == nil)
  }
}
