import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import SwellHost

/// A small HTTP/1.1 server for `/metrics` (Prometheus text) and `/healthz`.
public struct MetricsServer: Service {
  public typealias Responder = @Sendable (_ path: String) async -> (status: HTTPResponseStatus, body: String)

  let host: String
  let port: Int
  let logger: Logger
  let respond: Responder

  public init(address: String, logger: Logger, respond: @escaping Responder) throws {
    guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
      (0...65535).contains(port)
    else { throw SwellError.invalid("metrics address \(address.debugDescription) must be HOST:PORT") }
    var host = String(address[..<colon])
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    self.host = host.isEmpty ? "0.0.0.0" : host
    self.port = port
    self.logger = logger
    self.respond = respond
  }

  public func run() async throws {
    let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .bind(host: host, port: port) { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.configureHTTPServerPipeline()
          return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
            wrappingChannelSynchronously: channel)
        }
      }
    logger.notice("metrics", metadata: ["address": "\(server.channel.localAddress.map { "\($0)" } ?? "?")"])
    try await withGracefulShutdownHandler {
      try await withThrowingDiscardingTaskGroup { group in
        try await server.executeThenClose { connections in
          for try await connection in connections {
            group.addTask { await serve(connection) }
          }
        }
      }
    } onGracefulShutdown: {
      server.channel.close(promise: nil)
    }
  }

  private func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>) async {
    do {
      try await connection.executeThenClose { inbound, outbound in
        var path: String?
        for try await part in inbound {
          switch part {
          case .head(let head):
            path = head.method == .GET ? String(head.uri.split(separator: "?").first ?? "") : nil
          case .body:
            continue
          case .end:
            var (status, body): (HTTPResponseStatus, String) = (.methodNotAllowed, "GET only\n")
            if let path { (status, body) = await respond(path) }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "text/plain; version=0.0.4; charset=utf-8")
            headers.add(name: "Content-Length", value: String(body.utf8.count))
            headers.add(name: "Connection", value: "close")
            try await outbound.write(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers)))
            try await outbound.write(.body(.byteBuffer(ByteBuffer(string: body))))
            try await outbound.write(.end(nil))
            return
          }
        }
      }
    } catch {
      logger.debug("metrics connection ended", metadata: ["error": "\(error)"])
    }
  }
}
