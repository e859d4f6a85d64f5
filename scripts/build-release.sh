#!/usr/bin/env bash
# The build stage of the container image (deploy/Containerfile), runnable on any machine with Swift:
# a release build with the Swift runtime linked statically, stripped, then checked: it must run, and
# it may need only libraries that the runtime image installs.
# Usage: scripts/build-release.sh OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/build-release.sh OUTDIR}
scratch=${SWELL_RELEASE_SCRATCH:-.build-release}
swift build -c release --static-swift-stdlib --product swell --scratch-path "$scratch"
mkdir -p "$out"
install -m 0755 "$scratch/release/swell" "$out/swell"
strip "$out/swell"
"$out/swell" version
# Libraries the runtime image (debian:bookworm-slim plus its packages) provides.
allowed='linux-vdso|libc\.so|libm\.so|libstdc\+\+|libgcc_s|libz\.so|libdl|libpthread|librt|ld-linux|libutil'
extra=$(ldd "$out/swell" | awk '{print $1}' | grep -vE "$allowed" || true)
if [ -n "$extra" ]; then
  echo "build-release: the binary needs libraries the runtime image lacks: $extra" >&2
  exit 1
fi
echo "build-release: $out/swell ($(du -h "$out/swell" | cut -f1)), links only: $(ldd "$out/swell" | awk '{print $1}' | tr '\n' ' ')"
