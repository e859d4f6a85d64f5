import NIOPosix
import Synchronization

/// Where blocking system calls run: fsync, rename, statvfs, file copies, sysfs and mountinfo reads.
///
/// Swift's cooperative pool has one thread per core (two on a small node), and the gRPC event
/// loops and every other RPC share it. A call that waits on the disk there stalls them all; on
/// this pool it waits alone. The pool's size does not depend on the core count.
public enum BlockingIO {
  /// Threads for blocking work: enough for every RPC that can be in flight on a busy node to wait
  /// on the disk at once.
  public static let threads = 16

  static let pool: NIOThreadPool = {
    let pool = NIOThreadPool(numberOfThreads: threads)
    pool.start()
    return pool
  }()

  /// Runs `body` on the blocking pool and returns its result. The wait for a free thread is the
  /// call's `queue` span.
  public static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    guard let recorder = Spans.recorder else { return try await pool.runIfActive(body) }
    let asked = ContinuousClock.now
    return try await pool.runIfActive {
      recorder.record("queue", ContinuousClock.now - asked)
      return try body()
    }
  }
}

/// Group commit for one directory: callers that need their renames in `path` durable share fsyncs.
///
/// A caller is answered only after an fsync of the directory that *started after* it asked, so its
/// own rename is covered. While one fsync runs, every caller that arrives waits for the next one,
/// and that single fsync answers them all: under concurrency, N renames cost about two fsyncs
/// instead of N.
public final class DirectorySync: Sendable {
  public let path: String
  private let sync: @Sendable (String) throws -> Void

  private struct State {
    /// fsyncs started and finished so far; a caller needs one numbered above `started` when it asks.
    var started: UInt64 = 0
    var finished: UInt64 = 0
    var running = false
    var waiters: [(needs: UInt64, continuation: CheckedContinuation<Void, any Error>)] = []
  }
  private let state = Mutex(State())

  public init(path: String, sync: @escaping @Sendable (String) throws -> Void = fsyncDirectory) {
    self.path = path
    self.sync = sync
  }

  /// Returns once a directory fsync that began after this call has completed.
  public func commit() async throws {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
      let startNow = state.withLock { s -> UInt64? in
        s.waiters.append((s.started + 1, continuation))
        guard !s.running else { return nil }
        s.running = true
        s.started += 1
        return s.started
      }
      if let round = startNow { launch(round) }
    }
  }

  /// Runs fsync number `round` on the blocking pool, answers everyone it covers, and starts the next
  /// round for those who arrived while it ran.
  private func launch(_ round: UInt64) {
    Task {
      let result: Result<Void, any Error>
      do {
        try await BlockingIO.run { [sync, path] in try sync(path) }
        result = .success(())
      } catch {
        result = .failure(error)
      }
      let (done, next) = state.withLock { s -> ([CheckedContinuation<Void, any Error>], UInt64?) in
        s.finished = round
        let done = s.waiters.filter { $0.needs <= round }.map(\.continuation)
        s.waiters.removeAll { $0.needs <= round }
        guard !s.waiters.isEmpty else {
          s.running = false
          return (done, nil)
        }
        s.started += 1
        return (done, s.started)
      }
      for continuation in done { continuation.resume(with: result) }
      if let next { launch(next) }
    }
  }
}
