package ipmi

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	goipmi "github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/types"

	"github.com/chimestack/chime-fence/power"
)

// Completion codes (IPMI 2.0 §5.2) that mean "try again", not "no".
var transientCC = map[types.CompletionCode]bool{
	0xC0: true, // node busy
	0xC3: true, // timeout while processing
	0xCE: true, // response could not be provided
	0xFF: true, // unspecified
}

const ccInsufficientPrivilege types.CompletionCode = 0xD4

var rmcpStatusRE = regexp.MustCompile(`RMCP\+ status (0x[0-9a-fA-F]+)`)

// classify turns a go-ipmi error into a *power.Error. nil stays nil.
func classify(ctx context.Context, host, step string, err error) error {
	if err == nil {
		return nil
	}
	mk := func(k power.Kind) error { return &power.Error{Kind: k, Host: host, Step: step, Err: oneLine{err}} }
	if ctx.Err() != nil {
		return &power.Error{Kind: power.KindTimeout, Host: host, Step: step,
			Err: oneLine{fmt.Errorf("context ended: %w (%v)", ctx.Err(), err)}}
	}
	if re, ok := types.IsResponseError(err); ok {
		cc := re.CompletionCode()
		switch {
		case cc == 0x00: // go-ipmi's marker for an unparsable response body
			return mk(power.KindProtocol)
		case cc == ccInsufficientPrivilege:
			return mk(power.KindAuth)
		case transientCC[cc]:
			return mk(power.KindUnknown)
		default:
			return mk(power.KindRefused)
		}
	}
	// Connect formats per-suite failures with %v: match go-ipmi's own texts.
	msg := err.Error()
	if errors.Is(err, goipmi.ErrRAKPAuthentication) || strings.Contains(msg, goipmi.ErrRAKPAuthentication.Error()) {
		return mk(power.KindAuth)
	}
	if k, ok := rmcpStatusKind(err, msg); ok {
		return mk(k)
	}
	// ipmi_sim answers an Open Session for a suite it lacks (17) with only
	// tag and status, which go-ipmi fails to unpack.
	if strings.Contains(msg, "Open Session failed") && strings.Contains(msg, types.ErrUnpackedDataTooShort.Error()) {
		return mk(power.KindConfig)
	}
	if errors.Is(err, syscall.ECONNREFUSED) || strings.Contains(msg, "connection refused") ||
		strings.Contains(msg, "no route to host") || strings.Contains(msg, "network is unreachable") ||
		strings.Contains(msg, "resolve addr failed") {
		return mk(power.KindUnreachable)
	}
	if strings.Contains(msg, "timed out") || strings.Contains(msg, "i/o timeout") ||
		strings.Contains(msg, "no matching IPMI response") || strings.Contains(msg, "no UDP datagram matched") {
		return mk(power.KindUnreachable)
	}
	if strings.Contains(msg, "unpack") {
		return mk(power.KindProtocol)
	}
	return mk(power.KindUnknown)
}

// rmcpStatusKind classifies RMCP+ Open Session / RAKP status codes. When
// several suites failed differently, an authentication refusal wins: it is
// the one an operator must act on.
func rmcpStatusKind(err error, msg string) (power.Kind, bool) {
	var codes []types.RmcpStatusCode
	var se *types.RmcpStatusError
	if errors.As(err, &se) {
		codes = append(codes, se.StatusCode())
	}
	for _, m := range rmcpStatusRE.FindAllStringSubmatch(msg, -1) {
		if v, perr := strconv.ParseUint(m[1], 0, 8); perr == nil {
			codes = append(codes, types.RmcpStatusCode(v))
		}
	}
	if len(codes) == 0 {
		return 0, false
	}
	kind := power.KindUnknown
	for _, c := range codes {
		switch c {
		case types.RmcpStatusCodeInvalidRole, types.RmcpStatusCodeUnauthorizedRoleOfPriLevel,
			types.RmcpStatusCodeInvalidNameLength, types.RmcpStatusCodeUnauthorizedName,
			types.RmcpStatusCodeUnauthorizedGUID, types.RmcpStatusCodeInvalidIntegrityCheckValue:
			return power.KindAuth, true
		case types.RmcpStatusCodeInvalidAuthAlg, types.RmcpStatusCodeInvalidIntegrityAlg,
			types.RmcpStatusCodeNoMatchingAuthPayload, types.RmcpStatusCodeNoMatchingIntegrityPayload,
			types.RmcpStatusCodeInvalidConfidentAlg, types.RmcpStatusCodeNoCipherSuiteMatch:
			kind = power.KindConfig
		}
	}
	return kind, true
}

// oneLine keeps go-ipmi's multi-line errors (one line per cipher suite) on
// one log line.
type oneLine struct{ err error }

func (e oneLine) Error() string {
	return strings.Join(strings.Fields(strings.ReplaceAll(e.err.Error(), "\n", "; ")), " ")
}

func (e oneLine) Unwrap() error { return e.err }
