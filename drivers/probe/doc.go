// Package probe is the daemon's active probe of a host whose heartbeats went
// stale (the seed's "ping back"): TCP connects and ICMP echoes, run in
// parallel, each bounded by the round's deadline. It is a leaf: it knows
// nothing of hosts, verdicts or the detector; the caller turns a Result into
// the P signal.
//
// # What counts as an answer
//
// A probe answers when the host's own kernel is provably alive:
//
//   - TCP: the connect completes, or is actively refused (RST →
//     ECONNREFUSED, or ECONNRESET). A refused port still proves the
//     kernel runs.
//   - ICMP: an echo reply whose source is the target and whose echo ID
//     (raw sockets), sequence number and payload (a per-socket random token
//     plus a per-probe nonce) match a request still waiting. A late reply to
//     an earlier probe, another process's ping, or a reply from another
//     address never counts. An ICMP error about our echo whose source is the
//     target itself (its firewall rejecting pings) also counts: the target's
//     stack sent it.
//
// A probe is silent (Answer.Answered and Answer.Unsupported both false,
// Err saying how) when nothing came back before the deadline, or the
// network says the host cannot be reached: ENETUNREACH / EHOSTUNREACH / no
// route on connect or send, or an ICMP destination-unreachable or
// time-exceeded from a router (any source other than the target) quoting our
// echo request. On a raw socket that error ends the probe at once; a ping
// socket does not deliver ICMP errors, so there the probe runs to its
// deadline, with the same verdict.
//
// A probe is Unsupported — evidence of nothing, neither answered nor silent —
// when it could not be performed here: ICMP sockets not permitted, the name
// does not resolve, local resources or policy fail (EMFILE, EADDRNOTAVAIL,
// ENOBUFS, EPERM/EACCES from our own firewall, …), the target is invalid,
// the deadline came before the SYN or echo request left (a slow resolver,
// or too many echoes in flight), or the round's ctx was cancelled (not
// expired). Result.Silent is
// true only when no target answered and at least one was silent, so a round
// of Unsupported answers never reads as a dead host.
//
// Known limit, in the safe direction: a middlebox that rejects on the
// host's behalf (a firewall sending TCP RST, or an ICMP port-unreachable
// that Linux reports as ECONNREFUSED during connect) makes a dead host look
// alive. That can delay a fence; it can never cause one.
//
// # Caller contract
//
//   - New opens nothing. Round is safe for concurrent use; thousands of
//     rounds may run at once (a storm).
//   - Round runs every target in parallel and returns when all finished or
//     ctx is done; it never waits past ctx's deadline (Options.DefaultTimeout
//     when ctx has none). A probe still pending at the deadline is silent
//     ("no answer within …"); one pending when ctx is cancelled is
//     Unsupported. A cancelled round should be discarded.
//   - Result.At is the round's start and RTTs are measured with
//     Options.Clock.
//   - Names in targets are resolved with the system resolver (bounded by
//     ctx); configure IP literals so a DNS outage does not blind the probe.
//   - TCP connections are closed with a reset (SO_LINGER 0) as soon as they
//     complete, so probes leave no TIME_WAIT sockets; nothing is sent.
//
// # ICMP sockets
//
// Each address family has one socket shared by every probe in flight, with
// a reader goroutine that demultiplexes replies by sequence number to the
// waiting probe. It is opened by the first ICMP probe and closed when the
// last in-flight one finishes, so an idle Prober holds no socket and needs no
// Close. An unprivileged ping socket ("udp4"/"udp6", allowed by
// net.ipv4.ping_group_range) is tried first, then a raw socket ("ip4:icmp",
// needs CAP_NET_RAW); when neither opens, ICMP answers are Unsupported.
//
// Bursts: the socket's receive buffer is enlarged (SO_RCVBUFFORCE when
// permitted, else up to net.core.rmem_max) and the requests in flight on it
// are bounded by what that buffer can queue (64…4096), so a storm of
// replies is never dropped by the kernel and mistaken for silence. A probe
// that cannot get a slot before its deadline was never sent and is
// Unsupported.
package probe
