import CSIProto
import GRPCCore
import Testing
import SwellHost
import SwellStorage
import Logging
@testable import SwellDriver

#if canImport(Glibc)
  import Glibc
#endif

@Suite struct ErrorMappingTests {
  @Test(arguments: [
    (SwellError.Kind.invalidArgument, RPCError.Code.invalidArgument), (.notFound, .notFound),
    (.alreadyExists, .alreadyExists), (.outOfRange, .outOfRange), (.resourceExhausted, .resourceExhausted),
    (.failedPrecondition, .failedPrecondition), (.aborted, .aborted), (.unavailable, .unavailable),
    (.internal, .internalError),
  ])
  func eachKindHasItsCode(kind: SwellError.Kind, code: RPCError.Code) {
    let error = ErrorMapping.rpcError(SwellError(kind, "why"))
    #expect(error.code == code)
    #expect(error.message == "why")
  }

  @Test func aFullDiskIsResourceExhaustedNeverInternal() {
    #expect(ErrorMapping.rpcError(SystemCallError("write", "/x", errno: ENOSPC)).code == .resourceExhausted)
    #expect(ErrorMapping.rpcError(SystemCallError("write", "/x", errno: EIO)).code == .internalError)
    let mkfs = CommandError(argv: ["mkfs.ext4"], exitCode: 1, stderr: "write: No space left on device", reason: "failed")
    #expect(ErrorMapping.rpcError(mkfs).code == .resourceExhausted)
    let wrapped = SwellError(.internal, "creating", cause: SystemCallError("ftruncate", "/x", errno: ENOSPC))
    #expect(ErrorMapping.rpcError(wrapped).code == .resourceExhausted)
  }

  @Test func otherErrorsAreInternalAndCancellationIsCancelled() {
    struct Odd: Error {}
    #expect(ErrorMapping.rpcError(Odd()).code == .internalError)
    #expect(ErrorMapping.rpcError(CancellationError()).code == .cancelled)
    let rpc = RPCError(code: .unimplemented, message: "x")
    #expect(ErrorMapping.rpcError(rpc).code == .unimplemented)
  }
}

@Suite struct ValidationTests {
  func cap(_ mode: Csi_V1_VolumeCapability.AccessMode.Mode, fs: String? = "ext4") -> Csi_V1_VolumeCapability {
    .with {
      if let fs { $0.mount = .with { $0.fsType = fs } } else { $0.block = .init() }
      $0.accessMode.mode = mode
    }
  }

  @Test(arguments: [
    Csi_V1_VolumeCapability.AccessMode.Mode.singleNodeWriter, .singleNodeReaderOnly, .singleNodeSingleWriter,
    .singleNodeMultiWriter,
  ])
  func singleNodeModesPass(mode: Csi_V1_VolumeCapability.AccessMode.Mode) throws {
    #expect(try Validation.access([cap(mode)]).kind == .mount)
    #expect(try Validation.access([cap(mode, fs: nil)]).kind == .block)
  }

  @Test(arguments: [
    Csi_V1_VolumeCapability.AccessMode.Mode.multiNodeReaderOnly, .multiNodeSingleWriter, .multiNodeMultiWriter, .unknown,
  ])
  func multiNodeAndUnknownModesAreInvalid(mode: Csi_V1_VolumeCapability.AccessMode.Mode) {
    let error = #expect(throws: SwellError.self) { try Validation.access([cap(mode)]) }
    #expect(error?.kind == .invalidArgument)
  }

