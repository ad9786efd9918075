package configs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse feeds the config loader arbitrary YAML: it returns a *Error
// listing problems (never a panic, never an untyped error), or a config
// whose every host resolves to a policy; a secret from the environment
// never appears in the error.
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	if b, err := os.ReadFile("../examples/chime-fence.yaml"); err == nil {
		f.Add(b)
	}
	if files, err := filepath.Glob("../examples/broken/*.yaml"); err == nil {
		for _, p := range files {
			if b, err := os.ReadFile(p); err == nil {
				f.Add(b)
			}
		}
	}
	f.Add([]byte("{"))
	f.Add([]byte("hosts: [{name: a, rack: r, bmcs: [{type: ipmi, cipher_suites: [99999999999999999999]}]}]"))
	const secret = "fuzz-secret-value-9f3a"
	env := func(k string) (string, bool) {
		if strings.HasPrefix(k, "CHIME_FENCE_") {
			return "", false
		}
		return secret, true
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data, env)
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("untyped error %T: %v", err, err)
			}
			if len(ce.Problems) == 0 {
				t.Fatalf("an error with no problem listed: %v", err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("the secret leaked into the error")
			}
			return
		}
		for i := range cfg.Hosts {
			if len(cfg.Hosts[i].Effective.Levels) == 0 {
				t.Fatalf("host %s accepted without fence levels", cfg.Hosts[i].Name)
			}
		}
	})
}
