#if canImport(Glibc)
  import Glibc
#endif
import Logging

/// A swift-log handler that writes one JSON object per line to stderr:
/// `{"ts":…,"level":…,"logger":…,"msg":…, <metadata>…}`.
public struct JSONLogHandler: LogHandler {
  public var logLevel: Logger.Level = .info
  public var metadata: Logger.Metadata = [:]
  let label: String

  public init(label: String) {
    self.label = label
  }

  public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
    get { metadata[key] }
    set { metadata[key] = newValue }
  }

  public func log(event: LogEvent) {
    var fields = metadata.merging(event.metadata ?? [:]) { $1 }
    fields["source"] = nil
    var line = "{\"ts\":\(Self.quote(Self.timestamp())),\"level\":\(Self.quote(event.level.rawValue))"
    line += ",\"logger\":\(Self.quote(label)),\"msg\":\(Self.quote(event.message.description))"
    for key in fields.keys.sorted() {
      line += ",\(Self.quote(key)):\(Self.quote("\(fields[key]!)"))"
    }
    line += "}\n"
    // One write(2) per line, so that lines from concurrent calls never interleave.
    var bytes = Array(line.utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
  }

  /// A JSON string literal for `text`.
  public static func quote(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
      switch scalar {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case "\n": out += "\\n"
      case "\r": out += "\\r"
      case "\t": out += "\\t"
      case _ where scalar.value < 0x20:
        let hex = String(scalar.value, radix: 16)
        out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
      default: out.unicodeScalars.append(scalar)
      }
    }
    return out + "\""
  }

  static func timestamp() -> String {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    var tm = tm()
    var seconds = now.tv_sec
    gmtime_r(&seconds, &tm)
    let ms = now.tv_nsec / 1_000_000
    func pad(_ v: Int32, _ n: Int) -> String {
      let s = String(v)
      return String(repeating: "0", count: max(0, n - s.count)) + s
    }
    return "\(pad(tm.tm_year + 1900, 4))-\(pad(tm.tm_mon + 1, 2))-\(pad(tm.tm_mday, 2))T"
      + "\(pad(tm.tm_hour, 2)):\(pad(tm.tm_min, 2)):\(pad(tm.tm_sec, 2)).\(pad(Int32(ms), 3))Z"
  }
}
