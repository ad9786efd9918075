package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/e2e/lab"
)

// needLab skips only when the lab cannot run here: not root, or a program
// missing (CI installs them all).
func needLab(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("lab tests need root (network namespaces, mounts); run as root to include them")
	}
	for _, p := range lab.RequiredTools {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("lab tests need %s (scripts/install-deps.sh installs it)", p)
		}
	}
}

func startLab(t *testing.T, ctx context.Context, cfg lab.Config) *lab.Lab {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	t0 := time.Now()
	l, err := lab.Start(ctx, cfg)
	require.NoError(t, err)
	t.Logf("lab %s up in %v", cfg.Name, time.Since(t0).Round(time.Millisecond))
	t.Cleanup(func() {
		assert.NoError(t, l.Close())
		assert.Empty(t, lab.Leftovers(l.Name(), l.Dir()), "the lab left something behind")
	})
	return l
}

// buildChimeFence builds the CLI once per test binary.
func buildChimeFence(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "chime-fence")
	cmd := exec.Command("go", "build", "-o", out, "github.com/chimestack/chime-fence/cmd/chime-fence")
	b, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build: %s", b)
	return out
}
