import Logging
import Subprocess

/// The outcome of one command that ran to completion.
public struct CommandOutput: Sendable {
  public var exitCode: Int32
  public var stdout: String
  public var stderr: String
}

/// A command that could not be started, ended on a signal, or exited non-zero.
///
/// Keeps the argv, the exit status and stderr, so that callers can classify the failure
/// (`blkid` exit 2 means "nothing found", `losetup` on a busy device, and so on).
public struct CommandError: Error, CustomStringConvertible, Sendable {
  public var argv: [String]
  /// The exit code, or nil when the command did not start or was killed.
  public var exitCode: Int32?
  public var stderr: String
  public var reason: String

  public init(argv: [String], exitCode: Int32?, stderr: String, reason: String) {
    self.argv = argv
    self.exitCode = exitCode
    self.stderr = stderr
    self.reason = reason
  }

  public var description: String {
    let status = exitCode.map { "exit \($0)" } ?? reason
    let err = stderr.trimmingWhitespace()
    return "\(argv.joined(separator: " ")): \(status)\(err.isEmpty ? "" : ": \(err)")"
  }
}

/// Runs commands as argv arrays, never through a shell.
///
/// A tool that is not installed throws FAILED_PRECONDITION naming it and its package (``Tools``).
///
/// Every command runs with `LC_ALL=C`, so that parsers see stable output, and is killed when
/// the calling task (an RPC) is cancelled.
public protocol Executor: Sendable {
  /// Runs `argv` and returns its output whatever the exit code; throws only when it cannot run.
  /// Each of `secrets` (a CHAP password in an argument) is shown as `***` wherever the command is
  /// described: the debug log, a ``CommandError``, and the stderr returned.
  func output(_ argv: [String], hiding secrets: [String]) async throws -> CommandOutput
}

extension Executor {
  public func output(_ argv: [String]) async throws -> CommandOutput {
    try await output(argv, hiding: [])
  }

  /// Runs `argv` and throws a ``CommandError`` unless it exits 0.
  @discardableResult
  public func run(_ argv: [String], hiding secrets: [String] = []) async throws -> CommandOutput {
    let out = try await output(argv, hiding: secrets)
    guard out.exitCode == 0 else {
      throw CommandError(argv: redact(argv, secrets), exitCode: out.exitCode, stderr: out.stderr, reason: "failed")
    }
    return out
  }
}

/// `argv` with every secret in it replaced by `***`.
public func redact(_ argv: [String], _ secrets: [String]) -> [String] {
  argv.map { redact($0, secrets) }
}

/// `text` with every occurrence of a (non-empty) secret replaced by `***`.
public func redact(_ text: String, _ secrets: [String]) -> String {
  var out = text
  for secret in secrets where !secret.isEmpty { out = out.replacing(secret, with: "***") }
  return out
}

/// The real executor, on swift-subprocess.
public struct SystemExecutor: Executor {
  private let logger: Logger

  public init(logger: Logger = Logger(label: "swell.exec")) {
    self.logger = logger
  }

  public func output(_ argv: [String], hiding secrets: [String]) async throws -> CommandOutput {
    precondition(!argv.isEmpty, "an empty argv")
    let shown = redact(argv, secrets)
    var options = PlatformOptions()
    // On cancellation: SIGTERM, then SIGKILL after half a second.
    options.teardownSequence = [.send(signal: .terminate, allowedDurationToNextStep: .milliseconds(500))]
    logger.debug("exec", metadata: ["argv": "\(shown)"])
    let result: ExecutionResult<Void, StringOutput<UTF8>, StringOutput<UTF8>>
    do {
      result = try await Subprocess.run(
        .name(argv[0]),
        arguments: Arguments(Array(argv.dropFirst())),
        environment: .inherit.updating(["LC_ALL": "C", "LANG": "C"]),
        platformOptions: options,
        input: .none,
        output: .string(limit: 4 << 20),
        error: .string(limit: 1 << 20)
      )
    } catch let error as SubprocessError where error.code == .executableNotFound {
      throw Tools.missing(argv[0])
    } catch {
      throw CommandError(argv: shown, exitCode: nil, stderr: "", reason: redact("could not run: \(error)", secrets))
    }
    try Task.checkCancellation()
    switch result.terminationStatus {
    case .exited(let code):
      return CommandOutput(
        exitCode: code, stdout: result.standardOutput, stderr: redact(result.standardError, secrets))
    case .signaled(let signal):
      throw CommandError(
        argv: shown, exitCode: nil, stderr: redact(result.standardError, secrets),
        reason: "killed by signal \(signal)")
    }
  }
}

extension StringProtocol {
  /// The string without leading and trailing spaces, tabs and newlines.
  public func trimmingWhitespace() -> String {
    let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }
    guard let first = firstIndex(where: { !isSpace($0) }),
      let last = lastIndex(where: { !isSpace($0) })
    else { return "" }
    return String(self[first...last])
  }
}

extension Duration {
  /// The duration in milliseconds, as a Double.
  public var milliseconds: Double {
    Double(components.seconds) * 1000 + Double(components.attoseconds) / 1e15
  }
}
