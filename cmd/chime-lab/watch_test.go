package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestGuestName(t *testing.T) {
	for cmd, want := range map[string]string{
		"/usr/bin/qemu-system-x86_64 -name guest=web1,debug-threads=on -S": "web1",
		"qemu -name guest=a.b_c-1 -S":                                      "a.b_c-1",
		"qemu -name guest=last":                                            "last",
		"qemu -S -machine pc":                                              "",
	} {
		assert.Equal(t, want, guestName(cmd), cmd)
	}
}

func TestSharedHolders(t *testing.T) {
	disks := []string{"/lab/shared/web1.qcow2", "/lab/shared/web10.qcow2"}
	procs := []qemuProc{
		{host: "host2", pid: 10, cmd: `qemu -blockdev {"filename":"/lab/shared/web1.qcow2"}`},
		{host: "host3", pid: 11, cmd: `qemu -blockdev {"filename":"/lab/shared/web10.qcow2"}`},
	}
	assert.Empty(t, sharedHolders(procs, disks), "web1.qcow2 is not web10.qcow2")
	procs = append(procs, qemuProc{host: "host1", pid: 12, cmd: `qemu -blockdev {"filename":"/lab/shared/web1.qcow2"}`})
	assert.Equal(t, map[string][]string{"/lab/shared/web1.qcow2": {"host2/pid 10", "host1/pid 12"}}, sharedHolders(procs, disks))
}

func TestOffsetSince(t *testing.T) {
	assert.Regexp(t, `^\+1\.[0-9]{3}s$`, offsetSince(time.Now().Add(-1500*time.Millisecond)))
	assert.Regexp(t, `^-(4|5)\.[0-9]{3}s$`, offsetSince(time.Now().Add(5*time.Second)))
}

func TestWatchAndKillAgentUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"watch", "--dir", dir, "--host", "host1"}, 2, "--names is required"},
		{[]string{"watch", "--dir", dir, "--host", "host1", "--names", "a", "--timeout", "0s"}, 2, "--timeout 0s must be positive"},
		{[]string{"watch", "--dir", dir, "--host", "host1", "--names", "a", "--since", "noon"}, 2, `--since "noon": want an RFC 3339 time`},
		{[]string{"watch", "--dir", dir, "--names", "a"}, 2, "--host is required"},
		{[]string{"watch", "--dir", dir, "--host", "host1", "--names", "a"}, 1, "is the lab up?"},
		{[]string{"kill-agent", "--dir", dir}, 2, "--host is required"},
		{[]string{"kill-agent", "--dir", dir, "--host", "host2"}, 1, "is the lab up?"},
		{[]string{"kill-agent", "--host", "host2"}, 2, "--dir is required"},
	} {
		var out, errb bytes.Buffer
		assert.Equal(t, tc.code, run(tc.args, &out, &errb), "%v", tc.args)
		assert.Contains(t, errb.String(), tc.want, "%v", tc.args)
	}
}
