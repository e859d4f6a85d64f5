import Logging

/// What a worker loop drives: the Reconciler, or a test's stand-in.
protocol KeyWorker: Sendable {
  /// One step for a key; throws to be retried with backoff.
  func reconcile(_ key: String) async throws
  /// When the key's backoff ends, if it is in one and nothing but our own writes changed its object.
  func heldUntil(_ key: String) -> ContinuousClock.Instant?
  func hold(_ key: String, until: ContinuousClock.Instant)
  func release(_ key: String)
  func queueDepthChanged(_ depth: Int)
}

enum Workers {
  /// Takes keys from the queue until it shuts down. A failed key is held until its backoff ends and
  /// queued again at that same instant: the hold and the timer share one deadline, so the retry never
  /// finds its own hold still running. A key that comes out of the queue while held (an event for our
  /// own write, or a timer that woke early) is put back for the end of its hold, never dropped: a
  /// key whose object stays unchanged has no later event to bring it back.
  static func run(queue: WorkQueue, worker: some KeyWorker, logger: Logger) async {
    while let key = await queue.get() {
      if let until = worker.heldUntil(key) {
        queue.add(key, at: until)
        await queue.done(key)
        continue
      }
      do {
        try await worker.reconcile(key)
        worker.release(key)
        await queue.forget(key)
      } catch {
        let delay = await queue.nextDelay(for: key)
        let until = ContinuousClock.now + delay
        worker.hold(key, until: until)
        queue.add(key, at: until)
        logger.warning("reconcile failed; will retry", metadata: ["key": "\(key)", "error": "\(error)", "after": "\(delay)"])
      }
      await queue.done(key)
      worker.queueDepthChanged(await queue.depth)
    }
  }
}
