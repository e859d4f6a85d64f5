import Testing
@testable import SwellSidecar

struct AutoGrowPolicyTests {
  let gi: Int64 = 1 << 30
  let mi: Int64 = 1 << 20

  func resolve(_ cls: [String: String], _ claim: [String: String] = [:]) -> (AutoGrowPolicy?, [AutoGrowPolicy.Problem]) {
    let prefixed = { (m: [String: String]) in
      Dictionary(uniqueKeysWithValues: m.map { ("autogrow.swell.dev/\($0.key)", $0.value) })
    }
    let r = AutoGrowPolicy.resolve(classAnnotations: prefixed(cls), claimAnnotations: prefixed(claim))
    return (r.policy, r.problems)
  }

  @Test func offUnlessEnabled() {
    #expect(resolve([:]).0 == nil)
    #expect(resolve(["max": "10Gi"]).0 == nil)
    #expect(resolve(["enabled": "true", "max": "10Gi"], ["enabled": "false"]).0 == nil)
  }

  @Test func claimOverridesClass() throws {
    let (policy, problems) = resolve(
      ["enabled": "true", "max": "10Gi", "threshold": "15%", "increase": "2Gi"],
      ["max": "20Gi", "cooldown": "1m30s", "inodes-threshold": "1000", "min-step": "512Mi"])
    #expect(problems.isEmpty)
    let p = try #require(policy)
    #expect(p.maximum == 20 * gi)
    #expect(p.threshold == .percent(15))
    #expect(p.increase == .absolute(2 * gi))
    #expect(p.inodesThreshold == .absolute(1000))
    #expect(p.minimumStep == 512 * mi)
    #expect(p.cooldown == .seconds(90))
  }

  @Test(arguments: [
    (["enabled": "yes", "max": "1Gi"], "enabled"),
    (["enabled": "true"], "max"),
    (["enabled": "true", "max": "lots"], "max"),
    (["enabled": "true", "max": "1Gi", "threshold": "120%"], "threshold"),
    (["enabled": "true", "max": "1Gi", "threshold": "0%"], "threshold"),
    (["enabled": "true", "max": "1Gi", "increase": "-1Gi"], "increase"),
    (["enabled": "true", "max": "1Gi", "cooldown": "soon"], "cooldown"),
    (["enabled": "true", "max": "1Gi", "inodes-threshold": "1Ki"], "inodes-threshold"),
    (["enabled": "true", "max": "1Gi", "treshold": "10%"], "treshold"),
  ])
  func invalidValuesAreReportedAndThePolicyIgnored(settings: [String: String], key: String) {
    let (policy, problems) = resolve(settings)
    #expect(policy == nil)
    #expect(problems.map(\.key).contains(key), "\(problems)")
  }

  @Test func thresholdsOnBytesAndInodes() {
    var p = AutoGrowPolicy(maximum: 10 * gi)
    p.threshold = .percent(10)
    #expect(p.reason(.init(totalBytes: 1000, availableBytes: 100)) == nil)
    #expect(p.reason(.init(totalBytes: 1000, availableBytes: 99)) == .space(floor: 100))
    #expect(p.reason(.init(totalBytes: 1000, availableBytes: 500, totalInodes: 1000, freeInodes: 49)) != nil)
    #expect(p.reason(.init(totalBytes: 1000, availableBytes: 500, totalInodes: 1000, freeInodes: 50)) == nil)
    p.threshold = .absolute(200)
    #expect(p.reason(.init(totalBytes: 1000, availableBytes: 199)) != nil)
  }

  @Test func aFastFillGrowsBeforeTheThreshold() {
    let p = AutoGrowPolicy(maximum: 10 * gi)  // 10 % threshold
    let usage = AutoGrowPolicy.Usage(totalBytes: 1000, availableBytes: 400)
    #expect(p.reason(usage, projected: 10 * 30) == nil)  // 300 s of headroom
    #expect(p.reason(usage, projected: 20 * 30) == .rate(floor: 100, projected: 600))  // 15 s of headroom
    #expect(p.reason(usage) == nil)
  }

  @Test func stepIsTheLargerOfIncreaseAndMinimumAndStopsAtTheMaximum() {
    var p = AutoGrowPolicy(maximum: 5 * gi)
    p.increase = .percent(20)
    p.minimumStep = 256 * mi
    #expect(p.nextRequest(current: gi) == .grow(to: gi + 256 * mi))  // 20% of 1Gi < 256Mi
    #expect(p.nextRequest(current: 2 * gi) == .grow(to: 2 * gi + 410 * mi))  // 409.6Mi rounded up to whole MiB
    #expect(p.nextRequest(current: 9 * gi / 2) == .grow(to: 5 * gi))  // capped at the maximum
    #expect(p.nextRequest(current: 5 * gi) == .capped)
    #expect(p.nextRequest(current: 6 * gi) == .capped)  // never shrinks
  }

  @Test func roundingNeverCrossesTheMaximum() {
    var p = AutoGrowPolicy(maximum: 3 * gi + 5)
    p.increase = .absolute(gi)
    p.minimumStep = 1
    #expect(p.nextRequest(current: 2 * gi + 7) == .grow(to: 3 * gi))
  }

  @Test func aBurstCountsOnceAtItsSizeNotProjectedOverTheHorizon() {
    // One 2 s sample showing 130 MB more (XFS's reservation, a 16 MiB WAL segment or several) while
    // the database writes 0.5 MB/s: the old smoothed two-sample rate made it 1.95 GB in 30 s.
    var fill = FillRate(window: .seconds(30))
    let t0 = ContinuousClock.now
    var used: Int64 = 500_000_000
    for s in 0...60 {
      if s == 45 { used += 130_000_000 } else { used += 500_000 }
      fill.add(used: used, at: t0 + .seconds(s))
    }
    // The window now spans 30 s, and the burst is in it: 15 MB of steady writes and the 130 MB.
    #expect(fill.growth.over == .seconds(30))
    #expect(abs(fill.projected(over: .seconds(30)) - 145_000_000) < 1_000_000)
    // Past the window, the burst is gone from it.
    for s in 61...95 { used += 500_000; fill.add(used: used, at: t0 + .seconds(s)) }
    #expect(abs(fill.projected(over: .seconds(30)) - 15_000_000) < 1_000_000)
  }

  @Test func beforeAWholeWindowTheProjectionIsTheGrowthSoFar() {
    var fill = FillRate(window: .seconds(30))
    let t0 = ContinuousClock.now
    fill.add(used: 1000, at: t0)
    fill.add(used: 1000 + 64 << 20, at: t0 + .seconds(1))
    #expect(fill.projected(over: .seconds(30)) == Double(64 << 20))  // not 30 times it
    #expect(fill.bytesPerSecond == Double(64 << 20))
    fill.add(used: 500, at: t0 + .seconds(2))  // files deleted: no negative growth
    #expect(fill.growth.bytes == 0)
  }

  @Test func theReasonNamesTheThresholdOrTheRate() {
    var p = AutoGrowPolicy(maximum: 10 * gi)
    p.threshold = .percent(30)
    let usage = AutoGrowPolicy.Usage(totalBytes: 1000, availableBytes: 400)  // floor 300, 100 above it
    #expect(p.reason(usage, projected: 99) == nil)
    #expect(p.reason(usage, projected: 101) == .rate(floor: 300, projected: 101))
    #expect(p.reason(.init(totalBytes: 1000, availableBytes: 299)) == .space(floor: 300))
    #expect(p.reason(.init(totalBytes: 1000, availableBytes: 900, totalInodes: 100, freeInodes: 4)) == .inodes(floor: 5))
  }
}
