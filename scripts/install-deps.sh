#!/usr/bin/env bash
# Installs the Debian packages chime-fence's lab, tests and demo need, only
# those missing. Runs as root (CI and the lab need root anyway). Not
# libvirt-daemon-system: the lab runs its own libvirtd per host and makes
# the mount points it needs itself (e2e/lab/doc.go), and that package would
# start a system libvirtd and its networks on the machine.
set -euo pipefail

packages=(
  openipmi ipmitool                          # ipmi_sim: real IPMI BMCs; ipmitool: a real client
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients  # one libvirtd per lab host
  qemu-system-x86 qemu-utils                 # real TCG guests, qcow2 disks
  iproute2 nftables iputils-ping             # namespaces, partitions, probes
  fence-agents                               # fence_ipmilan, the bench baseline
  redfishtool python3-sushy                  # real Redfish clients that check our simulator
  libxml2-utils                              # xmllint, for virt-xml-validate of rewritten domain XML
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${missing[*]}; run as root to install them" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
