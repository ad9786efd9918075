package redfish

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/e2e/redfishsim"
	"github.com/chimestack/chime-fence/power"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestStatusOffOnCycleSoftOff(t *testing.T) {
	for _, auth := range []string{AuthSession, AuthBasic} {
		t.Run(auth, func(t *testing.T) {
			b := startBMC(t, redfishsim.Config{}, false)
			cfg := b.config()
			cfg.Auth = auth
			c, _ := newClient(t, cfg)
			ctx := ctxT(t, 10*time.Second)

			st, err := c.PowerStatus(ctx)
			require.NoError(t, err)
			assert.Equal(t, power.On, st)

			require.NoError(t, c.PowerOff(ctx))
			st, err = c.PowerStatus(ctx)
			require.NoError(t, err)
			assert.Equal(t, power.Off, st)

			require.NoError(t, c.PowerOn(ctx))
			st, _ = c.PowerStatus(ctx)
			assert.Equal(t, power.On, st)

			require.NoError(t, c.PowerCycle(ctx))
			st, _ = c.PowerStatus(ctx)
			assert.Equal(t, power.On, st)

			require.NoError(t, c.SoftOff(ctx))
			st, _ = c.PowerStatus(ctx)
			assert.Equal(t, power.Off, st)

			stats := b.sim.Stats()
			assert.Equal(t, map[string]int{"ForceOff": 1, "On": 1, "PowerCycle": 1, "GracefulShutdown": 1}, stats.Resets)
			requireNoSessions(t, c, b)
			if auth == AuthBasic {
				assert.Equal(t, 0, stats.Logins, "basic auth opens no session")
			} else {
				assert.Equal(t, 9, stats.Logins, "one session per operation")
			}
		})
	}
}

func TestAllSessionsLoggedOutAfterManyOperations(t *testing.T) {
	b := startBMC(t, redfishsim.Config{MaxSessions: 4, AllowedResetTypes: []string{"On", "ForceOff", "ForceRestart"}}, false)
	c, _ := newClient(t, b.config())
	ctx := ctxT(t, 30*time.Second)
	var failures int
	for i := range 10 {
		_, err := c.PowerStatus(ctx)
		require.NoError(t, err)
		require.NoError(t, c.PowerOff(ctx)) // every other one hits the 409 quirk
		if err := c.SoftOff(ctx); err != nil {
			failures++ // GracefulShutdown is not allowed: refused, no POST
			require.ErrorIs(t, err, power.ErrRefused, "op %d", i)
		}
	}
	assert.Equal(t, 10, failures)
	requireNoSessions(t, c, b)
	assert.Equal(t, 30, b.sim.Stats().Logins)

	// Concurrent calls on one Client: each has its own session.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 4 {
		wg.Go(func() {
			for range 4 {
				if _, err := c.PowerStatus(ctx); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		// Four callers against four sessions may briefly race the limit.
		assert.True(t, strings.Contains(err.Error(), "SessionLimitExceeded"), "%v", err)
	}
	requireNoSessions(t, c, b)
}

func TestLogoutAfterCancelledOrExpiredContext(t *testing.T) {
	b := startBMC(t, redfishsim.Config{}, false)
	c, _ := newClient(t, b.config())
	reached := make(chan struct{}, 1)
	b.rec.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "ComputerSystem.Reset") {
			return false
		}
		reached <- struct{}{}
		hang(b, r) // a BMC that never answers the reset
		return true
	})

	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-reached; cancel() }()
	err := c.PowerOff(ctx)
	require.ErrorIs(t, err, power.ErrTimeout)
	assert.ErrorIs(t, err, context.Canceled)
	requireNoSessions(t, c, b)

	ctx = ctxT(t, 300*time.Millisecond)
	start := time.Now()
	err = c.PowerOff(ctx)
	elapsed := time.Since(start)
	<-reached
	require.ErrorIs(t, err, power.ErrTimeout)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, elapsed, 300*time.Millisecond+time.Second, "must return at the ctx deadline")
	requireNoSessions(t, c, b)
	assert.Equal(t, 2, b.sim.Stats().Logins)
}

