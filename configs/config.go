package configs

import (
	"fmt"
	"net"
	"time"
)

// Config is one cluster's configuration, as loaded and validated.
type Config struct {
	Cluster    Cluster       `mapstructure:"cluster" json:"cluster" yaml:"cluster"`
	Controller Controller    `mapstructure:"controller" json:"controller" yaml:"controller"`
	Mode       Mode          `mapstructure:"mode" json:"mode" yaml:"mode"`
	Detection  Detection     `mapstructure:"detection" json:"detection" yaml:"detection"`
	Defaults   PolicySpec    `mapstructure:"defaults" json:"defaults" yaml:"defaults"`
	Policies   []NamedPolicy `mapstructure:"policies" json:"policies" yaml:"policies"`
	Racks      []Rack        `mapstructure:"racks" json:"racks" yaml:"racks"`
	Hosts      []Host        `mapstructure:"hosts" json:"hosts" yaml:"hosts"`
	Storage    Storage       `mapstructure:"storage" json:"storage" yaml:"storage"`
	Scheduler  Scheduler     `mapstructure:"scheduler" json:"scheduler" yaml:"scheduler"`
	Alerts     Alerts        `mapstructure:"alerts" json:"alerts" yaml:"alerts"`

	// hostIndex maps a host name to its index in Hosts; built by Load.
	hostIndex map[string]int
}

// Cluster names the cluster, for alerts and history.
type Cluster struct {
	Name string `mapstructure:"name" json:"name" yaml:"name"`
}

// Controller is where the daemon listens and keeps its state.
type Controller struct {
	// Listen is the API address; loopback by default so the API is never
	// exposed by accident.
	Listen string `mapstructure:"listen" json:"listen" yaml:"listen"`
	// HeartbeatUDPListen is where agents' heartbeat datagrams arrive: ""
	// (default) is Listen's address and port (the port actually bound),
	// HeartbeatUDPOff takes heartbeats over HTTP only, anything else is
	// host:port. See HeartbeatUDPAddr.
	HeartbeatUDPListen string `mapstructure:"heartbeat_udp_listen" json:"heartbeat_udp_listen" yaml:"heartbeat_udp_listen"`
	// StateDir holds the journal (bbolt file).
	StateDir string `mapstructure:"state_dir" json:"state_dir" yaml:"state_dir"`
	// APITokenFile holds the operator token for the CLI and API.
	APITokenFile string `mapstructure:"api_token_file" json:"api_token_file" yaml:"api_token_file"`
	// AgentSecretFile holds the cluster secret (at least 32 bytes) every
	// host's credentials derive from (package identity; `chime-fence
	// agent-credential HOST` prints them). The daemon needs no per-host
	// file.
	AgentSecretFile string `mapstructure:"agent_secret_file" json:"agent_secret_file" yaml:"agent_secret_file"`
	// AgentPreviousSecretFile, during a rotation, holds the secret being
	// replaced: credentials derived from it are still accepted (the
	// daemon presents the current one's first, the previous one's to an
	// agent that refuses it). Remove it once every agent has its new
	// credentials.
	AgentPreviousSecretFile string `mapstructure:"agent_previous_secret_file" json:"agent_previous_secret_file,omitempty" yaml:"agent_previous_secret_file,omitempty"`
	// APITokens are further API tokens, each with a name (the actor the
	// history records for its operations) and a role. APITokenFile is one
	// more, named "api", with the operator role.
	APITokens []APIToken `mapstructure:"api_tokens" json:"api_tokens,omitempty" yaml:"api_tokens,omitempty"`
	// TLSCertFile and TLSKeyFile (both or neither) make the API serve
	// HTTPS with this certificate chain and key (PEM).
	TLSCertFile string `mapstructure:"tls_cert_file" json:"tls_cert_file,omitempty" yaml:"tls_cert_file,omitempty"`
	TLSKeyFile  string `mapstructure:"tls_key_file" json:"tls_key_file,omitempty" yaml:"tls_key_file,omitempty"`
}

// HeartbeatUDPOff is the controller.heartbeat_udp_listen that turns UDP
// heartbeats off.
const HeartbeatUDPOff = "off"

