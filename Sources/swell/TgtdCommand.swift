import ArgumentParser
import Logging
import SwellHost
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// `swell tgtd`: the controller pod's tgtd container. tgtd ignores SIGTERM; this runs it as a child
/// and turns SIGTERM or SIGINT into tgtd's own clean shutdown, so a pod stop or a rollout takes
/// seconds instead of the whole grace period followed by SIGKILL.
struct TgtdCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "tgtd",
    abstract: "Run tgtd in the foreground; on SIGTERM, take it offline, drop its targets and stop it cleanly.")

  @Option(help: "The iSCSI portal tgtd listens on.")
  var portal = "0.0.0.0:3260"

  @Option(help: "tgtd's control port (its socket is /var/run/tgtd/socket.N); the plugin's --iscsi-tgt-control-port.")
  var controlPort = 0

  @Option(help: "trace, debug, info, notice, warning, error or critical.")
  var logLevel: Logger.Level = .info

  @Option(help: "text or json.")
  var logFormat = "text"

  func run() async throws {
    let logger = bootstrapLogging(level: logLevel, json: logFormat == "json")
    let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
    let daemon = TgtDaemon(controlPort: controlPort, portal: portal, exec: SystemExecutor(logger: logger), logger: logger)
    let status = try await daemon.run(until: signals)
    if status != 0 { throw ExitCode(status) }
  }
}
