package redfishsim

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// StatsPath serves Stats as JSON without authentication. It is outside
// /redfish so no Redfish client stumbles on it.
const StatsPath = "/sim/stats"

// ResetTypes are the DMTF ResetType values the simulator understands.
var ResetTypes = []string{"On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "Nmi", "ForceOn", "PushPowerButton", "PowerCycle"}

// DefaultAllowedResetTypes is what a typical BMC advertises.
var DefaultAllowedResetTypes = []string{"On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "PowerCycle", "Nmi"}

// Where the allowed reset types are published (Config.ResetTypesIn).
const (
	// Both inline ResetType@Redfish.AllowableValues and @Redfish.ActionInfo.
	PublishBoth = "both"
	// PublishInline only as ResetType@Redfish.AllowableValues.
	PublishInline = "inline"
	// PublishActionInfo only through @Redfish.ActionInfo, so clients must
	// follow the link.
	PublishActionInfo = "actioninfo"
	// PublishNone advertises nothing; the list is still enforced.
	PublishNone = "none"
)

// Config describes one simulated BMC. Zero values take the defaults noted.
type Config struct {
	// Username and Password are the one account. Both required.
	Username string
	Password string
	// SystemID is the Id of the first system (default "1"). With Systems > 1
	// the others are numbered on from it when it is a number ("1", "2", …),
	// else suffixed ("abc", "abc-2", …).
	SystemID string
	// Systems is how many ComputerSystems the BMC manages (default 1).
	Systems int
	// MaxSessions open at once; further logins get 503 (default 4).
	MaxSessions int
	// SessionTimeout expires a session unused this long (default 30 min).
	SessionTimeout time.Duration
	// OffLag and OnLag: how long PoweringOff / PoweringOn is reported.
	OffLag time.Duration
	OnLag  time.Duration
	// AlreadyOffStatus answers ForceOff/GracefulShutdown on an Off system:
	// 409 (default), 400, or 200 (success).
	AlreadyOffStatus int
	// AllowedResetTypes accepted by #ComputerSystem.Reset (default
	// DefaultAllowedResetTypes); others get 400.
	AllowedResetTypes []string
	// ResetTypesIn says where the allowed list is published (default both).
	ResetTypesIn string
	// InitiallyOff starts the internally modelled systems powered off.
	InitiallyOff bool
	// ChassisControl is a program owning the first system's power (see the
	// package doc); empty keeps the power state in memory.
	ChassisControl string
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logf receives failures worth an operator's eye (a chassis program
	// that failed); nil discards them. Never given credentials.
	Logf func(format string, args ...any)
}

// Stats are the simulator's counters.
type Stats struct {
	Sessions      int               `json:"sessions"`       // open now
	Logins        int               `json:"logins"`         // sessions created
	Logouts       int               `json:"logouts"`        // sessions deleted by DELETE
	Expired       int               `json:"expired"`        // sessions timed out
	RefusedLogins int               `json:"refused_logins"` // bad credentials or limit reached
	LimitRefusals int               `json:"limit_refusals"` // of which: MaxSessions reached
	AuthFailures  int               `json:"auth_failures"`  // 401 answers
	ResetPosts    int               `json:"reset_posts"`    // POSTs to a Reset target, accepted or not
	Resets        map[string]int    `json:"resets"`         // accepted resets by type
	Requests      int               `json:"requests"`       // every request
	PowerStates   map[string]string `json:"power_states"`   // system id -> PowerState now
}

// Sim is a simulated BMC. It implements http.Handler.
type Sim struct {
	cfg     Config
	allowed []string

	mu       sync.Mutex
	sessions map[string]*session // by id
	stats    Stats
	systems  []*system

	chassisMu sync.Mutex // the program is a single chassis: one command at a time
}

type session struct {
	id, token string
	created   time.Time
	lastUsed  time.Time
}

// New validates cfg and builds the simulator.
func New(cfg Config) (*Sim, error) {
	if cfg.Username == "" || cfg.Password == "" {
		return nil, errors.New("redfishsim: username and password are required")
	}
	if cfg.SystemID == "" {
		cfg.SystemID = "1"
	}
	if strings.ContainsAny(cfg.SystemID, "/?#% ") {
		return nil, fmt.Errorf("redfishsim: system id %q must not contain '/', '?', '#', '%%' or spaces", cfg.SystemID)
	}
	if cfg.Systems == 0 {
		cfg.Systems = 1
	}
	if cfg.Systems < 0 || cfg.Systems > 64 {
		return nil, fmt.Errorf("redfishsim: systems %d out of range 1..64", cfg.Systems)
	}
	if cfg.MaxSessions == 0 {
		cfg.MaxSessions = 4
	}
	if cfg.MaxSessions < 0 {
		return nil, fmt.Errorf("redfishsim: max sessions %d must be positive", cfg.MaxSessions)
	}
	if cfg.SessionTimeout == 0 {
		cfg.SessionTimeout = 30 * time.Minute
	}
	if cfg.OffLag < 0 || cfg.OnLag < 0 || cfg.SessionTimeout < 0 {
		return nil, errors.New("redfishsim: lags and session timeout must not be negative")
	}
	switch cfg.AlreadyOffStatus {
	case 0:
		cfg.AlreadyOffStatus = http.StatusConflict
	case http.StatusConflict, http.StatusBadRequest, http.StatusOK:
	default:
		return nil, fmt.Errorf("redfishsim: already-off status %d: want 409, 400 or 200", cfg.AlreadyOffStatus)
	}
	if cfg.AllowedResetTypes == nil {
		cfg.AllowedResetTypes = DefaultAllowedResetTypes
	}
	for _, t := range cfg.AllowedResetTypes {
		if !slices.Contains(ResetTypes, t) {
			return nil, fmt.Errorf("redfishsim: unknown reset type %q (known: %s)", t, strings.Join(ResetTypes, ", "))
		}
	}
	switch cfg.ResetTypesIn {
	case "":
		cfg.ResetTypesIn = PublishBoth
	case PublishBoth, PublishInline, PublishActionInfo, PublishNone:
	default:
		return nil, fmt.Errorf("redfishsim: reset types publication %q: want both, inline, actioninfo or none", cfg.ResetTypesIn)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Sim{
		cfg:      cfg,
		allowed:  slices.Clone(cfg.AllowedResetTypes),
		sessions: map[string]*session{},
		stats:    Stats{Resets: map[string]int{}},
	}
	for i, id := range systemIDs(cfg.SystemID, cfg.Systems) {
		sys := &system{id: id, on: !cfg.InitiallyOff}
		if i == 0 {
			sys.prog = cfg.ChassisControl
		}
		s.systems = append(s.systems, sys)
	}
	return s, nil
}

func (s *Sim) logf(format string, args ...any) {
	if s.cfg.Logf != nil {
		s.cfg.Logf(format, args...)
	}
}

func systemIDs(first string, n int) []string {
	ids := []string{first}
	base, err := strconv.Atoi(first)
	for i := 2; i <= n; i++ {
		if err == nil {
			ids = append(ids, strconv.Itoa(base+i-1))
		} else {
			ids = append(ids, fmt.Sprintf("%s-%d", first, i))
		}
	}
	return ids
}

// SystemIDs lists the simulated systems' ids in collection order.
func (s *Sim) SystemIDs() []string {
	ids := make([]string, len(s.systems))
	for i, sys := range s.systems {
		ids[i] = sys.id
	}
	return ids
}

// SessionCount is the number of sessions open now (expired ones excluded).
func (s *Sim) SessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked()
	return len(s.sessions)
}

// Stats returns a snapshot of the counters and the current power states.
func (s *Sim) Stats() Stats {
	s.mu.Lock()
	s.expireLocked()
	st := s.stats
	st.Sessions = len(s.sessions)
	st.Resets = map[string]int{}
	for k, v := range s.stats.Resets {
		st.Resets[k] = v
	}
	s.mu.Unlock()
	st.PowerStates = map[string]string{}
	for _, sys := range s.systems {
		ps, err := s.powerState(sys)
		if err != nil {
			ps = "error: " + err.Error()
		}
		st.PowerStates[sys.id] = ps
	}
	return st
}

// SetPower sets an internally modelled system's power at once (no lag), for
// test setup. It fails for a system driven by ChassisControl.
func (s *Sim) SetPower(systemID string, on bool) error {
	sys := s.system(systemID)
	if sys == nil {
		return fmt.Errorf("redfishsim: no system %q", systemID)
	}
	if sys.prog != "" {
		return fmt.Errorf("redfishsim: system %q is driven by %s", systemID, sys.prog)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sys.on, sys.transUntil = on, time.Time{}
	return nil
}

func (s *Sim) system(id string) *system {
	for _, sys := range s.systems {
		if sys.id == id {
			return sys
		}
	}
	return nil
}

func (s *Sim) expireLocked() {
	now := s.cfg.Now()
	for id, se := range s.sessions {
		if now.Sub(se.lastUsed) >= s.cfg.SessionTimeout {
			delete(s.sessions, id)
			s.stats.Expired++
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b)
}

func (s *Sim) credentialsOK(user, pass string) bool {
	u := subtle.ConstantTimeCompare([]byte(user), []byte(s.cfg.Username))
	p := subtle.ConstantTimeCompare([]byte(pass), []byte(s.cfg.Password))
	return u&p == 1
}

// authenticate accepts a live session token or Basic credentials. A token,
// when sent, decides alone: a stale token is not rescued by Basic.
func (s *Sim) authenticate(r *http.Request) bool {
	if tok := r.Header.Get("X-Auth-Token"); tok != "" {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.expireLocked()
		for _, se := range s.sessions {
			if subtle.ConstantTimeCompare([]byte(tok), []byte(se.token)) == 1 {
				se.lastUsed = s.cfg.Now()
				return true
			}
		}
		return false
	}
	u, p, ok := r.BasicAuth()
	return ok && s.credentialsOK(u, p)
}

const (
	rootPath     = "/redfish/v1/"
	sessSvcPath  = "/redfish/v1/SessionService"
	sessionsPath = "/redfish/v1/SessionService/Sessions"
	systemsPath  = "/redfish/v1/Systems"
)

// ServeHTTP routes a request.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.stats.Requests++
	s.mu.Unlock()
	w.Header().Set("OData-Version", "4.0")
	p := r.URL.Path
	if p != "/" && p != rootPath {
		p = strings.TrimSuffix(p, "/")
	}
	// Public resources (DSP0266: the service root, /redfish, the OData
	// document and the login POST need no authentication).
	switch {
	case p == StatsPath:
		if !allow(w, r, http.MethodGet) {
			return
		}
		writeJSON(w, http.StatusOK, s.Stats())
		return
	case p == "/redfish":
		if allow(w, r, http.MethodGet, http.MethodHead) {
			writeJSON(w, http.StatusOK, map[string]string{"v1": rootPath})
		}
		return
	case p == rootPath || p == "/redfish/v1":
		if allow(w, r, http.MethodGet, http.MethodHead) {
			writeJSON(w, http.StatusOK, s.serviceRoot())
		}
		return
	case p == "/redfish/v1/odata":
		if allow(w, r, http.MethodGet, http.MethodHead) {
			writeJSON(w, http.StatusOK, odataDocument())
		}
		return
	case p == sessionsPath && r.Method == http.MethodPost:
		s.login(w, r)
		return
	}
	if !strings.HasPrefix(p, "/redfish/v1/") {
		writeError(w, http.StatusNotFound, msgResourceNotFound(p))
		return
	}
	if !s.authenticate(r) {
		s.mu.Lock()
		s.stats.AuthFailures++
		s.mu.Unlock()
		w.Header().Set("WWW-Authenticate", `Basic realm="Redfish"`)
		writeError(w, http.StatusUnauthorized, msgNoValidSession())
		return
	}
	switch {
	case p == sessSvcPath:
		if allow(w, r, http.MethodGet, http.MethodHead) {
			writeJSON(w, http.StatusOK, s.sessionService())
		}
	case p == sessionsPath:
		if allow(w, r, http.MethodGet, http.MethodHead, http.MethodPost) {
			writeJSON(w, http.StatusOK, s.sessionCollection())
		}
	case strings.HasPrefix(p, sessionsPath+"/"):
		s.sessionResource(w, r, strings.TrimPrefix(p, sessionsPath+"/"))
	case p == systemsPath:
		if allow(w, r, http.MethodGet, http.MethodHead) {
			writeJSON(w, http.StatusOK, s.systemCollection())
		}
	case strings.HasPrefix(p, systemsPath+"/"):
		s.systemResource(w, r, strings.TrimPrefix(p, systemsPath+"/"))
	default:
		writeError(w, http.StatusNotFound, msgResourceNotFound(p))
	}
}

// allow answers 405 with an Allow header unless r's method is listed.
func allow(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	if slices.Contains(methods, r.Method) {
		return true
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeError(w, http.StatusMethodNotAllowed, msgOperationNotAllowed(r.Method))
	return false
}

func (s *Sim) login(w http.ResponseWriter, r *http.Request) {
	var body struct {
		UserName *string `json:"UserName"`
		Password *string `json:"Password"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, msgMalformedJSON())
		return
	}
	switch {
	case body.UserName == nil:
		writeError(w, http.StatusBadRequest, msgPropertyMissing("UserName"))
		return
	case body.Password == nil:
		writeError(w, http.StatusBadRequest, msgPropertyMissing("Password"))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked()
	if !s.credentialsOK(*body.UserName, *body.Password) {
		s.stats.RefusedLogins++
		s.stats.AuthFailures++
		writeError(w, http.StatusUnauthorized, msgNoValidSession())
		return
	}
	if len(s.sessions) >= s.cfg.MaxSessions {
		s.stats.RefusedLogins++
		s.stats.LimitRefusals++
		w.Header().Set("Retry-After", strconv.Itoa(int(s.cfg.SessionTimeout/time.Second)))
		writeError(w, http.StatusServiceUnavailable, msgSessionLimitExceeded())
		return
	}
	now := s.cfg.Now()
	se := &session{id: randomHex(8), token: randomHex(24), created: now, lastUsed: now}
	s.sessions[se.id] = se
	s.stats.Logins++
	loc := sessionsPath + "/" + se.id
	w.Header().Set("X-Auth-Token", se.token)
	w.Header().Set("Location", loc)
	writeJSON(w, http.StatusCreated, s.sessionJSON(se))
}

func (s *Sim) sessionResource(w http.ResponseWriter, r *http.Request, id string) {
	s.mu.Lock()
	se, ok := s.sessions[id]
	s.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, msgResourceNotFound(sessionsPath+"/"+id))
		return
	}
	if !allow(w, r, http.MethodGet, http.MethodHead, http.MethodDelete) {
		return
	}
	if r.Method == http.MethodDelete {
		s.mu.Lock()
		if _, still := s.sessions[id]; still {
			delete(s.sessions, id)
			s.stats.Logouts++
		}
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	s.mu.Lock()
	body := s.sessionJSON(se)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, body)
}

type odataLink struct {
	ID string `json:"@odata.id"`
}

func (s *Sim) serviceRoot() map[string]any {
	return map[string]any{
		"@odata.type":    "#ServiceRoot.v1_5_0.ServiceRoot",
		"@odata.id":      rootPath,
		"Id":             "RootService",
		"Name":           "Root Service",
		"RedfishVersion": "1.6.0",
		"UUID":           "92384634-2938-2342-8820-489239905423",
		"Product":        "chime-redfish-sim",
		"Vendor":         "chime-fence",
		"Systems":        odataLink{systemsPath},
		"SessionService": odataLink{sessSvcPath},
		"Links":          map[string]any{"Sessions": odataLink{sessionsPath}},
		"ProtocolFeaturesSupported": map[string]any{
			"ExpandQuery":     map[string]any{"ExpandAll": false, "Levels": false, "Links": false, "NoLinks": false},
			"FilterQuery":     false,
			"SelectQuery":     false,
			"ExcerptQuery":    false,
			"OnlyMemberQuery": false,
		},
	}
}

func odataDocument() map[string]any {
	return map[string]any{
		"@odata.context": "/redfish/v1/$metadata",
		"value": []map[string]string{
			{"name": "Service", "kind": "Singleton", "url": rootPath},
			{"name": "Systems", "kind": "Singleton", "url": systemsPath},
			{"name": "SessionService", "kind": "Singleton", "url": sessSvcPath},
		},
	}
}

func (s *Sim) sessionService() map[string]any {
	return map[string]any{
		"@odata.type":    "#SessionService.v1_1_8.SessionService",
		"@odata.id":      sessSvcPath,
		"Id":             "SessionService",
		"Name":           "Session Service",
		"ServiceEnabled": true,
		"SessionTimeout": int(s.cfg.SessionTimeout / time.Second),
		"Status":         map[string]string{"State": "Enabled", "Health": "OK"},
		"Sessions":       odataLink{sessionsPath},
	}
}

func (s *Sim) sessionCollection() map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	members := []odataLink{}
	ids := make([]string, 0, len(s.sessions))
	for id := range s.sessions {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		members = append(members, odataLink{sessionsPath + "/" + id})
	}
	return map[string]any{
		"@odata.type":         "#SessionCollection.SessionCollection",
		"@odata.id":           sessionsPath,
		"Name":                "Session Collection",
		"Members":             members,
		"Members@odata.count": len(members),
	}
}

func (s *Sim) sessionJSON(se *session) map[string]any {
	return map[string]any{
		"@odata.type": "#Session.v1_3_0.Session",
		"@odata.id":   sessionsPath + "/" + se.id,
		"Id":          se.id,
		"Name":        "User Session",
		"UserName":    s.cfg.Username,
		"CreatedTime": se.created.UTC().Format(time.RFC3339),
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
