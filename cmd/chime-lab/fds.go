package main

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// inheritedFDs lists this process's descriptors above stderr that an exec
// would pass on: those without close-on-exec. Go opens every descriptor
// of its own close-on-exec, so these came from the parent (a flock(1)
// lock, a pipe a CI runner waits on).
func inheritedFDs() []int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue // closed meanwhile (the ReadDir's own), or Go's
		}
		out = append(out, fd)
	}
	return out
}

// closeInherited closes every inherited descriptor (inheritedFDs): the
// keeper lives as long as its lab and must hold nothing of its parent's.
func closeInherited() {
	for _, fd := range inheritedFDs() {
		_ = unix.Close(fd)
	}
}

// noInheritance marks every inherited descriptor close-on-exec, so the
// keeper up starts never receives one.
func noInheritance() {
	for _, fd := range inheritedFDs() {
		_, _ = unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
	}
}
