// Package agent is the daemon's client of a host's chime-agent HTTP API.
//
// The API (served by chime-agent, bearer-token authenticated):
//
//	GET /v1/status → 200 {"host": "...", "boot_id": "...", "admin_state": "enabled",
//	                      "local_drain": false,
//	                      "domains": [{"uuid": "...", "name": "...", "state": "running"}]}
//	POST /v1/drain → 200 {"host": "...", "marker": "/var/lib/chime-agent/drained.json",
//	                      "drained_at": "...", "running": 0,
//	                      "domains": [{"uuid": "...", "name": "...", "before": "running",
//	                                   "action": "destroyed"}]}
//	               → 500 the same with "error" when the marker could not be
//	                 written (nothing stopped) or a domain is still active
//
// Errors use package power's kinds, since for the fencer the agent is one
// more way to prove a host stops running VMs: unreachable, auth, timeout,
// protocol. The token never appears in errors.
package agent
