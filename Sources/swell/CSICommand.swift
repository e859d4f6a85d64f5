import ArgumentParser
import CSIProto
import GRPCCore
import SwellClient
import SwellDriver
import SwellHost
import SwiftProtobuf

/// `swell csi …`: talk to a live plugin socket, for debugging on a node.
struct CSICommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "csi", abstract: "Call a running plugin over its socket.",
    subcommands: [
      CSIProbe.self, CSIInfo.self, CSICapabilities.self, CSICreate.self, CSICapacity.self, CSIDelete.self, CSIExpand.self,
      CSIModify.self,
      CSIList.self, CSIStats.self, CSIControllerPublish.self, CSIControllerUnpublish.self, CSIStage.self,
      CSIPublish.self, CSIUnstage.self, CSIUnpublish.self,
      CSINodeExpand.self, CSISnapshot.self, CSIGroupSnapshot.self,
    ])
}

struct Connection: ParsableArguments {
  @Option(help: "The plugin's socket.")
  var endpoint = "unix:///csi/csi.sock"

  @Flag(help: "Print the response as JSON.")
  var json = false

  /// Calls the plugin and prints the response: JSON with --json, else `human(response)`.
  func call<M: SwiftProtobuf.Message & Sendable>(
    _ body: (CSIClient) async throws -> M, human: (M) -> String
  ) async throws {
    do {
      let response = try await quietCall(body)
      if json {
        var options = JSONEncodingOptions()
        options.preserveProtoFieldNames = true
        print(try response.jsonString(options: options))
      } else {
        print(human(response))
      }
    } catch let error as RPCError {
      print("error: \(ErrorMapping.name(of: error.code)): \(error.message)")
      throw ExitCode(2)
    }
  }
}

extension Connection {
  /// Calls the plugin and returns the response without printing it.
  func quietCall<M: Sendable>(_ body: (CSIClient) async throws -> M) async throws -> M {
    let path = endpoint.hasPrefix("unix://") ? String(endpoint.dropFirst(7)) : endpoint
    return try await withCSIClient(socketPath: path) { try await body($0) }
  }
}

struct VolumeFlags: ParsableArguments {
  @Flag(help: "A raw block volume instead of a filesystem.")
  var block = false
  @Option(help: "The filesystem: ext4 or xfs.")
  var fsType = "ext4"

  var capability: Csi_V1_VolumeCapability {
    block ? CSIRequests.blockCapability() : CSIRequests.mountCapability(fsType: fsType)
  }
}

struct CSIProbe: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "probe", abstract: "Probe the plugin.")
  @OptionGroup var connection: Connection
  func run() async throws {
    try await connection.call({ try await $0.identity.probe(.init()) }) { "ready: \($0.ready.value)" }
  }
}

struct CSIInfo: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "info", abstract: "Plugin and node information.")
  @OptionGroup var connection: Connection
  func run() async throws {
    try await connection.call({ try await $0.identity.getPluginInfo(.init()) }) {
      "name: \($0.name)\nversion: \($0.vendorVersion)"
    }
  }
}

struct CSICapabilities: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "capabilities", abstract: "Plugin, controller and node capabilities.")
  @OptionGroup var connection: Connection
  func run() async throws {
    try await connection.call({ try await $0.identity.getPluginCapabilities(.init()) }) { response in
      response.capabilities.map { cap -> String in
        switch cap.type {
        case .service(let s): return "plugin: \(protoName(s.type))"
        case .volumeExpansion(let e): return "plugin: VOLUME_EXPANSION \(protoName(e.type))"
        case nil: return "plugin: unknown"
        }
      }.joined(separator: "\n")
    }
    let controller: Csi_V1_ControllerGetCapabilitiesResponse? = try? await connection.quietCall {
      try await $0.controller.controllerGetCapabilities(.init())
    }
    if let controller, !connection.json {
      print(controller.capabilities.map { "controller: \(protoName($0.rpc.type))" }.joined(separator: "\n"))
    }
    let group: Csi_V1_GroupControllerGetCapabilitiesResponse? = try? await connection.quietCall {
      try await $0.groupController.groupControllerGetCapabilities(.init())
    }
    if let group, !connection.json {
      print(group.capabilities.map { "group controller: \(protoName($0.rpc.type))" }.joined(separator: "\n"))
    }
    try await connection.call({ try await $0.node.nodeGetCapabilities(.init()) }) {
      $0.capabilities.map { "node: \(protoName($0.rpc.type))" }.joined(separator: "\n")
    }
  }
}

