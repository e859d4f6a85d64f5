/// A rate-limited work queue in the manner of client-go's: a key is queued at most once, is never
/// handed to two workers at the same time, and a key that keeps failing waits 1 s, 2 s, 4 s … up to
/// 5 minutes before its next try.
public actor WorkQueue {
  private var queue: [String] = []
  private var head = 0
  private var dirty: Set<String> = []
  private var processing: Set<String> = []
  private var failures: [String: Int] = [:]
  private var waiters: [CheckedContinuation<String?, Never>] = []
  private var shuttingDown = false
  let baseDelay: Duration
  let maxDelay: Duration

  public init(baseDelay: Duration = .seconds(1), maxDelay: Duration = .seconds(300)) {
    self.baseDelay = baseDelay
    self.maxDelay = maxDelay
  }

  /// Keys waiting to be handed out.
  public var depth: Int { queue.count - head }

  public func add(_ key: String) {
    guard !shuttingDown, !dirty.contains(key) else { return }
    dirty.insert(key)
    if processing.contains(key) { return }
    if !waiters.isEmpty {
      processing.insert(key)
      dirty.remove(key)
      waiters.removeFirst().resume(returning: key)
      return
    }
    queue.append(key)
  }

  /// Adds the key once `deadline` has passed.
  public nonisolated func add(_ key: String, at deadline: ContinuousClock.Instant) {
    Task {
      try? await Task.sleep(until: deadline, clock: .continuous)
      await self.add(key)
    }
  }

  /// The delay for the key's next failure: base × 2^failures, capped.
  public func nextDelay(for key: String) -> Duration {
    let n = failures[key, default: 0]
    failures[key] = n + 1
    if n >= 20 { return maxDelay }
    return min(baseDelay * (1 << n), maxDelay)
  }

  /// Clears the key's failure count after a success.
  public func forget(_ key: String) { failures[key] = nil }

  public func failureCount(_ key: String) -> Int { failures[key, default: 0] }

  /// The next key to work on, waiting for one; nil once the queue shuts down.
  public func get() async -> String? {
    if head < queue.count {
      let key = queue[head]
      head += 1
      if head > 1024 && head * 2 > queue.count {
        queue.removeFirst(head)
        head = 0
      }
      dirty.remove(key)
      processing.insert(key)
      return key
    }
    if shuttingDown { return nil }
    return await withCheckedContinuation { waiters.append($0) }
  }

  /// Marks a key finished; if it was added again meanwhile, it goes back in the queue.
  public func done(_ key: String) {
    processing.remove(key)
    if dirty.contains(key) {
      dirty.remove(key)
      add(key)
    }
  }

  public func shutDown() {
    shuttingDown = true
    for waiter in waiters { waiter.resume(returning: nil) }
    waiters.removeAll()
  }
}
