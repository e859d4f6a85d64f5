/// How fast a volume fills, over a window as long as auto-grow's horizon: the growth of its used
/// bytes between the newest sample and the newest one at least a window old. Bursts count at their
/// real size: XFS reserves space ahead of a growing file and PostgreSQL makes a 16 MiB WAL segment
/// at once, so one sample a second apart can show 100 MB more used while a database writes 0.5 MB/s.
/// A rate from two close samples, projected over the horizon, multiplied such a burst thirty-fold
/// and raised claims at 59-77 % free against a 30 % threshold (issue 38). Until the samples span a
/// whole window, the projection is the growth seen so far, not extrapolated from it.
public struct FillRate: Sendable {
  public let window: Duration
  var samples: [(at: ContinuousClock.Instant, used: Int64)] = []

  public init(window: Duration) { self.window = window }

  public mutating func add(used: Int64, at now: ContinuousClock.Instant) {
    samples.append((now, used))
    // Keep one sample at least a window old (the anchor) and every one after it.
    while samples.count > 2 && now - samples[1].at >= window { samples.removeFirst() }
  }

  /// The samples' span, and the bytes used more at the newest than at the oldest (never negative).
  public var growth: (bytes: Int64, over: Duration) {
    guard let first = samples.first, let last = samples.last else { return (0, .zero) }
    return (max(0, last.used - first.used), last.at - first.at)
  }

  /// Bytes per second over the window (or the span so far).
  public var bytesPerSecond: Double {
    let (bytes, over) = growth
    let seconds = FillRate.seconds(over)
    return seconds > 0 ? Double(bytes) / seconds : 0
  }

  /// The bytes expected to be used more within `horizon`: the rate over a full window times the
  /// horizon, or, before the samples span a window, the growth seen so far.
  public func projected(over horizon: Duration) -> Double {
    let (bytes, over) = growth
    guard over >= window else { return Double(bytes) }
    return bytesPerSecond * FillRate.seconds(horizon)
  }

  static func seconds(_ d: Duration) -> Double {
    Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
  }
}
