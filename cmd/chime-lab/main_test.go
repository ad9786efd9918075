package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/chimestack/chime-fence/e2e/lab"
)

func TestUsageErrorsExitTwo(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "usage:"},
		{[]string{"frob"}, "usage:"},
		{[]string{"up"}, "--dir is required"},
		{[]string{"show"}, "--dir is required"},
		{[]string{"down"}, "--dir is required"},
		{[]string{"up", "--dir", "/tmp/x", "--hosts", "3", "--redfish", "4"}, "--redfish 4 out of range 0..3"},
		{[]string{"up", "--dir", "/tmp/x", "--vms", "-1"}, "--vms -1 is negative"},
		{[]string{"up", "--dir", "/tmp/x", "--hosts", "3", "--redfish", "1", "--both", "3"}, "--both 3 out of range 0..2"},
		{[]string{"up", "--dir", "/tmp/x", "--both", "-1"}, "--both -1 out of range"},
		{[]string{"up", "--dir", "/tmp/x", "extra"}, `unexpected arguments ["extra"]`},
		{[]string{"up", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"exec"}, "exec: no command"},
		{[]string{"exec", "--lab", "x", "--"}, "exec: no command"},
		{[]string{"env", "extra"}, `unexpected arguments ["extra"]`},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		assert.Equal(t, 2, code, "%v", tc.args)
		assert.Contains(t, errb.String(), tc.want, "%v", tc.args)
	}
}

func TestShowWithoutLabFails(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"show", "--dir", t.TempDir()}, &out, &errb)
	assert.Equal(t, 1, code)
	assert.Contains(t, errb.String(), "is the lab up?")
}

func TestKeeperPIDIgnoresStrangers(t *testing.T) {
	dir := t.TempDir()
	assert.Zero(t, keeperPID(dir), "no pid file")
	// PID 1 is alive but not a chime-lab keeper.
	writePID(t, dir, "1")
	assert.Zero(t, keeperPID(dir))
	writePID(t, dir, "garbage")
	assert.Zero(t, keeperPID(dir))
}

func writePID(t *testing.T, dir, s string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "keeper.pid"), []byte(s+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestExecAndEnvNameAMissingLab(t *testing.T) {
	for _, args := range [][]string{
		{"exec", "--lab", "nosuchlab", "--", "true"},
		{"env", "--lab", "nosuchlab"},
	} {
		var out, errb bytes.Buffer
		assert.Equal(t, 1, run(args, &out, &errb), "%v", args)
		assert.Contains(t, errb.String(), `no lab "nosuchlab" is up`, "%v", args)
	}
	var out, errb bytes.Buffer
	assert.Equal(t, 1, run([]string{"env", "--dir", t.TempDir()}, &out, &errb))
	assert.Contains(t, errb.String(), "is the lab up?")
}

func TestPrepareBootOf(t *testing.T) {
	assert.Nil(t, prepareBootOf([]string{"/bin/other-agent", "--state-dir", "/x"}), "only chime-agent has prepare-boot")
	assert.Nil(t, prepareBootOf(nil))
	h := lab.Host{Name: "host2"}
	assert.Equal(t, []string{"/b/chime-agent", "prepare-boot", "--state-dir", "/s/host2"},
		prepareBootOf([]string{"/b/chime-agent", "--host", "{host}", "--state-dir", "/s/{host}"})(h))
	assert.Equal(t, []string{"/b/chime-agent", "prepare-boot", "--state-dir", "/s"},
		prepareBootOf([]string{"/b/chime-agent", "--state-dir=/s"})(h))
	assert.Equal(t, []string{"chime-agent", "prepare-boot"}, prepareBootOf([]string{"chime-agent"})(h), "its default state dir")
}
