package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"

	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/identity"
)

// Token is one named API token with its role, already read from its file.
type Token struct {
	Name   string
	Role   configs.Role
	Secret string
}

// Tokens are every bearer token the API accepts, already read from their
// files. Agents holds the cluster secrets each host's agent credential
// derives from (package identity): an agent credential is accepted only on
// agent endpoints, and only for its own host. API (named "api", operator)
// and Named are accepted only on operator endpoints.
type Tokens struct {
	Agents identity.Ring
	API    string
	Named  []Token
}

// role is what a request's token may do.
type role int

const (
	roleNone role = iota
	roleAgent
	roleReadOnly
	roleOperator
)

// principal is who sent a request.
type principal struct {
	name string
	role role
}

type credential struct {
	secret []byte
	p      principal
}

func (t Tokens) credentials() ([]credential, error) {
	var errs []error
	if t.Agents.Zero() {
		errs = append(errs, errors.New("the cluster secret (agent credentials) is required"))
	}
	// The cluster secrets are never bearer tokens; they are listed only
	// so that an API token equal to one is refused below.
	var creds []credential
	for _, sec := range t.Agents.Secrets() {
		creds = append(creds, credential{secret: []byte(sec), p: principal{name: "cluster secret", role: roleNone}})
	}
	nSecrets := len(creds)
	if t.API != "" {
		creds = append(creds, credential{secret: []byte(t.API), p: principal{name: configs.APITokenName, role: roleOperator}})
	}
	names := map[string]bool{configs.APITokenName: t.API != ""}
	for i, n := range t.Named {
		var r role
		switch n.Role {
		case configs.RoleOperator:
			r = roleOperator
		case configs.RoleReadOnly:
			r = roleReadOnly
		default:
			errs = append(errs, fmt.Errorf("token %d (%q): role %q is not read-only or operator", i+1, n.Name, n.Role))
		}
		switch {
		case n.Name == "":
			errs = append(errs, fmt.Errorf("token %d has no name", i+1))
		case names[n.Name]:
			errs = append(errs, fmt.Errorf("token name %q is used twice", n.Name))
		}
		names[n.Name] = true
		if n.Secret == "" {
			errs = append(errs, fmt.Errorf("token %q is empty", n.Name))
		}
		creds = append(creds, credential{secret: []byte(n.Secret), p: principal{name: n.Name, role: r}})
	}
	if len(creds) == nSecrets {
		errs = append(errs, errors.New("the API token (or at least one named API token) is required"))
	}
	// One secret, one role: two tokens with the same value would make the
	// role depend on the order of the list.
	for i := range creds {
		for j := i + 1; j < len(creds); j++ {
			if len(creds[i].secret) > 0 && subtle.ConstantTimeCompare(creds[i].secret, creds[j].secret) == 1 {
				errs = append(errs, fmt.Errorf("tokens %q and %q have the same value; each must be different", creds[i].p.name, creds[j].p.name))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	return creds, nil
}

// identify compares the request's bearer token with every credential in
// constant time, without stopping at a match, so the time taken does not
// say which token (or how much of one) matched. Both sides are SHA-256
// digests, so not even the length of a token shows. A request naming a
// host (identity.HeaderHost) is also checked against that host's agent
// credentials; an agent principal's name is its host.
func (s *Server) identify(r *http.Request) principal {
	got, ok := heartbeat.BearerToken(r.Header.Get("Authorization"))
	if !ok {
		return principal{}
	}
	sum := sha256.Sum256([]byte(got))
	var who principal
	for _, c := range s.creds {
		want := sha256.Sum256(c.secret)
		if c.p.role != roleNone && subtle.ConstantTimeCompare(sum[:], want[:]) == 1 {
			who = c.p
		}
	}
	if host := r.Header.Get(identity.HeaderHost); host != "" && s.agents.CheckAgent(host, got) {
		who = principal{name: host, role: roleAgent}
	}
	return who
}

type authedHandler func(w http.ResponseWriter, r *http.Request, p principal)

func (s *Server) refuse(w http.ResponseWriter, r *http.Request, p principal, code int, msg string) {
	s.log.Warn().Str("remote", r.RemoteAddr).Str("method", r.Method).Str("path", r.URL.Path).Str("token", p.name).Int("code", code).Msg("refused: " + msg)
	writeErr(w, code, "%s", msg)
}

// agent admits only a host's agent credential presented with the host's
// name (identity.HeaderHost); h gets the host, and must refuse anything
// about another host (forbidden).
func (s *Server) agent(h func(w http.ResponseWriter, r *http.Request, host string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p := s.identify(r)
		if p.role != roleAgent {
			if r.URL.Path == heartbeat.PathHeartbeat {
				s.hbHTTP.unauthorized.Inc()
			}
			if p.role == roleNone {
				s.refuse(w, r, p, http.StatusUnauthorized, "missing or wrong agent credential (Authorization: Bearer, with the host named in "+identity.HeaderHost+")")
			} else {
				s.refuse(w, r, p, http.StatusForbidden, fmt.Sprintf("token %q is an API token; agent endpoints accept only a host's agent credential", p.name))
			}
			return
		}
		h(w, r, p.name)
	}
}

// forbidden refuses a request by host caller's agent about another host.
func (s *Server) forbidden(w http.ResponseWriter, r *http.Request, caller, about, what string) {
	if r.URL.Path == heartbeat.PathHeartbeat {
		s.hbHTTP.unauthorized.Inc()
	}
	s.refuse(w, r, principal{name: caller, role: roleAgent}, http.StatusForbidden,
		fmt.Sprintf("%s for host %q refused: the credential is host %q's; a host speaks only for itself", what, about, caller))
}

// reader admits read-only and operator tokens.
func (s *Server) reader(h authedHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p := s.identify(r)
		switch p.role {
		case roleNone:
			s.refuse(w, r, p, http.StatusUnauthorized, "missing or wrong API token (Authorization: Bearer)")
		case roleAgent:
			s.refuse(w, r, p, http.StatusForbidden, "an agent credential is accepted only on agent endpoints; use an API token")
		default:
			h(w, r, p)
		}
	}
}

// operator admits operator tokens only.
func (s *Server) operator(h authedHandler) http.HandlerFunc {
	return s.reader(func(w http.ResponseWriter, r *http.Request, p principal) {
		if p.role != roleOperator {
			s.refuse(w, r, p, http.StatusForbidden, fmt.Sprintf("token %q is read-only: it may GET, never %s", p.name, r.Method))
			return
		}
		h(w, r, p)
	})
}

// ReadTokens reads every API token the configuration names (api_token_file
// as "api" with the operator role, and api_tokens) and the cluster secrets.
// Errors name the file, never the content.
func ReadTokens(c configs.Controller) (Tokens, error) {
	var t Tokens
	var errs []error
	if ring, err := ReadAgentSecrets(c); err != nil {
		errs = append(errs, err)
	} else {
		t.Agents = ring
	}
	if c.APITokenFile != "" {
		if v, err := (configs.Secret{What: "api token", File: c.APITokenFile}).Read(); err != nil {
			errs = append(errs, err)
		} else if err := longEnough("api token", c.APITokenFile, v); err != nil {
			errs = append(errs, err)
		} else {
			t.API = v
		}
	}
	for _, at := range c.APITokens {
		v, err := at.Secret().Read()
		if err == nil {
			err = longEnough(at.Secret().What, at.File, v)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		t.Named = append(t.Named, Token{Name: at.Name, Role: at.Role, Secret: v})
	}
	if c.APITokenFile == "" && len(c.APITokens) == 0 {
		errs = append(errs, errors.New("neither controller.api_token_file nor controller.api_tokens is set: the daemon never serves an unauthenticated API"))
	}
	if err := errors.Join(errs...); err != nil {
		return Tokens{}, err
	}
	if _, err := t.credentials(); err != nil {
		return Tokens{}, err
	}
	return t, nil
}

// MinTokenLen is the shortest API token the daemon accepts: a token is
// the whole of an operator's authority, and one shorter than 32 bytes may
// be guessed or was typed by hand.
const MinTokenLen = 32

// longEnough refuses a token shorter than MinTokenLen, naming the file,
// never the content.
func longEnough(what, file string, v string) error {
	if len(v) < MinTokenLen {
		return fmt.Errorf("%s: file %s holds %d bytes; at least %d are needed (e.g. head -c 32 /dev/urandom | base64)", what, file, len(v), MinTokenLen)
	}
	return nil
}

// ReadAgentSecrets reads controller.agent_secret_file and, during a
// rotation, agent_previous_secret_file.
func ReadAgentSecrets(c configs.Controller) (identity.Ring, error) {
	if c.AgentSecretFile == "" {
		return identity.Ring{}, errors.New("controller.agent_secret_file is not set: agents could not authenticate")
	}
	cur, err := (configs.Secret{What: "cluster secret", File: c.AgentSecretFile}).Read()
	if err != nil {
		return identity.Ring{}, err
	}
	var prev string
	if c.AgentPreviousSecretFile != "" {
		if prev, err = (configs.Secret{What: "previous cluster secret", File: c.AgentPreviousSecretFile}).Read(); err != nil {
			return identity.Ring{}, err
		}
	}
	ring, err := identity.NewRing(cur, prev)
	if err != nil {
		return identity.Ring{}, fmt.Errorf("controller.agent_secret_file %s: %w", c.AgentSecretFile, err)
	}
	return ring, nil
}

// TLSConfig is the API listener's TLS configuration, or nil when
// controller.tls_cert_file and tls_key_file are not set (plain HTTP). The
// certificate is loaded now, so a bad pair stops the daemon at start.
func TLSConfig(c configs.Controller) (*tls.Config, error) {
	if c.TLSCertFile == "" && c.TLSKeyFile == "" {
		return nil, nil
	}
	if c.TLSCertFile == "" || c.TLSKeyFile == "" {
		return nil, errors.New("api: TLS needs both controller.tls_cert_file and controller.tls_key_file")
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("api: TLS certificate %s with key %s: %w", c.TLSCertFile, c.TLSKeyFile, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
