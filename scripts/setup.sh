#!/usr/bin/env bash
# Installs what building, the demo and the tests need on a fresh Debian bookworm machine.
# Safe to run again: it installs only what is missing.
set -euo pipefail
need_apt=()
for pair in mkfs.ext4:e2fsprogs resize2fs:e2fsprogs mkfs.xfs:xfsprogs xfs_growfs:xfsprogs losetup:mount \
            blkid:util-linux blockdev:util-linux findmnt:util-linux sha256sum:coreutils openssl:openssl; do
  cmd=${pair%%:*} pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ "${1:-}" = "--tests" ]; then
  # The iSCSI tier: a real target (tgt), an independent initiator (libiscsi-bin), and the VM that
  # runs the kernel's initiator (qemu, SeaBIOS; open-iscsi's binaries are copied into the guest).
  # lvm2 and thin-provisioning-tools: their binaries are copied into the guest for the LVM tier.
  for pair in tgtd:tgt iscsi-readcapacity16:libiscsi-bin iscsiadm:open-iscsi qemu-system-x86_64:qemu-system-x86 \
              lvm:lvm2 thin_check:thin-provisioning-tools; do
    cmd=${pair%%:*} pkg=${pair##*:}
    command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
  done
  [ -e /usr/share/seabios/bios-256k.bin ] || need_apt+=(seabios)
  # The deploy tests render the overlays with `kubectl kustomize`. This machine kind ships kubectl;
  # elsewhere Debian's kubernetes-client provides it.
  command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if [ "${1:-}" = "--tests" ]; then
  python3 - <<'PY' 2>/dev/null || { echo "setup: pip install grpcio grpcio-tools pytest kubernetes-validate yamllint pyyaml"; python3 -m pip install -q grpcio grpcio-tools pytest kubernetes-validate yamllint pyyaml; }
import grpc, grpc_tools, pytest, kubernetes_validate, yamllint, yaml
PY
fi
