import Testing
@testable import SwellKube

struct QuantityTests {
  @Test(arguments: [
    ("1Gi", Int64(1) << 30), ("1.5Gi", Int64(3) << 29), ("500Mi", Int64(500) << 20), ("1G", 1_000_000_000),
    ("2e9", 2_000_000_000), ("1E3", 1000), ("100", 100), ("1k", 1000), ("0", 0), ("1500m", 2), ("1m", 1),
    ("0.5Ki", 512), ("+3Ki", 3072), ("16Ti", Int64(16) << 40),
  ])
  func parses(text: String, bytes: Int64) throws {
    #expect(try Quantity.parse(text) == bytes)
  }

  @Test(arguments: ["", "Gi", "1.2.3Gi", "1GB", "1 Gi", "1e", "abc", "1Zi"])
  func refusesMalformed(text: String) {
    #expect(throws: Quantity.ParseError.self) { try Quantity.parse(text) }
  }

  @Test func refusesOverflow() {
    #expect(throws: Quantity.ParseError.outOfRange("9999999Ei")) { try Quantity.parse("9999999Ei") }
  }

  @Test(arguments: [
    (Int64(1) << 30, "1Gi"), (Int64(3) << 29, "1536Mi"), (Int64(1000), "1000"), (Int64(2048), "2Ki"), (0, "0"),
  ])
  func formats(bytes: Int64, text: String) throws {
    #expect(Quantity.format(bytes) == text)
    #expect(try Quantity.parse(text) == bytes)
  }
}

struct JSONValueTests {
  @Test func roundTripsAndKeepsUnknownFields() throws {
    let text = #"{"a":1,"b":[true,null,"x",2.5],"c":{"d":"e"},"big":9007199254740993}"#
    let value = try JSON.parse(text)
    #expect(value["a"]?.int == 1)
    #expect(value["big"]?.int == 9_007_199_254_740_993)
    #expect(value[path: "c", "d"]?.string == "e")
    #expect(try JSON.parse(value.text) == value)
  }

  @Test func pathAssignmentCreatesAndRemoves() {
    var value = JSON.emptyObject
    value[path: "status", "capacity", "storage"] = "2Gi"
    #expect(value.text == #"{"status":{"capacity":{"storage":"2Gi"}}}"#)
    value[path: "status", "capacity", "storage"] = nil
    #expect(value.text == #"{"status":{"capacity":{}}}"#)
  }
}

/// Kubeconfig YAML as Yams reads it, turned into the client's JSON values.
struct KubeconfigYAMLTests {
  @Test func readsAKubeconfigAsKubectlWritesIt() throws {
    let text = """
      apiVersion: v1
      clusters:
      - cluster:
          certificate-authority-data: Zm9v
          server: https://10.0.0.1:6443
        name: prod
      contexts:
      - context:
          cluster: prod
          namespace: "storage"
          user: admin
        name: prod-admin   # trailing comment
      current-context: prod-admin
      kind: Config
      preferences: {}
      users:
      - name: admin
        user:
          token: 'abc''def'
          exec:
            args:
              - get-token
              - --cluster=prod
      """
    let doc = try YAMLDocument.parse(text)
    #expect(doc["current-context"]?.string == "prod-admin")
    #expect(doc["clusters"]?.array?.first?[path: "cluster", "server"]?.string == "https://10.0.0.1:6443")
    #expect(doc["contexts"]?.array?.first?[path: "context", "namespace"]?.string == "storage")
    #expect(doc["users"]?.array?.first?[path: "user", "token"]?.string == "abc'def")
    #expect(doc["users"]?.array?.first?[path: "user", "exec", "args"]?.array?.count == 2)
    #expect(doc["preferences"] == .emptyObject)
  }

  @Test func readsJSON() throws {
    #expect(try YAMLDocument.parse(#" {"current-context": "x"}"#)["current-context"]?.string == "x")
  }

  @Test func readsAnchorsBlockScalarsAndTypedScalars() throws {
    let doc = try YAMLDocument.parse("""
      base: &b {server: "https://a", insecure-skip-tls-verify: true}
      copy: *b
      note: |
        two
        lines
      port: 6443
      ratio: 0.5
      none: ~
      quoted: "true"
      """)
    #expect(doc["copy"] == doc["base"])
    #expect(doc[path: "copy", "insecure-skip-tls-verify"] == .bool(true))
    #expect(doc["note"]?.string == "two\nlines\n")
    #expect(doc["port"] == .int(6443) && doc["ratio"] == .double(0.5) && doc["none"] == .null)
    #expect(doc["quoted"] == .string("true"), "a quoted scalar stays a string")
    #expect(try YAMLDocument.parse("") == .emptyObject)
  }

  @Test func refusesBrokenYAMLWithoutEchoingIt() {
    do {
      _ = try YAMLDocument.parse("users:\n- name: u\n  user: {token: s3cr3t-token\n")
      Issue.record("an unclosed flow map was accepted")
    } catch {
      #expect(error is YAMLError)
      #expect(!"\(error)".contains("s3cr3t"), "the error must not carry the file's text: \(error)")
      #expect("\(error)".contains("line"))
    }
  }
}
