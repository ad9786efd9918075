package lab

import "github.com/chimestack/chime-fence/e2e/nsenter"

// InNetns runs f on a goroutine-locked OS thread switched into the named
// network namespace, so sockets f creates live there (a lab test dialing a
// lab address from the controller's side).
func InNetns(name string, f func() error) error { return nsenter.Do(name, f) }
