import Glibc
import SwellHost
import SwellKube

/// When scheduled snapshots are taken: a five-field cron expression (minute, hour, day of month,
/// month, day of week), read in UTC, one of cron's `@hourly`-style names, or `@every <duration>`
/// (slots at whole multiples of the duration since the Unix epoch, as robfig/cron's `@every`, which
/// snapscheduler uses, but aligned so that every replica computes the same slots). Times are Unix
/// seconds.
public struct Schedule: Sendable, Equatable, CustomStringConvertible {
  public let text: String
  let minutes: Set<Int>
  let hours: Set<Int>
  let daysOfMonth: Set<Int>
  let months: Set<Int>
  let daysOfWeek: Set<Int>
  /// Cron's rule: when both day fields are restricted, a day matching either is taken.
  let dayOfMonthStar: Bool
  let dayOfWeekStar: Bool
  let every: Int64?

  public var description: String { text }

  static let names = [
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
  ]

  public struct Invalid: Error, Equatable, CustomStringConvertible {
    public let description: String
  }

  public init(parsing text: String) throws {
    let trimmed = text.trimmingWhitespace()
    self.text = trimmed
    if trimmed.hasPrefix("@every ") {
      let duration = String(trimmed.dropFirst("@every ".count)).trimmingWhitespace()
      guard let d = AutoGrowPolicy.parseDuration(duration, maximum: 366 * 86400), d >= .seconds(10) else {
        throw Invalid(description: "@every needs a duration of 10s to 366d, such as 30m or 6h")
      }
      every = d.components.seconds
      (minutes, hours, daysOfMonth, months, daysOfWeek) = ([], [], [], [], [])
      (dayOfMonthStar, dayOfWeekStar) = (true, true)
      return
    }
    every = nil
    let expression = Self.names[trimmed] ?? trimmed
    if expression.hasPrefix("@") { throw Invalid(description: "unknown schedule name \(trimmed)") }
    let fields = expression.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
    guard fields.count == 5 else {
      throw Invalid(description: "a cron schedule has five fields (minute hour day-of-month month day-of-week)")
    }
    minutes = try Self.field(fields[0], 0...59, "minute")
    hours = try Self.field(fields[1], 0...23, "hour")
    daysOfMonth = try Self.field(fields[2], 1...31, "day of month")
    months = try Self.field(fields[3], 1...12, "month")
    // 7 is Sunday too.
    daysOfWeek = Set(try Self.field(fields[4], 0...7, "day of week").map { $0 % 7 })
    dayOfMonthStar = fields[2].hasPrefix("*")
    dayOfWeekStar = fields[4].hasPrefix("*")
  }

  /// One field: `*`, `n`, `a-b`, each with an optional `/step`, joined by commas.
  static func field(_ text: String, _ range: ClosedRange<Int>, _ name: String) throws -> Set<Int> {
    var out = Set<Int>()
    for part in text.split(separator: ",", omittingEmptySubsequences: false) {
      let pieces = part.split(separator: "/", omittingEmptySubsequences: false)
      guard pieces.count <= 2 else { throw Invalid(description: "bad \(name) field \(text)") }
      var step = 1
      if pieces.count == 2 {
        guard let s = Int(pieces[1]), s > 0 else { throw Invalid(description: "bad step in the \(name) field \(text)") }
        step = s
      }
      var low = range.lowerBound
      var high = range.upperBound
      if pieces[0] != "*" {
        let bounds = pieces[0].split(separator: "-", omittingEmptySubsequences: false)
        guard (1...2).contains(bounds.count), let a = Int(bounds[0]), let b = Int(bounds.last!), range.contains(a),
          range.contains(b), a <= b
        else { throw Invalid(description: "the \(name) field \(text) is outside \(range.lowerBound)-\(range.upperBound)") }
        low = a
        // `a/step` runs from a to the end of the range, as in Vixie cron.
        high = bounds.count == 1 && pieces.count == 1 ? a : (bounds.count == 1 ? range.upperBound : b)
      }
      out.formUnion(stride(from: low, through: high, by: step))
    }
    return out
  }

  /// The first slot strictly after `t`, or nil when none comes within five years (`0 0 30 2 *`).
  public func next(after t: Int64) -> Int64? {
    if let every { return (Self.floorDiv(t, every) + 1) * every }
    var m = (Self.floorDiv(t, 60) + 1) * 60
    let limit = t + 5 * 366 * 86400
    while m <= limit {
      let p = Self.parts(m)
      if !months.contains(Int(p.tm_mon) + 1) {
        m = Self.time(year: p.tm_year, month: p.tm_mon + 1, day: 1)
      } else if !dayMatches(p) {
        m = Self.time(year: p.tm_year, month: p.tm_mon, day: p.tm_mday + 1)
      } else if !hours.contains(Int(p.tm_hour)) {
        m = Self.time(year: p.tm_year, month: p.tm_mon, day: p.tm_mday, hour: p.tm_hour + 1)
      } else if !minutes.contains(Int(p.tm_min)) {
        m += 60
      } else {
        return m
      }
    }
    return nil
  }

