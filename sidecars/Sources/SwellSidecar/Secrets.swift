#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import SwellKube

extension Reconciler {
  /// A Secret's data, decoded. Errors name the secret, never a value.
  func readSecret(_ ref: (namespace: String, name: String), what: String) async throws -> [String: String] {
    guard let secret = try await kube.get(.secrets, namespace: ref.namespace, name: ref.name) else {
      throw Claims.Invalid(description: "the \(what) secret \(ref.namespace)/\(ref.name) does not exist")
    }
    var out: [String: String] = [:]
    for (key, value) in secret["data"]?.stringMap ?? [:] {
      guard let bytes = Data(base64Encoded: value) else {
        throw Claims.Invalid(description: "the \(what) secret \(ref.namespace)/\(ref.name) holds a value that is not base64")
      }
      out[key] = String(decoding: bytes, as: UTF8.self)
    }
    return out
  }
}
