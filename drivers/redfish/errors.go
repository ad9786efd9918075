package redfish

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sort"
	"strings"
	"syscall"

	"github.com/stmcginnis/gofish/schemas"

	"github.com/chimestack/chime-fence/power"
)

// maxBodyInError bounds how much of a BMC's answer goes into error text.
const maxBodyInError = 300

// bmcError carries a readable, redacted description while keeping the
// original error in the chain for errors.Is/As.
type bmcError struct {
	msg string
	err error
}

func (e *bmcError) Error() string { return e.msg }
func (e *bmcError) Unwrap() error { return e.err }

// fail builds the *power.Error for err at step. secrets (password, session
// token) are cut out of the text wherever a BMC or library echoed them.
func fail(ctx context.Context, host, step string, err error, secrets ...string) error {
	err = firstFailure(err)
	kind := classify(ctx, err)
	msg := describe(err)
	if kind == power.KindTimeout && ctx.Err() != nil {
		msg = fmt.Sprintf("%v: %s", ctx.Err(), msg)
	}
	return &power.Error{Kind: kind, Host: host, Step: step, Err: &bmcError{msg: redact(msg, secrets...), err: err}}
}

func redact(s string, secrets ...string) string {
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "[REDACTED]")
		}
	}
	return s
}

// firstFailure digs the underlying error out of gofish's CollectionError,
// which keeps failures in a map and does not unwrap.
func firstFailure(err error) error {
	var ce *schemas.CollectionError
	if !errors.As(err, &ce) || len(ce.Failures) == 0 {
		return err
	}
	links := make([]string, 0, len(ce.Failures))
	for l := range ce.Failures {
		links = append(links, l)
	}
	sort.Strings(links)
	return ce.Failures[links[0]]
}

// httpStatus is the BMC's HTTP status behind err, or 0.
func httpStatus(err error) int {
	var re *schemas.Error
	if errors.As(err, &re) {
		return re.HTTPReturnedStatusCode
	}
	return 0
}

func classify(ctx context.Context, err error) power.Kind {
	if ctx.Err() != nil {
		return power.KindTimeout
	}
	var re *schemas.Error
	if errors.As(err, &re) {
		switch s := re.HTTPReturnedStatusCode; {
		case s == 401 || s == 403:
			return power.KindAuth
		case s == 400 || s == 405 || s == 409 || s == 412 || s == 422 || s == 501:
			return power.KindRefused
		case s >= 500:
			return power.KindUnknown // 503 session limit, a busy BMC: worth a retry
		default: // 0 (gofish's own complaint), 3xx, 404
			return power.KindProtocol
		}
	}
	var (
		unknownCA *x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		hostErrP  *x509.HostnameError
		invalid   x509.CertificateInvalidError
		invalidP  *x509.CertificateInvalidError
		verifyErr *tls.CertificateVerificationError
		recordErr tls.RecordHeaderError
		opErr     *net.OpError
		dnsErr    *net.DNSError
		synErr    *json.SyntaxError
		typeErr   *json.UnmarshalTypeError
		urlErr    *url.Error
	)
	switch {
	case errors.As(err, &unknownCA), errors.As(err, &hostErr), errors.As(err, &hostErrP),
		errors.As(err, &invalid), errors.As(err, &invalidP), errors.As(err, &verifyErr):
		return power.KindConfig
	case errors.As(err, &recordErr):
		return power.KindProtocol
	case errors.As(err, &dnsErr),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.ECONNRESET),
		errors.As(err, &opErr) && opErr.Op == "dial":
		return power.KindUnreachable
	case errors.As(err, &synErr), errors.As(err, &typeErr), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return power.KindProtocol
	case errors.As(err, &urlErr) && urlErr.Timeout():
		return power.KindTimeout
	}
	return power.KindUnknown
}

// describe is err as an operator should read it: for a Redfish error the
// status, message id and message, not a raw JSON dump.
func describe(err error) string {
	var re *schemas.Error
	if !errors.As(err, &re) {
		var unknownCA *x509.UnknownAuthorityError
		var verifyErr *tls.CertificateVerificationError
		if errors.As(err, &unknownCA) || errors.As(err, &verifyErr) {
			return err.Error() + " (trust the BMC's CA with ca_file, or set insecure: true for this BMC)"
		}
		return err.Error()
	}
	var b strings.Builder
	if re.HTTPReturnedStatusCode != 0 {
		fmt.Fprintf(&b, "HTTP %d", re.HTTPReturnedStatusCode)
	}
	parts := []string{}
	if re.Code != "" {
		parts = append(parts, re.Code)
	}
	if re.Message != "" && re.Code != "" {
		parts = append(parts, re.Message)
	}
	for _, m := range re.ExtendedInfos {
		if m.Message != "" && m.Message != re.Message {
			parts = append(parts, m.Message)
		}
	}
	if re.Code == "" {
		// Not a Redfish error body: show a bounded piece of whatever it was.
		body := strings.Join(strings.Fields(re.Message), " ")
		if len(body) > maxBodyInError {
			body = body[:maxBodyInError] + "…"
		}
		if body != "" {
			parts = append(parts, body)
		}
	}
	if len(parts) > 0 {
		if b.Len() > 0 {
			b.WriteString(": ")
		}
		b.WriteString(strings.Join(parts, ": "))
	}
	if s := re.HTTPReturnedStatusCode; s >= 300 && s < 400 {
		b.WriteString(" (the BMC redirected; check the endpoint's scheme and port)")
	}
	return b.String()
}