// A login answer without Location leaves nothing to DELETE: the call still
// works and the leak is logged (the BMC's session timeout reaps it).
func TestLoginWithoutLocationIsLogged(t *testing.T) {
	b := startBMC(t, redfishsim.Config{}, false)
	b.rec.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/Sessions") {
			return false
		}
		b.rec.next.ServeHTTP(&dropLocation{ResponseWriter: w}, r)
		return true
	})
	c, logs := newClient(t, b.config())
	st, err := c.PowerStatus(ctxT(t, 5*time.Second))
	require.NoError(t, err)
	assert.Equal(t, power.On, st)
	c.logouts.Wait()
	assert.Equal(t, 1, b.sim.SessionCount())
	assert.Contains(t, logs.String(), "no Location: cannot log out")
}

type dropLocation struct{ http.ResponseWriter }

func (d *dropLocation) WriteHeader(code int) {
	d.Header().Del("Location")
	d.ResponseWriter.WriteHeader(code)
}

func TestSessionLimitSurfacesClearError(t *testing.T) {
	b := startBMC(t, redfishsim.Config{MaxSessions: 1}, false)
	// Someone else holds the BMC's only session.
	res, err := http.Post(b.srv.URL+"/redfish/v1/SessionService/Sessions", "application/json",
		strings.NewReader(`{"UserName":"`+simUser+`","Password":"`+simPass+`"}`))
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusCreated, res.StatusCode)

	c, _ := newClient(t, b.config())
	_, err = c.PowerStatus(ctxT(t, 5*time.Second))
	require.Error(t, err)
	assert.Equal(t, power.KindUnknown, power.KindOf(err), "a full BMC is worth a retry, not an auth failure")
	assert.True(t, power.KindOf(err).Retryable())
	assert.Contains(t, err.Error(), "HTTP 503")
	assert.Contains(t, err.Error(), "SessionLimitExceeded")
	assert.Contains(t, err.Error(), "simultaneous sessions")
	assert.Contains(t, err.Error(), "host node1: redfish: power status")
	assert.Equal(t, 1, b.sim.SessionCount())
}

func TestAlreadyOffIsSuccessAfterFreshRead(t *testing.T) {
	for _, status := range []int{409, 400, 200} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			b := startBMC(t, redfishsim.Config{InitiallyOff: true, AlreadyOffStatus: status}, false)
			c, logs := newClient(t, b.config())
			ctx := ctxT(t, 10*time.Second)
			require.NoError(t, c.PowerOff(ctx))
			require.NoError(t, c.SoftOff(ctx))
			assert.Equal(t, 2, b.rec.count(http.MethodPost, "ComputerSystem.Reset"))
			if status != 200 {
				// The quirk path re-reads the system after the refusal.
				assert.Equal(t, 2*2, b.rec.count(http.MethodGet, "/Systems/1"))
				assert.Contains(t, logs.String(), "already in that state")
			}
			requireNoSessions(t, c, b)
		})
	}
}

func TestConflictOnARunningSystemIsRefused(t *testing.T) {
	b := startBMC(t, redfishsim.Config{}, false)
	b.rec.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "ComputerSystem.Reset") {
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusConflict)
		_, _ = w.Write([]byte(`{"error":{"code":"Base.1.8.GeneralError","message":"Another operation is in progress."}}`))
		return true
	})
	c, _ := newClient(t, b.config())
	err := c.PowerOff(ctxT(t, 5*time.Second))
	require.ErrorIs(t, err, power.ErrRefused)
	assert.Contains(t, err.Error(), "system reads on, not off")
	assert.Contains(t, err.Error(), "Another operation is in progress")
	requireNoSessions(t, c, b)
}

func TestPoweringOffIsNotOff(t *testing.T) {
	b := startBMC(t, redfishsim.Config{OffLag: 20 * time.Second, OnLag: 5 * time.Second}, false)
	c, _ := newClient(t, b.config())
	ctx := ctxT(t, 10*time.Second)
	require.NoError(t, c.PowerOff(ctx))
	st, err := c.PowerStatus(ctx)
	require.NoError(t, err)
	assert.Equal(t, power.PoweringOff, st)
	assert.False(t, st.IsOff())
	b.clock.Advance(20 * time.Second)
	st, err = c.PowerStatus(ctx)
	require.NoError(t, err)
	assert.Equal(t, power.Off, st)

	require.NoError(t, c.PowerOn(ctx))
	st, _ = c.PowerStatus(ctx)
	assert.Equal(t, power.PoweringOn, st)
	requireNoSessions(t, c, b)
}

