import Testing
@testable import SwellSidecar

/// Cron's rules as crontab(5) gives them, checked against instants computed with Python's calendar
/// module (Unix seconds, UTC). 2026-12-06 is a Sunday.
struct ScheduleTests {
  let sunday1907_30: Int64 = 1_796_584_050  // 2026-12-06T19:07:30Z
  let sunday1915: Int64 = 1_796_584_500  // 2026-12-06T19:15:00Z
  let sunday1900: Int64 = 1_796_583_600  // 2026-12-06T19:00:00Z

  func cron(_ text: String) throws -> Schedule { try Schedule(parsing: text) }

  @Test func stepsWithinAnHour() throws {
    let s = try cron("*/15 * * * *")
    #expect(s.next(after: sunday1907_30) == sunday1915)
    #expect(s.next(after: sunday1915) == sunday1915 + 900, "strictly after")
    #expect(s.previous(atOrBefore: sunday1915) == sunday1915)
    #expect(s.previous(atOrBefore: sunday1915 - 1) == sunday1900)
    // `5/20`: from minute 5 to the end of the hour, every 20.
    let offset = try cron("5/20 * * * *")
    #expect(offset.next(after: sunday1900) == sunday1900 + 5 * 60)
    #expect(offset.next(after: sunday1900 + 5 * 60) == sunday1900 + 25 * 60)
    #expect(offset.next(after: sunday1900 + 45 * 60) == sunday1900 + 65 * 60)
  }

  @Test func weekdaysSkipTheWeekend() throws {
    let s = try cron("0 9 * * 1-5")
    #expect(s.next(after: 1_796_378_400) == 1_796_634_000, "Friday 10:00 to Monday 09:00")
    #expect(s.previous(atOrBefore: 1_796_558_400) == 1_796_374_800, "Sunday noon back to Friday 09:00")
    #expect(try cron("0 0 * * 7").next(after: sunday1907_30) == 1_797_120_000, "7 is Sunday too")
    #expect(try cron("@weekly").next(after: sunday1907_30) == 1_797_120_000)
  }

  @Test func restrictedDayFieldsMatchEither() throws {
    // The 13th, or any Friday: crontab(5)'s rule when both day fields are restricted.
    let s = try cron("0 0 13 * 5")
    #expect(s.next(after: 1_796_515_200) == 1_796_947_200, "Friday the 11th")
    #expect(s.next(after: 1_796_947_200) == 1_797_120_000, "Sunday the 13th")
  }

  @Test func rareAndImpossibleDates() throws {
    #expect(try cron("30 2 29 2 *").next(after: 1_772_323_200) == 1_835_404_200, "2028-02-29T02:30Z")
    #expect(try cron("0 0 30 2 *").next(after: sunday1900) == nil)
    #expect(try cron("0 0 30 2 *").previous(atOrBefore: sunday1900) == nil)
    #expect(try cron("@yearly").next(after: sunday1900) == 1_798_761_600, "2027-01-01")
    #expect(try cron("@hourly").next(after: sunday1907_30) == 1_796_587_200)
  }

  @Test func everyIsAlignedToTheEpoch() throws {
    let s = try cron("@every 20s")
    #expect(s.next(after: 1000) == 1020)
    #expect(s.previous(atOrBefore: 1019) == 1000)
    #expect(s.previous(atOrBefore: 1020) == 1020)
    #expect(s.slots(after: 1000, through: 1100) == 5)
    #expect(try cron("@every 1h30m").next(after: 0) == 5400)
    #expect(throws: Schedule.Invalid.self) { try cron("@every 5s") }
    #expect(throws: Schedule.Invalid.self) { try cron("@every soon") }
  }

  @Test func refusesWhatCronRefuses() {
    for text in ["60 * * * *", "* * * *", "* * * * * *", "*/0 * * * *", "5-1 * * * *", "* 24 * * *", "* * 0 * *",
                 "* * * 13 *", "* * * * 8", "@sometimes", "a * * * *", ""] {
      #expect(throws: Schedule.Invalid.self, "\(text)") { try cron(text) }
    }
  }

