// Package identity derives each host's credentials from the cluster secret
// the daemon holds, so every host has its own, bound to its name, and the
// daemon needs no per-host file:
//
//	agent credential        HMAC-SHA256(secret, "chime-fence agent v1\x00" + host), hex
//	daemon→agent credential HMAC-SHA256(secret, "chime-fence daemon-to-agent v1\x00" + host), hex
//	reply key               HMAC-SHA256(agent credential, "chime-fence agent reply v1")
//
// A host holds its agent credential (heartbeats, assignment reads) and its
// daemon→agent credential (to check that a drain or status request comes
// from the daemon). Neither says anything about another host's: HMAC is a
// PRF, so a compromised host cannot call another host's drain, heartbeat
// or read its assignment in its name. The agent signs its status and drain
// answers with the reply key (ReplyMAC), so a responder at an agent's URL
// that does not hold that host's credential cannot fake a drain.
//
// Pure functions, no I/O.
package identity
