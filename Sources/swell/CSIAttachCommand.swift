import ArgumentParser
import CSIProto
import SwellClient
import SwellDriver

/// `swell csi controller-publish`: ControllerPublishVolume, as an attacher calls it.
struct CSIControllerPublish: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "controller-publish",
    abstract: "ControllerPublishVolume: publish a volume to a node; prints the publish context, KEY=VALUE a line.")
  @OptionGroup var connection: Connection
  @OptionGroup var volume: VolumeFlags
  @Argument var volumeID: String
  @Option(help: "The node to publish to (default: the plugin's own node, from NodeGetInfo).")
  var node: String?
  @Option(help: "A file of KEY=VALUE lines sent as the request's secrets (an rbd class's controller-publish secret).")
  var secretsFile: String?
  func run() async throws {
    let secrets = try secretsFile.map(readSecrets) ?? [:]
    try await connection.call({ client in
      var target = node ?? ""
      if target.isEmpty { target = try await client.node.nodeGetInfo(.init()).nodeID }
      return try await client.controller.controllerPublishVolume(.with {
        $0.volumeID = volumeID
        $0.nodeID = target
        $0.volumeCapability = volume.capability
        $0.secrets = secrets
      })
    }) { $0.publishContext.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: "\n") }
  }
}

/// `swell csi controller-unpublish`: ControllerUnpublishVolume.
struct CSIControllerUnpublish: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "controller-unpublish", abstract: "ControllerUnpublishVolume: unpublish a volume from a node, or from every node.")
  @OptionGroup var connection: Connection
  @Argument var volumeID: String
  @Option(help: "The node to unpublish from (default: every node it is published to).")
  var node: String?
  @Option(help: "A file of KEY=VALUE lines sent as the request's secrets.")
  var secretsFile: String?
  func run() async throws {
    let secrets = try secretsFile.map(readSecrets) ?? [:]
    try await connection.call({
      try await $0.controller.controllerUnpublishVolume(.with {
        $0.volumeID = volumeID
        $0.nodeID = node ?? ""
        $0.secrets = secrets
      })
    }) { _ in "unpublished \(volumeID) from \(node ?? "every node")" }
  }
}
