import Testing
@testable import SwellHost
@testable import SwellStorage

/// CHAP credentials from request secrets: what is refused, and that no way of printing them shows a password.
@Suite struct ChapTests {
  let mutual = ["username": "alice", "password": "alice-secret-123", "username_in": "tgt", "password_in": "target-secret-456"]

  @Test func noKeysMeansNoChapAndHalfAPairIsRefused() throws {
    #expect(try ChapCredentials(secrets: [:]) == nil)
    #expect(try ChapCredentials(secrets: ["token": "x"]) == nil, "other keys are not CHAP")
    #expect(throws: SwellError.self) { try ChapCredentials(secrets: ["username": "alice"]) }
    #expect(throws: SwellError.self) { try ChapCredentials(secrets: ["password": "alice-secret-123"]) }
    var half = mutual
    half["password_in"] = nil
    #expect(throws: SwellError.self) { try ChapCredentials(secrets: half) }
    let chap = try #require(try ChapCredentials(secrets: mutual))
    #expect(chap.usernameIn == "tgt" && chap.secretValues == ["alice-secret-123", "target-secret-456"])
  }

  @Test func valuesThatCouldBreakOutOfAnArgumentOrAURLAreRefused() {
    for (key, value) in [
      ("password", "short"), ("password", "has a space in it"), ("password", "-starts-with-dash"),
      ("password", "percent%in-the-middle"), ("password", "new\nline-secret-x"), ("username", ""),
      ("username", "two words"), ("username", "-o"), ("username", String(repeating: "u", count: 256)),
    ] {
      var secrets = ["username": "alice", "password": "alice-secret-123"]
      secrets[key] = value
      #expect(throws: SwellError.self, "\(key)") { try ChapCredentials(secrets: secrets) }
      do {
        _ = try ChapCredentials(secrets: secrets)
      } catch {
        #expect(value.count < 6 || !"\(error)".contains(value), "the error must not echo the value")
      }
    }
    var same = mutual
    same["username_in"] = "alice"
    #expect(throws: SwellError.self) { try ChapCredentials(secrets: same) }
  }

  @Test func printingNeverShowsAPassword() throws {
    let chap = try #require(try ChapCredentials(secrets: mutual))
    var dumped = ""
    dump(chap, to: &dumped)
    for text in ["\(chap)", String(describing: chap), String(reflecting: chap), dumped, "\([chap])"] {
      #expect(!text.contains("alice-secret-123") && !text.contains("target-secret-456"), "\(text)")
      #expect(text.contains("alice"))
    }
  }

  @Test func redactionHidesEverySecretInArgvAndText() {
    let argv = ["tgtadm", "--user", "alice", "--password", "alice-secret-123"]
    #expect(redact(argv, ["alice-secret-123"]) == ["tgtadm", "--user", "alice", "--password", "***"])
    #expect(redact("bad password alice-secret-123!", ["alice-secret-123", ""]) == "bad password ***!")
    let error = CommandError(argv: redact(argv, ["alice-secret-123"]), exitCode: 22, stderr: "", reason: "failed")
    #expect(!"\(error)".contains("alice-secret-123"))
  }

  @Test func tgtReportsIncomingAndOutgoingAccountsApart() {
    let text = """
      Target 1: iqn.2026-11.dev.swell:pvc-a
          System information:
              Driver: iscsi
              State: ready
          I_T nexus information:
          LUN information:
          Account information:
              alice
              tgt (outgoing)
          ACL information:
              ALL

      """
    let target = TgtTarget.parse(text).first
    #expect(target?.accounts == ["alice"] && target?.outgoingAccounts == ["tgt"] && target?.acl == ["ALL"])
  }
}
