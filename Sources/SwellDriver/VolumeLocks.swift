import Synchronization
import SwellHost

/// One lock per volume ID. A call on a volume that is already busy fails at once with ABORTED,
/// as the CSI spec asks ("operation pending for volume"), so the caller retries instead of queueing.
public final class VolumeLocks: Sendable {
  private let busy = Mutex<Set<String>>([])

  public init() {}

  public func withLock<T: Sendable>(_ id: String, _ body: () async throws -> T) async throws -> T {
    let acquired = busy.withLock { $0.insert(id).inserted }
    guard acquired else {
      throw SwellError(.aborted, "an operation on volume \(id) is already in progress")
    }
    defer { _ = busy.withLock { $0.remove(id) } }
    return try await body()
  }

  /// Holds every key in `ids` for the call, or none: ABORTED naming the first busy one.
  public func withLocks<T: Sendable>(_ ids: [String], _ body: () async throws -> T) async throws -> T {
    let busyOne: String? = busy.withLock { held in
      if let taken = ids.first(where: held.contains) { return taken }
      held.formUnion(ids)
      return nil
    }
    if let busyOne { throw SwellError(.aborted, "an operation on \(busyOne) is already in progress") }
    defer { busy.withLock { $0.subtract(ids) } }
    return try await body()
  }
}