  /// The last slot at or before `t`, or nil when none came within five years.
  public func previous(atOrBefore t: Int64) -> Int64? {
    if let every { return Self.floorDiv(t, every) * every }
    var m = Self.floorDiv(t, 60) * 60
    let limit = t - 5 * 366 * 86400
    while m >= limit {
      let p = Self.parts(m)
      if !months.contains(Int(p.tm_mon) + 1) {
        m = Self.time(year: p.tm_year, month: p.tm_mon, day: 1) - 60
      } else if !dayMatches(p) {
        m = Self.time(year: p.tm_year, month: p.tm_mon, day: p.tm_mday) - 60
      } else if !hours.contains(Int(p.tm_hour)) {
        m = Self.time(year: p.tm_year, month: p.tm_mon, day: p.tm_mday, hour: p.tm_hour) - 60
      } else if !minutes.contains(Int(p.tm_min)) {
        m -= 60
      } else {
        return m
      }
    }
    return nil
  }

  /// How many slots fall in (from, to], counting at most `limit`.
  public func slots(after from: Int64, through to: Int64, limit: Int = 1000) -> Int {
    var count = 0
    var t = from
    while count < limit, let n = next(after: t), n <= to {
      count += 1
      t = n
    }
    return count
  }

  func dayMatches(_ p: tm) -> Bool {
    let dom = daysOfMonth.contains(Int(p.tm_mday))
    let dow = daysOfWeek.contains(Int(p.tm_wday))
    if dayOfMonthStar || dayOfWeekStar { return dom && dow }
    return dom || dow
  }

  static func floorDiv(_ a: Int64, _ b: Int64) -> Int64 { a >= 0 ? a / b : -((-a + b - 1) / b) }

  static func parts(_ t: Int64) -> tm {
    var seconds = time_t(t)
    var p = tm()
    gmtime_r(&seconds, &p)
    return p
  }

  /// timegm normalises out-of-range fields: day 32 is the next month's first.
  static func time(year: Int32, month: Int32, day: Int32, hour: Int32 = 0) -> Int64 {
    var p = tm()
    p.tm_year = year
    p.tm_mon = month
    p.tm_mday = day
    p.tm_hour = hour
    return Int64(timegm(&p))
  }

  /// `2026-12-06T19:00:00Z`.
  public static func rfc3339(_ t: Int64) -> String {
    let p = parts(t)
    func pad(_ v: Int32, _ w: Int) -> String { String(repeating: "0", count: max(0, w - String(v).count)) + String(v) }
    return "\(pad(p.tm_year + 1900, 4))-\(pad(p.tm_mon + 1, 2))-\(pad(p.tm_mday, 2))T"
      + "\(pad(p.tm_hour, 2)):\(pad(p.tm_min, 2)):\(pad(p.tm_sec, 2))Z"
  }

  /// Reads `2026-12-06T19:00:00Z` (what `rfc3339` writes, and the API server's timestamps).
  public static func parseRFC3339(_ text: String) -> Int64? {
    let digits = text.split(whereSeparator: { !$0.isNumber }).compactMap { Int32($0) }
    guard digits.count >= 6, text.hasSuffix("Z") else { return nil }
    var p = tm()
    p.tm_year = digits[0] - 1900
    p.tm_mon = digits[1] - 1
    p.tm_mday = digits[2]
    p.tm_hour = digits[3]
    p.tm_min = digits[4]
    p.tm_sec = digits[5]
    return Int64(timegm(&p))
  }
}

/// A claim's snapshot schedule, from annotations `snapshot.swell.dev/<key>` on its StorageClass,
/// each overridable on the claim, as auto-grow's are. Claims labelled `snapshot.swell.dev/group`
/// with one value in one namespace are snapshotted together, as one VolumeGroupSnapshot.
public struct SnapshotSchedulePolicy: Sendable, Equatable {
  public static let prefix = "snapshot.swell.dev/"
  public static let keys = ["schedule", "keep", "max-age", "class", "group-class"]
  /// Written by the scheduler on the claim: what `kubectl describe pvc` shows.
  public static let lastAnnotation = prefix + "last-snapshot"
  public static let nextAnnotation = prefix + "next-snapshot-at"
  /// The label that puts claims in one group, and names the group.
  public static let groupLabel = prefix + "group"
  /// On each scheduled VolumeSnapshot: the claim's name (as a label value), and the slot it stands for.
  public static let claimLabel = prefix + "claim"
  public static let slotAnnotation = prefix + "slot"
  public static let scheduleAnnotation = prefix + "schedule"

  public var schedule: Schedule
  /// The newest this many are kept.
  public var keep = 7
  /// Older ones are deleted, but never the newest ready one.
  public var maxAge: Int64?
  public var snapshotClass: String?
  public var groupClass: String?

  public struct Problem: Sendable, Equatable, CustomStringConvertible {
    public let key: String
    public let value: String
    public let reason: String
    public var description: String { "\(SnapshotSchedulePolicy.prefix)\(key)=\(value.debugDescription): \(reason)" }
  }