// HeartbeatUDPAddr is the address to take UDP heartbeats on, given the
// address the API listener bound (tcp); ok is false when they are off.
func (c Controller) HeartbeatUDPAddr(api net.Addr) (addr string, ok bool) {
	switch c.HeartbeatUDPListen {
	case HeartbeatUDPOff:
		return "", false
	case "":
		return api.String(), true
	}
	return c.HeartbeatUDPListen, true
}

// APITokenName is the name of the token in controller.api_token_file.
const APITokenName = "api"

// Role is what an API token may do.
type Role string

const (
	// RoleReadOnly may read (GET) every operator endpoint, never change
	// anything.
	RoleReadOnly Role = "read-only"
	// RoleOperator may also start operations and set admin states.
	RoleOperator Role = "operator"
)

// APIToken is one entry of controller.api_tokens.
type APIToken struct {
	Name string `mapstructure:"name" json:"name" yaml:"name"`
	// File holds the token (never the config itself).
	File string `mapstructure:"file" json:"file" yaml:"file"`
	Role Role   `mapstructure:"role" json:"role" yaml:"role"`
}

// Secret says where the token comes from.
func (t APIToken) Secret() Secret {
	return Secret{What: fmt.Sprintf("api token %q", t.Name), File: t.File}
}

// Mode says whether the daemon acts on its verdicts.
type Mode string

const (
	// ModeObserve decides and logs "would fence …" only: for roll-outs.
	ModeObserve Mode = "observe"
	// ModeEnforce fences and evacuates.
	ModeEnforce Mode = "enforce"
)

// Detection tunes how fast a silent host becomes unreachable.
type Detection struct {
	HeartbeatInterval time.Duration `mapstructure:"heartbeat_interval" json:"heartbeat_interval" yaml:"heartbeat_interval"`
	// MissedHeartbeats before a host is probed and may become unreachable.
	MissedHeartbeats int `mapstructure:"missed_heartbeats" json:"missed_heartbeats" yaml:"missed_heartbeats"`
	// ProbeTimeout bounds each active probe (TCP, ICMP, BMC).
	ProbeTimeout time.Duration `mapstructure:"probe_timeout" json:"probe_timeout" yaml:"probe_timeout"`
	// RecoveryHeartbeats is the hysteresis: consecutive good heartbeats
	// before an unreachable or error host is normal again.
	RecoveryHeartbeats int `mapstructure:"recovery_heartbeats" json:"recovery_heartbeats" yaml:"recovery_heartbeats"`
	// HeartbeatMaxClockSkew bounds how far a heartbeat's sent_at may be
	// from the daemon's clock, either way; further is refused with the
	// reason ("check NTP"). It bounds replay: a captured heartbeat is
	// useless once this old.
	HeartbeatMaxClockSkew time.Duration `mapstructure:"heartbeat_max_clock_skew" json:"heartbeat_max_clock_skew" yaml:"heartbeat_max_clock_skew"`
	// ReferenceAddresses are addresses the daemon itself must reach; when it
	// cannot, it suspects its own network and pauses (storm guard).
	ReferenceAddresses []string `mapstructure:"reference_addresses" json:"reference_addresses" yaml:"reference_addresses"`
}

// Window is how long a host may be silent before it is considered gone.
func (d Detection) Window() time.Duration {
	return d.HeartbeatInterval * time.Duration(d.MissedHeartbeats)
}

// NamedPolicy is an entry of `policies`.
type NamedPolicy struct {
	Name       string `mapstructure:"name" json:"name" yaml:"name"`
	PolicySpec `mapstructure:",squash" yaml:",inline"`
}

// Rack groups hosts under one policy.
type Rack struct {
	Name     string     `mapstructure:"name" json:"name" yaml:"name"`
	Policy   string     `mapstructure:"policy" json:"policy" yaml:"policy"`
	Override PolicySpec `mapstructure:"override" json:"override,omitzero" yaml:"override,omitempty"`
}