func TestDisallowedResetTypeRefusedBeforeAnyRequest(t *testing.T) {
	for _, where := range []string{redfishsim.PublishInline, redfishsim.PublishActionInfo, redfishsim.PublishBoth} {
		t.Run(where, func(t *testing.T) {
			b := startBMC(t, redfishsim.Config{ResetTypesIn: where, AllowedResetTypes: []string{"On", "GracefulShutdown"}}, false)
			c, _ := newClient(t, b.config())
			ctx := ctxT(t, 10*time.Second)

			err := c.PowerOff(ctx)
			require.ErrorIs(t, err, power.ErrRefused)
			assert.Contains(t, err.Error(), "reset type ForceOff not allowed")
			assert.Contains(t, err.Error(), "allowed: On, GracefulShutdown")
			err = c.PowerCycle(ctx)
			require.ErrorIs(t, err, power.ErrRefused)
			assert.Contains(t, err.Error(), "PowerCycle or ForceRestart")

			st, err := c.Check(ctx)
			require.ErrorIs(t, err, power.ErrRefused)
			assert.Equal(t, power.On, st, "Check still reports the power it read")

			types, err := c.AllowedResetTypes(ctx)
			require.NoError(t, err)
			assert.Equal(t, []string{"On", "GracefulShutdown"}, types)

			assert.Equal(t, 0, b.rec.count(http.MethodPost, "/Systems/"), "nothing may be POSTed to the system")
			assert.Equal(t, 0, b.sim.Stats().ResetPosts)
			if where == redfishsim.PublishActionInfo {
				assert.Positive(t, b.rec.count(http.MethodGet, "ResetActionInfo"), "the ActionInfo fallback must be read")
			}
			requireNoSessions(t, c, b)
		})
	}
}

func TestPowerCycleFallsBackToForceRestart(t *testing.T) {
	b := startBMC(t, redfishsim.Config{ResetTypesIn: redfishsim.PublishActionInfo, AllowedResetTypes: []string{"On", "ForceOff", "ForceRestart"}}, false)
	c, _ := newClient(t, b.config())
	require.NoError(t, c.PowerCycle(ctxT(t, 5*time.Second)))
	assert.Equal(t, map[string]int{"ForceRestart": 1}, b.sim.Stats().Resets)
}

func TestUnpublishedResetTypesAreSentAnyway(t *testing.T) {
	b := startBMC(t, redfishsim.Config{ResetTypesIn: redfishsim.PublishNone}, false)
	c, logs := newClient(t, b.config())
	ctx := ctxT(t, 5*time.Second)
	types, err := c.AllowedResetTypes(ctx)
	require.NoError(t, err)
	assert.Nil(t, types)
	st, err := c.Check(ctx)
	require.NoError(t, err)
	assert.Equal(t, power.On, st)
	require.NoError(t, c.PowerOff(ctx))
	assert.Equal(t, 1, b.sim.Stats().ResetPosts)
	assert.Contains(t, logs.String(), "cannot verify before acting")
}

func TestCheckNeverActs(t *testing.T) {
	b := startBMC(t, redfishsim.Config{InitiallyOff: true}, false)
	c, _ := newClient(t, b.config())
	st, err := c.Check(ctxT(t, 5*time.Second))
	require.NoError(t, err)
	assert.Equal(t, power.Off, st)
	assert.Equal(t, 0, b.rec.count(http.MethodPost, "/Systems/"))
	assert.Equal(t, map[string]string{"1": "Off"}, b.sim.Stats().PowerStates)
	requireNoSessions(t, c, b)
}

func TestWrongPasswordIsAuthErrorWithoutThePassword(t *testing.T) {
	for _, auth := range []string{AuthSession, AuthBasic} {
		t.Run(auth, func(t *testing.T) {
			b := startBMC(t, redfishsim.Config{}, false)
			cfg := b.config()
			cfg.Auth = auth
			cfg.Password = "Wrong-pass-should-not-leak"
			c, logs := newClient(t, cfg)
			_, err := c.PowerStatus(ctxT(t, 5*time.Second))
			require.ErrorIs(t, err, power.ErrAuth)
			assert.Contains(t, err.Error(), "HTTP 401")
			assert.NotContains(t, err.Error(), cfg.Password)
			assert.NotContains(t, logs.String(), cfg.Password)
			err = c.PowerOff(ctxT(t, 5*time.Second))
			require.ErrorIs(t, err, power.ErrAuth)
			assert.Equal(t, 0, b.rec.count(http.MethodPost, "/Systems/"))
			requireNoSessions(t, c, b)
		})
	}
}

