import Logging
import Synchronization
import Testing
@testable import SwellKube

struct InformerTests {
  /// A deleted object reaches the handler as (the object, nil), never as a JSON null: JSON is
  /// ExpressibleByNilLiteral, and a handler that reads `new ?? old` would get `.null` and lose the
  /// object's name (the attacher never heard that a VolumeAttachment was gone).
  @Test func aDeletedObjectReachesTheHandlerAsNil() async throws {
    let client = try KubeClient(config: KubeConfig(server: "https://127.0.0.1:1"), logger: Logger(label: "test"))
    defer { Task { await client.shutdown() } }
    let seen = Seen()
    let informer = Informer(client: client, resource: .volumeAttachments, logger: Logger(label: "test")) { old, new in
      seen.record(old: old, new: new)
    }
    let object: JSON = ["metadata": ["name": "va-1", "resourceVersion": "5"], "spec": ["nodeName": "n1"]]
    _ = informer.apply(WatchEvent(kind: .added, object: object))
    _ = informer.apply(WatchEvent(kind: .deleted, object: object))
    let calls = seen.calls
    #expect(calls.count == 2)
    #expect(calls[1].old == object)
    #expect(calls[1].new == nil, "not .some(.null)")
    #expect(informer.get("va-1") == nil)
  }
}

/// The handler's calls, in order.
final class Seen: Sendable {
  private let list = Mutex<[Call]>([])
  struct Call: Sendable {
    var old: JSON?
    var new: JSON?
  }
  func record(old: JSON?, new: JSON?) { list.withLock { $0.append(Call(old: old, new: new)) } }
  var calls: [Call] { list.withLock { $0 } }
}