  @Test func filesystemsAndShapes() throws {
    #expect(try Validation.access([cap(.singleNodeWriter, fs: "xfs")]).fsType == "xfs")
    #expect(try Validation.access([cap(.singleNodeWriter, fs: "")]).fsType == "")
    #expect(throws: SwellError.self) { try Validation.access([cap(.singleNodeWriter, fs: "btrfs")]) }
    #expect(throws: SwellError.self) { try Validation.access([]) }
    #expect(throws: SwellError.self) { try Validation.access([cap(.singleNodeWriter), cap(.singleNodeWriter, fs: nil)]) }
    #expect(throws: SwellError.self) {
      try Validation.access([cap(.singleNodeWriter, fs: "ext4"), cap(.singleNodeWriter, fs: "xfs")])
    }
    var noType = Csi_V1_VolumeCapability()
    noType.accessMode.mode = .singleNodeWriter
    #expect(throws: SwellError.self) { try Validation.access([noType]) }
    var noMode = Csi_V1_VolumeCapability()
    noMode.block = .init()
    #expect(throws: SwellError.self) { try Validation.access([noMode]) }
  }

  @Test func parameters() throws {
    let loopOnly = ["loop"]
    try Validation.parameters([:], backends: loopOnly)
    try Validation.parameters(
      ["backend": "loop", "csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/fstype": "xfs"], backends: loopOnly)
    #expect(throws: SwellError.self) { try Validation.parameters(["bogus": "1"], backends: loopOnly) }
    #expect(throws: SwellError.self) { try Validation.parameters(["backend": "nfs"], backends: loopOnly) }
    // iscsi is a valid choice only on a controller that has it configured.
    #expect(throws: SwellError.self) { try Validation.parameters(["backend": "iscsi"], backends: loopOnly) }
    try Validation.parameters(["backend": "iscsi"], backends: ["loop", "iscsi"])
    // pool belongs to lvm; mkfsOptions to any backend, as plain words.
    try Validation.parameters(["backend": "lvm", "pool": "fast", "mkfsOptions": "-E lazy_itable_init=0"], backends: ["loop", "lvm"])
    #expect(throws: SwellError.self) { try Validation.parameters(["pool": "fast"], backends: ["loop", "lvm"]) }
    #expect(throws: SwellError.self) { try Validation.parameters(["backend": "lvm", "pool": "../x"], backends: ["loop", "lvm"]) }
    // overcommit belongs to dir, and is true or false.
    try Validation.parameters(["backend": "dir", "overcommit": "true"], backends: ["loop", "dir"])
    #expect(try Validation.overcommit(["overcommit": "true"]))
    #expect(try !Validation.overcommit([:]) && !Validation.overcommit(["overcommit": "false"]))
    #expect(throws: SwellError.self) { try Validation.parameters(["overcommit": "true"], backends: ["loop", "dir"]) }
    #expect(throws: SwellError.self) { try Validation.parameters(["backend": "dir", "overcommit": "yes"], backends: ["dir"]) }
  }

  @Test func mkfsOptions() throws {
    #expect(try Validation.mkfsOptions("-E lazy_itable_init=0,lazy_journal_init=0 -i 65536") ==
      ["-E", "lazy_itable_init=0,lazy_journal_init=0", "-i", "65536"])
    #expect(try Validation.mkfsOptions("  -m  crc=1 ") == ["-m", "crc=1"])
    #expect(try Validation.mkfsOptions("").isEmpty)
    #expect(try Validation.mkfsOptions("-d su=64k,sw=4 -l size=64m") == ["-d", "su=64k,sw=4", "-l", "size=64m"])
    for bad in ["/dev/sda", "-d file=/etc/passwd", "-d name=x", "-l logdev=sdb", "-E $(reboot)", "a;b", "---x", "-",
                "-f", "--force", "-L label", "-J device=x", String(repeating: "-m 1 ", count: 9)] {
      #expect(throws: SwellError.self, "\(bad)") { try Validation.mkfsOptions(bad) }
    }
  }

  @Test func topology() {
    let config = DriverConfig(driverName: "swell.csi.dev", version: "t", nodeID: "n1", mode: .all)
    let mine = Csi_V1_Topology.with { $0.segments = ["topology.swell.csi.dev/node": "n1"] }
    let other = Csi_V1_Topology.with { $0.segments = ["topology.swell.csi.dev/node": "n2"] }
    #expect(Validation.topology(mine, fits: config))
    #expect(!Validation.topology(other, fits: config))
    #expect(throws: SwellError.self) {
      try Validation.accessibility(.with { $0.requisite = [other] }, config: config)
    }
    #expect(throws: Never.self) {
      try Validation.accessibility(.with { $0.requisite = [other, mine] }, config: config)
    }
  }

  @Test func listTokens() {
    #expect(ListToken.decode(ListToken.encode("pvc-1")) == "pvc-1")
    #expect(ListToken.decode("invalid-token") == nil)
    #expect(ListToken.decode("swell-next:../x") == nil)
  }

  @Test func endpoints() throws {
    #expect(try UnixListener.socketPath(fromEndpoint: "unix:///csi/csi.sock") == "/csi/csi.sock")
    #expect(try UnixListener.socketPath(fromEndpoint: "/csi/csi.sock") == "/csi/csi.sock")
    #expect(throws: SwellError.self) { try UnixListener.socketPath(fromEndpoint: "tcp://1.2.3.4:5") }
  }
}

