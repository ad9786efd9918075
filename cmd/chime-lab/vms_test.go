package main

import (
	"bytes"
	"flag"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func parseVMs(t *testing.T, args ...string) (vmList, error) {
	t.Helper()
	var l vmList
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Var(&l, "vm", "")
	var argv []string
	for _, a := range args {
		argv = append(argv, "--vm", a)
	}
	return l, fs.Parse(argv)
}

func TestVMFlagParses(t *testing.T) {
	l, err := parseVMs(t, "web1@host1", "db@2:local", "x.y_z-1@3")
	require.NoError(t, err)
	assert.Equal(t, vmList{{name: "web1", host: 1}, {name: "db", host: 2, local: true}, {name: "x.y_z-1", host: 3}}, l)
	assert.Equal(t, "web1@host1,db@host2:local,x.y_z-1@host3", l.String())
}

func TestVMFlagRejectsBadSyntax(t *testing.T) {
	for _, a := range []string{"web1", "web1@", "@host1", "web1@host0", "web1@0", "web 1@1", "web1@1:shared", "web1@hostA", "-x@1"} {
		_, err := parseVMs(t, a)
		assert.Error(t, err, "%q", a)
	}
}

func TestVMCheck(t *testing.T) {
	l, err := parseVMs(t, "a@3")
	require.NoError(t, err)
	assert.NoError(t, l.check(3, 0))
	assert.EqualError(t, l.check(2, 0), "--vm a@host3: no such host (--hosts 2)")

	l, err = parseVMs(t, "vm2@1")
	require.NoError(t, err)
	assert.EqualError(t, l.check(3, 2), "--vm vm2: a VM of that name is already planned (--vms 2 names vm1..vm2)")
	assert.NoError(t, l.check(3, 1))

	l, err = parseVMs(t, "a@1", "a@2:local")
	require.NoError(t, err)
	assert.ErrorContains(t, l.check(3, 0), "--vm a: a VM of that name is already planned")
}

func TestVMPlanRoundRobinThenExtra(t *testing.T) {
	got := vmPlan(4, 3, vmList{{name: "loc", host: 2, local: true}})
	assert.Equal(t, []vmSpec{{name: "vm1", host: 1}, {name: "vm2", host: 2}, {name: "vm3", host: 3}, {name: "vm4", host: 1},
		{name: "loc", host: 2, local: true}}, got)
	assert.Empty(t, vmPlan(0, 3, nil))
}

func TestVMFlagUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"up", "--dir", "/tmp/x", "--vm", "a@4"}, "--vm a@host4: no such host (--hosts 3)"},
		{[]string{"up", "--dir", "/tmp/x", "--vm", "bad"}, `invalid value "bad" for flag -vm`},
		{[]string{"up", "--dir", "/tmp/x", "--vm", "vm1@1"}, "--vm vm1: a VM of that name is already planned"},
		{[]string{"up", "--dir", "/tmp/x", "--hosts", "0"}, "--hosts 0: a lab needs at least 1 host"},
	} {
		var out, errb bytes.Buffer
		assert.Equal(t, 2, run(tc.args, &out, &errb), "%v", tc.args)
		assert.Contains(t, errb.String(), tc.want, "%v", tc.args)
	}
}
