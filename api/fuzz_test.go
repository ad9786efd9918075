package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/operations"
)

// checkOnly is an Operations that decides like the Manager (Check against
// fixed views) but never starts anything, so fuzzing grows no state.
type checkOnly struct{}

func (checkOnly) Start(req operations.Request) (operations.Task, error) {
	views := map[string]operations.HostView{
		"h1": {Known: true, Admin: node.Enabled, Monitor: node.Normal},
		"h2": {Known: true, Admin: node.Drained, Monitor: node.Unreachable, FenceProven: true},
	}
	v := views[req.Host]
	if t, ok := views[req.Target]; ok {
		v.Target = &t
	} else if req.Target != "" {
		v.Target = &operations.HostView{}
	}
	if err := operations.Check(req, v); err != nil {
		return operations.Task{}, err
	}
	return operations.Task{ID: "op-fuzz", Host: req.Host, Op: req.Op, Actor: req.Actor, State: operations.TaskRunning, Progress: []operations.VMProgress{}}, nil
}
func (checkOnly) Task(string) (operations.Task, error) {
	return operations.Task{}, operations.ErrNotFound
}
func (checkOnly) Tasks(string) ([]operations.Task, error) { return nil, nil }
func (checkOnly) Lock(string) (operations.Holder, bool)   { return operations.Holder{}, false }

var fuzzOps = []string{"migrate", "drain", "rebuild", "enable", "disable", "fence", "confirm-down", "reboot", ""}

func FuzzOperationRequest(f *testing.F) {
	e := newEnv(f, filepath.Join(f.TempDir(), "s.db"))
	s, err := New(daemonOf(f, e), Tokens{Agents: testRing, API: apiTok}, prometheus.NewRegistry(), zerolog.Nop(), WithOperations(checkOnly{}))
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(`{"target":"h2","migrate_local_disk_vms":true,"reason":"maintenance"}`), uint8(0), false)
	f.Add([]byte(`{"reason":"dead PDU"}`), uint8(6), true)
	f.Add([]byte(``), uint8(3), false)
	f.Add([]byte(`{"target":null}`), uint8(1), false)
	f.Fuzz(func(t *testing.T, body []byte, op uint8, other bool) {
		host := "h1"
		if other {
			host = "h2"
		}
		r := httptest.NewRequest(http.MethodPost, PathHosts+host+"/operations/"+fuzzOps[int(op)%len(fuzzOps)], bytes.NewReader(body))
		r.Header.Set("Authorization", "Bearer "+apiTok)
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		switch w.Code {
		case http.StatusAccepted:
			var tk operations.Task
			if err := json.Unmarshal(w.Body.Bytes(), &tk); err != nil || tk.Actor != "api" || tk.Host != host {
				t.Fatalf("202 with a bad task %q: %v", w.Body.String(), err)
			}
		case http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusNotImplemented:
			var eb ErrorBody
			if err := json.Unmarshal(w.Body.Bytes(), &eb); err != nil || eb.Error == "" {
				t.Fatalf("%d without an error text: %q", w.Code, w.Body.String())
			}
		default:
			t.Fatalf("unexpected status %d: %s", w.Code, w.Body.String())
		}
	})
}

