package api

import (
	"net/http"
	"strings"
	"sync"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/identity"
)

// clusterSecret is the tests' cluster secret; every host's credentials
// derive from it.
const clusterSecret = "test-cluster-secret-0123456789abcdef-xyz"

var testRing = func() identity.Ring {
	r, err := identity.NewRing(clusterSecret, "")
	if err != nil {
		panic(err)
	}
	return r
}()

// agentTok stands for host h1's agent: setAuth sends h1's credential and
// names h1.
const agentTok = "agent:h1"

// agentFor stands for host's agent (see setAuth).
func agentFor(host string) string { return "agent:" + host }

// credOf is host's agent credential.
func credOf(host string) string { return identity.AgentCredential(clusterSecret, host) }

// setAuth sets a request's credential: an API token as is, agentFor(host)
// as host's agent credential with the host named.
func setAuth(r *http.Request, token string) {
	if host, ok := strings.CutPrefix(token, "agent:"); ok {
		r.Header.Set(identity.HeaderHost, host)
		token = credOf(host)
	}
	r.Header.Set("Authorization", "Bearer "+token)
}

var sealers sync.Map // host → *heartbeat.Sealer

// sealerOf seals and opens host's datagrams (its agent's key).
func sealerOf(host string) *heartbeat.Sealer {
	if s, ok := sealers.Load(host); ok {
		return s.(*heartbeat.Sealer)
	}
	s, err := heartbeat.NewSealer(credOf(host))
	if err != nil {
		panic(err)
	}
	sealers.Store(host, s)
	return s
}

// openDatagram opens a datagram with the key of the host it names, as
// that host's agent would.
func openDatagram(b []byte) (byte, []byte, error) {
	host, err := heartbeat.DatagramHost(b)
	if err != nil {
		return 0, nil, err
	}
	return sealerOf(host).Open(b)
}
