import SwellHost
import Testing
@testable import SwellKube

struct KubeConfigTests {
  @Test func inClusterReadsTheServiceAccount() throws {
    let dir = try makeTemporaryDirectory(prefix: "swell-kc-")
    defer { try? removeTree(dir) }
    try writeFileAtomically(dir + "/ca.crt", Array("CA".utf8))
    try writeFileAtomically(dir + "/token", Array("tok\n".utf8))
    try writeFileAtomically(dir + "/namespace", Array("kube-system\n".utf8))
    let config = try KubeConfig.inCluster(
      environment: ["KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"], directory: dir)
    #expect(config.server == "https://[fd00::1]:443")
    #expect(config.caPEM == Array("CA".utf8))
    #expect(config.tokenFile == dir + "/token")
    #expect(config.namespace == "kube-system")
    #expect(throws: SwellError.self) { try KubeConfig.inCluster(environment: [:], directory: dir) }
  }

  @Test func kubeconfigPicksTheCurrentContextAndResolvesFiles() throws {
    let dir = try makeTemporaryDirectory(prefix: "swell-kc-")
    defer { try? removeTree(dir) }
    try writeFileAtomically(dir + "/ca.pem", Array("CAFILE".utf8))
    let text = """
      clusters:
      - name: a
        cluster: {server: https://a}
      - name: b
        cluster:
          server: https://b:6443/
          certificate-authority: ca.pem
      contexts:
      - name: ctx-b
        context:
          cluster: b
          user: u
      current-context: ctx-b
      users:
      - name: u
        user:
          client-certificate-data: Q0VSVA==
          client-key-data: S0VZ
      """
    // The first cluster uses a flow map, which kubectl itself writes (`preferences: {}`) and YAML allows.
    try writeFileAtomically(dir + "/config", Array(text.utf8))
    #expect(try KubeConfig.load(path: dir + "/config", context: "ctx-b").server == "https://b:6443")
    try writeFileAtomically(
      dir + "/config", Array(text.replacing("cluster: {server: https://a}", with: "cluster:\n    server: https://a").utf8))
    let config = try KubeConfig.load(path: dir + "/config")
    #expect(config.server == "https://b:6443")
    #expect(config.caPEM == Array("CAFILE".utf8))
    #expect(config.clientCertificatePEM == Array("CERT".utf8))
    #expect(config.clientKeyPEM == Array("KEY".utf8))
    #expect(try KubeConfig.load(path: dir + "/config", context: "ctx-b").server == "https://b:6443")
    #expect(throws: SwellError.self) { try KubeConfig.load(path: dir + "/config", context: "nope") }
    try writeFileAtomically(dir + "/config", Array("clusters: [\n".utf8))
    #expect(throws: SwellError.self) { try KubeConfig.load(path: dir + "/config") }
  }
}