func FuzzHeartbeat(f *testing.F) {
	e := newEnv(f, filepath.Join(f.TempDir(), "s.db"))
	f.Add(beat("h1", 1))
	f.Add(beat("h2", 7, heartbeat.Domain{UUID: u1, Name: "web", State: 1}))
	f.Add(beat("h2", 8, heartbeat.Domain{UUID: u1, Name: "web", State: 1, Autostart: true}))
	f.Add([]byte(`{"host":"h1","boot_id":"b","seq":1,"domains":[{"uuid":"nope","state":"running"}]}`))
	f.Add([]byte(`{"host":"h9","boot_id":"b","seq":1}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest(http.MethodPost, heartbeat.PathHeartbeat, bytes.NewReader(body))
		setAuth(r, agentTok)
		w := httptest.NewRecorder()
		e.srv.Config.Handler.ServeHTTP(w, r)
		switch w.Code {
		case http.StatusOK:
			var ack heartbeat.Ack
			if err := json.Unmarshal(w.Body.Bytes(), &ack); err != nil || ack.AssignmentRevision == 0 {
				t.Fatalf("200 with a bad ack %q: %v", w.Body.String(), err)
			}
		case http.StatusBadRequest, http.StatusForbidden, http.StatusNotFound, http.StatusRequestEntityTooLarge:
			var eb ErrorBody
			if err := json.Unmarshal(w.Body.Bytes(), &eb); err != nil || eb.Error == "" {
				t.Fatalf("%d without an error text: %q", w.Code, w.Body.String())
			}
		default:
			t.Fatalf("unexpected status %d: %s", w.Code, w.Body.String())
		}
	})
}

// daemonOf is the Backend behind an env's server.
func daemonOf(tb testing.TB, e *env) *daemon.Daemon {
	tb.Helper()
	s, ok := e.srv.Config.Handler.(*Server)
	if !ok {
		tb.Fatal("env's handler is not a *Server")
	}
	d, ok := s.b.(*daemon.Daemon)
	if !ok {
		tb.Fatal("env's backend is not a *daemon.Daemon")
	}
	return d
}

// FuzzHeartbeatDatagram feeds the UDP intake raw datagrams and, with seal,
// payloads sealed with the agent token under any kind. It never panics; a
// reply is sent only to an authentic heartbeat datagram and is a sealed
// Reply naming that heartbeat, carrying an Ack or a reason.
func FuzzHeartbeatDatagram(f *testing.F) {
	_, d := testDaemon(f, filepath.Join(f.TempDir(), "s.db"))
	s, err := New(d, Tokens{Agents: testRing, API: apiTok}, prometheus.NewRegistry(), zerolog.Nop())
	if err != nil {
		f.Fatal(err)
	}
	sealer, err := heartbeat.NewSealer(credOf("h1"))
	if err != nil {
		f.Fatal(err)
	}
	wire := func(hb heartbeat.Heartbeat) []byte { return heartbeat.AppendHeartbeatPayload(nil, hb) }
	f.Add(wire(hbOf("h1", 1)), true, heartbeat.KindHeartbeat)
	f.Add(wire(hbOf("h9", 2)), true, heartbeat.KindHeartbeat)
	f.Add(wire(heartbeat.Heartbeat{Host: "h1", BootID: "b", Seq: 3, Domains: []heartbeat.Domain{{UUID: "nope"}}}), true, heartbeat.KindHeartbeat)
	f.Add(wire(heartbeat.Heartbeat{Host: "h1", BootID: "b", Seq: 4, Domains: []heartbeat.Domain{{UUID: "6f1c2a9e-0000-4000-8000-000000000001", Autostart: true}}}), true, heartbeat.KindHeartbeat)
	f.Add(wire(heartbeat.Heartbeat{Host: "h1"}), true, heartbeat.KindHeartbeat)
	f.Add([]byte{0x0a, 0x80}, true, heartbeat.KindHeartbeat)
	f.Add(wire(hbOf("h1", 4)), true, heartbeat.KindReply)
	f.Add(sealer.Seal(nil, heartbeat.KindHeartbeat, wire(hbOf("h2", 5))), false, byte(0))
	f.Add([]byte("CFHB\x01\x01\x00\x00"), false, byte(0))
	f.Fuzz(func(t *testing.T, data []byte, seal bool, kind byte) {
		b := data
		if seal {
			b = sealer.Seal(nil, kind, data)
		}
		out := s.heartbeatDatagram(b, peer{})
		k, payload, err := sealer.Open(b)
		if err != nil || k != heartbeat.KindHeartbeat {
			if out != nil {
				t.Fatalf("replied to a datagram that is not an authentic heartbeat (%v, kind %d)", err, k)
			}
			return
		}
		if out == nil {
			return // a refusal that could not name its heartbeat, or the reply would not fit
		}
		if len(out) > heartbeat.MaxDatagram {
			t.Fatalf("reply of %d bytes", len(out))
		}
		rk, rp, err := sealer.Open(out)
		if err != nil || rk != heartbeat.KindReply {
			t.Fatalf("reply does not open: %v, kind %d", err, rk)
		}
		r, err := heartbeat.DecodeReply(rp)
		if err != nil {
			t.Fatalf("reply %q: %v", rp, err)
		}
		if r.Ack != nil {
			hb, err := heartbeat.DecodeHeartbeatPayload(payload)
			if err != nil || !r.Answers(hb) || r.Ack.AssignmentRevision == 0 {
				t.Fatalf("ack %+v for a heartbeat that is invalid (%v) or another one", r, err)
			}
		}
	})
}
