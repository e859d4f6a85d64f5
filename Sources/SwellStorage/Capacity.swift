import SwellHost

/// Size arithmetic: rounding requests to a backend's granularity within CSI's capacity range.
public enum Capacity {
  public static let kiB: Int64 = 1 << 10
  public static let miB: Int64 = 1 << 20
  public static let giB: Int64 = 1 << 30
  public static let tiB: Int64 = 1 << 40

  /// Rounds `bytes` up to a multiple of `granularity`; nil when that would overflow.
  public static func roundUp(_ bytes: Int64, to granularity: Int64) -> Int64? {
    precondition(granularity > 0)
    let (q, r) = bytes.quotientAndRemainder(dividingBy: granularity)
    if r == 0 { return bytes }
    let (next, overflow) = (q + 1).multipliedReportingOverflow(by: granularity)
    return overflow ? nil : next
  }

  /// Rounds `bytes` down to a multiple of `granularity`.
  public static func roundDown(_ bytes: Int64, to granularity: Int64) -> Int64 {
    bytes - bytes % granularity
  }

  /// The size to give a volume for a CSI capacity range.
  ///
  /// - `required` 0 and `limit` 0: `defaultBytes`.
  /// - `required` 0: the smaller of `defaultBytes` and `limit` rounded down.
  /// - otherwise `required` rounded up, which must not exceed `limit` (when set) nor `maximum`.
  ///
  /// Throws INVALID_ARGUMENT for negative or absurd figures, OUT_OF_RANGE when nothing fits.
  public static func resolve(
    required: Int64, limit: Int64, granularity: Int64, defaultBytes: Int64, maximum: Int64
  ) throws -> Int64 {
    guard required >= 0, limit >= 0 else {
      throw SwellError.invalid("capacity_range must not be negative (required_bytes \(required), limit_bytes \(limit))")
    }
    guard required <= maximum else {
      throw SwellError.invalid("required_bytes \(required) exceeds the largest volume this driver makes (\(maximum) bytes)")
    }
    if limit > 0 && required > limit {
      throw SwellError(.outOfRange, "required_bytes \(required) is larger than limit_bytes \(limit)")
    }
    let size: Int64
    if required == 0 {
      let cap = limit > 0 ? min(limit, maximum) : maximum
      size = min(defaultBytes, roundDown(cap, to: granularity))
    } else {
      guard let rounded = roundUp(required, to: granularity), rounded <= maximum else {
        throw SwellError.invalid("required_bytes \(required) exceeds the largest volume this driver makes (\(maximum) bytes)")
      }
      size = rounded
    }
    if size <= 0 || (limit > 0 && size > limit) {
      throw SwellError(
        .outOfRange,
        "no size in [\(required), \(limit)] is a multiple of this backend's granularity (\(granularity) bytes)")
    }
    return size
  }
}
