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
  # The real database of the end-to-end tests (postgres, pgbench, pg_amcheck); runuser is util-linux's.
  [ -x /usr/lib/postgresql/15/bin/postgres ] || need_apt+=(postgresql-15)
  # fio: the VM tier's database test copies it into the guest; bench/bench_db.py runs it here.
  command -v fio >/dev/null 2>&1 || need_apt+=(fio)
  # MariaDB and sysbench: the VM tier's commit stream (InnoDB, one commit a batch) beside readers.
  [ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
  command -v sysbench >/dev/null 2>&1 || need_apt+=(sysbench)
  # The deploy tests render the overlays with `kubectl kustomize`. This machine kind ships kubectl;
  # elsewhere Debian's kubernetes-client provides it.
  command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)
  # Prometheus and promtool: the alerting rules' checks and unit tests, and the live monitoring test.
  command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
  # The real-node tier (cluster/): etcd, containerd with runc and the CNI plugins under the kit's
  # Kubernetes binaries, mmdebstrap for the images' root filesystems, xz for the kit.
  for pair in etcd:etcd-server containerd:containerd runc:runc mmdebstrap:mmdebstrap xz:xz-utils ip:iproute2; do
    cmd=${pair%%:*} pkg=${pair##*:}
    command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
  done
  [ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
  # The rbd backend's tier: a private Ceph cluster (a monitor, a manager, memstore OSDs) that the
  # tests start themselves; ceph-common has the rbd and ceph clients. Installing starts no daemon.
  for pair in ceph-mon:ceph-mon ceph-osd:ceph-osd ceph-mgr:ceph-mgr rbd:ceph-common ceph:ceph-common; do
    cmd=${pair%%:*} pkg=${pair##*:}
    command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
  done
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  # One name per package (mkfs.xfs and xfs_growfs both come from xfsprogs).
  mapfile -t need_apt < <(printf '%s\n' "${need_apt[@]}" | awk '!seen[$0]++')
  echo "setup: apt-get install ${need_apt[*]}"
  apt-get update -qq
  # Installing postgresql-15, mariadb-server, etcd or containerd must not start the distribution's own service: the
  # tests run their own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  if [ "${made_policy:-0}" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
if [ "${1:-}" = "--tests" ]; then
  python3 - <<'PY' 2>/dev/null || { echo "setup: pip install grpcio grpcio-tools pytest kubernetes-validate yamllint pyyaml"; python3 -m pip install -q grpcio grpcio-tools pytest kubernetes-validate yamllint pyyaml; }
import grpc, grpc_tools, pytest, kubernetes_validate, yamllint, yaml
PY
fi
