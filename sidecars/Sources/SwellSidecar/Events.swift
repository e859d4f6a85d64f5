import Logging
import SwellKube

#if canImport(Glibc)
import Glibc
#endif

/// Posts core/v1 Events about PVCs and PVs, so that `kubectl describe` tells the story. Events are sent
/// in order by one task, and never hold up a reconcile; a failed post is logged and dropped.
///
/// Repeats are aggregated as client-go's event correlator does: the same type, reason and message
/// about the same object within ``EventRecorder/window`` of the first becomes a patch of the Event
/// already posted (`count` + 1, a new `lastTimestamp`), not a new Event. A retry loop that fails
/// every few seconds for an hour leaves one Event with a count, not a thousand.
public final class EventRecorder: Sendable {
  public enum Kind: String, Sendable { case normal = "Normal", warning = "Warning" }

  let client: KubeClient
  let component: String
  let instance: String
  let logger: Logger
  let stream: AsyncStream<JSON>
  let continuation: AsyncStream<JSON>.Continuation

  public init(client: KubeClient, component: String, instance: String, logger: Logger) {
    self.client = client
    self.component = component
    self.instance = instance
    self.logger = logger
    (stream, continuation) = AsyncStream.makeStream(of: JSON.self, bufferingPolicy: .bufferingNewest(1000))
  }

  /// How long after an Event was first posted a repeat still counts on it (client-go: 10 minutes).
  public static let window: Duration = .seconds(600)
  /// How many distinct Events are remembered for aggregation (client-go's LRU holds 4096).
  static let remembered = 4096

  /// An Event already posted: where it is, and its count so far.
  struct Posted {
    var name: String
    var namespace: String
    var count: Int64
    var first: ContinuousClock.Instant
    var used: UInt64
  }

  /// The correlator's key: the object, the kind of Event, and its words.
  static func key(_ event: JSON) -> String {
    let o = event["involvedObject"] ?? .null
    return [
      o["kind"]?.string, o["namespace"]?.string, o["name"]?.string, o["uid"]?.string, o["apiVersion"]?.string,
      event["type"]?.string, event["reason"]?.string, event["message"]?.string,
    ].map { $0 ?? "" }.joined(separator: "\u{1F}")
  }

  /// Sends queued events until the task is cancelled.
  public func run() async {
    var posted: [String: Posted] = [:]
    var tick: UInt64 = 0
    for await event in stream {
      tick += 1
      let key = Self.key(event)
      let reason = event["reason"]?.string ?? ""
      if var seen = posted[key], ContinuousClock.now - seen.first < Self.window {
        do {
          seen.count += 1
          let patch: JSON = ["count": .int(seen.count), "lastTimestamp": event["lastTimestamp"] ?? .null]
          try await client.patch(.events, namespace: seen.namespace, name: seen.name, patch)
          seen.used = tick
          posted[key] = seen
          continue
        } catch let error as KubeError where error.isNotFound {
          // Expired (the API server keeps Events for an hour by default): post it anew.
          posted[key] = nil
        } catch {
          logger.warning("event not recorded", metadata: ["reason": "\(reason)", "error": "\(error)"])
          continue
        }
      }
      do {
        let made = try await client.create(.events, namespace: event.namespace, event)
        posted[key] = Posted(
          name: made.name, namespace: made.namespace ?? event.namespace ?? "default", count: 1, first: .now, used: tick)
        if posted.count > Self.remembered, let oldest = posted.min(by: { $0.value.used < $1.value.used })?.key {
          posted[oldest] = nil
        }
      } catch {
        logger.warning("event not recorded", metadata: ["reason": "\(reason)", "error": "\(error)"])
      }
    }
  }

  public func finish() { continuation.finish() }

  public func record(_ object: JSON, _ kind: Kind, reason: String, message: String) {
    let now = Timestamp.now()
    // Cluster-scoped objects (PVs) have their events in the default namespace, as client-go does.
    let namespace = object.namespace ?? "default"
    let event: JSON = [
      "apiVersion": "v1", "kind": "Event",
      "metadata": ["name": .string("\(object.name).\(Timestamp.uniqueSuffix())"), "namespace": .string(namespace)],
      "involvedObject": [
        "apiVersion": .string(object["apiVersion"]?.string ?? "v1"), "kind": .string(object["kind"]?.string ?? ""),
        "name": .string(object.name), "namespace": object.namespace.map { .string($0) } ?? .null,
        "uid": .string(object.uid), "resourceVersion": .string(object.resourceVersion),
      ],
      "reason": .string(reason), "message": .string(message), "type": .string(kind.rawValue),
      "source": ["component": .string(component)],
      "firstTimestamp": .string(now), "lastTimestamp": .string(now), "count": 1,
      "reportingComponent": .string(component), "reportingInstance": .string(instance),
    ]
    logger.info(
      "event", metadata: ["object": "\(objectKey(object))", "reason": "\(reason)", "message": "\(message)"])
    continuation.yield(event)
  }
}

/// RFC 3339 timestamps as the API server writes them.
public enum Timestamp {
  /// Seconds precision: `2026-11-22T19:35:25Z`.
  public static func now() -> String { format(wallClock(), micros: false) }
  /// Microsecond precision, for a Lease's MicroTime fields: `2026-11-22T19:35:25.123456Z`.
  public static func nowMicro() -> String { format(wallClock(), micros: true) }

  static func wallClock() -> timespec {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts
  }

  static func format(_ ts: timespec, micros: Bool) -> String {
    var seconds = ts.tv_sec
    var parts = tm()
    gmtime_r(&seconds, &parts)
    func pad(_ v: Int32, _ width: Int) -> String {
      let s = String(v)
      return String(repeating: "0", count: max(0, width - s.count)) + s
    }
    var out = "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))"
    out += "T\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))"
    if micros { out += "." + pad(Int32(ts.tv_nsec / 1000), 6) }
    return out + "Z"
  }

  /// A hex suffix from the wall clock's nanoseconds, as client-go names events.
  static func uniqueSuffix() -> String {
    let ts = wallClock()
    let nanos = UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec) &+ UInt64.random(in: 0..<1000)
    return String(nanos, radix: 16)
  }
}
