/// Kubernetes resource quantities ("1Gi", "1.5G", "500M", "2e9"), as whole bytes.
public enum Quantity {
  public enum ParseError: Error, Equatable, CustomStringConvertible {
    case malformed(String)
    case outOfRange(String)

    public var description: String {
      switch self {
      case .malformed(let s): return "quantity \(s.debugDescription) is not a Kubernetes quantity"
      case .outOfRange(let s): return "quantity \(s.debugDescription) is out of range"
      }
    }
  }

  private static let binarySuffixes: [String: Int] = ["Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60]
  private static let decimalSuffixes: [String: Int] = [
    "n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18,
  ]

  /// Parses a quantity and rounds it up to whole units, as the API server's `Value()` does.
  public static func parse(_ text: String) throws(ParseError) -> Int64 {
    let chars = Array(text.utf8)
    var i = 0
    var negative = false
    if i < chars.count, chars[i] == UInt8(ascii: "+") || chars[i] == UInt8(ascii: "-") {
      negative = chars[i] == UInt8(ascii: "-")
      i += 1
    }
    var mantissa: Int128 = 0
    var scale = 0
    var digits = 0
    var seenDot = false
    while i < chars.count {
      let c = chars[i]
      if c == UInt8(ascii: ".") {
        if seenDot { throw .malformed(text) }
        seenDot = true
      } else if c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") {
        digits += 1
        if digits > 30 { throw .outOfRange(text) }
        mantissa = mantissa * 10 + Int128(c - UInt8(ascii: "0"))
        if seenDot { scale += 1 }
      } else {
        break
      }
      i += 1
    }
    guard digits > 0 else { throw .malformed(text) }
    let suffix = String(decoding: chars[i...], as: UTF8.self)
    var numerator = mantissa
    var denominator: Int128 = power10(scale)
    if let shift = binarySuffixes[suffix] {
      numerator = try multiply(numerator, Int128(1) << shift, text)
    } else if let exponent = decimalSuffixes[suffix] {
      if exponent >= 0 { numerator = try multiply(numerator, power10(exponent), text) }
      else { denominator = try multiply(denominator, power10(-exponent), text) }
    } else if let first = suffix.first, first == "e" || first == "E", let exponent = Int(suffix.dropFirst()),
      (-18...18).contains(exponent)
    {
      if exponent >= 0 { numerator = try multiply(numerator, power10(exponent), text) }
      else { denominator = try multiply(denominator, power10(-exponent), text) }
    } else {
      throw .malformed(text)
    }
    var value = numerator / denominator
    if numerator % denominator != 0 { value += 1 }
    guard value <= Int128(Int64.max) else { throw .outOfRange(text) }
    return negative ? -Int64(value) : Int64(value)
  }

  /// Formats bytes the way the API server prints a BinarySI quantity: the largest binary suffix that
  /// divides it exactly, or the plain number.
  public static func format(_ bytes: Int64) -> String {
    guard bytes != 0 else { return "0" }
    for (suffix, shift) in [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
      let unit = Int64(1) << shift
      if bytes % unit == 0 { return "\(bytes / unit)\(suffix)" }
    }
    return "\(bytes)"
  }

  private static func power10(_ n: Int) -> Int128 {
    var v: Int128 = 1
    for _ in 0..<n { v *= 10 }
    return v
  }

  private static func multiply(_ a: Int128, _ b: Int128, _ text: String) throws(ParseError) -> Int128 {
    let (result, overflow) = a.multipliedReportingOverflow(by: b)
    if overflow { throw .outOfRange(text) }
    return result
  }
}
