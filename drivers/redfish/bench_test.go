package redfish

import (
	"context"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/e2e/redfishsim"
)

// Benchmarks one whole operation (connect, session, act, logout) against
// the simulator on 127.0.0.1, over HTTPS with a verified certificate and
// over plain HTTP, reporting HTTP requests per operation.
func BenchmarkOperation(b *testing.B) {
	for _, useTLS := range []bool{true, false} {
		name := "http"
		if useTLS {
			name = "https"
		}
		for _, op := range []string{"PowerStatus", "PowerOff"} {
			b.Run(name+"/"+op, func(b *testing.B) {
				sim, err := redfishsim.New(redfishsim.Config{Username: simUser, Password: simPass, AlreadyOffStatus: 409})
				if err != nil {
					b.Fatal(err)
				}
				rec := &recorder{next: sim}
				srv := newBenchServer(rec, useTLS)
				defer srv.Close()
				cfg := Config{Host: "bench", Endpoint: srv.URL, Username: simUser, Password: simPass}
				if useTLS {
					ca := filepath.Join(b.TempDir(), "ca.pem")
					if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
						b.Fatal(err)
					}
					cfg.CAFile = ca
				}
				c, err := New(cfg, zerolog.Nop())
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
				defer cancel()
				b.ResetTimer()
				for b.Loop() {
					if op == "PowerStatus" {
						_, err = c.PowerStatus(ctx)
					} else {
						err = c.PowerOff(ctx)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				rec.mu.Lock()
				n := len(rec.requests)
				rec.mu.Unlock()
				b.ReportMetric(float64(n)/float64(b.N), "requests/op")
				if s := sim.SessionCount(); s != 0 {
					b.Fatalf("%d sessions left open", s)
				}
			})
		}
	}
}
