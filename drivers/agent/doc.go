// Package agent is the daemon's client of a host's chime-agent HTTP API.
//
// The API (served by chime-agent, bearer-token authenticated):
//
//	GET /v1/status → 200 {"host": "...", "boot_id": "...", "admin_state": "enabled",
//	                      "domains": [{"uuid": "...", "name": "...", "state": "running"}]}
//
// Errors use package power's kinds, since for the fencer the agent is one
// more way to prove a host stops running VMs: unreachable, auth, timeout,
// protocol. The token never appears in errors.
package agent
