#if canImport(Glibc)
  import Glibc
#endif

/// Crash points for tests: `SWELL_FAILPOINTS=name[,name…]` makes the process kill itself with
/// SIGKILL when it reaches a named point, exactly as a crash there would. Unset, a check is one
/// lookup in an empty set.
public enum Failpoints {
  static let armed: Set<String> = {
    guard let raw = getenv("SWELL_FAILPOINTS") else { return [] }
    return Set(String(cString: raw).split(separator: ",").map(String.init))
  }()

  public static func hit(_ name: String) {
    guard !armed.isEmpty, armed.contains(name) else { return }
    kill(getpid(), SIGKILL)
  }
}
