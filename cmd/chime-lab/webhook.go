package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/chimestack/chime-fence/alert"
)

// webhookSink records chime-fence alert deliveries, one line each:
// "RECEIVED<TAB>VERDICT<TAB>TYPE<TAB>HOST<TAB>SUMMARY", RECEIVED an RFC
// 3339 time with nanoseconds, VERDICT "signed" (X-Chime-Signature
// verified), "duplicate" (a retry of an event already recorded) or "BAD
// SIGNATURE". A bad signature is answered 401 so it is never mistaken for
// a delivery.
type webhookSink struct {
	secret []byte
	now    func() time.Time

	mu   sync.Mutex
	out  io.Writer
	seen map[string]bool
}

func (s *webhookSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	at := s.now()
	var ev alert.Event
	verdict := "signed"
	code := http.StatusOK
	switch {
	case !alert.Verify(s.secret, body, r.Header.Get(alert.HeaderSignature)):
		verdict, code = "BAD SIGNATURE", http.StatusUnauthorized
		ev.Type = r.Header.Get(alert.HeaderEvent)
	case json.Unmarshal(body, &ev) != nil:
		verdict, code = "BAD BODY", http.StatusBadRequest
	}
	s.mu.Lock()
	if code == http.StatusOK && ev.ID != "" {
		if s.seen[ev.ID] {
			verdict = "duplicate"
		}
		s.seen[ev.ID] = true
	}
	fmt.Fprintf(s.out, "%s\t%s\t%s\t%s\t%s\n", at.Format(time.RFC3339Nano), verdict, oneLine(ev.Type), oneLine(ev.Host), oneLine(ev.Summary))
	s.mu.Unlock()
	w.WriteHeader(code)
}

func oneLine(s string) string {
	if s == "" {
		return "-"
	}
	return strings.NewReplacer("\t", " ", "\n", " ").Replace(s)
}

// serveWebhook runs a webhookSink on listen until SIGTERM or SIGINT,
// appending to the file out. The secret comes from a file, never argv.
func serveWebhook(listen, secretFile, out string, stderr io.Writer) int {
	if listen == "" || secretFile == "" || out == "" {
		fmt.Fprintln(stderr, "chime-lab: webhook: --listen, --secret-file and --out are required")
		return 2
	}
	secret, err := os.ReadFile(secretFile)
	if err != nil {
		fmt.Fprintf(stderr, "chime-lab: webhook: secret file: %v\n", err)
		return 1
	}
	secret = []byte(strings.TrimRight(string(secret), "\r\n"))
	if len(secret) == 0 {
		fmt.Fprintf(stderr, "chime-lab: webhook: secret file %s is empty\n", secretFile)
		return 1
	}
	f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintf(stderr, "chime-lab: webhook: %v\n", err)
		return 1
	}
	defer f.Close()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		fmt.Fprintf(stderr, "chime-lab: webhook: %v\n", err)
		return 1
	}
	srv := &http.Server{Handler: &webhookSink{secret: secret, now: time.Now, out: f, seen: map[string]bool{}},
		ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(stderr, "chime-lab: webhook: %v\n", err)
		return 1
	}
	return 0
}
