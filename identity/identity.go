package identity

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
)

// MinSecretLen is the shortest cluster secret accepted: 32 bytes, the
// strength of the HMAC-SHA256 keys derived from it.
const MinSecretLen = 32

const (
	agentLabel  = "chime-fence agent v1\x00"
	daemonLabel = "chime-fence daemon-to-agent v1\x00"
	replyLabel  = "chime-fence agent reply v1"
)

// HeaderHost names the host an agent speaks for, beside its bearer
// credential, on every agent endpoint of the daemon.
const HeaderHost = "X-Chime-Host"

// HeaderReplyMAC carries ReplyMAC of an agent's answer (hex).
const HeaderReplyMAC = "X-Chime-Reply-MAC"

// HeaderNonce carries the daemon's random nonce on a request to an agent;
// the agent's ReplyMAC covers it, so a recorded answer cannot be replayed.
const HeaderNonce = "X-Chime-Nonce"

// CheckSecret refuses a cluster secret too short to key HMAC-SHA256.
func CheckSecret(secret string) error {
	if len(secret) < MinSecretLen {
		return fmt.Errorf("the cluster secret has %d bytes; at least %d are needed (e.g. head -c 32 /dev/urandom | base64)", len(secret), MinSecretLen)
	}
	return nil
}

func derive(key, label, host string) string {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(label))
	m.Write([]byte(host))
	return hex.EncodeToString(m.Sum(nil))
}

// AgentCredential is host's agent credential under the cluster secret.
func AgentCredential(secret, host string) string { return derive(secret, agentLabel, host) }

// DaemonCredential is what the daemon presents to host's agent.
func DaemonCredential(secret, host string) string { return derive(secret, daemonLabel, host) }

// ReplyMAC authenticates an agent's answer: the method and path it
// answers, the daemon's nonce and the exact body, under a key derived from
// the host's agent credential (hex).
func ReplyMAC(agentCredential, method, path, nonce string, body []byte) string {
	k := hmac.New(sha256.New, []byte(agentCredential))
	k.Write([]byte(replyLabel))
	m := hmac.New(sha256.New, k.Sum(nil))
	for _, s := range []string{method, path, nonce} {
		m.Write([]byte(s))
		m.Write([]byte{0})
	}
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// ErrReplyMAC is VerifyReply's refusal.
var ErrReplyMAC = errors.New("the answer's MAC (" + HeaderReplyMAC + ") is missing or not the host's")

// VerifyReply checks an answer's MAC in constant time.
func VerifyReply(agentCredential, method, path, nonce string, body []byte, mac string) error {
	want := ReplyMAC(agentCredential, method, path, nonce, body)
	if !hmac.Equal([]byte(want), []byte(mac)) {
		return ErrReplyMAC
	}
	return nil
}

// Equal compares a presented credential with the expected one as SHA-256
// digests in constant time, so neither content nor length shows.
func Equal(got, want string) bool {
	a, b := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// Ring is the daemon's cluster secrets: the current one and, during a
// rotation, the previous one. A credential derived from either is
// accepted; the daemon presents the current one's. Immutable.
type Ring struct {
	current, previous string
}

// NewRing checks both secrets (previous may be empty).
func NewRing(current, previous string) (Ring, error) {
	if err := CheckSecret(current); err != nil {
		return Ring{}, err
	}
	if previous != "" {
		if err := CheckSecret(previous); err != nil {
			return Ring{}, fmt.Errorf("previous secret: %w", err)
		}
		if previous == current {
			return Ring{}, errors.New("the previous cluster secret equals the current one; drop it, or rotate to a new one")
		}
	}
	return Ring{current: current, previous: previous}, nil
}

// Zero reports whether r holds no secret.
func (r Ring) Zero() bool { return r.current == "" }

// Secrets are the secrets a credential may derive from, current first.
func (r Ring) Secrets() []string {
	if r.previous == "" {
		return []string{r.current}
	}
	return []string{r.current, r.previous}
}

// CheckAgent reports whether cred is host's agent credential under any
// secret of the ring. Every secret is tried, so the time does not say which.
func (r Ring) CheckAgent(host, cred string) bool {
	ok := false
	for _, s := range r.Secrets() {
		if Equal(cred, AgentCredential(s, host)) {
			ok = true
		}
	}
	return ok
}

// AgentCredentials are host's agent credentials, current secret first.
func (r Ring) AgentCredentials(host string) []string {
	var out []string
	for _, s := range r.Secrets() {
		out = append(out, AgentCredential(s, host))
	}
	return out
}

// DaemonCredential is what the daemon presents to host's agent: the
// current secret's.
func (r Ring) DaemonCredential(host string) string { return DaemonCredential(r.current, host) }
