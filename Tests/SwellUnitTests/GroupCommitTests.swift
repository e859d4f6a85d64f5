#if canImport(Glibc)
  import Glibc
#endif
import Synchronization
import Testing
import SwellHost

/// ``DirectorySync``: every caller is answered only after an fsync that started after it asked,
/// and callers that arrive while one runs share the next.
@Suite struct GroupCommitTests {
  /// A stand-in for fsync that records when each call started and ended, and takes `duration`.
  final class Recorder: Sendable {
    let calls = Mutex<[(start: ContinuousClock.Instant, end: ContinuousClock.Instant)]>([])
    let failNext = Mutex(false)
    let duration: Duration
    init(duration: Duration) { self.duration = duration }

    func sync(_ path: String) throws {
      let start = ContinuousClock.now
      usleep(useconds_t(duration.components.attoseconds / 1_000_000_000_000))
      calls.withLock { $0.append((start, .now)) }
      if failNext.withLock({ let f = $0; $0 = false; return f }) {
        throw SystemCallError("fsync", path, errno: 5)
      }
    }
  }

  final class Answers: Sendable {
    let list = Mutex<[(asked: ContinuousClock.Instant, answered: ContinuousClock.Instant)]>([])
  }

  @Test func aLoneCallerGetsItsOwnFsync() async throws {
    let recorder = Recorder(duration: .milliseconds(1))
    let sync = DirectorySync(path: "/x", sync: recorder.sync)
    for _ in 0..<3 { try await sync.commit() }
    #expect(recorder.calls.withLock { $0.count } == 3)
  }

  @Test func concurrentCallersShareFsyncsAndEachIsCoveredByOneThatStartedAfterIt() async throws {
    let recorder = Recorder(duration: .milliseconds(20))
    let sync = DirectorySync(path: "/x", sync: recorder.sync)
    let answers = Answers()
    try await withThrowingTaskGroup(of: Void.self) { group in
      for i in 0..<40 {
        group.addTask {
          try await Task.sleep(for: .milliseconds(i % 8))
          let asked = ContinuousClock.now
          try await sync.commit()
          answers.list.withLock { $0.append((asked, .now)) }
        }
      }
      try await group.waitForAll()
    }
    let calls = recorder.calls.withLock { $0 }
    #expect(calls.count < 10, "40 callers within 8 ms need a few shared fsyncs, not \(calls.count)")
    // Never two fsyncs at once.
    for (a, b) in zip(calls, calls.dropFirst()) { #expect(a.end <= b.start) }
    for answer in answers.list.withLock({ $0 }) {
      let covered = calls.contains { $0.start >= answer.asked && $0.end <= answer.answered }
      #expect(covered, "a caller was answered without an fsync that began after it asked")
    }
  }

  @Test func aFailedFsyncFailsTheCallersItCoveredAndTheNextOneRecovers() async throws {
    let recorder = Recorder(duration: .milliseconds(1))
    recorder.failNext.withLock { $0 = true }
    let sync = DirectorySync(path: "/x", sync: recorder.sync)
    await #expect(throws: SystemCallError.self) { try await sync.commit() }
    try await sync.commit()
  }
}