/// `createDeleteVolume` as the spec spells it: `CREATE_DELETE_VOLUME`.
func protoName(_ value: Any) -> String {
  var out = ""
  for ch in "\(value)" {
    if ch.isUppercase { out += "_" }
    out += ch.uppercased()
  }
  return out
}

struct CSICreate: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "create", abstract: "CreateVolume.")
  @OptionGroup var connection: Connection
  @OptionGroup var volume: VolumeFlags
  @Argument(help: "The volume name.") var name: String
  @Option(help: "The size in bytes.") var bytes: Int64 = 1 << 30
  @Option(name: .customLong("parameter"), help: "A StorageClass parameter, KEY=VALUE (such as backend=iscsi); repeatable.")
  var parameters: [String] = []
  @Option(help: "Restore this snapshot into the new volume.") var fromSnapshot: String?
  @Option(help: "Clone this volume into the new volume.") var fromVolume: String?
  @Option(name: .customLong("mutable-parameter"), help: "A VolumeAttributesClass parameter, KEY=VALUE (such as provisioning=thick); repeatable.")
  var mutableParameters: [String] = []
  @Option(help: "A file of KEY=VALUE lines sent as the request's secrets (such as iSCSI CHAP username and password); kept off the command line.")
  var secretsFile: String?
  func run() async throws {
    let params = try keyValues(parameters, option: "--parameter")
    let mutable = try keyValues(mutableParameters, option: "--mutable-parameter")
    let secrets = try secretsFile.map(readSecrets) ?? [:]
    guard fromSnapshot == nil || fromVolume == nil else {
      throw ValidationError("--from-snapshot and --from-volume exclude each other")
    }
    try await connection.call({
      var request = CSIRequests.create(name: name, bytes: bytes, capability: volume.capability)
      request.parameters = params
      request.mutableParameters = mutable
      request.secrets = secrets
      if let fromSnapshot { request.volumeContentSource.snapshot.snapshotID = fromSnapshot }
      if let fromVolume { request.volumeContentSource.volume.volumeID = fromVolume }
      return try await $0.controller.createVolume(request)
    }) { response in
      let context = response.volume.volumeContext.sorted { $0.key < $1.key }.map { "  \($0.key)=\($0.value)" }
      return (["volume \(response.volume.volumeID): \(response.volume.capacityBytes) bytes"] + context)
        .joined(separator: "\n")
    }
  }
}

struct CSICapacity: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "capacity", abstract: "GetCapacity.")
  @OptionGroup var connection: Connection
  @Option(name: .customLong("parameter"), help: "A StorageClass parameter, KEY=VALUE (such as backend=lvm); repeatable.")
  var parameters: [String] = []
  func run() async throws {
    let params = try keyValues(parameters, option: "--parameter")
    try await connection.call({ try await $0.controller.getCapacity(.with { $0.parameters = params }) }) {
      "available: \($0.availableCapacity) bytes, largest volume: \($0.maximumVolumeSize.value) bytes"
    }
  }
}

struct CSIDelete: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "delete", abstract: "DeleteVolume.")
  @OptionGroup var connection: Connection
  @Argument var volumeID: String
  @Option(help: "A file of KEY=VALUE lines sent as the request's secrets (such as an rbd class's userID and userKey).")
  var secretsFile: String?
  func run() async throws {
    let secrets = try secretsFile.map(readSecrets) ?? [:]
    try await connection.call({
      try await $0.controller.deleteVolume(.with {
        $0.volumeID = volumeID
        $0.secrets = secrets
      })
    }) { _ in
      "deleted \(volumeID)"
    }
  }
}

