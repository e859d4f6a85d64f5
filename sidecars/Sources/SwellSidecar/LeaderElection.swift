import Logging
import SwellKube

/// Leader election on a coordination.k8s.io/v1 Lease, as client-go does it: take the lease when it is
/// free or when its record has not changed for a whole lease duration (measured on our own clock, so
/// clock skew between replicas does not matter); renew it every retry period; give up leadership when
/// a renewal has not succeeded within the renew deadline.
public struct LeaderElection: Sendable {
  let client: KubeClient
  let namespace: String
  let name: String
  let identity: String
  let leaseDuration: Duration
  let renewDeadline: Duration
  let retryPeriod: Duration
  let logger: Logger

  public init(
    client: KubeClient, namespace: String, name: String, identity: String, logger: Logger,
    leaseDuration: Duration = .seconds(15), renewDeadline: Duration = .seconds(10), retryPeriod: Duration = .seconds(2)
  ) {
    self.client = client
    self.namespace = namespace
    self.name = name
    self.identity = identity
    self.leaseDuration = leaseDuration
    self.renewDeadline = renewDeadline
    self.retryPeriod = retryPeriod
    self.logger = logger
  }

  /// Waits until this replica holds the lease.
  public func acquire() async throws {
    var observed: (record: JSON, at: ContinuousClock.Instant)?
    while true {
      try Task.checkCancellation()
      do {
        if try await tryAcquireOrRenew(observed: &observed) {
          logger.notice("became leader", metadata: ["lease": "\(namespace)/\(name)", "identity": "\(identity)"])
          return
        }
      } catch {
        logger.warning("leader election failed", metadata: ["error": "\(error)"])
      }
      try await Task.sleep(for: retryPeriod)
    }
  }

  /// Renews the lease until a renewal fails for longer than the renew deadline; then returns, and
  /// the caller must stop acting as leader.
  public func holdLease() async throws {
    var observed: (record: JSON, at: ContinuousClock.Instant)?
    var lastRenewal = ContinuousClock.now
    while true {
      try await Task.sleep(for: retryPeriod)
      do {
        if try await tryAcquireOrRenew(observed: &observed) {
          lastRenewal = .now
          continue
        }
        logger.error("lost the lease to another replica", metadata: ["lease": "\(namespace)/\(name)"])
        return
      } catch is CancellationError {
        throw CancellationError()
      } catch {
        logger.warning("lease renewal failed", metadata: ["error": "\(error)"])
      }
      if ContinuousClock.now - lastRenewal > renewDeadline {
        logger.error("could not renew the lease within the deadline", metadata: ["lease": "\(namespace)/\(name)"])
        return
      }
    }
  }

  func tryAcquireOrRenew(observed: inout (record: JSON, at: ContinuousClock.Instant)?) async throws -> Bool {
    let now = Timestamp.nowMicro()
    let seconds = max(1, Int64(leaseDuration.components.seconds))
    guard let lease = try await client.get(.leases, namespace: namespace, name: name) else {
      let fresh: JSON = [
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": ["name": .string(name), "namespace": .string(namespace)],
        "spec": [
          "holderIdentity": .string(identity), "leaseDurationSeconds": .int(seconds), "acquireTime": .string(now),
          "renewTime": .string(now), "leaseTransitions": 0,
        ],
      ]
      do {
        try await client.create(.leases, namespace: namespace, fresh)
        return true
      } catch let error as KubeError where error.isAlreadyExists {
        return false
      }
    }
    let spec = lease["spec"] ?? .emptyObject
    let holder = spec["holderIdentity"]?.string ?? ""
    if observed?.record != spec { observed = (spec, .now) }
    let observedAt = observed?.at ?? .now
    let durationSeconds = spec["leaseDurationSeconds"]?.int ?? seconds
    let expired = ContinuousClock.now - observedAt > .seconds(durationSeconds)
    guard holder.isEmpty || holder == identity || expired else { return false }
    var next = lease
    if holder != identity {
      next[path: "spec", "acquireTime"] = .string(now)
      next[path: "spec", "leaseTransitions"] = .int((spec["leaseTransitions"]?.int ?? 0) + (holder.isEmpty ? 0 : 1))
    }
    next[path: "spec", "holderIdentity"] = .string(identity)
    next[path: "spec", "leaseDurationSeconds"] = .int(seconds)
    next[path: "spec", "renewTime"] = .string(now)
    do {
      let written = try await client.update(.leases, next)
      observed = (written["spec"] ?? .emptyObject, .now)
      return true
    } catch let error as KubeError where error.isConflict {
      return false
    }
  }
}
