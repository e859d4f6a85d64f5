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