// Host is one compute host.
type Host struct {
	Name string `mapstructure:"name" json:"name" yaml:"name"`
	Rack string `mapstructure:"rack" json:"rack" yaml:"rack"`
	// Address is the management address: probes and heartbeats.
	Address string  `mapstructure:"address" json:"address" yaml:"address"`
	Agent   Agent   `mapstructure:"agent" json:"agent" yaml:"agent"`
	Libvirt Libvirt `mapstructure:"libvirt" json:"libvirt" yaml:"libvirt"`
	// BMCs lists the host's management controllers, at most one per type;
	// a fence level of type T uses the BMC of type T.
	BMCs []BMC `mapstructure:"bmcs" json:"bmcs" yaml:"bmcs"`
	// Policy names a policy replacing the rack's; Override adjusts fields.
	Policy   string     `mapstructure:"policy" json:"policy,omitempty" yaml:"policy,omitempty"`
	Override PolicySpec `mapstructure:"override" json:"override,omitzero" yaml:"override,omitempty"`
	// Bridges maps bridge names in a rebuilt domain's XML to this host's
	// bridge names, for hosts whose bridges are named differently.
	Bridges map[string]string `mapstructure:"bridges" json:"bridges,omitempty" yaml:"bridges,omitempty"`

	// Effective is the resolved policy, filled by Load.
	Effective Policy `mapstructure:"-" json:"-" yaml:"-"`
}

// BMC returns the host's BMC of the given type.
func (h *Host) BMC(t BMCType) (BMC, bool) {
	for _, b := range h.BMCs {
		if b.Type == t {
			return b, true
		}
	}
	return BMC{}, false
}

// Agent is how the daemon reaches the host's chime-agent.
type Agent struct {
	// URL of the agent's API; default http://<address>:7481.
	URL string `mapstructure:"url" json:"url" yaml:"url"`
}

// Libvirt is how the daemon reaches the host's libvirtd.
type Libvirt struct {
	// Address is host:port of libvirtd's TCP or TLS listener; default
	// <address>:16509.
	Address string `mapstructure:"address" json:"address" yaml:"address"`
	// URI is the driver URI asked of libvirtd; default qemu:///system.
	URI string `mapstructure:"uri" json:"uri" yaml:"uri"`
}

// BMCType is a BMC protocol.
type BMCType string

const (
	BMCIPMI    BMCType = "ipmi"
	BMCRedfish BMCType = "redfish"
)

// BMC is a management controller's address and credentials.
type BMC struct {
	Type     BMCType `mapstructure:"type" json:"type" yaml:"type"`
	Address  string  `mapstructure:"address" json:"address" yaml:"address"`
	Port     int     `mapstructure:"port" json:"port" yaml:"port"`
	Username string  `mapstructure:"username" json:"username" yaml:"username"`
	// PasswordFile or PasswordEnv (exactly one) holds the password.
	PasswordFile string `mapstructure:"password_file" json:"password_file,omitempty" yaml:"password_file,omitempty"`
	PasswordEnv  string `mapstructure:"password_env" json:"password_env,omitempty" yaml:"password_env,omitempty"`
	// CipherSuites (IPMI) are tried in order; default [3, 17].
	CipherSuites []int `mapstructure:"cipher_suites" json:"cipher_suites,omitempty" yaml:"cipher_suites,omitempty"`
	// SystemID (Redfish) selects the system when the BMC has several.
	SystemID string `mapstructure:"system_id" json:"system_id,omitempty" yaml:"system_id,omitempty"`
	// Scheme (Redfish) is https unless set to http (labs only).
	Scheme string `mapstructure:"scheme" json:"scheme,omitempty" yaml:"scheme,omitempty"`
	// Auth (Redfish) is session (default) or basic.
	Auth string `mapstructure:"auth" json:"auth,omitempty" yaml:"auth,omitempty"`
	// Insecure (Redfish) skips TLS verification: an explicit per-BMC opt-in.
	Insecure bool `mapstructure:"insecure" json:"insecure,omitempty" yaml:"insecure,omitempty"`
	// CAFile (Redfish) is an extra CA bundle to trust.
	CAFile string `mapstructure:"ca_file" json:"ca_file,omitempty" yaml:"ca_file,omitempty"`
}