struct CSIExpand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "expand", abstract: "ControllerExpandVolume.")
  @OptionGroup var connection: Connection
  @Argument var volumeID: String
  @Option(help: "The new size in bytes.") var bytes: Int64
  @Option(help: "A file of KEY=VALUE lines sent as the request's secrets (an rbd class's controller-expand secret).")
  var secretsFile: String?
  func run() async throws {
    let secrets = try secretsFile.map(readSecrets) ?? [:]
    try await connection.call({
      try await $0.controller.controllerExpandVolume(.with {
        $0.volumeID = volumeID
        $0.capacityRange.requiredBytes = bytes
        $0.secrets = secrets
      })
    }) { "capacity: \($0.capacityBytes) bytes, node expansion required: \($0.nodeExpansionRequired)" }
  }
}

struct CSIModify: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "modify", abstract: "ControllerModifyVolume: apply a VolumeAttributesClass's parameters.")
  @OptionGroup var connection: Connection
  @Argument var volumeID: String
  @Option(name: .customLong("parameter"), help: "A mutable parameter, KEY=VALUE (such as provisioning=thick); repeatable.")
  var parameters: [String] = []
  func run() async throws {
    let params = try keyValues(parameters, option: "--parameter")
    try await connection.call({
      try await $0.controller.controllerModifyVolume(.with {
        $0.volumeID = volumeID
        $0.mutableParameters = params
      })
    }) { _ in "modified \(volumeID)" }
  }
}

struct CSIList: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "list", abstract: "ListVolumes.")
  @OptionGroup var connection: Connection
  func run() async throws {
    try await connection.call({ try await $0.controller.listVolumes(.init()) }) {
      $0.entries.map {
        "\($0.volume.volumeID)\t\($0.volume.capacityBytes)\t\($0.status.volumeCondition.abnormal ? "abnormal: " : "")\($0.status.volumeCondition.message)"
      }.joined(separator: "\n")
    }
  }
}

struct CSIStats: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "stats", abstract: "NodeGetVolumeStats.")
  @OptionGroup var connection: Connection
  @Argument var volumeID: String
  @Argument var path: String
  func run() async throws {
    try await connection.call({
      try await $0.node.nodeGetVolumeStats(.with {
        $0.volumeID = volumeID
        $0.volumePath = path
      })
    }) {
      let usage = $0.usage.map { "\($0.unit): total \($0.total) used \($0.used) available \($0.available)" }
      let condition = $0.hasVolumeCondition
        ? ["condition: " + ($0.volumeCondition.abnormal ? "abnormal: " : "normal ") + $0.volumeCondition.message] : []
      return (usage + condition).joined(separator: "\n")
    }
  }
}

struct CSIStage: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "stage", abstract: "NodeStageVolume.")
  @OptionGroup var connection: Connection
  @OptionGroup var volume: VolumeFlags
  @Argument var volumeID: String
  @Argument var stagingPath: String
  @Option(name: .customLong("context"), help: "A volume_context entry from CreateVolume, KEY=VALUE; repeatable.")
  var context: [String] = []
  @Option(help: "A file of KEY=VALUE lines sent as the node-stage secrets (iSCSI CHAP); kept off the command line.")
  var secretsFile: String?
  @Option(
    name: .customLong("publish-context"),
    help: "A publish_context entry from ControllerPublishVolume, KEY=VALUE; repeatable. Without any, a plugin that also serves a publishing controller is asked to publish the volume to its own node first, as the CO would.")
  var publishContext: [String] = []
  @Flag(help: "Stage with no publish context and publish nothing first.")
  var noPublish = false
  func run() async throws {
    let volumeContext = try keyValues(context, option: "--context")
    let given = try keyValues(publishContext, option: "--publish-context")
    let secrets = try secretsFile.map(readSecrets) ?? [:]
    try await connection.call({ client in
      var published = given
      if given.isEmpty, !noPublish {
        published = try await client.publishHere(volumeID, capability: volume.capability) ?? [:]
      }
      return try await client.node.nodeStageVolume(.with {
        $0.volumeID = volumeID
        $0.stagingTargetPath = stagingPath
        $0.volumeCapability = volume.capability
        $0.volumeContext = volumeContext
        $0.secrets = secrets
        $0.publishContext = published
      })
    }) { _ in "staged \(volumeID) at \(stagingPath)" }
  }
}

