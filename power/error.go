package power

import (
	"errors"
	"fmt"
)

// Kind classifies why a BMC operation failed, so the fencer can decide
// without parsing text: an unreachable BMC is worth a retry, a wrong password
// is not.
type Kind int

const (
	// KindUnknown is any failure the driver could not classify.
	KindUnknown Kind = iota
	// KindUnreachable: no answer from the BMC (connection refused, no route,
	// no reply before the deadline at the transport level).
	KindUnreachable
	// KindAuth: the BMC answered and rejected the credentials or privilege.
	KindAuth
	// KindRefused: the BMC understood the request and refused the action
	// (reset type not allowed, command not supported, invalid state).
	KindRefused
	// KindTimeout: the context deadline passed while waiting for the BMC.
	KindTimeout
	// KindConfig: the driver's configuration cannot work (no system id when
	// the BMC has several systems, unreadable CA file); fix the config.
	KindConfig
	// KindProtocol: the BMC answered with something we cannot interpret.
	KindProtocol
)

var kindNames = [...]string{"unknown", "bmc-unreachable", "bmc-auth-failed", "bmc-refused", "timeout", "config", "protocol"}

func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return fmt.Sprintf("Kind(%d)", int(k))
	}
	return kindNames[k]
}

// Retryable reports whether trying the same BMC again may succeed.
func (k Kind) Retryable() bool {
	switch k {
	case KindUnreachable, KindTimeout, KindUnknown, KindProtocol:
		return true
	}
	return false
}

// Sentinels so callers can write errors.Is(err, power.ErrAuth).
var (
	ErrUnreachable = &Error{Kind: KindUnreachable}
	ErrAuth        = &Error{Kind: KindAuth}
	ErrRefused     = &Error{Kind: KindRefused}
	ErrTimeout     = &Error{Kind: KindTimeout}
	ErrConfig      = &Error{Kind: KindConfig}
	ErrProtocol    = &Error{Kind: KindProtocol}
)

// Error is a failed BMC operation: which host, which step, what kind of
// failure, and the underlying cause. Its text never contains credentials;
// drivers must not put them in Err either.
type Error struct {
	Kind Kind
	Host string // host name from the config
	Step string // e.g. "ipmi: chassis status", "redfish: reset ForceOff"
	Err  error
}

func (e *Error) Error() string {
	s := e.Kind.String()
	if e.Step != "" {
		s = e.Step + ": " + s
	}
	if e.Host != "" {
		s = "host " + e.Host + ": " + s
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches any *Error of the same Kind, so sentinels work with errors.Is.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Kind == e.Kind && t.Host == "" && t.Step == "" && t.Err == nil
}

// Errorf builds an *Error with a formatted cause.
func Errorf(kind Kind, host, step, format string, args ...any) *Error {
	return &Error{Kind: kind, Host: host, Step: step, Err: fmt.Errorf(format, args...)}
}

// KindOf returns the Kind of the first *Error in err's chain, or KindUnknown.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindUnknown
}
