package redfishsim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"time"
)

const (
	resetAction     = "#ComputerSystem.Reset"
	resetActionPath = "/Actions/ComputerSystem.Reset"
	resetInfoPath   = "/ResetActionInfo"
	chassisTimeout  = 10 * time.Second
)

// system is one ComputerSystem. Fields are guarded by Sim.mu.
type system struct {
	id   string
	prog string // chassis control program; empty: on is authoritative

	on         bool      // settled power (internal model only)
	transUntil time.Time // a transition is reported until then
	transOn    bool      // direction of that transition
}

func (s *Sim) systemPath(sys *system) string { return systemsPath + "/" + sys.id }

func (s *Sim) systemCollection() map[string]any {
	members := make([]odataLink, len(s.systems))
	for i, sys := range s.systems {
		members[i] = odataLink{s.systemPath(sys)}
	}
	return map[string]any{
		"@odata.type":         "#ComputerSystemCollection.ComputerSystemCollection",
		"@odata.id":           systemsPath,
		"Name":                "Computer System Collection",
		"Members":             members,
		"Members@odata.count": len(members),
	}
}

func (s *Sim) systemResource(w http.ResponseWriter, r *http.Request, rest string) {
	id, sub, _ := strings.Cut(rest, "/")
	sys := s.system(id)
	if sys == nil {
		writeError(w, http.StatusNotFound, msgResourceNotFound(systemsPath+"/"+rest))
		return
	}
	switch "/" + sub {
	case "/":
		if !allow(w, r, http.MethodGet, http.MethodHead) {
			return
		}
		ps, err := s.powerState(sys)
		if err != nil {
			s.logf("read power of system %s: %v", sys.id, err)
			writeError(w, http.StatusInternalServerError, msgInternalError())
			return
		}
		writeJSON(w, http.StatusOK, s.systemJSON(sys, ps))
	case resetInfoPath:
		if s.cfg.ResetTypesIn != PublishBoth && s.cfg.ResetTypesIn != PublishActionInfo {
			writeError(w, http.StatusNotFound, msgResourceNotFound(systemsPath+"/"+rest))
			return
		}
		if allow(w, r, http.MethodGet, http.MethodHead) {
			writeJSON(w, http.StatusOK, s.resetActionInfo(sys))
		}
	case resetActionPath:
		if allow(w, r, http.MethodPost) {
			s.reset(w, r, sys)
		}
	default:
		writeError(w, http.StatusNotFound, msgResourceNotFound(systemsPath+"/"+rest))
	}
}

func (s *Sim) systemJSON(sys *system, powerState string) map[string]any {
	path := s.systemPath(sys)
	reset := map[string]any{"target": path + resetActionPath}
	switch s.cfg.ResetTypesIn {
	case PublishBoth:
		reset["ResetType@Redfish.AllowableValues"] = s.allowed
		reset["@Redfish.ActionInfo"] = path + resetInfoPath
	case PublishInline:
		reset["ResetType@Redfish.AllowableValues"] = s.allowed
	case PublishActionInfo:
		reset["@Redfish.ActionInfo"] = path + resetInfoPath
	}
	return map[string]any{
		"@odata.type":  "#ComputerSystem.v1_13_0.ComputerSystem",
		"@odata.id":    path,
		"Id":           sys.id,
		"Name":         "Simulated system " + sys.id,
		"SystemType":   "Physical",
		"Manufacturer": "chime-fence",
		"Model":        "chime-redfish-sim",
		"PowerState":   powerState,
		"Status":       map[string]string{"State": "Enabled", "Health": "OK"},
		"Boot": map[string]any{
			"BootSourceOverrideEnabled":                        "Disabled",
			"BootSourceOverrideTarget":                         "None",
			"BootSourceOverrideTarget@Redfish.AllowableValues": []string{"None", "Pxe", "Hdd"},
		},
		"Actions": map[string]any{resetAction: reset},
	}
}

func (s *Sim) resetActionInfo(sys *system) map[string]any {
	return map[string]any{
		"@odata.type": "#ActionInfo.v1_1_2.ActionInfo",
		"@odata.id":   s.systemPath(sys) + resetInfoPath,
		"Id":          "ResetActionInfo",
		"Name":        "Reset Action Info",
		"Parameters": []map[string]any{{
			"Name":            "ResetType",
			"Required":        true,
			"DataType":        "String",
			"AllowableValues": s.allowed,
		}},
	}
}

