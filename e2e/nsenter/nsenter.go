// Package nsenter runs code inside a named network namespace (one made with
// `ip netns add`), so lab tests and simulators can open sockets on the
// lab's networks from a process that lives in the root namespace.
package nsenter

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs f on an OS thread switched into the named network namespace;
// sockets f creates stay in that namespace after the thread switches back.
// An empty name runs f where we are.
func Do(name string, f func() error) error {
	if name == "" {
		return f()
	}
	target, err := os.Open("/run/netns/" + name)
	if err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: own namespace: %w", err)
	}
	defer orig.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %s: setns: %w", name, err)
	}
	ferr := f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it exits with this goroutine instead of
		// running other goroutines in the wrong namespace.
		return fmt.Errorf("netns: switch back: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}
