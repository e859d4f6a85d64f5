import SwellKube

/// An auto-grow policy: when a volume's free space or free inodes fall under a threshold, raise the
/// claim's request by a step, up to a maximum, at most once per cooldown.
///
/// It is read from annotations `autogrow.swell.dev/<key>` on the StorageClass, each overridable by the
/// same annotation on the PVC. Annotations, not class parameters: parameters go to the plugin, which
/// refuses keys it does not know.
public struct AutoGrowPolicy: Sendable, Equatable {
  /// A threshold or a step: a share of the volume's size, or an absolute amount.
  public enum Amount: Sendable, Equatable {
    case percent(Double)
    case absolute(Int64)

    /// The amount for a volume whose total is `total`.
    public func of(_ total: Int64) -> Int64 {
      switch self {
      case .percent(let p): return Int64((Double(total) * p / 100).rounded(.up))
      case .absolute(let n): return n
      }
    }
  }

  public static let prefix = "autogrow.swell.dev/"
  public static let keys = ["enabled", "threshold", "inodes-threshold", "increase", "min-step", "max", "cooldown"]

  /// Grow when free bytes fall under this.
  public var threshold: Amount = .percent(10)
  /// Grow when free inodes fall under this.
  public var inodesThreshold: Amount = .percent(5)
  /// How much to add each time, never less than `minimumStep`.
  public var increase: Amount = .percent(20)
  public var minimumStep: Int64 = 1 << 30
  /// The largest size auto-grow asks for. Required: a policy without a ceiling is refused.
  public var maximum: Int64
  /// The least time between two raises of one claim's request. One growth in flight per claim already
  /// keeps raises apart; a cooldown spaces them further.
  public var cooldown: Duration = .zero

  public init(maximum: Int64) { self.maximum = maximum }

  /// One problem with one annotation, to be reported as an Event and otherwise ignored.
  public struct Problem: Sendable, Equatable, CustomStringConvertible {
    public let key: String
    public let value: String
    public let reason: String
    public var description: String { "\(AutoGrowPolicy.prefix)\(key)=\(value.debugDescription): \(reason)" }
  }

  /// The policy for a claim, from its class's annotations overridden by its own. Returns nil when
  /// auto-grow is not enabled, and the problems found; a policy with problems is not used.
  public static func resolve(classAnnotations: [String: String], claimAnnotations: [String: String])
    -> (policy: AutoGrowPolicy?, problems: [Problem])
  {
    var settings: [String: String] = [:]
    for source in [classAnnotations, claimAnnotations] {
      for (key, value) in source where key.hasPrefix(prefix) { settings[String(key.dropFirst(prefix.count))] = value }
    }
    var problems: [Problem] = []
    for key in settings.keys.sorted() where !keys.contains(key) {
      problems.append(Problem(key: key, value: settings[key]!, reason: "unknown setting"))
    }
    guard let enabled = settings["enabled"] else { return (nil, problems) }
    switch enabled.lowercased() {
    case "true": break
    case "false": return (nil, problems)
    default:
      problems.append(Problem(key: "enabled", value: enabled, reason: "must be true or false"))
      return (nil, problems)
    }
    guard let maxText = settings["max"] else {
      problems.append(Problem(key: "max", value: "", reason: "is required when auto-grow is enabled"))
      return (nil, problems)
    }
    var policy = AutoGrowPolicy(maximum: 0)
    func bytes(_ key: String, _ text: String) -> Int64? {
      guard let value = try? Quantity.parse(text), value > 0 else {
        problems.append(Problem(key: key, value: text, reason: "must be a positive quantity such as 10Gi"))
        return nil
      }
      return value
    }
    func amount(_ key: String) -> Amount? {
      guard let text = settings[key] else { return nil }
      if text.hasSuffix("%") {
        guard let p = Double(text.dropLast()), p > 0, p < 100 else {
          problems.append(Problem(key: key, value: text, reason: "a percentage must be above 0 and below 100"))
          return nil
        }
        return .percent(p)
      }
      return bytes(key, text).map { .absolute($0) }
    }
    if let max = bytes("max", maxText) { policy.maximum = max }
    if let t = amount("threshold") { policy.threshold = t }
    if let t = amount("inodes-threshold") {
      if case .absolute = t, let text = settings["inodes-threshold"], Int64(text) == nil {
        problems.append(Problem(key: "inodes-threshold", value: text, reason: "an inode count is a plain number"))
      } else {
        policy.inodesThreshold = t
      }
    }
    if let i = amount("increase") { policy.increase = i }
    if let text = settings["min-step"], let step = bytes("min-step", text) { policy.minimumStep = step }
    if let text = settings["cooldown"] {
      if let cooldown = parseDuration(text) {
        policy.cooldown = cooldown
      } else {
        problems.append(Problem(key: "cooldown", value: text, reason: "must be a duration such as 30s, 5m or 1h"))
      }
    }
    return problems.isEmpty ? (policy, []) : (nil, problems)
  }

