// swift-tools-version:6.2
import PackageDescription

/// Swell: a CSI block-storage driver that grows volumes online.
let package = Package(
  name: "swell",
  platforms: [.macOS(.v15)],
  products: [
    .executable(name: "swell", targets: ["swell"])
  ],
  dependencies: [
    .package(url: "https://github.com/grpc/grpc-swift-2.git", exact: "2.4.3"),
    .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", exact: "2.9.2"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", exact: "2.4.1"),
    .package(url: "https://github.com/apple/swift-protobuf.git", exact: "1.39.0"),
    .package(url: "https://github.com/apple/swift-argument-parser.git", exact: "1.8.2"),
    .package(url: "https://github.com/apple/swift-log.git", exact: "1.16.2"),
    .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    .package(url: "https://github.com/swift-server/swift-prometheus.git", exact: "2.4.1"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", exact: "2.13.0"),
    .package(url: "https://github.com/swiftlang/swift-subprocess.git", exact: "1.0.2", traits: []),
    .package(url: "https://github.com/swift-server/async-http-client.git", exact: "1.37.0"),
    .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.30.0"),
    .package(url: "https://github.com/jpsim/Yams.git", exact: "6.2.2"),
  ],
  targets: [
    // Generated from proto/csi.proto by scripts/gen-proto.sh; never edited by hand.
    .target(
      name: "CSIProto",
      dependencies: [
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
      ]
    ),
    // Linux calls Swift's Glibc module lacks: project IDs and project quotas.
    .target(name: "CSwellSys"),
    // The host: commands as argv arrays, mounts, loop devices, filesystems.
    .target(
      name: "SwellHost",
      dependencies: [
        "CSwellSys",
        .product(name: "Subprocess", package: "swift-subprocess"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "NIOPosix", package: "swift-nio"),
      ]
    ),
    // Backends behind one protocol; the loop-file backend.
    .target(
      name: "SwellStorage",
      dependencies: ["SwellHost"]
    ),
    // The CSI services, the error mapping, locks and the server.
    .target(
      name: "SwellDriver",
      dependencies: [
        "CSIProto", "SwellHost", "SwellStorage",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "Prometheus", package: "swift-prometheus"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
      ]
    ),
    // A CSI client over a unix socket, for the CLI, the demo and the tests.
    .target(
      name: "SwellClient",
      dependencies: [
        "CSIProto",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
      ]
    ),
    // A small Kubernetes API client: kubeconfig, list and watch, informer caches, writes.
    .target(
      name: "SwellKube",
      dependencies: [
        "SwellHost",
        .product(name: "AsyncHTTPClient", package: "async-http-client"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Yams", package: "Yams"),
      ],
      path: "sidecars/Sources/SwellKube"
    ),
    // The provisioner/resizer sidecar: reconcile loops over PVCs and PVs, calling the plugin.
    .target(
      name: "SwellSidecar",
      dependencies: [
        "SwellKube", "SwellClient", "SwellDriver", "SwellHost", "CSIProto",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Prometheus", package: "swift-prometheus"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ],
      path: "sidecars/Sources/SwellSidecar"
    ),
    .executableTarget(
      name: "swell",
      dependencies: [
        "SwellSidecar", "SwellKube", "SwellDriver", "SwellClient", "SwellHost", "SwellStorage", "CSIProto",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "UnixSignals", package: "swift-service-lifecycle"),
      ]
    ),
    .testTarget(
      name: "SwellUnitTests",
      dependencies: [
        "SwellDriver", "SwellStorage", "SwellHost", "CSIProto",
        .product(name: "Logging", package: "swift-log"),
      ]
    ),
    .testTarget(
      name: "SwellSidecarTests",
      dependencies: ["SwellSidecar", "SwellKube", "SwellHost", "CSIProto"]
    ),
    .testTarget(
      name: "SwellIntegrationTests",
      dependencies: ["SwellDriver", "SwellClient", "SwellStorage", "SwellHost", "CSIProto"]
    ),
  ]
)
