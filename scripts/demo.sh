#!/usr/bin/env bash
# The main job: build Swell and run `swell demo` (root; loop devices and mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ ! -x .build/debug/swell ]; then
  echo "demo: the first build compiles Swell and its packages (gRPC, SwiftNIO, BoringSSL):"
  echo "demo: about 8 to 10 minutes on 2 cores. Later runs rebuild in seconds."
fi
# Progress: every 100th build step, every error, and the last line.
swift build --product swell 2>&1 | awk '
  /error:/ { print; next }
  /^\[[0-9]+\/[0-9]+\]/ { n++; if (n % 100 == 0) { print "demo: build step " $1; fflush() } ; next }
  /complete!/ { print; next }'
exec .build/debug/swell demo "$@"
