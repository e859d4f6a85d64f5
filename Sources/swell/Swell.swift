import ArgumentParser
import Logging
import SwellDriver

@main
struct Swell: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "swell",
    abstract: "Swell: a CSI block-storage driver that grows volumes online.",
    subcommands: [PluginCommand.self, SidecarCommand.self, DemoCommand.self, CSICommand.self, TgtdCommand.self, VersionCommand.self])
}

struct VersionCommand: ParsableCommand {
  static let configuration = CommandConfiguration(commandName: "version", abstract: "Print the version and the CSI spec version.")

  func run() {
    print("swell \(SwellVersion.version) (CSI spec \(SwellVersion.csiSpec))")
  }
}

/// Sets up swift-log once for the process: lines on stderr at the given level, plain or JSON.
func bootstrapLogging(level: Logger.Level, json: Bool = false) -> Logger {
  LoggingSystem.bootstrap { label in
    if json {
      var handler = JSONLogHandler(label: label)
      handler.logLevel = level
      return handler
    }
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = level
    return handler
  }
  return Logger(label: "swell")
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