  /// "90s", "5m", "1h", "1h30m": Go's duration syntax, for whole seconds, minutes and hours, and
  /// days ("7d"); nil for zero or anything above `maximum` seconds.
  static func parseDuration(_ text: String, maximum: Int64 = 86400) -> Duration? {
    var total: Int64 = 0
    var number = ""
    var sawUnit = false
    for c in text {
      if c.isASCII && c.isNumber {
        number.append(c)
        continue
      }
      guard let n = Int64(number), let unit: Int64 = ["s": 1, "m": 60, "h": 3600, "d": 86400][String(c)] else { return nil }
      let (part, overflow) = n.multipliedReportingOverflow(by: unit)
      guard !overflow, part <= maximum else { return nil }
      total += part
      number = ""
      sawUnit = true
    }
    guard number.isEmpty, sawUnit, total > 0, total <= maximum else { return nil }
    return .seconds(total)
  }

  /// Usage of a volume's filesystem, as NodeGetVolumeStats reports it.
  public struct Usage: Sendable, Equatable {
    public var totalBytes: Int64
    public var availableBytes: Int64
    public var totalInodes: Int64?
    public var freeInodes: Int64?

    public init(totalBytes: Int64, availableBytes: Int64, totalInodes: Int64? = nil, freeInodes: Int64? = nil) {
      self.totalBytes = totalBytes
      self.availableBytes = availableBytes
      self.totalInodes = totalInodes
      self.freeInodes = freeInodes
    }
  }

  /// Why a volume should grow now.
  public enum Reason: Sendable, Equatable {
    /// Free bytes are under the threshold (`floor` bytes).
    case space(floor: Int64)
    /// Free bytes are above the threshold, but the bytes expected to be used within the horizon
    /// would take them under it.
    case rate(floor: Int64, projected: Int64)
    /// Free inodes are under their threshold (`floor` inodes).
    case inodes(floor: Int64)
  }

  /// Why the volume should grow, or nil: free space or free inodes under their thresholds, or
  /// `projected` bytes (what the volume is expected to use more within the horizon) more than the
  /// free space above the threshold.
  public func reason(_ usage: Usage, projected: Double = 0) -> Reason? {
    let floor = threshold.of(usage.totalBytes)
    if usage.availableBytes < floor { return .space(floor: floor) }
    if projected > 0 && Double(usage.availableBytes - floor) < projected {
      return .rate(floor: floor, projected: Int64(projected.rounded(.up)))
    }
    if let total = usage.totalInodes, let free = usage.freeInodes, total > 0, free < inodesThreshold.of(total) {
      return .inodes(floor: inodesThreshold.of(total))
    }
    return nil
  }

  public enum Decision: Sendable, Equatable {
    /// Raise the request to this many bytes.
    case grow(to: Int64)
    /// Growth is needed but the request is already at the maximum.
    case capped
  }

  /// The next request for a volume whose request is `current`: `min(max, current + step)`, rounded up
  /// to whole MiB, never below `current`.
  public func nextRequest(current: Int64) -> Decision {
    guard current < maximum else { return .capped }
    let step = Swift.max(increase.of(current), minimumStep)
    let (sum, overflow) = current.addingReportingOverflow(step)
    let mib: Int64 = 1 << 20
    var target = overflow ? maximum : Swift.min(maximum, sum)
    if target % mib != 0 {
      let roundedUp = (target / mib + 1) * mib
      // Rounding must not cross the maximum; below it, round down instead (still above `current`).
      target = roundedUp <= maximum ? roundedUp : (target / mib) * mib
    }
    return target > current ? .grow(to: target) : .capped
  }
}