@Suite struct OperateTests {
  @Test func canonicalCodeNames() {
    #expect(ErrorMapping.name(of: .notFound) == "NOT_FOUND")
    #expect(ErrorMapping.name(of: .internalError) == "INTERNAL")
    #expect(ErrorMapping.name(of: .resourceExhausted) == "RESOURCE_EXHAUSTED")
  }

  @Test func jsonQuoting() {
    #expect(JSONLogHandler.quote("plain") == "\"plain\"")
    #expect(JSONLogHandler.quote("a\"b\\c\nd\u{1}") == "\"a\\\"b\\\\c\\nd\\u0001\"")
  }

  @Test func volumeFiguresRenderAsPrometheusText() {
    var figures = VolumeFigures()
    figures.byState = ["healthy": 2, "abnormal": 1]
    figures.attached = [("v1", 1 << 30, 5 << 20), ("b1", 64 << 20, nil)]
    let text = figures.prometheusText()
    #expect(text.contains("swell_volumes{state=\"healthy\"} 2\n"))
    #expect(text.contains("swell_volume_capacity_bytes{volume=\"b1\"} 67108864\n"))
    #expect(text.contains("swell_volume_used_bytes{volume=\"v1\"} 5242880\n"))
    #expect(!text.contains("swell_volume_used_bytes{volume=\"b1\"}"))
    #expect(!text.contains("swell_pool_size_bytes"), "no pool series without a pool")
  }

  @Test func poolAndInodeFiguresRenderWithEscapedLabels() {
    var figures = VolumeFigures()
    figures.inodes = [("v1", 65536, 12)]
    figures.pools = [("loop", PoolUsage(name: "/data/a \"b\"\\c", sizeBytes: 100, availableBytes: 40))]
    let text = figures.prometheusText()
    #expect(text.contains("swell_volume_inodes{volume=\"v1\"} 65536\n"))
    #expect(text.contains("swell_volume_used_inodes{volume=\"v1\"} 12\n"))
    #expect(text.contains("swell_pool_size_bytes{backend=\"loop\",pool=\"/data/a \\\"b\\\"\\\\c\"} 100\n"))
    #expect(text.contains("swell_pool_available_bytes{backend=\"loop\",pool=\"/data/a \\\"b\\\"\\\\c\"} 40\n"))
  }

  @Test func metricsAddressParsing() throws {
    #expect(throws: SwellError.self) { _ = try MetricsServer(address: "nonsense", logger: .init(label: "t")) { _ in (.ok, "") } }
    #expect(throws: SwellError.self) { _ = try MetricsServer(address: "h:99999", logger: .init(label: "t")) { _ in (.ok, "") } }
    _ = try MetricsServer(address: "127.0.0.1:9808", logger: .init(label: "t")) { _ in (.ok, "") }
  }
}
