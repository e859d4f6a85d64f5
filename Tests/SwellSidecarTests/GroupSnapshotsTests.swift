import CSIProto
import SwellKube
import Testing

@testable import SwellSidecar

/// The group role's reading and writing of VolumeGroupSnapshotContents, on the shapes recorded from
/// the real snapshot-controller and csi-snapshotter (k8s-samples 09d, 09e, 09h, 09m, 09z).
@Suite struct GroupSnapshotsTests {
  let dynamic: JSON = [
    "apiVersion": "groupsnapshot.storage.k8s.io/v1", "kind": "VolumeGroupSnapshotContent",
    "metadata": ["name": "groupsnapcontent-5ab198dc", "uid": "f2027caf"],
    "spec": [
      "deletionPolicy": "Delete", "driver": "swell.csi.dev", "source": ["volumeHandles": ["vol-b", "vol-a"]],
      "volumeGroupSnapshotClassName": "rec-vgsclass",
      "volumeGroupSnapshotRef": [
        "apiVersion": "groupsnapshot.storage.k8s.io/v1", "kind": "VolumeGroupSnapshot", "name": "rec-group-1",
        "namespace": "default", "uid": "5ab198dc",
      ],
    ],
  ]

  func member(_ id: String, of volume: String) -> Csi_V1_Snapshot {
    .with {
      $0.snapshotID = id
      $0.sourceVolumeID = volume
      $0.sizeBytes = 1 << 30
      $0.readyToUse = true
      $0.groupSnapshotID = "groupsnapshot-5ab198dc"
      $0.creationTime = .with {
        $0.seconds = 1_796_284_292
        $0.nanos = 50_259_505
      }
    }
  }

  @Test func theGroupIsNamedFromItsVolumeGroupSnapshotsUIDWithTheRecordedMetadata() {
    #expect(GroupSnapshots.name(dynamic) == "groupsnapshot-5ab198dc")
    let cls: JSON = ["parameters": ["consistency": "crash", "csi.storage.k8s.io/group-snapshotter-secret-name": "s"]]
    #expect(
      GroupSnapshots.pluginParameters(cls, content: dynamic) == [
        "consistency": "crash", "csi.storage.k8s.io/volumegroupsnapshot/name": "rec-group-1",
        "csi.storage.k8s.io/volumegroupsnapshot/namespace": "default",
        "csi.storage.k8s.io/volumegroupsnapshotcontent/name": "groupsnapcontent-5ab198dc",
      ])
  }

  @Test func theStatusListsMembersInTheContentsOrderWithNanosecondsAndTheGroupInRFC3339() {
    var content = dynamic
    let group = Csi_V1_VolumeGroupSnapshot.with {
      $0.groupSnapshotID = "groupsnapshot-5ab198dc"
      $0.readyToUse = true
      $0.creationTime = .with { $0.seconds = 1_796_284_292 }
      $0.snapshots = [member("groupsnapshot-5ab198dc.0", of: "vol-a"), member("groupsnapshot-5ab198dc.1", of: "vol-b")]
    }
    GroupSnapshots.setStatus(&content, group, members: true)
    #expect(content[path: "status", "creationTime"] == "2026-12-03T07:51:32Z")
    #expect(content[path: "status", "volumeGroupSnapshotHandle"] == "groupsnapshot-5ab198dc")
    let list = content[path: "status", "volumeSnapshotInfoList"]?.array ?? []
    #expect(list.compactMap { $0["volumeHandle"]?.string } == ["vol-b", "vol-a"])
    #expect(list.first?["creationTime"]?.int == 1_796_284_292_050_259_505)
    #expect(GroupSnapshots.handles(content)?.snapshots == ["groupsnapshot-5ab198dc.1", "groupsnapshot-5ab198dc.0"])
    var imported = dynamic
    GroupSnapshots.setStatus(&imported, group, members: false)
    #expect(imported[path: "status", "volumeSnapshotInfoList"] == nil)
  }

  @Test func membersAndFinalizingFollowTheRecordedMarkers() {
    let memberContent: JSON = ["metadata": ["name": "snapcontent-f24d", "annotations": [
      "groupsnapshot.storage.k8s.io/volumeGroupSnapshotHandle": "groupsnapshot-5ab198dc",
    ]]]
    #expect(GroupSnapshots.isMember(memberContent))
    #expect(!GroupSnapshots.isMember(dynamic))
    var deleting = dynamic
    deleting[path: "metadata", "deletionTimestamp"] = "2026-12-03T07:53:41Z"
    #expect(!GroupSnapshots.shouldFinalize(deleting))
    deleting[path: "metadata", "annotations"] = [GroupSnapshotNames.beingDeleted: "yes"]
    #expect(GroupSnapshots.shouldFinalize(deleting))
    let preProvisioned: JSON = [
      "metadata": ["name": "rec-static-vgsc", "deletionTimestamp": "2026-12-03T07:53:41Z"],
      "spec": ["source": ["groupSnapshotHandles": ["volumeGroupSnapshotHandle": "g", "volumeSnapshotHandles": ["g.0"]]],
               "volumeGroupSnapshotRef": ["name": "rec-group-static", "namespace": "default"]],
    ]
    #expect(GroupSnapshots.shouldFinalize(preProvisioned))
    #expect(GroupSnapshots.handles(preProvisioned)! == ("g", ["g.0"]))
  }
}
