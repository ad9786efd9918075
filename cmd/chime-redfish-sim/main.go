// Command chime-redfish-sim serves a simulated Redfish BMC (package
// e2e/redfishsim) for the lab and tests.
//
//	chime-redfish-sim --listen 127.0.0.1:8443 --user admin --password-file pw \
//	    [--tls-cert cert.pem --tls-key key.pem] [--chassis-control PROG] ...
//
// The password is read from --password-file (trailing newline dropped),
// never from the command line. Once listening it prints one line to stdout,
//
//	chime-redfish-sim: listening on http(s)://ADDR:PORT
//
// so a caller that asked for port 0 learns the port. SIGINT/SIGTERM stop it.
// Logs are zerolog JSON on stderr.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/e2e/redfishsim"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	log := zerolog.New(stderr).With().Timestamp().Str("component", "redfish-sim").Logger()
	fs := flag.NewFlagSet("chime-redfish-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		listen       = fs.String("listen", "127.0.0.1:8443", "address to listen on, ADDR:PORT (port 0 picks one)")
		user         = fs.String("user", "admin", "account user name")
		passwordFile = fs.String("password-file", "", "file holding the account password (required)")
		chassis      = fs.String("chassis-control", "", "program owning the first system's power: PROG get power | PROG set power 0|1")
		systemID     = fs.String("system-id", "1", "Id of the first ComputerSystem")
		systems      = fs.Int("systems", 1, "number of ComputerSystems")
		maxSessions  = fs.Int("max-sessions", 4, "sessions open at once; further logins get 503")
		sessTimeout  = fs.Duration("session-timeout", 30*time.Minute, "idle time after which a session expires")
		offLag       = fs.Duration("off-lag", 0, "how long PoweringOff is reported after a power-off reset")
		onLag        = fs.Duration("on-lag", 0, "how long PoweringOn is reported after a power-on reset")
		alreadyOff   = fs.Int("already-off-status", 409, "HTTP status for ForceOff/GracefulShutdown on an Off system: 409, 400 or 200")
		allowed      = fs.String("allowed-reset-types", strings.Join(redfishsim.DefaultAllowedResetTypes, ","), "comma-separated ResetType values accepted")
		publish      = fs.String("reset-types-in", redfishsim.PublishBoth, "where allowed reset types are published: both, inline, actioninfo, none")
		initiallyOff = fs.Bool("initially-off", false, "start in-memory systems powered off")
		tlsCert      = fs.String("tls-cert", "", "PEM certificate; with --tls-key serves HTTPS")
		tlsKey       = fs.String("tls-key", "", "PEM private key for --tls-cert")
	)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "chime-redfish-sim: unexpected arguments %q (the password comes from --password-file)\n", fs.Args())
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "chime-redfish-sim: "+format+"\n", a...)
		return 2
	}
	if *passwordFile == "" {
		return fail("--password-file is required")
	}
	pw, err := os.ReadFile(*passwordFile)
	if err != nil {
		return fail("--password-file: %v", err)
	}
	password := strings.TrimRight(string(pw), "\r\n")
	if password == "" {
		return fail("--password-file %s is empty", *passwordFile)
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return fail("--tls-cert and --tls-key go together")
	}
	var types []string
	for _, t := range strings.Split(*allowed, ",") {
		if t = strings.TrimSpace(t); t != "" {
			types = append(types, t)
		}
	}
	if *chassis != "" {
		if st, err := os.Stat(*chassis); err != nil {
			return fail("--chassis-control: %v", err)
		} else if st.IsDir() || st.Mode().Perm()&0o111 == 0 {
			return fail("--chassis-control %s is not an executable file", *chassis)
		}
	}
	sim, err := redfishsim.New(redfishsim.Config{
		Username:          *user,
		Password:          password,
		SystemID:          *systemID,
		Systems:           *systems,
		MaxSessions:       *maxSessions,
		SessionTimeout:    *sessTimeout,
		OffLag:            *offLag,
		OnLag:             *onLag,
		AlreadyOffStatus:  *alreadyOff,
		AllowedResetTypes: types,
		ResetTypesIn:      *publish,
		InitiallyOff:      *initiallyOff,
		ChassisControl:    *chassis,
		Logf:              func(f string, a ...any) { log.Warn().Msgf(f, a...) },
	})
	if err != nil {
		return fail("%v", err)
	}

	var tlsConf *tls.Config
	if *tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			return fail("--tls-cert/--tls-key: %v", err)
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fail("--listen: %v", err)
	}
	addr := ln.Addr().String()
	scheme := "http"
	if tlsConf != nil {
		scheme = "https"
		ln = tls.NewListener(ln, tlsConf)
	}
	srv := &http.Server{
		Handler:           sim,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info().Str("addr", addr).Str("scheme", scheme).Strs("systems", sim.SystemIDs()).
		Int("max_sessions", *maxSessions).Str("chassis_control", *chassis).Msg("listening")
	fmt.Fprintf(stdout, "chime-redfish-sim: listening on %s://%s\n", scheme, addr)

	select {
	case err := <-errc:
		return fail("serve: %v", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn().Err(err).Msg("shutdown")
	}
	log.Info().Msg("stopped")
	return 0
}
