package configs

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStoreReloadSwapsOnlyValidConfigs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	require.NoError(t, os.WriteFile(path, []byte(minimal), 0o600))
	s, err := NewStore(path)
	require.NoError(t, err)
	assert.Equal(t, ModeObserve, s.Current().Mode)

	require.NoError(t, os.WriteFile(path, []byte(minimal+"mode: enforce\n"), 0o600))
	c, err := s.Reload()
	require.NoError(t, err)
	assert.Equal(t, ModeEnforce, c.Mode)
	assert.Same(t, c, s.Current())

	require.NoError(t, os.WriteFile(path, []byte(strings.Replace(minimal, "rack: r1", "rack: r9", 1)+"mode: observe\n"), 0o600))
	kept, err := s.Reload()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "keeping the configuration in use")
	assert.Contains(t, err.Error(), `hosts[0].rack (line 10): no rack named "r9"`)
	assert.Same(t, c, kept)
	assert.Equal(t, ModeEnforce, s.Current().Mode, "the invalid file changed nothing")
}

func TestStoreConcurrentReadersDuringReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	variants := [][]byte{[]byte(minimal + "mode: observe\n"), []byte(minimal + "mode: enforce\n")}
	require.NoError(t, os.WriteFile(path, variants[0], 0o600))
	s, err := NewStore(path)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 500; j++ {
				c := s.Current()
				// Every snapshot is a whole, resolved configuration.
				assert.Contains(t, []Mode{ModeObserve, ModeEnforce}, c.Mode)
				if assert.Len(t, c.Hosts, 1) {
					assert.Len(t, c.Hosts[0].Effective.Levels, 1)
				}
			}
		}()
	}
	for i := 0; i < 20; i++ {
		require.NoError(t, os.WriteFile(path, variants[i%2], 0o600))
		c, err := s.Reload()
		require.NoError(t, err)
		assert.Equal(t, []Mode{ModeObserve, ModeEnforce}[i%2], c.Mode)
	}
	wg.Wait()
}
