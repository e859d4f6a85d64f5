#!/usr/bin/env bash
# Everything: Swift unit and integration tests, then the Python conformance suite against the
# real binary (with the iSCSI target tests and the VM tier), the sidecar and deploy suites, then a
# check that no loop device, mount, tgtd or VM was left behind. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
# Each stage's header names the minutes since the start, so a slow run shows where the time went.
stage() { printf '== %s (at %d:%02d)\n' "$1" $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60)); }
scripts/setup.sh --tests

leftovers() {
  local found=0
  for f in /sys/block/loop*/loop/backing_file; do
    [ -e "$f" ] || continue
    # A device attached in a namespace that is gone (a node of the cluster tiers) shows its file
    # relative to the mount it was seen through: /volumes/…, /snapshots/….
    case "$(cat "$f")" in /tmp/swell-*|/volumes/*|/snapshots/*) echo "leaked loop device: $f -> $(cat "$f")"; found=1 ;; esac
  done
  if grep -q " /tmp/swell-" /proc/self/mountinfo; then
    echo "leaked mounts:"; grep " /tmp/swell-" /proc/self/mountinfo; found=1
  fi
  if pgrep -f "(^|/)tgtd -f -C" >/dev/null || pgrep -x qemu-system-x86 >/dev/null || pgrep -f "postgres -D /tmp/swell-" >/dev/null || pgrep -x mariadbd >/dev/null; then
    echo "leaked processes:"; pgrep -af "(^|/)tgtd -f -C|qemu-system-x86|postgres -D /tmp/swell-|mariadbd"; found=1
  fi
  # The monitoring test's private Prometheus.
  if pgrep -f "prometheus --config.file=/tmp/swell-" >/dev/null; then
    echo "leaked Prometheus:"; pgrep -af "prometheus --config.file=/tmp/swell-"; found=1
  fi
  # The rbd tests' private Ceph clusters (any Ceph daemon at all: the machine's own must not run
  # either), and their directories. Zombies waiting to be reaped are not processes left running.
  if ps -eo stat=,comm= | awk '$1 !~ /^Z/ && $2 ~ /^ceph-(mon|mgr|osd|mds)$/ {found=1} END {exit !found}'; then
    echo "leaked Ceph daemons:"; ps -eo pid=,stat=,args= | grep -E "ceph-(mon|mgr|osd|mds)" | grep -v grep; found=1
  fi
  if compgen -G "/tmp/swell-ceph-*" >/dev/null; then echo "leaked:" /tmp/swell-ceph-*; found=1; fi
  if ip netns list 2>/dev/null | grep -q "^swell-rbd-"; then echo "leaked network namespace:"; ip netns list | grep "^swell-rbd-"; found=1; fi
  # The real-node tier: its cluster's processes, kubelet's root and the node's host paths.
  if pgrep -f "swell-kube-" >/dev/null || pgrep -x containerd >/dev/null || pgrep -f containerd-shim-runc-v2 >/dev/null; then
    echo "leaked cluster processes:"; pgrep -af "swell-kube-|containerd"; found=1
  fi
  for d in /var/lib/kubelet /var/lib/swell /var/lib/swell-iscsi /tmp/swell-kube-*; do
    if [ -e "$d" ]; then echo "leaked: $d"; found=1; fi
  done
  if ip link show swelltest0 >/dev/null 2>&1; then echo "leaked bridge swelltest0"; found=1; fi
  # The multi-node tier: its bridge, and a veth per node.
  if ip link show swellk0 >/dev/null 2>&1 || ip -o link show | grep -q ": swk[0-9]"; then
    echo "leaked multi-node network:"; ip -o link show | grep -E ": (swellk0|swk[0-9])"; found=1
  fi
  return $found
}

# The repository stands alone: every suite runs with the developers' reference folder (../shared)
# looked up in an empty directory, so that anything that still needs it fails here.
empty_shared="$(mktemp -d /tmp/swell-noshared-XXXXXX)"
trap 'rmdir "$empty_shared" 2>/dev/null || true' EXIT
export SWELL_SHARED_DIR="$empty_shared"
# Every pytest run below loads scripts/pytest/swell_noskip.py, and -rs prints each skip's reason.
# setup.sh --tests has installed every tool the tests need, so here a skip is a failure
# (SWELL_NO_SKIPS=1); the one exception is the real-node tier without a node kit, outside CI.
export SWELL_NO_SKIPS=1
export PYTHONPATH="$PWD/scripts/pytest${PYTHONPATH:+:$PYTHONPATH}"
export PYTEST_ADDOPTS="-p swell_noskip -rs ${PYTEST_ADDOPTS:-}"

stage "build"
mkdir -p .build
if ! swift build --build-tests > .build/test-build.log 2>&1; then
  grep -E "error:" -A3 .build/test-build.log | head -n 60 || tail -n 60 .build/test-build.log
  exit 1
fi
tail -n 1 .build/test-build.log

# The VM tier (tests named test_vm_*: a Debian kernel under qemu TCG, for device-mapper, quotas and
# the iSCSI initiator) keeps one core busy for most of the run, so it starts as soon as the debug
# binary exists and runs in the background beside every host suite, the release build, the
# deploy tests and the real-node tiers; it is waited for before the check for leftovers. No host
# test times anything: the suites that wait on real work (pgbench's pace, watches) wait on events,
# not on the clock.
vm_log="$PWD/.build/vm-tier.log"
stage "conformance, VM tier: started in the background (its log: .build/vm-tier.log)"
# The fence drills (two guests each) come last in it: by then the host suites are done, and they run
# beside the real-node tiers.
# The VM tier is the longest path of the run, so its one-guest tests run at a higher priority than
# the host suites beside them, which wait on real work and finish well before it. The fence drills
# (two guests: both cores) go back to the normal priority, beside the real-node tiers' timed waits.
(
  renice -n -5 -p "$BASHPID" > /dev/null || true
  vm=0 fence=0
  SWELL_BIN="$PWD/.build/debug/swell" python3 -m pytest -q -rs -p no:cacheprovider -k "test_vm_ and not test_vm_fence" conformance || vm=$?
  renice -n 0 -p "$BASHPID" > /dev/null || true
  echo "== the fence drills (two kernels as two nodes)"
  SWELL_BIN="$PWD/.build/debug/swell" python3 -m pytest -q -rs -p no:cacheprovider -k "test_vm_fence" conformance || fence=$?
  [ "$vm" -eq 0 ] && [ "$fence" -eq 0 ]
) > "$vm_log" 2>&1 &
vm_pid=$!
# On any failure below, stop it and its VMs, deepest first (a background job ignores SIGINT, so
# pytest's own cleanups cannot be asked for; everything it made lives inside the guest or its temp folder).
kill_tree() { local child; for child in $(pgrep -P "$1"); do kill_tree "$child"; done; kill "$1" 2>/dev/null || true; }
trap 'kill_tree $vm_pid; rmdir "$empty_shared" 2>/dev/null || true' EXIT

# The release build (the image's binary, for the deploy tests and the real-node tiers) also starts
# now, in the background at a lower priority: it takes the CPU that the host suites leave while they
# wait on real work, instead of holding up everything after it for its own 16 to 18 minutes.
release_out="$PWD/.build-release/image"
stage "release build: started in the background (scripts/build-release.sh; its log: .build/release-build.log)"
nice -n 10 scripts/build-release.sh "$release_out" > .build/release-build.log 2>&1 &
release_pid=$!
trap 'kill_tree $vm_pid; kill_tree $release_pid; rmdir "$empty_shared" 2>/dev/null || true' EXIT

stage "swift test (unit + loop-device integration)"
swift test --skip-build 2>&1 | grep -vE "^(◇|↳)|warning swell.test" 

stage "conformance (Python grpcio, stubs from proto/csi.proto, pinned to the official v1.12.0 text; iSCSI on a real tgtd)"
SWELL_BIN="$PWD/.build/debug/swell" python3 -m pytest -q -rs -p no:cacheprovider -k "not test_vm_ and not reference_copy" conformance
if [ -f ../shared/csi-spec/csi.proto ]; then
  # Developers keep the spec beside the clone: the committed proto must also be that copy, byte for byte.
  SWELL_SHARED_DIR="$(cd .. && pwd)/shared" python3 -m pytest -q -p no:cacheprovider \
    "conformance/test_identity.py::test_the_committed_proto_matches_the_reference_copy_when_there_is_one"
fi

stage "sidecar (the real sidecar and plugin against the test API server, over HTTPS)"
SWELL_BIN="$PWD/.build/debug/swell" python3 -m pytest -q -rs -p no:cacheprovider sidecars/tests

stage "release build: waiting for it"
if ! wait $release_pid; then
  grep -E "error:" -A3 .build/release-build.log | head -n 60 || tail -n 60 .build/release-build.log
  exit 1
fi
trap 'kill_tree $vm_pid; rmdir "$empty_shared" 2>/dev/null || true' EXIT
tail -n 1 .build/release-build.log
export SWELL_RELEASE_BIN="$release_out/swell"

stage "deploy and docs (kustomize, kubernetes-validate 1.33, yamllint, the image's build stage; promtool on the alerts; the docs' links and coverage)"
python3 -m pytest -q -p no:cacheprovider deploy/test_deploy.py deploy/test_monitoring.py docs/test_docs.py

stage "real node (the image and the dev overlay as pods on kubelet, kube-apiserver, scheduler, containerd; one node, then three)"
# It runs beside the tail of the VM tier: the two share no port, address, device or folder.
# The node kit is reference material beside the clone, named by a setting; in CI it must be there.
if [ -z "${SWELL_KUBE_KIT:-}" ] && [ -d ../shared/kube ]; then
  export SWELL_KUBE_KIT="$(cd ../shared/kube && pwd)"
fi
# The soak's report (JSON; a PNG too where matplotlib is installed) stays in .build/ for a look after.
export SWELL_SOAK_REPORT="${SWELL_SOAK_REPORT:-$PWD/.build/soak}"
node_status=0
if [ -z "${SWELL_KUBE_KIT:-}" ] && [ "${CI:-}" != "true" ]; then
  SWELL_NO_SKIPS=0 python3 -m pytest -q -rs -p no:cacheprovider cluster || node_status=$?
else
  python3 -m pytest -q -rs -p no:cacheprovider cluster || node_status=$?
fi

if [ -f "$SWELL_SOAK_REPORT.json" ]; then
  python3 - "$SWELL_SOAK_REPORT.json" <<'PY' || true
import json, statistics, sys
r = json.load(open(sys.argv[1]))
kinds = {}
for _, kind, _ in r["events"]:
    kinds[kind] = kinds.get(kind, 0) + 1
lat = [s[2] for s in r["pgbench"]]
print(f"the soak: {r['ledger_commits']} ledger commits, {len(r['ledger_failures'])} failed; events {kinds}; "
      f"pgbench latency (2 s averages) {statistics.median(lat) if lat else 0:.1f} ms median, "
      f"{max(lat) if lat else 0:.1f} ms at worst; {json.dumps(r['facts'])}")
PY
fi

stage "conformance, VM tier: waiting for it"
vm_status=0
wait $vm_pid || vm_status=$?
trap 'rmdir "$empty_shared" 2>/dev/null || true' EXIT
if [ "$vm_status" -ne 0 ]; then
  cat "$vm_log"
  echo "the VM tier failed (exit $vm_status)"
  exit 1
fi
tail -n 30 "$vm_log"
if [ "$node_status" -ne 0 ]; then
  echo "the real-node tier failed (exit $node_status)"
  exit 1
fi

stage "leftovers"
leftovers
echo "no loop device, mount, tgtd, VM, Ceph daemon, PostgreSQL or MariaDB left behind"
