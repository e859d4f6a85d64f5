import Testing
@testable import SwellKube
@testable import SwellSidecar

/// The pure parts of capacity publishing: the provisioner's managed-by label, and when a published
/// object already says what it should.
struct CapacityPublisherTests {
  @Test func managedByNamesTheNodeAndStaysAValidLabelValue() {
    #expect(CapacityPublisher.managedBy(.central) == "external-provisioner")
    #expect(CapacityPublisher.managedBy(.node(name: "node-a", topology: [:])) == "external-provisioner-node-a")
    let long = String(repeating: "n", count: 80)
    let a = CapacityPublisher.managedBy(.node(name: long, topology: [:]))
    let b = CapacityPublisher.managedBy(.node(name: long + "x", topology: [:]))
    #expect(a.count <= 63 && b.count <= 63 && a != b, "\(a) \(b)")
    #expect(a == CapacityPublisher.managedBy(.node(name: long, topology: [:])), "stable across restarts")
  }

  @Test func anObjectMatchesByBytesNotBySpelling() {
    let wanted = CapacityPublisher.Wanted(
      storageClass: "a", topology: ["k": "v"], capacity: 10 << 30, maximum: 8 << 30)
    let same: JSON = [
      "storageClassName": "a", "nodeTopology": ["matchLabels": ["k": "v"]], "capacity": "10737418240",
      "maximumVolumeSize": "8Gi",
    ]
    #expect(CapacityPublisher.matches(same, wanted))
    #expect(CapacityPublisher.key(of: same) == wanted.key)
    var changed = same
    changed["capacity"] = "9Gi"
    #expect(!CapacityPublisher.matches(changed, wanted))
    var noMaximum = same
    noMaximum["maximumVolumeSize"] = nil
    #expect(!CapacityPublisher.matches(noMaximum, wanted))
    let everyNode: JSON = ["storageClassName": "a", "nodeTopology": [:]]
    #expect(CapacityPublisher.key(of: everyNode) == CapacityPublisher.key("a", [:]))
    #expect(CapacityPublisher.key(of: everyNode) != wanted.key)
  }
}
