import Logging
import Synchronization

/// An informer: lists a resource, then watches from the list's resourceVersion, keeping a cache of
/// every object. A watch that ends is resumed from the last version seen, with backoff after errors;
/// 410 Gone (as an ERROR event or as the HTTP status) starts a new list.
public final class Informer: Sendable {
  public typealias Handler = @Sendable (_ old: JSON?, _ new: JSON?) -> Void

  let client: KubeClient
  public let resource: KubeResource
  let logger: Logger
  let handler: Handler
  let store = Mutex<[String: JSON]>([:])
  let syncedFlag = Atomic<Bool>(false)
  let relists = Atomic<Int>(0)
  let absentFlag = Atomic<Bool>(false)
  /// How often a resource the server does not serve (a CRD not installed) is listed again.
  let absentRetry: Duration

  public init(
    client: KubeClient, resource: KubeResource, logger: Logger, absentRetry: Duration = .seconds(5),
    handler: @escaping Handler
  ) {
    self.absentRetry = absentRetry
    self.client = client
    self.resource = resource
    self.logger = logger
    self.handler = handler
  }

  /// True once the first list has filled the cache.
  public var hasSynced: Bool { syncedFlag.load(ordering: .acquiring) }
  public var listCount: Int { relists.load(ordering: .relaxed) }
  /// True while the last list answered 404: the server does not serve the resource (its CRD is not
  /// installed). The informer keeps listing, quietly, and fills its cache once it is served.
  public var isAbsent: Bool { absentFlag.load(ordering: .relaxed) }

  public func get(_ key: String) -> JSON? { store.withLock { $0[key] } }
  public func list() -> [JSON] { store.withLock { Array($0.values) } }

  /// Runs until the task is cancelled.
  public func run() async {
    var backoff = Duration.milliseconds(200)
    while !Task.isCancelled {
      do {
        var version = try await relist()
        if absentFlag.exchange(false, ordering: .relaxed) {
          logger.notice("the resource is served now", metadata: ["resource": "\(resource)"])
        }
        backoff = .milliseconds(200)
        while !Task.isCancelled {
          do {
            try await client.watch(resource, resourceVersion: version, timeoutSeconds: Int.random(in: 300...600)) {
              event in
              version = self.apply(event) ?? version
            }
            backoff = .milliseconds(200)
          } catch let error as KubeError where error.isGone || error.isTooLargeResourceVersion {
            logger.info("watch expired; listing again", metadata: ["resource": "\(resource)", "error": "\(error)"])
            break
          } catch {
            if Task.isCancelled { return }
            logger.warning(
              "watch failed; resuming", metadata: ["resource": "\(resource)", "error": "\(error)", "after": "\(backoff)"])
            try await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(30))
          }
        }
      } catch let error as KubeError where error.isNotFound && !hasSynced {
        // Said once; then listed again every absentRetry without a word.
        if !absentFlag.exchange(true, ordering: .relaxed) {
          logger.notice(
            "the API server does not serve this resource (is its CRD installed?); waiting for it",
            metadata: ["resource": "\(resource)", "error": "\(error)"])
        }
        try? await Task.sleep(for: absentRetry)
      } catch {
        if Task.isCancelled { return }
        logger.warning(
          "list failed", metadata: ["resource": "\(resource)", "error": "\(error)", "after": "\(backoff)"])
        try? await Task.sleep(for: backoff)
        backoff = min(backoff * 2, .seconds(30))
      }
    }
  }

  /// Replaces the cache with a fresh list, reporting what changed; returns the list's version.
  func relist() async throws -> String {
    let (items, version) = try await client.list(resource)
    var fresh: [String: JSON] = [:]
    for item in items { fresh[objectKey(item)] = item }
    let old = store.withLock { store in
      let old = store
      store = fresh
      return old
    }
    relists.add(1, ordering: .relaxed)
    syncedFlag.store(true, ordering: .releasing)
    for (key, object) in old where fresh[key] == nil { handler(object, nil) }
    for (key, object) in fresh where old[key]?.resourceVersion != object.resourceVersion {
      handler(old[key], object)
    }
    return version
  }

  /// Applies one watch event to the cache; returns the version to resume from.
  func apply(_ event: WatchEvent) -> String? {
    let version = event.object.resourceVersion
    if event.kind == .bookmark { return version.isEmpty ? nil : version }
    let key = objectKey(event.object)
    let old = store.withLock { store in
      let old = store[key]
      if event.kind == .deleted { store[key] = nil } else { store[key] = event.object }
      return old
    }
    // Not `? nil : event.object`: JSON is ExpressibleByNilLiteral, so that would hand a deleted
    // object's handler `.some(.null)` instead of nil.
    let new: JSON? = event.kind == .deleted ? .none : event.object
    handler(old, new)
    return version.isEmpty ? nil : version
  }
}