// powerState is the PowerState reported now.
func (s *Sim) powerState(sys *system) (string, error) {
	s.mu.Lock()
	now := s.cfg.Now()
	if now.Before(sys.transUntil) {
		on := sys.transOn
		s.mu.Unlock()
		if on {
			return "PoweringOn", nil
		}
		return "PoweringOff", nil
	}
	on := sys.on
	s.mu.Unlock()
	if sys.prog != "" {
		var err error
		if on, err = s.chassisGet(sys); err != nil {
			return "", err
		}
	}
	if on {
		return "On", nil
	}
	return "Off", nil
}

func (s *Sim) reset(w http.ResponseWriter, r *http.Request, sys *system) {
	s.mu.Lock()
	s.stats.ResetPosts++
	s.mu.Unlock()
	var body map[string]json.RawMessage
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, msgMalformedJSON())
		return
	}
	raw, ok := body["ResetType"]
	if !ok {
		writeError(w, http.StatusBadRequest, msgActionParameterMissing(resetAction, "ResetType"))
		return
	}
	var rt string
	if err := json.Unmarshal(raw, &rt); err != nil || !slices.Contains(s.allowed, rt) {
		writeError(w, http.StatusBadRequest, msgActionParameterValueNotInList(strings.Trim(string(raw), `"`), "ResetType", resetAction))
		return
	}
	ps, err := s.powerState(sys)
	if err != nil {
		s.logf("read power of system %s: %v", sys.id, err)
		writeError(w, http.StatusInternalServerError, msgInternalError())
		return
	}
	target, steps := plan(rt, ps)
	if (rt == "ForceOff" || rt == "GracefulShutdown") && ps == "Off" {
		if s.cfg.AlreadyOffStatus == http.StatusOK {
			s.countReset(rt)
			writeJSON(w, http.StatusOK, map[string]any{"@Message.ExtendedInfo": []message{msgSuccess()}})
			return
		}
		writeError(w, s.cfg.AlreadyOffStatus, msgAlreadyOff())
		return
	}
	if err := s.apply(sys, target, steps); err != nil {
		s.logf("reset %s on system %s: %v", rt, sys.id, err)
		writeError(w, http.StatusInternalServerError, msgInternalError())
		return
	}
	s.countReset(rt)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Sim) countReset(rt string) {
	s.mu.Lock()
	s.stats.Resets[rt]++
	s.mu.Unlock()
}

// plan says where a reset leaves the system (nil: unchanged) and which
// chassis commands realise it.
func plan(rt, ps string) (target *bool, steps []bool) {
	on, off := true, false
	running := ps == "On" || ps == "PoweringOn"
	switch rt {
	case "On", "ForceOn":
		if running {
			return nil, nil
		}
		return &on, []bool{true}
	case "ForceOff", "GracefulShutdown":
		if ps == "PoweringOff" {
			return nil, nil // already on its way down
		}
		return &off, []bool{false}
	case "ForceRestart", "GracefulRestart", "PowerCycle":
		return &on, []bool{false, true}
	case "PushPowerButton":
		if running {
			return &off, []bool{false}
		}
		return &on, []bool{true}
	}
	return nil, nil // Nmi
}

func (s *Sim) apply(sys *system, target *bool, steps []bool) error {
	if target == nil {
		return nil
	}
	if sys.prog != "" {
		for _, on := range steps {
			if err := s.chassisSet(sys, on); err != nil {
				return err
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sys.on = *target
	lag := s.cfg.OffLag
	if *target {
		lag = s.cfg.OnLag
	}
	sys.transOn = *target
	sys.transUntil = time.Time{}
	if lag > 0 {
		sys.transUntil = s.cfg.Now().Add(lag)
	}
	return nil
}

func (s *Sim) chassisGet(sys *system) (bool, error) {
	out, err := s.runChassis(sys, "get", "power")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(out, "\n") {
		switch strings.TrimSpace(line) {
		case "power:1":
			return true, nil
		case "power:0":
			return false, nil
		}
	}
	return false, fmt.Errorf("chassis control %s: 'get power' printed %q, want power:0 or power:1", sys.prog, out)
}

func (s *Sim) chassisSet(sys *system, on bool) error {
	v := "0"
	if on {
		v = "1"
	}
	_, err := s.runChassis(sys, "set", "power", v)
	return err
}

func (s *Sim) runChassis(sys *system, args ...string) (string, error) {
	s.chassisMu.Lock()
	defer s.chassisMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), chassisTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, sys.prog, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// A program that leaves a child holding stdout must not hang the BMC.
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String() + " " + stdout.String())
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			msg = "timed out after " + chassisTimeout.String()
		}
		return "", fmt.Errorf("chassis control %s %s: %w: %s", sys.prog, strings.Join(args, " "), err, msg)
	}
	return stdout.String(), nil
}
