package heartbeatbench

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTemplateWritesWhatJSONMarshalDoes(t *testing.T) {
	// Host names escaped by encoding/json, and sent_at values whose
	// fraction json trims (whole seconds, trailing zeros), in two zones.
	g, err := NewGenerator(GenOptions{BaseURL: "http://127.0.0.1:1", Secret: "t", Hosts: []string{"h00001", `odd"<&>\host`},
		Interval: time.Second, Domains: 3})
	require.NoError(t, err)
	east := time.FixedZone("east", 5*3600+1800)
	for _, a := range g.agents {
		for _, seq := range []uint64{1, 9, 10, 123456789, math.MaxUint64} {
			for _, at := range []time.Time{
				time.Now(),
				time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC),
				time.Date(2030, 5, 6, 7, 8, 9, 120000000, east),
				time.Date(2030, 5, 6, 7, 8, 9, 1, time.Local),
			} {
				want, err := json.Marshal(a.heartbeat(seq, at))
				require.NoError(t, err)
				assert.Equal(t, string(want), string(a.encode(seq, at)), "%s seq %d at %v", a.host, seq, at)
			}
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	g, err := NewGenerator(GenOptions{BaseURL: "http://127.0.0.1:1", Secret: "t", Hosts: hostsN(1), Interval: time.Second, Domains: 4})
	require.NoError(b, err)
	a := g.agents[0]
	at := time.Now()
	b.Run("template", func(b *testing.B) {
		b.ReportAllocs()
		for i := uint64(0); b.Loop(); i++ {
			a.encode(i, at)
		}
	})
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for i := uint64(0); b.Loop(); i++ {
			_, _ = json.Marshal(a.heartbeat(i, at))
		}
	})
}
