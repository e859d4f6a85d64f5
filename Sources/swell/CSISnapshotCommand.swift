import ArgumentParser
import CSIProto
import SwellClient

/// `swell csi snapshot create|delete|list`: the snapshot calls, for a node operator.
struct CSISnapshot: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "snapshot", abstract: "CreateSnapshot, DeleteSnapshot and ListSnapshots.",
    subcommands: [CSISnapshotCreate.self, CSISnapshotDelete.self, CSISnapshotList.self])
}

func describe(_ snapshot: Csi_V1_Snapshot) -> String {
  "\(snapshot.snapshotID)\tof \(snapshot.sourceVolumeID)\t\(snapshot.sizeBytes) bytes\t"
    + "created \(snapshot.creationTime.seconds)\tready: \(snapshot.readyToUse)"
    + (snapshot.groupSnapshotID.isEmpty ? "" : "\tgroup: \(snapshot.groupSnapshotID)")
}

struct CSISnapshotCreate: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "create", abstract: "CreateSnapshot.")
  @OptionGroup var connection: Connection
  @Argument(help: "The snapshot name.") var name: String
  @Argument(help: "The volume to snapshot.") var sourceVolumeID: String
  func run() async throws {
    try await connection.call({
      try await $0.controller.createSnapshot(.with {
        $0.name = name
        $0.sourceVolumeID = sourceVolumeID
      })
    }) { describe($0.snapshot) }
  }
}

struct CSISnapshotDelete: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "delete", abstract: "DeleteSnapshot.")
  @OptionGroup var connection: Connection
  @Argument var snapshotID: String
  func run() async throws {
    try await connection.call({ try await $0.controller.deleteSnapshot(.with { $0.snapshotID = snapshotID }) }) { _ in
      "deleted snapshot \(snapshotID)"
    }
  }
}

struct CSISnapshotList: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "list", abstract: "ListSnapshots.")
  @OptionGroup var connection: Connection
  @Option(help: "Only the snapshots of this volume.") var sourceVolume: String?
  func run() async throws {
    try await connection.call({ client in
      try await client.controller.listSnapshots(.with { $0.sourceVolumeID = sourceVolume ?? "" })
    }) { $0.entries.map { describe($0.snapshot) }.joined(separator: "\n") }
  }
}

/// `swell csi group-snapshot create|delete|get`: the GroupController's calls.
struct CSIGroupSnapshot: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "group-snapshot", abstract: "CreateVolumeGroupSnapshot, DeleteVolumeGroupSnapshot and GetVolumeGroupSnapshot.",
    subcommands: [CSIGroupSnapshotCreate.self, CSIGroupSnapshotDelete.self, CSIGroupSnapshotGet.self])
}

func describe(_ group: Csi_V1_VolumeGroupSnapshot) -> String {
  (["\(group.groupSnapshotID)\tcreated \(group.creationTime.seconds)\tready: \(group.readyToUse)"]
    + group.snapshots.map { "  " + describe($0) }).joined(separator: "\n")
}

struct CSIGroupSnapshotCreate: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "create", abstract: "CreateVolumeGroupSnapshot: one snapshot of each volume, at one instant.")
  @OptionGroup var connection: Connection
  @Argument(help: "The group snapshot name.") var name: String
  @Argument(help: "The volumes to snapshot together.") var sourceVolumeIDs: [String]
  func run() async throws {
    try await connection.call({
      try await $0.groupController.createVolumeGroupSnapshot(.with {
        $0.name = name
        $0.sourceVolumeIds = sourceVolumeIDs
      })
    }) { describe($0.groupSnapshot) }
  }
}

struct CSIGroupSnapshotDelete: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "delete", abstract: "DeleteVolumeGroupSnapshot: the group and all its members.")
  @OptionGroup var connection: Connection
  @Argument var groupSnapshotID: String
  @Argument(help: "The group's member snapshots (the spec requires the list; 'get' shows it).") var snapshotIDs: [String]
  func run() async throws {
    try await connection.call({
      try await $0.groupController.deleteVolumeGroupSnapshot(.with {
        $0.groupSnapshotID = groupSnapshotID
        $0.snapshotIds = snapshotIDs
      })
    }) { _ in "deleted group snapshot \(groupSnapshotID)" }
  }
}

struct CSIGroupSnapshotGet: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "get", abstract: "GetVolumeGroupSnapshot.")
  @OptionGroup var connection: Connection
  @Argument var groupSnapshotID: String
  func run() async throws {
    try await connection.call({
      try await $0.groupController.getVolumeGroupSnapshot(.with { $0.groupSnapshotID = groupSnapshotID })
    }) { describe($0.groupSnapshot) }
  }
}
