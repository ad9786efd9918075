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

DAEMON_PID=""
cleanup() {
  step "teardown"
  if [ -n "$DAEMON_PID" ]; then kill "$DAEMON_PID" 2>/dev/null || true; wait "$DAEMON_PID" 2>/dev/null || true; fi
  "$BIN/chime-lab" down --dir "$DIR" || true
}
trap cleanup EXIT

AGENT="$BIN/chime-agent --host {host} --daemon http://{ctl}:7480 --token-file {token} --listen {addr}:7481 --libvirt {addr}:16509 --heartbeat-interval 200ms --reconcile-interval 5s --state-dir $DIR/agent-{host}"

step "1. lab up: 3 hosts (host3 has a Redfish BMC), 3 VMs on shared storage, a chime-agent in each host"
"$BIN/chime-lab" down --dir "$DIR" >/dev/null 2>&1 || true
t0=$(ms)
"$BIN/chime-lab" up --dir "$DIR" --hosts 3 --vms 3 --redfish 1 --agent "$AGENT"
echo "(lab up in $(( $(ms) - t0 )) ms)"
eval "$("$BIN/chime-lab" env --dir "$DIR")"
ctl() { ip netns exec "$CTL_NETNS" "$@"; }
CFG="$DIR/chime-fence.yaml"

step "2. a chime-fence configuration for the lab (200 ms heartbeats, 600 ms window), validated"
"$BIN/chime-lab" config --dir "$DIR" --out "$CFG" --heartbeat 200ms >/dev/null
"$BIN/chime-fence" config validate "$CFG"
"$BIN/chime-fence" config show -c "$CFG" --host "$HOST3_NAME" | sed -n '/effective_policy/,$p'

step "3. the daemon starts in the controller namespace (observe mode); agents heartbeat into it"
ctl "$BIN/chime-fence" daemon -c "$CFG" >"$DIR/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 50); do ctl "$BIN/chime-fence" status -c "$CFG" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 1
ctl "$BIN/chime-fence" status -c "$CFG"

step "4. dry runs: can each host be fenced, and which VMs could move? (changes nothing; shows the detector's verdict)"
for h in "$HOST1_NAME" "$HOST2_NAME" "$HOST3_NAME"; do
  ctl "$BIN/chime-fence" test-node "$h" -c "$CFG" || true
  echo
done

step "5. $HOST2_NAME's agent is killed: agent down, host alive — an alert, never a fence"
pkill -KILL -f -- "--host $HOST2_NAME --daemon" || true
sleep 1.5
ctl "$BIN/chime-fence" status -c "$CFG"

step "6. power loss: $HOST1_NAME's BMC powers it off (a real ipmitool, as a dying PSU would)"
t0=$(ms)
ctl ipmitool -I lanplus -C 3 -H "$HOST1_BMC_ADDR" -p "$HOST1_BMC_PORT" -U "$HOST1_BMC_USER" \
  -f "$HOST1_BMC_PASSWORD_FILE" chassis power off
for _ in $(seq 100); do
  ctl "$BIN/chime-fence" status -c "$CFG" -o json | grep -q '"verdict": "host-down"' && break
  sleep 0.05
done
echo "(power off → host-down verdict seen by the CLI in $(( $(ms) - t0 )) ms)"
ctl "$BIN/chime-fence" status -c "$CFG"
echo
ctl "$BIN/chime-fence" history "$HOST1_NAME" -c "$CFG"
grep -o '"message":"would fence[^"]*"' "$DIR/daemon.log" | head -1 || true

step "7. a wrong BMC password is named, never printed"
printf 'wrong-password\n' > "$DIR/wrong-pw"; chmod 600 "$DIR/wrong-pw"
sed "s#$HOST2_BMC_PASSWORD_FILE#$DIR/wrong-pw#" "$CFG" > "$DIR/wrong.yaml"
ctl "$BIN/chime-fence" test-node "$HOST2_NAME" -c "$DIR/wrong.yaml" --timeout 2s || echo "(exit $?: no usable fence level)"

step "8. power back on: $HOST1_NAME boots with a new boot id and is normal again after 3 good heartbeats"
ctl ipmitool -I lanplus -C 3 -H "$HOST1_BMC_ADDR" -p "$HOST1_BMC_PORT" -U "$HOST1_BMC_USER" \
  -f "$HOST1_BMC_PASSWORD_FILE" chassis power on
sleep 3
ctl "$BIN/chime-fence" status -c "$CFG"
echo
ctl "$BIN/chime-fence" history "$HOST1_NAME" -c "$CFG" --limit 6

step "next: in enforce mode the daemon fences host-down hosts verified and rebuilds their VMs elsewhere (issue 5)"
