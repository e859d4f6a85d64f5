#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import SwellHost

/// Where the API server is and how to authenticate to it.
public struct KubeConfig: Sendable {
  public var server: String
  public var caPEM: [UInt8]?
  public var insecureSkipTLSVerify = false
  public var token: String?
  /// A token file, re-read when it rotates (the in-cluster projected token, or a kubeconfig `tokenFile`).
  public var tokenFile: String?
  public var clientCertificatePEM: [UInt8]?
  public var clientKeyPEM: [UInt8]?
  public var namespace: String?

  public init(server: String) { self.server = server }

  public static let serviceAccountDirectory = "/var/run/secrets/kubernetes.io/serviceaccount"

  /// The in-cluster configuration: the service-account token and CA, and the service host and port.
  public static func inCluster(
    environment: [String: String], directory: String = serviceAccountDirectory
  ) throws -> KubeConfig {
    guard let host = environment["KUBERNETES_SERVICE_HOST"], !host.isEmpty,
      let port = environment["KUBERNETES_SERVICE_PORT"], !port.isEmpty
    else {
      throw SwellError.invalid(
        "not running in a cluster (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are unset); pass --kubeconfig")
    }
    let bracketed = host.contains(":") ? "[\(host)]" : host
    var config = KubeConfig(server: "https://\(bracketed):\(port)")
    config.caPEM = Array(try readSmallFile(directory + "/ca.crt").utf8)
    config.tokenFile = directory + "/token"
    if let ns = try? readSmallFile(directory + "/namespace") {
      config.namespace = ns.trimmingWhitespace()
    }
    return config
  }

  /// Reads a kubeconfig file and picks its current context (or `context`).
  public static func load(path: String, context wanted: String? = nil) throws -> KubeConfig {
    let text = try readSmallFile(path)
    let doc: JSON
    do { doc = try YAMLDocument.parse(text) } catch {
      throw SwellError.invalid("kubeconfig \(path) is not valid YAML: \(error)")
    }
    let baseDirectory = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
    guard let contextName = wanted ?? doc["current-context"]?.string, !contextName.isEmpty else {
      throw SwellError.invalid("kubeconfig \(path) has no current-context")
    }
    func named(_ list: String, _ name: String, _ field: String) throws -> JSON {
      for entry in doc[list]?.array ?? [] where entry["name"]?.string == name {
        if let value = entry[field] { return value }
      }
      throw SwellError.invalid("kubeconfig \(path): no \(field) named \(name.debugDescription)")
    }
    let context = try named("contexts", contextName, "context")
    guard let clusterName = context["cluster"]?.string else {
      throw SwellError.invalid("kubeconfig \(path): context \(contextName) names no cluster")
    }
    let cluster = try named("clusters", clusterName, "cluster")
    guard let server = cluster["server"]?.string, server.hasPrefix("https://") || server.hasPrefix("http://") else {
      throw SwellError.invalid("kubeconfig \(path): cluster \(clusterName) has no http(s) server")
    }
    var config = KubeConfig(server: server.hasSuffix("/") ? String(server.dropLast()) : server)
    config.namespace = context["namespace"]?.string
    config.insecureSkipTLSVerify = cluster["insecure-skip-tls-verify"]?.bool ?? false
    func resolve(_ file: String) -> String { file.hasPrefix("/") ? file : baseDirectory + "/" + file }
    func bytes(_ object: JSON, data: String, file: String) throws -> [UInt8]? {
      if let encoded = object[data]?.string {
        guard let decoded = Data(base64Encoded: encoded, options: .ignoreUnknownCharacters) else {
          throw SwellError.invalid("kubeconfig \(path): \(data) is not base64")
        }
        return Array(decoded)
      }
      if let name = object[file]?.string { return Array(try readSmallFile(resolve(name)).utf8) }
      return nil
    }
    config.caPEM = try bytes(cluster, data: "certificate-authority-data", file: "certificate-authority")
    if let userName = context["user"]?.string, !userName.isEmpty {
      let user = try named("users", userName, "user")
      config.token = user["token"]?.string
      config.tokenFile = user["tokenFile"]?.string.map(resolve)
      config.clientCertificatePEM = try bytes(user, data: "client-certificate-data", file: "client-certificate")
      config.clientKeyPEM = try bytes(user, data: "client-key-data", file: "client-key")
      if user["exec"] != nil || user["auth-provider"] != nil, config.token == nil, config.tokenFile == nil,
        config.clientCertificatePEM == nil
      {
        throw SwellError.invalid("kubeconfig \(path): user \(userName) uses exec or auth-provider, which Swell does not run")
      }
    }
    return config
  }
}

extension String {
  func trimmingWhitespace() -> String {
    let scalars = unicodeScalars
    guard let start = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
      let end = scalars.lastIndex(where: { !$0.properties.isWhitespace })
    else { return "" }
    return String(scalars[start...end])
  }
}