struct CSIPublish: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "publish", abstract: "NodePublishVolume.")
  @OptionGroup var connection: Connection
  @OptionGroup var volume: VolumeFlags
  @Argument var volumeID: String
  @Argument var stagingPath: String
  @Argument var targetPath: String
  @Flag var readonly = false
  func run() async throws {
    try await connection.call({
      try await $0.node.nodePublishVolume(.with {
        $0.volumeID = volumeID
        $0.stagingTargetPath = stagingPath
        $0.targetPath = targetPath
        $0.volumeCapability = volume.capability
        $0.readonly = readonly
      })
    }) { _ in "published \(volumeID) at \(targetPath)" }
  }
}

struct CSIUnstage: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "unstage", abstract: "NodeUnstageVolume.")
  @OptionGroup var connection: Connection
  @Argument var volumeID: String
  @Argument var stagingPath: String
  @Flag(help: "Leave the volume published to this node (by default a plugin that also serves a publishing controller unpublishes it after the unstage, as the CO would).")
  var keepPublished = false
  func run() async throws {
    try await connection.call({ client in
      let response = try await client.node.nodeUnstageVolume(.with {
        $0.volumeID = volumeID
        $0.stagingTargetPath = stagingPath
      })
      if !keepPublished { try await client.unpublishHere(volumeID) }
      return response
    }) { _ in "unstaged \(volumeID)" }
  }
}

struct CSIUnpublish: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "unpublish", abstract: "NodeUnpublishVolume.")
  @OptionGroup var connection: Connection
  @Argument var volumeID: String
  @Argument var targetPath: String
  func run() async throws {
    try await connection.call({
      try await $0.node.nodeUnpublishVolume(.with {
        $0.volumeID = volumeID
        $0.targetPath = targetPath
      })
    }) { _ in "unpublished \(volumeID)" }
  }
}

struct CSINodeExpand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "node-expand", abstract: "NodeExpandVolume.")
  @OptionGroup var connection: Connection
  @Argument var volumeID: String
  @Argument var volumePath: String
  @Option(help: "The size the node must see, in bytes (capacity_range.required_bytes).") var bytes: Int64 = 0
  func run() async throws {
    try await connection.call({
      try await $0.node.nodeExpandVolume(.with {
        $0.volumeID = volumeID
        $0.volumePath = volumePath
        if bytes > 0 { $0.capacityRange.requiredBytes = bytes }
      })
    }) { "capacity: \($0.capacityBytes) bytes" }
  }
}

/// Parses repeated `KEY=VALUE` options into a map; a malformed or repeated key is a usage error.
/// A secrets file: one KEY=VALUE a line; blank lines and `#` comments are skipped.
/// An error names the line, never its text.
func readSecrets(_ path: String) throws -> [String: String] {
  var out: [String: String] = [:]
  for (n, raw) in try readSmallFile(path).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
    let line = raw.trimmingWhitespace()
    if line.isEmpty || line.hasPrefix("#") { continue }
    guard let eq = line.firstIndex(of: "="), eq != line.startIndex else {
      throw ValidationError("--secrets-file \(path): line \(n + 1) is not KEY=VALUE")
    }
    out[String(line[..<eq])] = String(line[line.index(after: eq)...])
  }
  return out
}

func keyValues(_ items: [String], option: String) throws -> [String: String] {
  var out: [String: String] = [:]
  for item in items {
    guard let eq = item.firstIndex(of: "="), eq != item.startIndex else {
      throw ValidationError("\(option) \(item.debugDescription) is not KEY=VALUE")
    }
    let key = String(item[..<eq])
    guard out[key] == nil else { throw ValidationError("\(option) names \(key) twice") }
    out[key] = String(item[item.index(after: eq)...])
  }
  return out
}
