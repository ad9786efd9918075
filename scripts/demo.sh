#!/usr/bin/env bash
# make demo: a 3-host lab of real libvirtd/QEMU hosts with real BMCs, and
# chime-fence in enforce mode keeping its VMs running through a power loss.
# Every chime-fence command runs in the lab's controller namespace (chime-lab
# exec), as it would on a management network; from anywhere else the lab's
# addresses are unreachable. Leaves nothing behind (trap cleanup).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "make demo needs root (network namespaces, mounts); run it as root" >&2
  exit 1
fi

DIR="$PWD/.lab/demo"
BIN="$PWD/bin"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '\033[2m%s\033[0m\n' "$*"; }
ms() { date +%s%3N; }
now() { date +%Y-%m-%dT%H:%M:%S.%N%:z; }
die() { echo "demo: $*" >&2; exit 1; }
# until SECONDS CMD...: retry CMD every 100 ms until it succeeds.
until_ok() {
  local end=$(( $(ms) + $1 * 1000 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(ms)" -lt "$end" ] || return 1
    sleep 0.1
  done
}

DAEMON_PID=""
WATCH_PID=""
HOOK_PID=""
INTERRUPTED=""
cleanup() {
  local rc=$?
  step "teardown"
  for p in "$WATCH_PID" "$DAEMON_PID" "$HOOK_PID"; do
    if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; fi
  done
  "$BIN/chime-lab" down --dir "$DIR" || rc=1
  if [ -n "$INTERRUPTED" ]; then
    echo "demo interrupted" >&2
  elif [ "$rc" -ne 0 ] && [ -z "$DAEMON_PID" ]; then
    echo "demo FAILED (exit $rc) before the daemon started" >&2
  elif [ "$rc" -ne 0 ]; then
    echo "demo FAILED (exit $rc); the daemon log was $DIR/daemon.log:" >&2
    tail -n 20 "$DIR/daemon.log" 2>/dev/null | cut -c1-300 >&2 || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'INTERRUPTED=1; exit 130' INT TERM

AGENT="$BIN/chime-agent --host {host} --daemon http://{ctl}:7480 --token-file {token} --daemon-credential-file {daemon-token} --listen {addr}:7481 --libvirt {addr}:16509 --heartbeat-interval 200ms --reconcile-interval 1s --state-dir $DIR/agent-{host}"
SHARED_VMS="web1 web2 web3"

step "1. lab up: 3 hosts (host3 has a Redfish BMC), a chime-agent in each; host1 runs web1-3 on shared storage and scratch on its local disk"
"$BIN/chime-lab" down --dir "$DIR" >/dev/null 2>&1 ||
  die "an earlier lab in $DIR is not gone; see: $BIN/chime-lab down --dir $DIR"
rm -rf "$DIR" # agent state, alerts, logs of an earlier run
t0=$(ms)
"$BIN/chime-lab" up --dir "$DIR" --hosts 3 --vms 0 --redfish 1 --agent "$AGENT" \
  --vm web1@host1 --vm web2@host1 --vm web3@host1 --vm scratch@host1:local --vm app1@host2 --vm app2@host3
note "(lab up in $(( $(ms) - t0 )) ms)"
eval "$("$BIN/chime-lab" vars --dir "$DIR")"
# In the controller namespace, with CHIME_FENCE_CONFIG=$DIR/chime-fence.yaml
# (where chime-lab config writes) and the API token file in the environment.
ctl() { "$BIN/chime-lab" exec --dir "$DIR" -- "$@"; }
cf() { ctl "$BIN/chime-fence" "$@"; }
CFG="$DIR/chime-fence.yaml"
ipmi() { # ipmitool against host1's BMC, over the lab's BMC network
  ctl ipmitool -I lanplus -C 3 -H "$HOST1_BMC_ADDR" -p "$HOST1_BMC_PORT" -U "$HOST1_BMC_USER" -f "$HOST1_BMC_PASSWORD_FILE" "$@"
}

step "2. a chime-fence configuration for the lab in ENFORCE mode (200 ms heartbeats, 600 ms window, a signed alert webhook), validated"
"$BIN/chime-lab" config --dir "$DIR" --heartbeat 200ms --mode enforce >/dev/null
HOOK="127.0.0.1:7490" # inside the controller namespace, beside the daemon
(umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$DIR/webhook-secret")
cat >>"$CFG" <<EOF
alerts:
  webhooks:
    - name: demo
      url: http://$HOOK/hook
      secret_file: $DIR/webhook-secret
      timeout: 2s
EOF
"$BIN/chime-fence" config validate "$CFG"
grep -E '^mode:|shared_paths|url:' "$CFG"
"$BIN/chime-fence" config show -c "$CFG" --host "$HOST1_NAME" | sed -n '/effective_policy/,$p'

step "3. the daemon starts in the controller namespace; agents heartbeat into it; it captures every domain's XML"
# The webhook receiver checks every delivery's X-Chime-Signature.
ctl "$BIN/chime-lab" webhook --listen "$HOOK" --secret-file "$DIR/webhook-secret" --out "$DIR/alerts" 2>>"$DIR/webhook.log" &
HOOK_PID=$!
# Inventory every 500 ms (default 60 s) so the demo need not wait for it.
ctl env CHIME_FENCE_STORAGE_INVENTORY_INTERVAL=500ms "$BIN/chime-fence" daemon >"$DIR/daemon.log" 2>&1 &
DAEMON_PID=$!
until_ok 10 cf status || die "the daemon's API did not come up"
mirror="$SHARED_DIR/chime-fence/domains/$HOST1_NAME"
captured() { [ "$(find "$mirror" -name '*.xml' 2>/dev/null | wc -l)" -eq 4 ]; }
until_ok 20 captured || die "host1's 4 domains were not captured into $mirror"
sleep 1.5 # two load samples of every host, for the scheduler
cf status
echo
note "the inventory mirror on shared storage (an operator could virsh define these by hand):"
for f in "$mirror"/*.xml; do
  printf '  %s  %s\n' "${f#"$SHARED_DIR"/}" "$(sed -n 's#.*<name>\(.*\)</name>.*#\1#p' "$f" | head -1)"
done

step "4. dry runs: can each host be fenced, and which VMs could move? (changes nothing)"
for h in "$HOST1_NAME" "$HOST3_NAME"; do
  cf test-node "$h" || true
  echo
done

step "5. power loss: $HOST1_NAME's BMC powers it off (a real ipmitool, as a dying PSU would). Before:"
"$BIN/chime-lab" show --dir "$DIR" | tail -n +3
T0=$(now)
ipmi chassis power off
# The lab's own view, independent of the daemon: each VM seen running by
# virsh on another host, and no shared disk ever held by two QEMUs.
"$BIN/chime-lab" watch --dir "$DIR" --host "$HOST1_NAME" --names "${SHARED_VMS// /,}" --since "$T0" --timeout 60s \
  >"$DIR/vms.timeline" 2>"$DIR/watch.log" &
WATCH_PID=$!
evacuated() { cf history "$HOST1_NAME" --kind evacuation --since "$T0" -o json | grep -q '"kind"'; }
until_ok 60 evacuated || die "no evacuation of $HOST1_NAME recorded within 60 s"
wait "$WATCH_PID" || { cat "$DIR/watch.log" >&2; die "the lab did not see every shared-disk VM running elsewhere"; }
WATCH_PID=""

step "6. the timeline, t=0 at 'chassis power off' (daemon history, the lab's virsh view, the webhook's deliveries):"
sleep 0.3 # the last alerts in flight
offset_of() { # offset_of TIME [ZERO]: RFC 3339 TIME as an offset from ZERO (default T0), as the timelines print
  local d=$(( $(date -d "$1" +%s%3N) - $(date -d "${2:-$T0}" +%s%3N) ))
  local s="+"; [ "$d" -lt 0 ] && { s="-"; d=$(( -d )); }
  printf '%s%d.%03ds' "$s" $(( d / 1000 )) $(( d % 1000 ))
}
# alerts_since ZERO HOST: the webhook's deliveries about HOST at or after ZERO, as timeline rows.
alerts_since() {
  local zero=$1 host=$2 z at verdict type h summary
  z=$(date -d "$zero" +%s%3N)
  while IFS=$'\t' read -r at verdict type h summary; do
    [ "$h" = "$host" ] && [ "$(date -d "$at" +%s%3N)" -ge "$z" ] || continue
    printf '%9s  %-6s %-10s %s received by the webhook, %s: %s\n' "$(offset_of "$at" "$zero")" "$h" alert "$type" "$verdict" "$summary"
  done <"$DIR/alerts"
}
{
  cf history "$HOST1_NAME" --since "$T0" -o timeline
  cat "$DIR/vms.timeline"
  # The plan (each VM → its new host) is the history's evacuation-plan record.
  alerts_since "$T0" "$HOST1_NAME"
} | sort -s -g -k1,1 >"$DIR/timeline"
cut -c1-220 "$DIR/timeline"
echo
sed 's/^chime-lab watch: //' "$DIR/watch.log"
# first FILE WHAT TEXT: the offset of FILE's first WHAT row containing TEXT.
first() { awk -v w="$2" -v p="$3" '$3 == w && index($0, p) { sub(/s$/, "", $1); print $1; exit }' "$1"; }
last_vm=$(awk '$3 == "vm" { sub(/s$/, "", $1); t = $1 } END { print t }' "$DIR/timeline")
verified=$(first "$DIR/timeline" fence '→ verified')
[ -n "$verified" ] || die "no verified fence of $HOST1_NAME in the timeline"
grep -q 'scratch: not evacuable' "$DIR/timeline" || die "the local-disk VM scratch was not reported"
echo
echo "measured from power off (detection window 600 ms):"
printf '  %-44s %9ss\n' "last heartbeat" "$(first "$DIR/timeline" heartbeat 'last heartbeat')" \
  "BMC says off" "$(first "$DIR/timeline" bmc 'power off')" \
  "unreachable (no heartbeat, no probe answer)" "$(first "$DIR/timeline" monitor '→ unreachable')" \
  "host-down verdict" "$(first "$DIR/timeline" verdict '→ host-down')" \
  "fence verified (BMC read back off)" "$verified" \
  "evacuation recorded by the daemon" "$(first "$DIR/timeline" evacuation 'evacuation of')" \
  "${SHARED_VMS// /, } all seen running by the lab" "$last_vm"
echo
note "where every VM runs now:"
"$BIN/chime-lab" show --dir "$DIR" | tail -n +3 | tee "$DIR/after"
for vm in $SHARED_VMS; do
  n=$(grep -o "$vm (running)" "$DIR/after" | wc -l)
  [ "$n" -eq 1 ] || die "$vm runs $n times"
done

step "7. power back on: $HOST1_NAME boots; its agent destroys and undefines the stale copies; it stays drained"
T1=$(now)
ipmi chassis power on
# host FIELD VALUE: the daemon's status of host has FIELD = VALUE.
host_is() {
  cf status -o json | tr -d ' \n' | sed 's/{"name":/\n&/g' | grep "^{\"name\":\"$1\"" | grep -q "\"$2\":\"$3\""
}
evicted() { [ "$(cf history "$HOST1_NAME" --kind evicted --since "$T1" -o json | grep -c '"kind": "evicted"')" -ge 3 ]; }
until_ok 60 evicted || die "the returning host did not clean up its 3 stale copies"
until_ok 30 host_is "$HOST1_NAME" monitor normal || die "$HOST1_NAME did not come back to normal"
sleep 0.5 # alerts still in flight
{ cf history "$HOST1_NAME" --since "$T1" -o timeline; alerts_since "$T1" "$HOST1_NAME"; } | sort -s -g -k1,1 >"$DIR/timeline.on"
cut -c1-220 "$DIR/timeline.on"
echo
echo "measured from power on:"
printf '  %-44s %9ss\n' "first heartbeat of the new boot" "$(first "$DIR/timeline.on" reboot 'boot id changed')" \
  "stale copies destroyed and undefined" "$(awk '$3 == "evicted" { sub(/s$/, "", $1); t = $1 } END { print t }' "$DIR/timeline.on")" \
  "monitor normal again" "$(first "$DIR/timeline.on" monitor '→ normal')"
echo
cf status
host_is "$HOST1_NAME" admin drained || die "$HOST1_NAME is not drained"
echo
"$BIN/chime-lab" show --dir "$DIR" | tail -n +3 | tee "$DIR/after-on"
grep "^$HOST1_NAME " "$DIR/after-on" | grep -q 'scratch (shut off)' || die "scratch is not defined and stopped on $HOST1_NAME"
if grep "^$HOST1_NAME " "$DIR/after-on" | grep -q web; then die "a stale copy is still defined on $HOST1_NAME"; fi
note "(scratch, on host1's local disk, stays defined and stopped there; host1 stays drained until an operator enables it)"

step "8. $HOST2_NAME's agent is killed: agent down, host alive (it answers probes) — an alert, never a fence"
T2=$(now)
"$BIN/chime-lab" kill-agent --dir "$DIR" --host "$HOST2_NAME"
until_ok 10 host_is "$HOST2_NAME" verdict agent-down || die "$HOST2_NAME's verdict did not become agent-down"
sleep 1
cf status
echo
fences=$(cf history "$HOST2_NAME" --kind fence -o json | grep -c '"kind": "fence"' || true)
[ "$fences" -eq 0 ] || die "$HOST2_NAME was fenced"
echo "fence records for $HOST2_NAME: $fences; its VMs:"
"$BIN/chime-lab" show --dir "$DIR" | grep "^$HOST2_NAME "
echo
cf history "$HOST2_NAME" --since "$T2" -o timeline | cut -c1-220
alerts_since "$T2" "$HOST2_NAME" | cut -c1-220

step "9. a wrong BMC password is named, never printed"
printf 'wrong-password\n' > "$DIR/wrong-pw"; chmod 600 "$DIR/wrong-pw"
sed "s#$HOST2_BMC_PASSWORD_FILE#$DIR/wrong-pw#" "$CFG" > "$DIR/wrong.yaml"
out=$(cf test-node "$HOST2_NAME" -c "$DIR/wrong.yaml" --timeout 2s 2>&1) && rc=0 || rc=$?
echo "$out" | sed -n '/fence levels/,/^$/p'
echo "(exit $rc: no usable fence level)"
if grep -q wrong-password <<<"$out"; then die "the password was printed"; fi
echo "the password file's content appears nowhere in the output"

step "10. every alert the webhook received"
n=$(wc -l <"$DIR/alerts")
bad=$(cut -f2 "$DIR/alerts" | grep -vc -e '^signed$' -e '^duplicate$' || true)
cut -f3 "$DIR/alerts" | sort | uniq -c | sed 's/^/  /'
echo "$n deliveries, $bad without a valid X-Chime-Signature"
[ "$bad" -eq 0 ] || die "a delivery's signature did not verify"