  @Test func timestamps() {
    #expect(Schedule.rfc3339(sunday1907_30) == "2026-12-06T19:07:30Z")
    #expect(Schedule.parseRFC3339("2026-12-06T19:07:30Z") == sunday1907_30)
    #expect(Schedule.parseRFC3339("yesterday") == nil)
  }
}

struct SnapshotSchedulePolicyTests {
  func resolve(_ cls: [String: String], _ claim: [String: String] = [:])
    -> (SnapshotSchedulePolicy?, [SnapshotSchedulePolicy.Problem])
  {
    let prefixed = { (m: [String: String]) in
      Dictionary(uniqueKeysWithValues: m.map { ("snapshot.swell.dev/\($0.key)", $0.value) })
    }
    let r = SnapshotSchedulePolicy.resolve(classAnnotations: prefixed(cls), claimAnnotations: prefixed(claim))
    return (r.policy, r.problems)
  }

  @Test func claimOverridesClassAndNoneTurnsItOff() throws {
    #expect(resolve([:]).0 == nil)
    let (p, problems) = resolve(["schedule": "@daily", "keep": "3", "class": "snaps"], ["schedule": "0 * * * *", "max-age": "2d"])
    #expect(problems.isEmpty)
    let policy = try #require(p)
    #expect(policy.schedule.text == "0 * * * *")
    #expect(policy.keep == 3 && policy.maxAge == 2 * 86400 && policy.snapshotClass == "snaps")
    #expect(resolve(["schedule": "@daily"], ["schedule": "none"]).0 == nil)
    #expect(resolve(["schedule": "@daily"]).0?.keep == 7, "keeps a week of dailies unless told")
  }

  @Test func theSchedulersOwnAnnotationsAreNotSettings() {
    let (p, problems) = resolve(["schedule": "@hourly"], ["last-snapshot": "db-20261206-190000", "next-snapshot-at": "x"])
    #expect(p != nil && problems.isEmpty)
  }

  @Test func problemsDisableThePolicy() {
    for (key, value) in [("keep", "0"), ("keep", "many"), ("max-age", "forever"), ("class", "Not_A_Name"), ("color", "red"),
                         ("schedule", "61 * * * *")] {
      var settings = ["schedule": "@hourly"]
      settings[key] = value
      let (p, problems) = resolve(settings)
      #expect(p == nil, "\(key)=\(value)")
      #expect(problems.map(\.key) == [key])
    }
  }

  @Test func namesCarryTheSlotAndFitTheirLimits() {
    #expect(SnapshotSchedulePolicy.snapshotName(base: "db", slot: 1_796_584_500) == "db-20261206-191500")
    let long = String(repeating: "a", count: 250)
    let name = SnapshotSchedulePolicy.snapshotName(base: long, slot: 1_796_584_500)
    #expect(name.count == 253 && name.hasSuffix("-20261206-191500") && ObjectNames.isObjectName(name))
    let a = SnapshotSchedulePolicy.labelValue(String(repeating: "x", count: 60) + "-first")
    let b = SnapshotSchedulePolicy.labelValue(String(repeating: "x", count: 60) + "-other")
    #expect(a.count == 63 && b.count == 63 && a != b)
    #expect(SnapshotSchedulePolicy.labelValue("db") == "db")
  }

  @Test func retentionKeepsTheNewestAndTheLastGoodOne() throws {
    var policy = try #require(resolve(["schedule": "@hourly", "keep": "2"]).0)
    let t = SnapshotSchedulePolicy.Taken.init
    let all = [t("s1", 100, true), t("s4", 400, true), t("s2", 200, true), t("s3", 300, true)]
    #expect(Set(policy.expired(all, now: 500)) == ["s1", "s2"])
    // The two newest failed: the newest ready one stays beyond the count.
    let failing = [t("s1", 100, true), t("s2", 200, true), t("s3", 300, false), t("s4", 400, false)]
    #expect(policy.expired(failing, now: 500) == ["s1"])
    policy.keep = 10
    policy.maxAge = 250
    #expect(Set(policy.expired(all, now: 500)) == ["s1", "s2"], "older than 250 s")
    #expect(policy.expired([t("s1", 100, true)], now: 10_000).isEmpty, "never the newest ready one")
  }
}
