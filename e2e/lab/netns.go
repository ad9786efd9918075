package lab

// InNetns runs f on a goroutine-locked OS thread switched into the named
// network namespace, so sockets f creates live there (a lab test dialing a
// lab address from the controller's side).
func InNetns(netns string, f func() error) error { return inNetns(netns, f) }