// A BMC that echoes credentials and tokens back must not get them into our
// errors or logs.
func TestSecretsRedactedFromEchoingBMC(t *testing.T) {
	b := startBMC(t, redfishsim.Config{}, false)
	b.rec.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || r.URL.Path != "/redfish/v1/Systems" {
			return false
		}
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, "denied for token %s (password was %s)", r.Header.Get("X-Auth-Token"), simPass)
		return true
	})
	c, logs := newClient(t, b.config())
	_, err := c.PowerStatus(ctxT(t, 5*time.Second))
	require.ErrorIs(t, err, power.ErrAuth)
	tokens := b.rec.allTokens()
	require.Len(t, tokens, 1)
	assert.Contains(t, err.Error(), "[REDACTED]")
	for _, secret := range append(tokens, simPass) {
		assert.NotContains(t, err.Error(), secret)
		assert.NotContains(t, logs.String(), secret)
	}
	requireNoSessions(t, c, b)
}

func TestUnreachableBMC(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close()) // nothing listens there now
	c, _ := newClient(t, Config{Host: "node9", Endpoint: "https://" + addr, Username: "u", Password: simPass})
	start := time.Now()
	_, err = c.PowerStatus(ctxT(t, 2*time.Second))
	require.ErrorIs(t, err, power.ErrUnreachable)
	assert.Less(t, time.Since(start), 2*time.Second+500*time.Millisecond)
	assert.Contains(t, err.Error(), "host node9: redfish: power status: bmc-unreachable")
	assert.NotContains(t, err.Error(), simPass)
}

func TestHungBMCTimesOutAtTheDeadline(t *testing.T) {
	b := startBMC(t, redfishsim.Config{}, false)
	b.rec.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		hang(b, r)
		return true
	})
	c, _ := newClient(t, b.config())
	start := time.Now()
	_, err := c.PowerStatus(ctxT(t, 200*time.Millisecond))
	require.ErrorIs(t, err, power.ErrTimeout)
	assert.Less(t, time.Since(start), 200*time.Millisecond+time.Second)

	// With a long ctx, Config.Timeout caps each request.
	cfg := b.config()
	cfg.Timeout = 200 * time.Millisecond
	c, _ = newClient(t, cfg)
	start = time.Now()
	_, err = c.PowerStatus(ctxT(t, 10*time.Second))
	require.ErrorIs(t, err, power.ErrTimeout)
	assert.Less(t, time.Since(start), 2*time.Second)
}

func TestMultipleSystemsNeedSystemID(t *testing.T) {
	b := startBMC(t, redfishsim.Config{Systems: 3}, false)
	c, _ := newClient(t, b.config())
	ctx := ctxT(t, 10*time.Second)
	_, err := c.PowerStatus(ctx)
	require.ErrorIs(t, err, power.ErrConfig)
	assert.Contains(t, err.Error(), `the BMC has 3 systems ("1", "2", "3"): set system_id`)
	require.ErrorIs(t, c.PowerOff(ctx), power.ErrConfig)
	assert.Equal(t, 0, b.sim.Stats().ResetPosts)

	cfg := b.config()
	cfg.SystemID = "2"
	c2, _ := newClient(t, cfg)
	require.NoError(t, c2.PowerOff(ctx))
	assert.Equal(t, map[string]string{"1": "On", "2": "Off", "3": "On"}, b.sim.Stats().PowerStates)

	cfg.SystemID = "7"
	c3, _ := newClient(t, cfg)
	_, err = c3.PowerStatus(ctx)
	require.ErrorIs(t, err, power.ErrConfig)
	assert.Contains(t, err.Error(), `system id "7" not found; the BMC has "1", "2", "3"`)
	requireNoSessions(t, c, b)
	requireNoSessions(t, c2, b)
	requireNoSessions(t, c3, b)
}

