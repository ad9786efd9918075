#!/usr/bin/env bash
# make demo: a 3-host lab of real libvirtd/QEMU hosts with real BMCs, and
# chime-fence looking at it. Every chime-fence command runs in the lab's
# controller namespace, as it would on a management network.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "make demo needs root (network namespaces, mounts); run it as root" >&2
  exit 1
fi

DIR="$PWD/.lab/demo"
BIN="$PWD/bin"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ms() { date +%s%3N; }

cleanup() {
  step "teardown"
  "$BIN/chime-lab" down --dir "$DIR" || true
}
trap cleanup EXIT

step "1. lab up: 3 hosts (host3 has a Redfish BMC), 3 VMs on shared storage"
"$BIN/chime-lab" down --dir "$DIR" >/dev/null 2>&1 || true
t0=$(ms)
"$BIN/chime-lab" up --dir "$DIR" --hosts 3 --vms 3 --redfish 1
echo "(lab up in $(( $(ms) - t0 )) ms)"
eval "$("$BIN/chime-lab" env --dir "$DIR")"
ctl() { ip netns exec "$CTL_NETNS" "$@"; }

step "2. a chime-fence configuration for the lab, validated"
"$BIN/chime-lab" config --dir "$DIR" --out "$DIR/chime-fence.yaml" >/dev/null
"$BIN/chime-fence" config validate "$DIR/chime-fence.yaml"
"$BIN/chime-fence" config show -c "$DIR/chime-fence.yaml" --host "$HOST3_NAME" | sed -n '/effective_policy/,$p'

step "3. dry runs: can each host be fenced, and which VMs could move? (changes nothing)"
for h in "$HOST1_NAME" "$HOST2_NAME" "$HOST3_NAME"; do
  ctl "$BIN/chime-fence" test-node "$h" -c "$DIR/chime-fence.yaml" || true
  echo
done

step "4. power loss: $HOST1_NAME's BMC powers it off (a real ipmitool, as a dying PSU would)"
t0=$(ms)
ctl ipmitool -I lanplus -C 3 -H "$HOST1_BMC_ADDR" -p "$HOST1_BMC_PORT" -U "$HOST1_BMC_USER" \
  -f "$HOST1_BMC_PASSWORD_FILE" chassis power off
echo "(ipmitool returned in $(( $(ms) - t0 )) ms; the host's QEMU processes are already gone)"
"$BIN/chime-lab" show --dir "$DIR" || true

step "5. test-node $HOST1_NAME now: the BMC reads Off, so it is fenceable; libvirt is unreachable"
ctl "$BIN/chime-fence" test-node "$HOST1_NAME" -c "$DIR/chime-fence.yaml" --timeout 2s || true

step "6. a wrong BMC password is named, never printed"
printf 'wrong-password\n' > "$DIR/wrong-pw"; chmod 600 "$DIR/wrong-pw"
sed "s#$HOST2_BMC_PASSWORD_FILE#$DIR/wrong-pw#" "$DIR/chime-fence.yaml" > "$DIR/wrong.yaml"
ctl "$BIN/chime-fence" test-node "$HOST2_NAME" -c "$DIR/wrong.yaml" || echo "(exit $?: no usable fence level)"

step "7. power back on: $HOST1_NAME boots (new boot id), its VMs defined and shut off"
ctl ipmitool -I lanplus -C 3 -H "$HOST1_BMC_ADDR" -p "$HOST1_BMC_PORT" -U "$HOST1_BMC_USER" \
  -f "$HOST1_BMC_PASSWORD_FILE" chassis power on
sleep 1
"$BIN/chime-lab" show --dir "$DIR" || true

step "next: the daemon detects step 4 by itself, fences it verified, and rebuilds the VMs elsewhere (issues 4 and 5)"
