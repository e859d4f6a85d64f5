import Testing
import SwellHost
@testable import SwellStorage

@Suite struct CapacityTests {
  let mib = Capacity.miB
  let max = 16 * Capacity.tiB

  func resolve(_ required: Int64, _ limit: Int64) throws -> Int64 {
    try Capacity.resolve(required: required, limit: limit, granularity: mib, defaultBytes: Capacity.giB, maximum: max)
  }

  static let roundings: [(Int64, Int64)] = [
    (1, 1_048_576), (1_048_576, 1_048_576), (1_048_577, 2_097_152), (1_073_741_824, 1_073_741_824),
    (1_000_000_000, 1_000_341_504),
  ]

  @Test(arguments: roundings)
  func roundsUpToTheGranularity(required: Int64, expected: Int64) throws {
    #expect(try resolve(required, 0) == expected)
  }

  @Test func defaultSizeWhenNothingIsAsked() throws {
    #expect(try resolve(0, 0) == Capacity.giB)
  }

  @Test func defaultIsCappedByTheLimitRoundedDown() throws {
    #expect(try resolve(0, 100 * mib + 5) == 100 * mib)
  }

  @Test func aRoundedSizeOverTheLimitIsOutOfRange() {
    #expect(throws: SwellError.self) { try resolve(mib + 1, mib + 100) }
    let error = #expect(throws: SwellError.self) { try resolve(mib + 1, mib + 100) }
    #expect(error?.kind == .outOfRange)
  }

  @Test func requiredOverLimitIsOutOfRange() {
    let error = #expect(throws: SwellError.self) { try resolve(10 * mib, 5 * mib) }
    #expect(error?.kind == .outOfRange)
  }

  @Test func aLimitUnderTheGranularityIsOutOfRange() {
    let error = #expect(throws: SwellError.self) { try resolve(0, 1000) }
    #expect(error?.kind == .outOfRange)
  }

  @Test(arguments: [Int64(-1), Int64.min])
  func negativeIsInvalid(value: Int64) {
    let a = #expect(throws: SwellError.self) { try resolve(value, 0) }
    #expect(a?.kind == .invalidArgument)
    let b = #expect(throws: SwellError.self) { try resolve(0, value) }
    #expect(b?.kind == .invalidArgument)
  }

  @Test(arguments: [Int64.max, Int64.max - 1, 17 * Capacity.tiB])
  func absurdSizesAreInvalid(value: Int64) {
    let error = #expect(throws: SwellError.self) { try resolve(value, 0) }
    #expect(error?.kind == .invalidArgument)
  }

  @Test func exactLimitIsAccepted() throws {
    #expect(try resolve(3 * mib, 3 * mib) == 3 * mib)
  }

  @Test func roundUpReportsOverflow() {
    #expect(Capacity.roundUp(Int64.max, to: mib) == nil)
    #expect(Capacity.roundUp(0, to: mib) == 0)
    #expect(Capacity.roundDown(mib * 3 - 1, to: mib) == 2 * mib)
  }
}
