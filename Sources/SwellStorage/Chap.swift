import SwellHost

/// CHAP credentials for one iSCSI volume, from a request's secrets.
///
/// The keys follow open-iscsi's node record: `username` and `password` are what the initiator
/// presents to the target; `username_in` and `password_in`, when given, are what the target must
/// present back (mutual CHAP). Printing a value of this type never shows a password.
public struct ChapCredentials: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible,
  CustomReflectable
{
  public var username: String
  public var password: String
  public var usernameIn: String?
  public var passwordIn: String?

  public static let keys = ["username", "password", "username_in", "password_in"]

  public init(username: String, password: String, usernameIn: String? = nil, passwordIn: String? = nil) {
    self.username = username
    self.password = password
    self.usernameIn = usernameIn
    self.passwordIn = passwordIn
  }

  /// The credentials in `secrets`; nil when it holds none of the keys. Half a pair, or a value
  /// tgtadm and iscsiadm could not take as one argument, is INVALID_ARGUMENT (naming the key, never
  /// the value).
  public init?(secrets: [String: String]) throws {
    guard Self.keys.contains(where: { secrets[$0] != nil }) else { return nil }
    guard let username = secrets["username"], let password = secrets["password"] else {
      throw SwellError.invalid("CHAP secrets need both username and password")
    }
    let usernameIn = secrets["username_in"]
    let passwordIn = secrets["password_in"]
    guard (usernameIn == nil) == (passwordIn == nil) else {
      throw SwellError.invalid("mutual CHAP secrets need both username_in and password_in")
    }
    for (key, value) in [("username", username), ("username_in", usernameIn)] {
      guard let value else { continue }
      try Self.validate(value, key: key, isName: true)
    }
    for (key, value) in [("password", password), ("password_in", passwordIn)] {
      guard let value else { continue }
      try Self.validate(value, key: key, isName: false)
    }
    if let usernameIn, usernameIn == username {
      throw SwellError.invalid("CHAP username_in must differ from username: tgt keeps one account per name")
    }
    self.init(username: username, password: password, usernameIn: usernameIn, passwordIn: passwordIn)
  }

  /// A name is 1 to 255 printable ASCII characters without spaces; a secret 12 to 255 printable
  /// ASCII characters (RFC 3720 asks CHAP secrets for at least 12 bytes), without spaces or `%`
  /// (libiscsi's URL separator), and never starting with `-`, so that no tool reads it as an option.
  static func validate(_ value: String, key: String, isName: Bool) throws {
    let printable = value.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F && (isName || $0 != 0x25) }
    let lengthOK = isName ? (1...255).contains(value.utf8.count) : (12...255).contains(value.utf8.count)
    guard printable, lengthOK, !value.hasPrefix("-") else {
      throw SwellError.invalid(
        isName
          ? "CHAP \(key) must be 1 to 255 printable characters without spaces, not starting with '-'"
          : "CHAP \(key) must be 12 to 255 printable characters without spaces or '%', not starting with '-'")
    }
  }

  /// The values that must never be shown.
  public var secretValues: [String] { [password, passwordIn].compactMap { $0 } }

  public var description: String {
    "CHAP(\(username)\(usernameIn.map { ", mutual \($0)" } ?? ""), passwords hidden)"
  }
  public var debugDescription: String { description }
  public var customMirror: Mirror { Mirror(self, children: ["description": description]) }
}
