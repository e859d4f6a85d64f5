import Logging
import Subprocess

/// tgtd in the foreground (`tgtd -f`), as the controller pod's first process runs it. tgtd catches
/// SIGTERM and does nothing with it, so a container running it bare is SIGKILLed at the end of its
/// grace period on every stop. ``run(until:)`` runs it as a child and, when told to stop, stops it
/// the way tgtd's own tools do (``TgtAdmin/shutDownDaemon(logger:)``).
public struct TgtDaemon: Sendable {
  public var controlPort: Int
  public var portal: String
  let exec: any Executor
  let logger: Logger

  public init(controlPort: Int, portal: String, exec: any Executor, logger: Logger) {
    self.controlPort = controlPort
    self.portal = portal
    self.exec = exec
    self.logger = logger
  }

  public var argv: [String] { ["tgtd", "-f", "-C", String(controlPort), "--iscsi", "portal=\(portal)"] }

  /// Runs tgtd until it exits; when `stopRequests` yields, shuts it down cleanly. Returns tgtd's
  /// exit status (128 + the signal when it was killed).
  public func run<S: AsyncSequence & Sendable>(until stopRequests: S) async throws -> Int32 where S.Element: Sendable {
    try await withThrowingTaskGroup(of: Int32?.self) { group in
      group.addTask {
        logger.notice("starting tgtd", metadata: ["argv": "\(argv)"])
        let result = try await Subprocess.run(
          .name(argv[0]), arguments: Arguments(Array(argv.dropFirst())), input: .none,
          output: .currentStandardOutput, error: .currentStandardError)
        switch result.terminationStatus {
        case .exited(let code): return code
        case .signaled(let signal): return 128 + signal
        }
      }
      group.addTask {
        for try await request in stopRequests {
          logger.notice("stopping tgtd", metadata: ["because": "\(request)"])
          do {
            try await TgtAdmin(exec: exec, controlPort: controlPort).shutDownDaemon(logger: logger)
          } catch where !Task.isCancelled {
            logger.error("tgtd did not stop cleanly", metadata: ["error": "\(error)"])
          } catch {
            // tgtd exited as told before tgtadm returned: the daemon task has finished the run.
          }
        }
        return nil
      }
      while let finished = try await group.next() {
        if let code = finished {
          group.cancelAll()
          logger.notice("tgtd exited", metadata: ["status": "\(code)"])
          return code
        }
      }
      return 1
    }
  }
}
