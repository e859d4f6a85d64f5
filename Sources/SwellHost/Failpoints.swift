#if canImport(Glibc)
  import Glibc
#endif

/// Test hooks at named points: `SWELL_FAILPOINTS=name[,name:pause…]`. A bare name makes the process
/// kill itself with SIGKILL at that point, exactly as a crash there would; `name:pause` holds the
/// call there for one second (to catch it in flight). Unset, a check is one lookup in an empty table.
public enum Failpoints {
  enum Action { case crash, pause }

  static let armed: [String: Action] = {
    guard let raw = getenv("SWELL_FAILPOINTS") else { return [:] }
    var table: [String: Action] = [:]
    for item in String(cString: raw).split(separator: ",") {
      let parts = item.split(separator: ":", maxSplits: 1)
      table[String(parts[0])] = parts.count == 2 && parts[1] == "pause" ? .pause : .crash
    }
    return table
  }()

  public static func hit(_ name: String) {
    guard !armed.isEmpty, let action = armed[name] else { return }
    switch action {
    case .crash: kill(getpid(), SIGKILL)
    case .pause: usleep(1_000_000)
    }
  }
}
