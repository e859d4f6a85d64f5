#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A JSON value. Kubernetes objects are kept whole as JSON, so that an update never drops a field
/// this client does not model.
public enum JSON: Sendable, Equatable {
  case null
  case bool(Bool)
  case int(Int64)
  case double(Double)
  case string(String)
  case array([JSON])
  case object([String: JSON])

  public static let emptyObject = JSON.object([:])

  public subscript(key: String) -> JSON? {
    get {
      if case .object(let fields) = self { return fields[key] }
      return nil
    }
    set {
      guard case .object(var fields) = self else {
        if let newValue { self = .object([key: newValue]) }
        return
      }
      fields[key] = newValue
      self = .object(fields)
    }
  }

  /// The value at a path of object keys, or nil when any step is missing.
  public subscript(path keys: String...) -> JSON? {
    get { lookup(keys[...]) }
    set { assign(keys[...], newValue) }
  }

  public subscript(path keys: [String]) -> JSON? {
    get { lookup(keys[...]) }
    set { assign(keys[...], newValue) }
  }

  private func lookup(_ keys: ArraySlice<String>) -> JSON? {
    guard let first = keys.first else { return self }
    return self[first]?.lookup(keys.dropFirst())
  }

  /// Sets the value at a path, creating objects on the way; nil removes the last key.
  private mutating func assign(_ keys: ArraySlice<String>, _ value: JSON?) {
    guard let first = keys.first else {
      self = value ?? .null
      return
    }
    if keys.count == 1 {
      self[first] = value
      return
    }
    var child = self[first] ?? .emptyObject
    child.assign(keys.dropFirst(), value)
    self[first] = child
  }

  public var string: String? {
    if case .string(let s) = self { return s }
    return nil
  }

  public var int: Int64? {
    switch self {
    case .int(let i): return i
    case .double(let d) where d == d.rounded() && abs(d) < 9e18: return Int64(d)
    default: return nil
    }
  }

  public var bool: Bool? {
    if case .bool(let b) = self { return b }
    return nil
  }

  public var array: [JSON]? {
    if case .array(let a) = self { return a }
    return nil
  }

  public var object: [String: JSON]? {
    if case .object(let o) = self { return o }
    return nil
  }

  /// A map of strings (labels, annotations, parameters); non-string values are skipped.
  public var stringMap: [String: String] {
    var out: [String: String] = [:]
    for (key, value) in object ?? [:] {
      if let s = value.string { out[key] = s }
    }
    return out
  }

  public static func strings(_ map: [String: String]) -> JSON {
    .object(map.mapValues { .string($0) })
  }

  public static func strings(_ list: [String]) -> JSON {
    .array(list.map { .string($0) })
  }
}

extension JSON: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
  ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
  public init(stringLiteral value: String) { self = .string(value) }
  public init(integerLiteral value: Int64) { self = .int(value) }
  public init(booleanLiteral value: Bool) { self = .bool(value) }
  public init(arrayLiteral elements: JSON...) { self = .array(elements) }
  public init(dictionaryLiteral elements: (String, JSON)...) {
    self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
  }
  public init(nilLiteral: ()) { self = .null }
}

extension JSON: Codable {
  public init(from decoder: any Decoder) throws {
    if var list = try? decoder.unkeyedContainer() {
      var items: [JSON] = []
      if let count = list.count { items.reserveCapacity(count) }
      while !list.isAtEnd { items.append(try list.decode(JSON.self)) }
      self = .array(items)
      return
    }
    if let keyed = try? decoder.container(keyedBy: AnyKey.self) {
      var fields: [String: JSON] = [:]
      for key in keyed.allKeys { fields[key.stringValue] = try keyed.decode(JSON.self, forKey: key) }
      self = .object(fields)
      return
    }
    let single = try decoder.singleValueContainer()
    if single.decodeNil() {
      self = .null
    } else if let b = try? single.decode(Bool.self) {
      self = .bool(b)
    } else if let i = try? single.decode(Int64.self) {
      self = .int(i)
    } else if let d = try? single.decode(Double.self) {
      self = .double(d)
    } else {
      self = .string(try single.decode(String.self))
    }
  }

  public func encode(to encoder: any Encoder) throws {
    switch self {
    case .null:
      var c = encoder.singleValueContainer()
      try c.encodeNil()
    case .bool(let b):
      var c = encoder.singleValueContainer()
      try c.encode(b)
    case .int(let i):
      var c = encoder.singleValueContainer()
      try c.encode(i)
    case .double(let d):
      var c = encoder.singleValueContainer()
      try c.encode(d)
    case .string(let s):
      var c = encoder.singleValueContainer()
      try c.encode(s)
    case .array(let items):
      var c = encoder.unkeyedContainer()
      for item in items { try c.encode(item) }
    case .object(let fields):
      var c = encoder.container(keyedBy: AnyKey.self)
      for (key, value) in fields { try c.encode(value, forKey: AnyKey(key)) }
    }
  }

  struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ s: String) { stringValue = s }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { return nil }
  }

  public static func parse(_ bytes: some Collection<UInt8>) throws -> JSON {
    try JSONDecoder().decode(JSON.self, from: Data(bytes))
  }

  public static func parse(_ text: String) throws -> JSON {
    try parse(Array(text.utf8))
  }

  /// Compact JSON with sorted keys, so that equal values serialise the same.
  public func serialized() -> [UInt8] {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    // Encoding a JSON value cannot fail: every case maps to a JSON token.
    return Array((try? encoder.encode(self)) ?? Data("null".utf8))
  }

  public var text: String { String(decoding: serialized(), as: UTF8.self) }
}
