import Logging
import Synchronization

/// Wakes a periodic loop early. Nudges that arrive while the loop is busy fold into one, so a
/// burst of changes costs one extra pass, not one per change.
public final class Nudge: Sendable {
  private struct State {
    var pending = false
    var waiter: CheckedContinuation<Void, Never>?
    var generation: UInt64 = 0
  }
  private let state = Mutex(State())

  public init() {}

  public func nudge() {
    let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
      if let w = s.waiter {
        s.waiter = nil
        return w
      }
      s.pending = true
      return nil
    }
    waiter?.resume()
  }

  /// Returns at the next nudge (at once if one came since the last wait), after `timeout`, or when
  /// the task is cancelled.
  public func wait(timeout: Duration) async {
    await withTaskCancellationHandler {
      await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let generation = state.withLock { s -> UInt64? in
          if s.pending {
            s.pending = false
            return nil
          }
          s.generation += 1
          s.waiter = continuation
          return s.generation
        }
        guard let generation else { return continuation.resume() }
        Task {
          try? await Task.sleep(for: timeout)
          let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            guard s.generation == generation, let w = s.waiter else { return nil }
            s.waiter = nil
            return w
          }
          waiter?.resume()
        }
      }
    } onCancel: {
      nudge()
    }
  }
}

/// A level-triggered loop: `pass`, then `between`, until the task is cancelled. A failed pass is
/// logged and the loop goes on; the next pass starts from the world as it is then.
func repeatPasses(
  _ what: String, logger: Logger, _ pass: () async throws -> Void, between: () async throws -> Void
) async throws {
  while true {
    do {
      try await pass()
    } catch is CancellationError {
      throw CancellationError()
    } catch {
      logger.warning("\(what) pass failed", metadata: ["error": "\(error)"])
    }
    try await between()
  }
}
