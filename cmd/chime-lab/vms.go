package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// vmSpec is one VM the keeper creates.
type vmSpec struct {
	name  string
	host  int // 1-based host index
	local bool
}

// vmList collects --vm NAME@HOST[:local] flags.
type vmList []vmSpec

var vmArgRE = regexp.MustCompile(`^([A-Za-z0-9][A-Za-z0-9._-]{0,63})@(?:host)?([0-9]+)(:local)?$`)

func (l *vmList) String() string {
	parts := make([]string, len(*l))
	for i, v := range *l {
		parts[i] = fmt.Sprintf("%s@host%d", v.name, v.host)
		if v.local {
			parts[i] += ":local"
		}
	}
	return strings.Join(parts, ",")
}

// Set parses one --vm; the host's range is checked by check, once --hosts
// is known.
func (l *vmList) Set(s string) error {
	m := vmArgRE.FindStringSubmatch(s)
	if m == nil {
		return fmt.Errorf("%q: want NAME@HOST or NAME@HOST:local, NAME letters, digits, '.', '_' or '-', HOST host1 or 1", s)
	}
	n, err := strconv.Atoi(m[2])
	if err != nil || n < 1 {
		return fmt.Errorf("%q: host %q: hosts are numbered from 1", s, m[2])
	}
	*l = append(*l, vmSpec{name: m[1], host: n, local: m[3] != ""})
	return nil
}

// check rejects hosts beyond --hosts and names used twice (including the
// vm1..vmN of --vms).
func (l vmList) check(hosts, vms int) error {
	seen := map[string]bool{}
	for i := 1; i <= vms; i++ {
		seen["vm"+strconv.Itoa(i)] = true
	}
	for _, v := range l {
		if v.host > hosts {
			return fmt.Errorf("--vm %s@host%d: no such host (--hosts %d)", v.name, v.host, hosts)
		}
		if seen[v.name] {
			return fmt.Errorf("--vm %s: a VM of that name is already planned (--vms %d names vm1..vm%d)", v.name, vms, vms)
		}
		seen[v.name] = true
	}
	return nil
}

// vmPlan is every VM the keeper creates, in order: vm1..vmN round-robin
// over the hosts with shared disks, then the --vm ones.
func vmPlan(vms, hosts int, extra vmList) []vmSpec {
	out := make([]vmSpec, 0, vms+len(extra))
	for i := 0; i < vms; i++ {
		out = append(out, vmSpec{name: "vm" + strconv.Itoa(i+1), host: i%hosts + 1})
	}
	return append(out, extra...)
}
