package configs

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// Secret is where a password or token comes from: a file or an environment
// variable. It never holds the value, so a Secret is safe to print.
type Secret struct {
	What string // e.g. "bmc ipmi password", for error messages
	File string
	Env  string
}

// ErrNoSecret is returned by Read when neither a file nor a variable is set.
var ErrNoSecret = errors.New("no secret configured")

// Read fetches the secret now. A trailing newline in a file is dropped.
// Errors name the file or variable, never the content; a world-readable file
// or group-readable file is refused, as ssh does with keys, because the
// point of a file is to restrict it.
func (s Secret) Read() (string, error) {
	switch {
	case s.File != "":
		st, err := os.Stat(s.File)
		if err != nil {
			return "", fmt.Errorf("%s: %w", s.What, err)
		}
		if st.Mode().Perm()&0o044 != 0 {
			return "", fmt.Errorf("%s: file %s is readable by group or others (mode %v); chmod go-r it", s.What, s.File, st.Mode().Perm())
		}
		b, err := os.ReadFile(s.File)
		if err != nil {
			return "", fmt.Errorf("%s: %w", s.What, err)
		}
		v := strings.TrimRight(string(b), "\r\n")
		if v == "" {
			return "", fmt.Errorf("%s: file %s is empty", s.What, s.File)
		}
		return v, nil
	case s.Env != "":
		v, ok := os.LookupEnv(s.Env)
		if !ok || v == "" {
			return "", fmt.Errorf("%s: environment variable %s is not set", s.What, s.Env)
		}
		return v, nil
	}
	return "", fmt.Errorf("%s: %w", s.What, ErrNoSecret)
}
