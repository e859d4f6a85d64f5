#if canImport(Glibc)
  import Glibc
#endif

/// Test hooks at named points: `SWELL_FAILPOINTS=name[,name:pause[=S]…]`. A bare name makes the
/// process kill itself with SIGKILL at that point, exactly as a crash there would; `name:pause` holds
/// the call there for one second, `name:pause=S` for S seconds (to catch it in flight, or to kill
/// the process from outside while it is there). Unset, a check is one lookup in an empty table.
public enum Failpoints {
  enum Action: Equatable { case crash, pause(seconds: UInt32) }

  static let armed: [String: Action] = {
    guard let raw = getenv("SWELL_FAILPOINTS") else { return [:] }
    var table: [String: Action] = [:]
    for item in String(cString: raw).split(separator: ",") {
      let parts = item.split(separator: ":", maxSplits: 1)
      table[String(parts[0])] = parts.count == 2 ? parse(parts[1]) : .crash
    }
    return table
  }()

  /// `pause` or `pause=S`; anything else is a crash, as a bare name is.
  static func parse(_ text: Substring) -> Action {
    if text == "pause" { return .pause(seconds: 1) }
    if text.hasPrefix("pause="), let seconds = UInt32(text.dropFirst("pause=".count)) { return .pause(seconds: seconds) }
    return .crash
  }

  public static func hit(_ name: String) {
    guard !armed.isEmpty, let action = armed[name] else { return }
    switch action {
    case .crash: kill(getpid(), SIGKILL)
    case .pause(let seconds): sleep(seconds)
    }
  }
}
