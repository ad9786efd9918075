package agent

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/identity"
	"github.com/rs/zerolog"
)

// Paths of the agent's API (drivers/agent calls them).
const (
	PathStatus = "/v1/status"
	PathDrain  = "/v1/drain"
)

// StatusSource answers status requests; *Agent implements it.
type StatusSource interface {
	Status(ctx context.Context) (Status, error)
}

// DrainSource drains the host; *Agent implements it.
type DrainSource interface {
	Drain(ctx context.Context) (DrainResult, error)
}

// DrainResponse is POST /v1/drain's body.
type DrainResponse = heartbeat.DrainResponse

// server is the agent's HTTP API. Routes are registered in NewHandler;
// authenticated ones are wrapped in authed.
type server struct {
	src   StatusSource
	token [sha256.Size]byte
	// agentCred keys the MAC of every answer (identity.ReplyMAC), so the
	// daemon can tell this host's agent from any responder at its URL.
	agentCred string
	log       zerolog.Logger
}

// NewHandler builds the agent's HTTP API:
//
//	GET /v1/status  bearer token; 200 Status, 401 without or with a wrong
//	                token, 503 when the domains cannot be listed
//	POST /v1/drain  bearer token; only when src is also a DrainSource.
//	                Writes the drain marker, destroys every active domain;
//	                200 DrainResponse when none is left active, 500
//	                DrainResponse with error otherwise (marker not written:
//	                nothing was stopped; or some domain failed)
//	GET /healthz    no token; 200 "ok" while the process serves
//
// token is the host's daemon→agent credential (identity.DaemonCredential):
// only the daemon holds it, so another host's agent cannot call this one.
// Every answer of the two authenticated endpoints carries
// identity.HeaderReplyMAC over the method, path, the request's nonce and
// the exact body, keyed from agentCred (this host's agent credential).
func NewHandler(src StatusSource, token, agentCred string, log zerolog.Logger) (http.Handler, error) {
	if token == "" {
		return nil, errors.New("agent API: empty daemon credential")
	}
	if agentCred == "" {
		return nil, errors.New("agent API: empty agent credential")
	}
	if token == agentCred {
		return nil, errors.New("agent API: the daemon credential equals the agent credential; issue it with chime-fence agent-credential --daemon-side")
	}
	s := &server{src: src, token: sha256.Sum256([]byte(token)), agentCred: agentCred, log: log.With().Str("component", "api").Logger()}
	mux := http.NewServeMux()
	mux.Handle("GET "+PathStatus, s.authed(s.status))
	if d, ok := src.(DrainSource); ok {
		mux.Handle("POST "+PathDrain, s.authed(func(w http.ResponseWriter, r *http.Request) { s.drain(w, r, d) }))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux, nil
}

// authed requires the bearer token. Both sides are hashed first so the
// comparison takes the same time whatever the presented token's length.
func (s *server) authed(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := heartbeat.BearerToken(r.Header.Get("Authorization"))
		sum := sha256.Sum256([]byte(tok))
		if !ok || subtle.ConstantTimeCompare(sum[:], s.token[:]) != 1 {
			s.log.Warn().Str("remote", r.RemoteAddr).Str("path", r.URL.Path).Bool("token_present", ok).Msg("request refused: bad or missing token")
			w.Header().Set("WWW-Authenticate", `Bearer realm="chime-agent"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token"})
			return
		}
		h(&signer{ResponseWriter: w, r: r, cred: s.agentCred}, r)
	})
}

// signer holds an answer's body back so its MAC can go in a header.
type signer struct {
	http.ResponseWriter
	r    *http.Request
	cred string
}

// writeSigned writes v as JSON with its reply MAC.
func writeSigned(w http.ResponseWriter, code int, v any) {
	sg, ok := w.(*signer)
	if !ok {
		writeJSON(w, code, v)
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	b = append(b, '\n')
	sg.Header().Set(identity.HeaderReplyMAC, identity.ReplyMAC(sg.cred, sg.r.Method, sg.r.URL.Path, sg.r.Header.Get(identity.HeaderNonce), b))
	sg.Header().Set("Content-Type", "application/json")
	sg.WriteHeader(code)
	_, _ = sg.Write(b)
}

func (s *server) status(w http.ResponseWriter, r *http.Request) {
	st, err := s.src.Status(r.Context())
	if err != nil {
		s.log.Warn().Err(err).Str("remote", r.RemoteAddr).Msg("status unavailable")
		writeSigned(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		return
	}
	writeSigned(w, http.StatusOK, st)
}

func (s *server) drain(w http.ResponseWriter, r *http.Request, d DrainSource) {
	s.log.Warn().Str("remote", r.RemoteAddr).Msg("drain requested over the API")
	res, err := d.Drain(r.Context())
	if err != nil {
		s.log.Error().Err(err).Str("remote", r.RemoteAddr).Msg("drain incomplete")
		writeSigned(w, http.StatusInternalServerError, DrainResponse{DrainResult: res, Error: err.Error()})
		return
	}
	writeSigned(w, http.StatusOK, DrainResponse{DrainResult: res})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Serve serves h on ln until ctx is done, then shuts down, giving requests
// in flight up to 5 s. It returns nil after a clean shutdown.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log zerolog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log = log.With().Str("component", "api").Logger()
	log.Info().Str("listen", ln.Addr().String()).Msg("API listening")
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
