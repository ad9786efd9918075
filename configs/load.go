package configs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
	"gopkg.in/yaml.v3"
)

// EnvPrefix prefixes environment overrides: CHIME_FENCE_MODE=enforce,
// CHIME_FENCE_DETECTION_HEARTBEAT_INTERVAL=1s. Only scalar keys outside
// lists can be overridden; hosts and racks live in the file.
const EnvPrefix = "CHIME_FENCE"

// defaults are the values of keys the file may omit. Keys whose zero value
// is invalid are defaulted here, not after decoding, so that an explicit
// `missed_heartbeats: 0` is reported instead of silently replaced.
var defaults = map[string]any{
	"controller.listen":                  "127.0.0.1:7480",
	"controller.state_dir":               "/var/lib/chime-fence",
	"mode":                               string(ModeObserve),
	"detection.heartbeat_interval":       "5s",
	"detection.missed_heartbeats":        3,
	"detection.probe_timeout":            "1s",
	"detection.recovery_heartbeats":      3,
	"detection.heartbeat_max_clock_skew": "30s",
	"storage.rbd_shared":                 true,
	"scheduler.cpu_overcommit":           4.0,
	"scheduler.memory_overcommit":        1.0,
	"scheduler.reserved_cpus":            0,
	"scheduler.reserved_memory_mib":      0,
	"scheduler.rebuilds_per_target":      4,
	"scheduler.start_timeout":            "30s",
	"scheduler.graphics_listen":          "0.0.0.0",
	"scheduler.migration_allow_unsafe":   false,
	"storage.inventory_interval":         "60s",
}

// Load reads, checks and resolves a configuration file. It returns *Error
// listing every problem when the file is not valid.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data, os.LookupEnv)
}

// Parse is Load on bytes already read; lookupEnv supplies overrides (tests
// pass their own, so they never depend on the process environment).
func Parse(name string, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	var ps problems
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		ps.add("", 0, "not valid YAML: %v", err)
		return nil, &Error{File: name, Problems: ps}
	}
	if len(root.Content) == 0 {
		ps.add("", 0, "the file is empty")
		return nil, &Error{File: name, Problems: ps}
	}
	walk(&root, reflect.TypeOf(Config{}), "", &ps)
	shapeOK := len(ps) == 0

	v := viper.New()
	v.SetConfigType("yaml")
	for k, d := range defaults {
		v.SetDefault(k, d)
	}
	if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
		ps.add("", 0, "not valid YAML: %v", err)
		return nil, &Error{File: name, Problems: ps.sorted()}
	}
	for _, key := range envKeys(reflect.TypeOf(Config{}), "") {
		env := EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
		if val, ok := lookupEnv(env); ok {
			v.Set(key, val)
		}
	}

	var cfg Config
	decode := v.UnmarshalExact
	if !shapeOK {
		// The walker has named the unknown keys with their lines; decode
		// leniently so validation can still report everything else.
		decode = v.Unmarshal
	}
	if err := decode(&cfg, viper.DecodeHook(mapstructure.ComposeDecodeHookFunc(
		strictDurationHook, fenceLevelHook,
	))); err != nil {
		if shapeOK {
			for _, e := range splitDecodeError(err) {
				ps.add("", 0, "%s", e)
			}
		}
		return nil, &Error{File: name, Problems: ps.sorted()}
	}
	dir, err := filepath.Abs(filepath.Dir(name))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", name, err)
	}
	fillDefaults(&cfg, dir)
	validate(&cfg, &root, &ps)
	if len(ps) > 0 {
		return nil, &Error{File: name, Problems: ps.sorted()}
	}
	resolve(&cfg)
	return &cfg, nil
}

// strictDurationHook refuses numbers for durations: `timeout: 30` would
// otherwise be 30 ns, a fence timeout that always fails.
func strictDurationHook(from, to reflect.Type, data any) (any, error) {
	if to != durationType {
		return data, nil
	}
	switch from.Kind() {
	case reflect.String:
		d, err := time.ParseDuration(data.(string))
		if err != nil {
			return nil, fmt.Errorf("%q is not a duration (use units like 500ms, 30s, 2m)", data)
		}
		return d, nil
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Float64, reflect.Float32, reflect.Uint, reflect.Uint64:
		return nil, fmt.Errorf("%v is a bare number; write a duration with its unit, e.g. \"%vs\"", data, data)
	}
	return data, nil
}

// fenceLevelHook turns the shorthand `- ipmi` into FenceLevel{Type: ipmi}.
func fenceLevelHook(from, to reflect.Type, data any) (any, error) {
	if to == fenceLevelType && from.Kind() == reflect.String {
		return map[string]any{"type": data}, nil
	}
	return data, nil
}

// envKeys lists the dotted keys an environment variable may override:
// scalars reachable without passing through a list.
func envKeys(t reflect.Type, prefix string) []string {
	var out []string
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t == durationType {
		return []string{prefix}
	}
	for k, ft := range structFields(t) {
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Slice {
			continue
		}
		out = append(out, envKeys(ft, join(prefix, k))...)
	}
	return out
}

// splitDecodeError flattens mapstructure's joined errors into one line each.
func splitDecodeError(err error) []string {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []string
		for _, c := range j.Unwrap() {
			out = append(out, splitDecodeError(c)...)
		}
		return out
	}
	return []string{err.Error()}
}