// Password says where the BMC password comes from.
func (b BMC) Password() Secret {
	return Secret{What: "bmc " + string(b.Type) + " password", File: b.PasswordFile, Env: b.PasswordEnv}
}

// Storage says which disks count as shared, i.e. reachable from every host.
type Storage struct {
	// SharedPaths are mount prefixes of shared file systems (NFS, CephFS).
	SharedPaths []string `mapstructure:"shared_paths" json:"shared_paths" yaml:"shared_paths"`
	// RBDShared counts Ceph RBD network disks as shared.
	RBDShared bool `mapstructure:"rbd_shared" json:"rbd_shared" yaml:"rbd_shared"`
	// InventoryDir mirrors every host's saved domain XML as
	// <dir>/<host>/<uuid>.xml, so an operator can `virsh define` by hand if
	// the daemon is gone. Default <first shared path>/chime-fence/domains;
	// "-" turns the mirror off.
	InventoryDir string `mapstructure:"inventory_dir" json:"inventory_dir" yaml:"inventory_dir"`
	// InventoryInterval is how often each healthy host's domain XML and
	// CPU load are captured (also on every libvirt lifecycle event).
	InventoryInterval time.Duration `mapstructure:"inventory_interval" json:"inventory_interval" yaml:"inventory_interval"`
}

// Scheduler limits where evacuated VMs may land.
type Scheduler struct {
	CPUOvercommit     float64 `mapstructure:"cpu_overcommit" json:"cpu_overcommit" yaml:"cpu_overcommit"`
	MemoryOvercommit  float64 `mapstructure:"memory_overcommit" json:"memory_overcommit" yaml:"memory_overcommit"`
	ReservedCPUs      int     `mapstructure:"reserved_cpus" json:"reserved_cpus" yaml:"reserved_cpus"`
	ReservedMemoryMiB int     `mapstructure:"reserved_memory_mib" json:"reserved_memory_mib" yaml:"reserved_memory_mib"`
	// RebuildsPerTarget bounds concurrent rebuilds on one target host.
	RebuildsPerTarget int `mapstructure:"rebuilds_per_target" json:"rebuilds_per_target" yaml:"rebuilds_per_target"`
	// StartTimeout is how long a rebuilt domain may take to be running.
	StartTimeout time.Duration `mapstructure:"start_timeout" json:"start_timeout" yaml:"start_timeout"`
	// GraphicsListen replaces graphics listen addresses in rebuilt domains
	// (the old host's address is meaningless on the new one).
	GraphicsListen string `mapstructure:"graphics_listen" json:"graphics_listen" yaml:"graphics_listen"`
	// MigrationAllowUnsafe lets `host migrate` live-migrate VMs whose disks
	// libvirt cannot tell are shared (it recognises NFS, Ceph, GlusterFS
	// and cluster file systems; a plain local path is "unsafe"). Only for
	// storage that really is shared, such as the lab's.
	MigrationAllowUnsafe bool `mapstructure:"migration_allow_unsafe" json:"migration_allow_unsafe" yaml:"migration_allow_unsafe"`
}

// Alerts lists where events are sent.
type Alerts struct {
	Webhooks []Webhook `mapstructure:"webhooks" json:"webhooks" yaml:"webhooks"`
}

// Webhook is one HTTP receiver of events.
type Webhook struct {
	Name string `mapstructure:"name" json:"name" yaml:"name"`
	URL  string `mapstructure:"url" json:"url" yaml:"url"`
	// SecretFile holds the key of the X-Chime-Signature HMAC.
	SecretFile string `mapstructure:"secret_file" json:"secret_file,omitempty" yaml:"secret_file,omitempty"`
	// Events filters by event type; "host.*" style globs; empty = all.
	Events  []string      `mapstructure:"events" json:"events" yaml:"events"`
	Timeout time.Duration `mapstructure:"timeout" json:"timeout" yaml:"timeout"`
	Retries int           `mapstructure:"retries" json:"retries" yaml:"retries"`
	// Format is chime (default) or alertmanager.
	Format string `mapstructure:"format" json:"format" yaml:"format"`
}
