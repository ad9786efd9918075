// Package redfishsim is a small Redfish BMC simulator for tests and the lab:
// an http.Handler built from a Config, served by cmd/chime-redfish-sim or by
// httptest in unit tests.
//
// It follows DMTF DSP0266 and the ServiceRoot, SessionService, Session,
// ComputerSystemCollection, ComputerSystem and ActionInfo schemas closely
// enough that stock clients (Debian's redfishtool and python3-sushy, gofish)
// work against it unchanged; it is not shaped after chime-fence's driver.
//
// # What it serves
//
//	GET    /redfish                                    {"v1": "/redfish/v1/"}, no auth
//	GET    /redfish/v1/                                service root, no auth
//	GET    /redfish/v1/odata                           OData service document, no auth
//	GET    /redfish/v1/SessionService                  auth
//	GET    /redfish/v1/SessionService/Sessions         auth
//	POST   /redfish/v1/SessionService/Sessions         login, no auth: 201, X-Auth-Token, Location
//	GET    /redfish/v1/SessionService/Sessions/{id}    auth
//	DELETE /redfish/v1/SessionService/Sessions/{id}    logout, auth: 204
//	GET    /redfish/v1/Systems                         auth
//	GET    /redfish/v1/Systems/{id}                    auth: PowerState, #ComputerSystem.Reset
//	GET    /redfish/v1/Systems/{id}/ResetActionInfo    auth (unless ResetTypesIn is inline/none)
//	POST   /redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset   auth: 204
//	GET    /sim/stats                                  test-only counters, no auth (StatsPath)
//
// Authentication is a session token (X-Auth-Token) or HTTP Basic. Errors
// carry a Redfish error body ("error" with "@Message.ExtendedInfo" using
// Base registry message ids): 401 NoValidSession, 503 SessionLimitExceeded
// when MaxSessions sessions are open, 400 ActionParameterValueNotInList for a
// reset type outside AllowedResetTypes, 400 ActionParameterMissing,
// 400 MalformedJSON, 404 ResourceNotFound, 405 with an Allow header.
// Sessions expire after SessionTimeout without use.
//
// # Power model
//
// A reset that powers a system off (ForceOff, GracefulShutdown,
// PushPowerButton on a running system) reports PoweringOff for OffLag, then
// Off; one that powers it on reports PoweringOn for OnLag. ForceOff or
// GracefulShutdown on a system that is already Off answers
// AlreadyOffStatus (409 by default, as several vendors do; 400 or 200 are
// the other choices). ForceRestart, GracefulRestart and PowerCycle power
// the system off and on again (on, if it was off). Nmi changes nothing.
// Time comes from Config.Now so tests can move it without sleeping.
//
// # Chassis control
//
// With Config.ChassisControl set, the first system's power is not the
// simulator's own but a program's, with ipmi_sim's calling convention:
//
//	PROG get power       -> prints "power:1" or "power:0", exits 0
//	PROG set power 0|1   -> changes the state, exits 0
//
// Off resets run "set power 0", On runs "set power 1", restarts and power
// cycles run "set power 0" then "set power 1". The program runs without a
// shell, with a 10 s limit, and its failure becomes a 500 InternalError.
// The lags still apply on top: during a lag the transitional state is
// reported, afterwards "get power" decides.
//
// # Caller contract
//
// New validates the Config and never does I/O. The Sim is safe for
// concurrent use. Stats and SessionCount give tests the live counters
// (sessions open, logins, logouts, refused logins, reset POSTs) so session
// leaks and "no request was sent" can be asserted; the same numbers are
// served as JSON at StatsPath.
package redfishsim
