#!/usr/bin/env bash
# Regenerates Sources/CSIProto from proto/csi.proto with protoc and the two Swift plugins.
#
# The plugins are built from the same package versions that Package.swift pins, in a scratch
# package under .build-protoc/ (ignored by git). Needs: protobuf-compiler and libprotobuf-dev.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work="$root/.build-protoc"
out="$root/Sources/CSIProto"

if ! command -v protoc >/dev/null || [ ! -f /usr/include/google/protobuf/descriptor.proto ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler libprotobuf-dev
fi

mkdir -p "$work/Sources/dummy"
cat > "$work/Package.swift" <<'PKG'
// swift-tools-version:6.0
import PackageDescription
let package = Package(
  name: "protoc-plugins",
  dependencies: [
    .package(url: "https://github.com/apple/swift-protobuf.git", exact: "1.39.0"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", exact: "2.4.1"),
  ],
  targets: [.target(name: "dummy")]
)
PKG
echo "" > "$work/Sources/dummy/dummy.swift"
(cd "$work" && swift build -c release --product protoc-gen-swift && swift build -c release --product protoc-gen-grpc-swift-2)
bin="$work/.build/release"

rm -f "$out"/csi.pb.swift "$out"/csi.grpc.swift
protoc \
  --plugin=protoc-gen-swift="$bin/protoc-gen-swift" \
  --plugin=protoc-gen-grpc-swift-2="$bin/protoc-gen-grpc-swift-2" \
  -I "$root/proto" -I /usr/include \
  --swift_out="$out" --swift_opt=Visibility=Public \
  --grpc-swift-2_out="$out" --grpc-swift-2_opt=Visibility=Public,Server=true,Client=true \
  "$root/proto/csi.proto"
echo "generated: $(ls "$out")"