  /// The policy for a claim, or nil when it has no schedule (or `none`), and the problems found; a
  /// policy with problems is not used.
  public static func resolve(classAnnotations: [String: String], claimAnnotations: [String: String])
    -> (policy: SnapshotSchedulePolicy?, problems: [Problem])
  {
    var settings: [String: String] = [:]
    for source in [classAnnotations, claimAnnotations] {
      for (key, value) in source where key.hasPrefix(prefix) { settings[String(key.dropFirst(prefix.count))] = value }
    }
    settings["last-snapshot"] = nil
    settings["next-snapshot-at"] = nil
    var problems = settings.keys.sorted().filter { !keys.contains($0) }.map {
      Problem(key: $0, value: settings[$0]!, reason: "unknown setting")
    }
    guard let text = settings["schedule"], !text.isEmpty, text != "none" else { return (nil, problems) }
    let schedule: Schedule
    do {
      schedule = try Schedule(parsing: text)
    } catch {
      problems.append(Problem(key: "schedule", value: text, reason: "\(error)"))
      return (nil, problems)
    }
    var policy = SnapshotSchedulePolicy(schedule: schedule)
    if let text = settings["keep"] {
      if let n = Int(text), (1...1000).contains(n) {
        policy.keep = n
      } else {
        problems.append(Problem(key: "keep", value: text, reason: "must be a count from 1 to 1000"))
      }
    }
    if let text = settings["max-age"] {
      if let age = AutoGrowPolicy.parseDuration(text, maximum: 3660 * 86400) {
        policy.maxAge = age.components.seconds
      } else {
        problems.append(Problem(key: "max-age", value: text, reason: "must be a duration such as 36h or 7d"))
      }
    }
    for (key, keyPath) in [("class", \SnapshotSchedulePolicy.snapshotClass), ("group-class", \.groupClass)] {
      guard let name = settings[key] else { continue }
      if ObjectNames.isObjectName(name) {
        policy[keyPath: keyPath] = name
      } else {
        problems.append(Problem(key: key, value: name, reason: "is not an object name"))
      }
    }
    return problems.isEmpty ? (policy, []) : (nil, problems)
  }

  /// A scheduled snapshot's name: `<claim or group>-<yyyymmdd>-<hhmmss>` of its slot. Deterministic,
  /// so two replicas (or a retry) asking for one slot ask for one object. A base too long for the
  /// 253 characters of a name is cut and given a hash of the whole.
  public static func snapshotName(base: String, slot: Int64) -> String {
    let stamp = rfc3339Compact(slot)
    let room = 253 - stamp.count - 1
    return (base.count <= room ? base : ObjectNames.shortened(base, to: room)) + "-" + stamp
  }

  /// A name as a label value (63 characters at most).
  public static func labelValue(_ name: String) -> String { name.count <= 63 ? name : ObjectNames.shortened(name, to: 63) }

  static func rfc3339Compact(_ t: Int64) -> String {
    Schedule.rfc3339(t).filter { $0 != ":" && $0 != "-" && $0 != "Z" }.replacing("T", with: "-")
  }

  /// One scheduled snapshot, as retention sees it.
  public struct Taken: Sendable, Equatable {
    public var name: String
    public var slot: Int64
    public var ready: Bool
    public init(name: String, slot: Int64, ready: Bool) {
      self.name = name
      self.slot = slot
      self.ready = ready
    }
  }

  /// The snapshots retention deletes: all but the newest `keep` by slot, and those older than the
  /// maximum age; never the newest ready one, so that a run of failures leaves the last good copy.
  public func expired(_ taken: [Taken], now: Int64) -> [String] {
    let newestFirst = taken.sorted { ($0.slot, $0.name) > ($1.slot, $1.name) }
    let protected = newestFirst.first(where: \.ready)?.name
    return newestFirst.enumerated().filter { index, t in
      guard t.name != protected else { return false }
      if index >= keep { return true }
      if let maxAge, now - t.slot > maxAge { return true }
      return false
    }.map(\.element.name)
  }
}

/// Object names: what the API server accepts, and long ones cut with a hash.
enum ObjectNames {
  /// A DNS subdomain (RFC 1123), as the API server requires of most names.
  static func isObjectName(_ s: String) -> Bool {
    guard (1...253).contains(s.count), let first = s.first, let last = s.last,
      first.isLowercaseAlphanumeric, last.isLowercaseAlphanumeric
    else { return false }
    return s.allSatisfy { $0.isLowercaseAlphanumeric || $0 == "-" || $0 == "." }
  }

  /// The first characters of `s` and an 8-hex-digit FNV-1a hash of all of it, `length` in all.
  static func shortened(_ s: String, to length: Int) -> String {
    var hash: UInt32 = 2_166_136_261
    for byte in s.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
    let hex = String(hash, radix: 16)
    let suffix = String(repeating: "0", count: 8 - hex.count) + hex
    var head = String(s.prefix(length - 9))
    while let last = head.last, !last.isLowercaseAlphanumeric { head.removeLast() }
    return head + "-" + suffix
  }
}

extension Character {
  var isLowercaseAlphanumeric: Bool { isASCII && (isNumber || isLowercase) }
}
