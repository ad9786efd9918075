// Package redfish is the Redfish power driver, built on
// github.com/stmcginnis/gofish v0.26.0. It is a leaf: it imports only the
// shared power vocabulary, never the core.
//
// # Caller contract
//
//   - New validates the Config (and reads CAFile) but does no network I/O.
//     The password is already read by the caller; it and the session token
//     never appear in logs or error text.
//   - Every method is one self-contained BMC conversation on its own HTTP
//     transport: GET the service root, create a session (POST to
//     Links.Sessions; or HTTP Basic when Auth is "basic"), do one thing, and
//     DELETE the session. The logout runs whether the call succeeded,
//     failed or its ctx ended, with its own short context (gofish's Logout
//     would reuse the ended ctx or wait without a deadline). A *Client is
//     safe for concurrent use.
//   - Every HTTP request obeys ctx and is capped at Config.Timeout. A call
//     whose ctx has no deadline is capped at DefaultOpTimeout. When ctx ends
//     during the logout, the call returns at once and the DELETE finishes
//     in the background within a few seconds.
//   - The system is Config.SystemID (matched against the Id or the last
//     segment of @odata.id), or the only system. Several systems and no
//     SystemID is a KindConfig error naming them: the driver never guesses.
//   - Before any reset is POSTed, its type is checked against the system's
//     ResetType@Redfish.AllowableValues, or the @Redfish.ActionInfo
//     parameters when those are absent. A type not allowed is KindRefused
//     and nothing is sent. A BMC that publishes neither gets the request
//     (logged as unverifiable).
//   - PowerOff is ForceOff. It returns once the BMC accepted the request; it
//     does not wait for Off. A 400 or 409 answer counts as success only when
//     a fresh GET of the system then reads Off (vendors refuse ForceOff on an
//     Off system). PoweringOff is reported as power.PoweringOff, never Off.
//     PowerOn and SoftOff (GracefulShutdown) treat "already On/Off" the same
//     way; PowerCycle sends PowerCycle, else ForceRestart.
//   - A cancelled reset may or may not have reached the BMC: read back with
//     PowerStatus.
//   - Errors are *power.Error with Host and Step set: KindUnreachable
//     (connection refused, no route, DNS), KindAuth (HTTP 401/403),
//     KindRefused (400/405/409/412/422/501, or a reset type not allowed),
//     KindTimeout (ctx ended, or a per-call timeout after connecting),
//     KindConfig (several systems without SystemID, unknown SystemID, an
//     untrusted TLS certificate, a bad Config), KindProtocol (unparsable
//     JSON, 404, redirects, unknown PowerState), KindUnknown (5xx such as a
//     503 when the BMC's session limit is reached: worth a retry).
//   - TLS is verified against the system roots plus CAFile unless Insecure.
//     Redirects are not followed (they would carry the token elsewhere) and
//     HTTP(S)_PROXY is ignored.
package redfish
