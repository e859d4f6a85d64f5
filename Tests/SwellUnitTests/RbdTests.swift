import Testing

@testable import SwellHost
@testable import SwellStorage

@Suite struct RbdTests {
  @Test func credentialsComeFromCephCSIsSecretKeys() throws {
    let key = "AQBp0ExnAAAAABAAx6kcyYD8Bf3Y2xHmwvnGkQ=="
    #expect(try CephCredentials(secrets: ["userID": "swell", "userKey": key]) == CephCredentials(user: "swell", key: key))
    #expect(try CephCredentials(secrets: ["userID": "client.swell", "userKey": key])?.user == "swell")
    #expect(try CephCredentials(secrets: [:]) == nil)
    #expect(throws: SwellError.self) { try CephCredentials(secrets: ["userID": "swell"]) }
    // Nothing that could read as a flag, or a second argument, reaches a command line.
    for user in ["--admin", "a b", "a;b", "", String(repeating: "u", count: 65)] {
      #expect(throws: SwellError.self) { try CephCredentials(secrets: ["userID": user, "userKey": key]) }
    }
    for bad in ["", "key with spaces", "-Q==", "AQB\nX"] {
      #expect(throws: SwellError.self) { try CephCredentials(secrets: ["userID": "swell", "userKey": bad]) }
    }
  }

  @Test func clientErrorsAreClassifiedByErrno() {
    func kind(_ code: Int32, _ stderr: String) -> SwellError.Kind {
      Rbd.classify(argv: ["rbd"], shown: "rbd", CommandOutput(exitCode: code, stdout: "", stderr: stderr)).kind
    }
    #expect(kind(2, "rbd: error opening image x: (2) No such file or directory") == .notFound)
    #expect(kind(110, "monclient(hunting): handle_auth_bad_method server allowed_methods [2] but i only support [2,1]") == .permissionDenied)
    #expect(kind(1, "list_images: error listing v1 images: (1) Operation not permitted") == .permissionDenied)
    #expect(kind(110, "monclient(hunting): authenticate timed out after 15\nrbd: couldn't connect to the cluster!") == .unavailable)
    #expect(kind(22, "auth: failed to decode key '***'") == .invalidArgument)
    #expect(kind(16, "rbd: error: image still has watchers") == .failedPrecondition)
    #expect(kind(28, "write failed: (28) No space left on device") == .resourceExhausted)
    #expect(kind(22, "rbd: shrinking an image is only allowed with the --allow-shrink flag") == .internal)
  }

  @Test func recordsRoundTripAndIgnoreEmptyFields() throws {
    let text = RbdBackend.encode([("volume", "pvc-1"), ("access", "mount"), ("fstype", ""), ("source", "snapshot:s-1")])
    #expect(text == "version=1;volume=pvc-1;access=mount;source=snapshot:s-1")
    #expect(try RbdBackend.fields(text, what: "r") == ["version": "1", "volume": "pvc-1", "access": "mount", "source": "snapshot:s-1"])
    // Written before records had versions: format 1. A newer one is refused.
    #expect(try RbdBackend.fields("volume=pvc-1;access=mount", what: "r") == ["volume": "pvc-1", "access": "mount"])
    #expect(throws: SwellError.self) { try RbdBackend.fields("version=2;volume=pvc-1;access=mount", what: "r") }
    #expect(RbdBackend.imageName("pvc-1") != RbdBackend.snapshotImageName("pvc-1"))
  }
}
