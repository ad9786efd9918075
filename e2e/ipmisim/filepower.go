package ipmisim

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Names inside the directory given to WriteFilePowerControl.
const (
	filePowerProg  = "chassis-control"
	filePowerState = "state"
)

// The state is replaced by rename so a concurrent "get power" never reads a
// half-written file. A leading "0x.." device argument is skipped so the same
// script works with the stock ipmi_sim_chassiscontrol calling convention.
const filePowerScript = `#!/bin/sh
# chassis_control for ipmi_sim: power state kept in a file (written by chime-fence e2e/ipmisim).
dir=$(dirname "$0")
st="$dir/` + filePowerState + `"
case "$1" in 0x*) shift ;; esac
op=$1
[ -n "$op" ] || { echo "no operation given"; exit 1; }
shift
write() { printf '%s\n' "$1" > "$st.tmp.$$" && mv -f "$st.tmp.$$" "$st"; }
case "$op" in
get)
	for p in "$@"; do
		case "$p" in
		power) v=$(cat "$st" 2>/dev/null) || v=1; echo "power:$v" ;;
		boot) echo "boot:default" ;;
		*) echo "invalid parameter: $p"; exit 1 ;;
		esac
	done
	;;
set)
	while [ $# -gt 0 ]; do
		p=$1; v=$2
		[ $# -ge 2 ] || { echo "no value for $p"; exit 1; }
		shift 2
		case "$p" in
		power)
			case "$v" in 0|1) write "$v" ;; *) echo "invalid power value: $v"; exit 1 ;; esac ;;
		shutdown)
			# A simulated OS that honours the ACPI request at once.
			[ "$v" = 1 ] && write 0 ;;
		reset|boot|identify) ;;
		*) echo "invalid parameter: $p"; exit 1 ;;
		esac
	done
	;;
check) exit 1 ;;
*) echo "unknown operation: $op"; exit 1 ;;
esac
exit 0
`

// WriteFilePowerControl writes into dir (created) a chassis_control program
// whose power state is the file dir/state, initially on unless the file
// already exists, and returns the program's path. See the package doc for
// the calling convention.
func WriteFilePowerControl(dir string) (prog string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("ipmisim: file power control: %w", err)
	}
	prog = filepath.Join(dir, filePowerProg)
	if err := os.WriteFile(prog, []byte(filePowerScript), 0o755); err != nil {
		return "", fmt.Errorf("ipmisim: file power control: %w", err)
	}
	if err := os.Chmod(prog, 0o755); err != nil {
		return "", fmt.Errorf("ipmisim: file power control: %w", err)
	}
	st := filepath.Join(dir, filePowerState)
	if _, err := os.Stat(st); os.IsNotExist(err) {
		if err := SetFilePower(dir, true); err != nil {
			return "", err
		}
	}
	return prog, nil
}

// FilePower reads the power state kept by WriteFilePowerControl's program
// in dir.
func FilePower(dir string) (on bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, filePowerState))
	if err != nil {
		return false, fmt.Errorf("ipmisim: read file power: %w", err)
	}
	switch v := strings.TrimSpace(string(b)); v {
	case "1":
		return true, nil
	case "0":
		return false, nil
	default:
		return false, fmt.Errorf("ipmisim: file power state %q is neither 0 nor 1", v)
	}
}

// SetFilePower sets the power state kept by WriteFilePowerControl's program
// in dir, behind the BMC's back (a host that powered itself on or off).
func SetFilePower(dir string, on bool) error {
	v := "0\n"
	if on {
		v = "1\n"
	}
	st := filepath.Join(dir, filePowerState)
	tmp := st + ".tmp-go"
	if err := os.WriteFile(tmp, []byte(v), 0o644); err != nil {
		return fmt.Errorf("ipmisim: set file power: %w", err)
	}
	if err := os.Rename(tmp, st); err != nil {
		return fmt.Errorf("ipmisim: set file power: %w", err)
	}
	return nil
}