func TestTLSVerifiedByDefault(t *testing.T) {
	b := startBMC(t, redfishsim.Config{}, true)
	ctx := ctxT(t, 10*time.Second)

	c, _ := newClient(t, b.config())
	_, err := c.PowerStatus(ctx)
	require.ErrorIs(t, err, power.ErrConfig)
	assert.Contains(t, err.Error(), "ca_file")
	assert.Equal(t, 0, b.sim.Stats().Logins, "no credentials may be sent to an unverified BMC")

	cfg := b.config()
	cfg.Insecure = true
	c, _ = newClient(t, cfg)
	st, err := c.PowerStatus(ctx)
	require.NoError(t, err)
	assert.Equal(t, power.On, st)

	caFile := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.srv.Certificate().Raw}), 0o600))
	cfg = b.config()
	cfg.CAFile = caFile
	c, _ = newClient(t, cfg)
	st, err = c.PowerStatus(ctx)
	require.NoError(t, err)
	assert.Equal(t, power.On, st)
	requireNoSessions(t, c, b)
}

func TestGarbageAnswersAreProtocolErrors(t *testing.T) {
	cases := map[string]func(w http.ResponseWriter, r *http.Request) bool{
		"bad json": func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != "/redfish/v1/Systems/1" {
				return false
			}
			_, _ = w.Write([]byte(`{"PowerState": "On", `))
			return true
		},
		"unknown power state": func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != "/redfish/v1/Systems/1" {
				return false
			}
			_, _ = w.Write([]byte(`{"@odata.id":"/redfish/v1/Systems/1","Id":"1","PowerState":"Sleeping"}`))
			return true
		},
		"redirect": func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != "/redfish/v1/Systems" {
				return false
			}
			http.Redirect(w, r, "http://192.0.2.1/steal", http.StatusFound)
			return true
		},
	}
	for name, icpt := range cases {
		t.Run(name, func(t *testing.T) {
			b := startBMC(t, redfishsim.Config{}, false)
			b.rec.setIntercept(icpt)
			c, _ := newClient(t, b.config())
			st, err := c.PowerStatus(ctxT(t, 5*time.Second))
			require.ErrorIs(t, err, power.ErrProtocol, "%v", err)
			assert.Equal(t, power.Unknown, st)
			requireNoSessions(t, c, b)
		})
	}
}

func TestConfigValidation(t *testing.T) {
	ok := Config{Host: "n1", Endpoint: "https://10.0.0.1:443/", Username: "u", Password: "p"}
	c, err := New(ok, zerolog.Nop())
	require.NoError(t, err)
	assert.Equal(t, "https://10.0.0.1:443", c.cfg.Endpoint)
	assert.Equal(t, AuthSession, c.cfg.Auth)
	assert.Equal(t, DefaultTimeout, c.cfg.Timeout)

	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(notPEM, []byte("hello"), 0o600))
	bad := []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Host = "" }, "host name is empty"},
		{func(c *Config) { c.Endpoint = "" }, "endpoint is empty"},
		{func(c *Config) { c.Endpoint = "ftp://x" }, "scheme must be https"},
		{func(c *Config) { c.Endpoint = "10.0.0.1:443" }, "endpoint"},
		{func(c *Config) { c.Endpoint = "https://u:secretpw@10.0.0.1" }, "must not carry credentials"},
		{func(c *Config) { c.Endpoint = "https://10.0.0.1/redfish/v1" }, "scheme://host[:port] only"},
		{func(c *Config) { c.Username = "" }, "username is empty"},
		{func(c *Config) { c.Password = "" }, "password is empty"},
		{func(c *Config) { c.Auth = "digest" }, `auth "digest"`},
		{func(c *Config) { c.SystemID = "/redfish/v1/Systems/1" }, "not a path"},
		{func(c *Config) { c.Timeout = -time.Second }, "negative"},
		{func(c *Config) { c.CAFile = "/nonexistent/ca.pem" }, "ca_file"},
		{func(c *Config) { c.CAFile = notPEM }, "no PEM certificate"},
	}
	for _, b := range bad {
		cfg := ok
		b.mod(&cfg)
		_, err := New(cfg, zerolog.Nop())
		require.Error(t, err)
		assert.ErrorIs(t, err, power.ErrConfig)
		assert.Contains(t, err.Error(), b.want)
		assert.NotContains(t, err.Error(), "secretpw")
		var pe *power.Error
		require.True(t, errors.As(err, &pe))
		assert.Equal(t, cfg.Host, pe.Host)
		assert.Equal(t, stepConfig, pe.Step)
	}
}
