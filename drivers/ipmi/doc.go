// Package ipmi is the IPMI-over-LAN (RMCP+, "lanplus") power driver, built on
// github.com/bougou/go-ipmi v0.9.1. It is a leaf: it imports only the shared
// power vocabulary, never the core.
//
// # Caller contract
//
//   - New validates the Config and does no I/O. The password is already read
//     (from password_file or env) by the caller; it never appears in logs or
//     in error text.
//   - Every method opens ONE short RMCP+ session (cipher suites tried in the
//     configured order, default [3, 17]; privilege operator by default),
//     does one thing, and closes the session (before a successful call
//     returns; in the background after a failed one). A *Client is safe for concurrent
//     use because it shares nothing between calls; two calls never share a
//     go-ipmi client.
//   - Every method obeys ctx: when ctx ends first it returns at once with a
//     *power.Error of KindTimeout. The go-ipmi session then finishes on its
//     own goroutine (which alone owns and closes that go-ipmi client) within
//     about two per-exchange Timeouts, so a cancelled call never closes a
//     client under an in-flight request. A call whose ctx has no deadline is
//     capped at DefaultOpTimeout.
//   - A cancelled PowerOff/PowerOn/PowerCycle/SoftOff may or may not have
//     reached the BMC: the result is unknown and the caller must read back
//     with PowerStatus. The action is never sent once ctx has ended.
//   - Errors are *power.Error with Host and Step set: KindUnreachable (no
//     answer, connection refused), KindAuth (RAKP failure, unknown user,
//     role/privilege refused, completion code 0xD4), KindRefused (completion
//     code refusing the command), KindTimeout (ctx ended), KindConfig (the
//     BMC accepts none of the configured cipher suites), KindProtocol (an
//     answer we cannot parse).
//
// # go-ipmi quirks this package works around
//
//   - Without explicit cipher suites, Connect's discovery stalls (~10 s per
//     call against ipmi_sim, which also rejects suite 17).
//   - Client.Close panics when called twice (it closes a channel), and
//     closing a client while another goroutine has a request in flight has
//     crashed processes; hence one goroutine per session that alone calls
//     Close, exactly once, after its last exchange returned.
//   - A cancelled exchange leaves a go-ipmi reader goroutine blocked until
//     its read deadline; the session goroutine waits one Timeout before
//     Close so nothing else touches the client meanwhile.
//   - Connect reports failures of all suites with %v, dropping the error
//     chain, so authentication failures are recognised by go-ipmi's own
//     error texts (ErrRAKPAuthentication, "RMCP+ status 0x..").
//   - ipmi_sim answers an Open Session for a suite it lacks (17) with just
//     tag and status; go-ipmi fails to unpack it ("unpacked data is too
//     short (2/8)"), which this package reports as KindConfig.
package ipmi
