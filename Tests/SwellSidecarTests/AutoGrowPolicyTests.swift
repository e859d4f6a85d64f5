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
    #expect(!p.needsGrowth(.init(totalBytes: 1000, availableBytes: 100)))
    #expect(p.needsGrowth(.init(totalBytes: 1000, availableBytes: 99)))
    #expect(p.needsGrowth(.init(totalBytes: 1000, availableBytes: 500, totalInodes: 1000, freeInodes: 49)))
    #expect(!p.needsGrowth(.init(totalBytes: 1000, availableBytes: 500, totalInodes: 1000, freeInodes: 50)))
    p.threshold = .absolute(200)
    #expect(p.needsGrowth(.init(totalBytes: 1000, availableBytes: 199)))
  }

  @Test func aFastFillGrowsBeforeTheThreshold() {
    let p = AutoGrowPolicy(maximum: 10 * gi)  // 10 % threshold
    let usage = AutoGrowPolicy.Usage(totalBytes: 1000, availableBytes: 400)
    #expect(!p.needsGrowth(usage, bytesPerSecond: 10, horizon: .seconds(30)))  // 300 s of headroom
    #expect(p.needsGrowth(usage, bytesPerSecond: 20, horizon: .seconds(30)))  // 15 s of headroom
    #expect(!p.needsGrowth(usage, bytesPerSecond: 20, horizon: .zero))
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
}
