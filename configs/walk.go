package configs

import (
	"fmt"
	"reflect"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

var (
	durationType   = reflect.TypeOf(time.Duration(0))
	fenceLevelType = reflect.TypeOf(FenceLevel{})
)

// inlineSecretHints answers the mistake of writing a secret into the file.
var inlineSecretHints = map[string]string{
	"password":  "passwords are never written in the config; use password_file or password_env",
	"api_token": "tokens are never written in the config; use api_token_file",
	"secret":    "secrets are never written in the config; use secret_file",
	"token":     "tokens are never written in the config; use a *_file key",
	// Renamed when each host got its own credential.
	"agent_token_file": "the shared agent token is gone: put a cluster secret (>= 32 bytes) in agent_secret_file and give each agent its own credential (chime-fence agent-credential HOST)",
}

// walk checks a YAML node against the Go type it will decode into, before
// viper sees it: viper folds key case and weakly converts types, so this is
// where `Timeout: 30` and `pasword_file` are caught, with their lines.
func walk(n *yaml.Node, t reflect.Type, path string, ps *problems) {
	if n == nil {
		return
	}
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			walk(c, t, path, ps)
		}
		return
	}
	if n.Kind == yaml.AliasNode {
		walk(n.Alias, t, path, ps)
		return
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType:
		switch {
		case n.Kind != yaml.ScalarNode:
			ps.add(path, n.Line, "expected a duration such as \"30s\", got a %s", kindName(n))
		case n.Tag == "!!int" || n.Tag == "!!float":
			ps.add(path, n.Line, "%s is a bare number; write a duration with its unit, e.g. \"%ss\" or \"%sms\"", n.Value, n.Value, n.Value)
		default:
			if _, err := time.ParseDuration(n.Value); err != nil {
				ps.add(path, n.Line, "%q is not a duration (use units like 500ms, 30s, 2m)", n.Value)
			}
		}
		return
	case t == fenceLevelType && n.Kind == yaml.ScalarNode:
		return // shorthand: `- ipmi`
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			ps.add(path, n.Line, "expected a mapping of keys, got a %s", kindName(n))
			return
		}
		fields := structFields(t)
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			kp := join(path, k.Value)
			if k.Value == "<<" {
				ps.add(kp, k.Line, "YAML merge keys are not supported; write the keys out")
				continue
			}
			if seen[k.Value] {
				ps.add(kp, k.Line, "duplicate key")
				continue
			}
			seen[k.Value] = true
			ft, ok := fields[k.Value]
			if !ok {
				ps.add(kp, k.Line, "unknown key%s", suggest(k.Value, fields))
				continue
			}
			walk(v, ft, kp, ps)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			ps.add(path, n.Line, "expected a list, got a %s", kindName(n))
			return
		}
		for i, c := range n.Content {
			walk(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), ps)
		}
	case reflect.Bool:
		scalarTag(n, path, ps, "a boolean (true or false)", "!!bool")
	case reflect.Int, reflect.Int64, reflect.Int32:
		scalarTag(n, path, ps, "a whole number", "!!int")
	case reflect.Float64:
		scalarTag(n, path, ps, "a number", "!!int", "!!float")
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			ps.add(path, n.Line, "expected a string, got a %s", kindName(n))
		}
	}
}

func scalarTag(n *yaml.Node, path string, ps *problems, want string, tags ...string) {
	if n.Kind == yaml.ScalarNode {
		for _, t := range tags {
			if n.Tag == t {
				return
			}
		}
	}
	got := kindName(n)
	if n.Kind == yaml.ScalarNode {
		got = fmt.Sprintf("%q", n.Value)
	}
	ps.add(path, n.Line, "expected %s, got %s", want, got)
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	case yaml.ScalarNode:
		return "scalar " + strings.TrimPrefix(n.Tag, "!!")
	}
	return "node"
}

// structFields maps mapstructure keys to field types, flattening squashed
// embedded structs as mapstructure does.
func structFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("mapstructure")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if strings.Contains(opts, "squash") {
			for k, v := range structFields(f.Type) {
				out[k] = v
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// suggest names the closest known key, or the secret hint.
func suggest(key string, fields map[string]reflect.Type) string {
	if h, ok := inlineSecretHints[key]; ok {
		return "; " + h
	}
	best, bestD := "", 4
	for k := range fields {
		if d := editDistance(strings.ToLower(key), k); d < bestD || (d == bestD && k < best) {
			best, bestD = k, d
		}
	}
	if best != "" && bestD <= max(1, len(key)/3) {
		return fmt.Sprintf("; did you mean %q?", best)
	}
	return ""
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
