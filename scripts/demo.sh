#!/usr/bin/env bash
# The main job: build Swell and run `swell demo` (root; loop devices and mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build --product swell 2>&1 | tail -n 1
exec .build/debug/swell demo "$@"
