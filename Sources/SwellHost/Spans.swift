import Synchronization

/// Where one RPC's time goes: named steps and their durations, summed per name.
///
/// The RPC interceptor binds a recorder to the call's task (``Spans/recorder``) and logs the
/// summary in the call's log line (`spans=validate:0.012,lock:0.001,…`, milliseconds), which
/// `bench/bench.py` reads. Work handed to ``BlockingIO`` carries the recorder explicitly.
public final class SpanRecorder: Sendable {
  private let steps = Mutex<[(name: String, duration: Duration)]>([])

  public init() {}

  public func record(_ name: String, _ duration: Duration) {
    steps.withLock { list in
      if let i = list.firstIndex(where: { $0.name == name }) {
        list[i].duration += duration
      } else {
        list.append((name, duration))
      }
    }
  }

  /// `name:ms,name:ms` in the order the steps first ran; empty when nothing was recorded.
  public var summary: String {
    steps.withLock { list in
      list.map { "\($0.name):\(($0.duration / .microseconds(1)).rounded() / 1000)" }.joined(separator: ",")
    }
  }
}

public enum Spans {
  @TaskLocal public static var recorder: SpanRecorder?

  /// Times `body` as step `name` in `recorder` (the task's, by default).
  public static func measure<T>(_ name: String, in recorder: SpanRecorder? = Spans.recorder, _ body: () throws -> T) rethrows -> T {
    guard let recorder else { return try body() }
    let start = ContinuousClock.now
    defer { recorder.record(name, ContinuousClock.now - start) }
    return try body()
  }

  public static func measure<T>(
    _ name: String, in recorder: SpanRecorder? = Spans.recorder, _ body: () async throws -> T
  ) async rethrows -> T {
    guard let recorder else { return try await body() }
    let start = ContinuousClock.now
    defer { recorder.record(name, ContinuousClock.now - start) }
    return try await body()
  }
}
