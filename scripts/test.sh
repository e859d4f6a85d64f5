#!/usr/bin/env bash
# Everything: Swift unit and integration tests, then the Python conformance suite against the
# real binary (with the iSCSI target tests and the VM tier), the sidecar and deploy suites, then a
# check that no loop device, mount, tgtd or VM was left behind. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests

leftovers() {
  local found=0
  for f in /sys/block/loop*/loop/backing_file; do
    [ -e "$f" ] || continue
    case "$(cat "$f")" in /tmp/swell-*) echo "leaked loop device: $f -> $(cat "$f")"; found=1 ;; esac
  done
  if grep -q " /tmp/swell-" /proc/self/mountinfo; then
    echo "leaked mounts:"; grep " /tmp/swell-" /proc/self/mountinfo; found=1
  fi
  if pgrep -f "^tgtd -f -C" >/dev/null || pgrep -x qemu-system-x86 >/dev/null || pgrep -f "postgres -D /tmp/swell-" >/dev/null; then
    echo "leaked processes:"; pgrep -af "^tgtd -f -C|qemu-system-x86|postgres -D /tmp/swell-"; found=1
  fi
  return $found
}

# The repository stands alone: every suite runs with the developers' reference folder (../shared)
# looked up in an empty directory, so that anything that still needs it fails here.
empty_shared="$(mktemp -d /tmp/swell-noshared-XXXXXX)"
trap 'rmdir "$empty_shared" 2>/dev/null || true' EXIT
export SWELL_SHARED_DIR="$empty_shared"

echo "== build"
mkdir -p .build
if ! swift build --build-tests > .build/test-build.log 2>&1; then
  grep -E "error:" -A3 .build/test-build.log | head -n 60 || tail -n 60 .build/test-build.log
  exit 1
fi
tail -n 1 .build/test-build.log

echo "== swift test (unit + loop-device integration)"
swift test --skip-build 2>&1 | grep -vE "^(◇|↳)|warning swell.test" 

echo "== conformance (Python grpcio, stubs from proto/csi.proto, pinned to the official v1.12.0 text; iSCSI on a real tgtd, and in the VM tier)"
SWELL_BIN="$PWD/.build/debug/swell" python3 -m pytest -q -p no:cacheprovider conformance
if [ -f ../shared/csi-spec/csi.proto ]; then
  # Developers keep the spec beside the clone: the committed proto must also be that copy, byte for byte.
  SWELL_SHARED_DIR="$(cd .. && pwd)/shared" python3 -m pytest -q -p no:cacheprovider \
    "conformance/test_identity.py::test_the_committed_proto_matches_the_reference_copy_when_there_is_one"
fi

echo "== sidecar (the real sidecar and plugin against the test API server, over HTTPS)"
SWELL_BIN="$PWD/.build/debug/swell" python3 -m pytest -q -p no:cacheprovider sidecars/tests

echo "== deploy (kustomize, kubernetes-validate 1.33, yamllint, the image's build stage)"
python3 -m pytest -q -p no:cacheprovider deploy/test_deploy.py

echo "== leftovers"
leftovers
echo "no loop device, mount, tgtd, VM or PostgreSQL left behind"
