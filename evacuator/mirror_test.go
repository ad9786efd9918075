package evacuator

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/store"
)

func TestCaptureMirrorWritesViaTempFile(t *testing.T) {
	e := newCapEnv(t, CaptureConfig{}, "h1")
	ctx := context.Background()
	v1 := capDom(cu1, "web", hypervisor.StateRunning, 2, 1024)
	e.doms["h1"].set(v1)
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))

	v2 := capDom(cu1, "web", hypervisor.StateRunning, 8, 8192)
	e.doms["h1"].set(v2)
	final := filepath.Join(e.mirror, "h1", cu1+".xml")
	var hooked int
	e.c.beforeRename = func(tmp, dst string) {
		hooked++
		assert.Equal(t, final, dst)
		assert.Equal(t, filepath.Dir(final), filepath.Dir(tmp), "same directory, so the rename is atomic")
		assert.False(t, strings.HasSuffix(tmp, ".xml"), "a half-written file never looks like a definition: %s", tmp)
		assert.True(t, strings.HasPrefix(filepath.Base(tmp), "."), "hidden from `ls`: %s", tmp)
		b, err := os.ReadFile(tmp)
		require.NoError(t, err)
		assert.Equal(t, v2.XML, string(b), "the temporary file is complete before the rename")
		b, err = os.ReadFile(final)
		require.NoError(t, err)
		assert.Equal(t, v1.XML, string(b), "readers still see the whole old file")
		matches, err := filepath.Glob(filepath.Join(e.mirror, "h1", "*.xml"))
		require.NoError(t, err)
		assert.Equal(t, []string{final}, matches)
	}
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))
	assert.Equal(t, 1, hooked)
	got, _ := e.mirrorFile("h1", cu1)
	assert.Equal(t, v2.XML, got)

	// A state change alone does not rewrite the file.
	v3 := v2
	v3.State = hypervisor.StateShutoff
	e.doms["h1"].set(v3)
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))
	assert.Equal(t, 1, hooked)
	assert.False(t, e.records("h1")[cu1].Active)
}

func TestCaptureMirrorFirstSyncAndFailure(t *testing.T) {
	e := newCapEnv(t, CaptureConfig{}, "h1")
	ctx := context.Background()
	dir := filepath.Join(e.mirror, "h1")
	require.NoError(t, os.MkdirAll(dir, 0o700))
	write := func(name, s string) { require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(s), 0o600)) }
	write(cu1+".xml", "<stale version/>")  // wrong content: rewritten
	write(cu3+".xml", "<gone/>")           // domain no longer defined: removed
	write("."+cu1+".xml.123.tmp", "<half") // a crash's leftover: removed
	write("README", "operator notes")      // not ours: kept
	write("not-a-uuid.xml", "<domain/>")   // not ours: kept
	e.doms["h1"].set(capDom(cu1, "web", hypervisor.StateRunning, 2, 1024), capDom(cu2, "db", hypervisor.StateRunning, 1, 512))
	// The journal already has cu1 as it is: only the mirror is out of date.
	require.NoError(t, e.store.PutInventory("h1", []store.DomainRecord{{UUID: cu1, Name: "web", XML: capXML(cu1, "web", 2, 1024), CapturedAt: e.clock.Now(), Active: true}}, nil))

	require.NoError(t, e.c.CaptureNow(ctx, "h1"))
	var names []string
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, en := range entries {
		names = append(names, en.Name())
	}
	assert.ElementsMatch(t, []string{cu1 + ".xml", cu2 + ".xml", "README", "not-a-uuid.xml"}, names)
	got, _ := e.mirrorFile("h1", cu1)
	assert.Equal(t, capXML(cu1, "web", 2, 1024), got)

	// The mirror breaks (shared storage gone): the journal still moves on.
	require.NoError(t, os.RemoveAll(dir))
	require.NoError(t, os.WriteFile(dir, []byte("a file where the dir should be"), 0o600))
	e.doms["h1"].set(capDom(cu1, "web", hypervisor.StateRunning, 4, 1024), capDom(cu2, "db", hypervisor.StateRunning, 1, 512))
	require.NoError(t, e.c.CaptureNow(ctx, "h1"), "a mirror failure does not fail the capture")
	assert.Equal(t, capXML(cu1, "web", 4, 1024), e.records("h1")[cu1].XML)
	assert.Equal(t, uint64(1), e.c.Stats().MirrorFailures)
	assert.Equal(t, 1, e.log.count("domain XML mirror not updated"))

	// Repaired: the next capture rewrites the whole directory even though
	// the journal has nothing new.
	require.NoError(t, os.Remove(dir))
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))
	got, ok := e.mirrorFile("h1", cu1)
	require.True(t, ok)
	assert.Equal(t, capXML(cu1, "web", 4, 1024), got)
	_, ok = e.mirrorFile("h1", cu2)
	assert.True(t, ok)
	assert.Equal(t, uint64(1), e.c.Stats().MirrorFailures)
}

func TestCaptureNoMirror(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), store.FileName), store.Options{})
	require.NoError(t, err)
	defer st.Close()
	d := &capDomains{}
	d.set(capDom(cu1, "web", hypervisor.StateRunning, 2, 1024))
	hv := &capHV{domains: d.get}
	c, err := NewCapture(CaptureConfig{}, CaptureDeps{Store: st,
		Hypervisor: func(string) (Hypervisor, error) { return hv, nil },
		Healthy:    func(string) bool { return true }})
	require.NoError(t, err)
	require.NoError(t, c.SetHosts([]string{"h1"}))
	require.NoError(t, c.CaptureNow(context.Background(), "h1"))
	recs, err := st.Inventory("h1")
	require.NoError(t, err)
	assert.Len(t, recs, 1)
	assert.Zero(t, c.Stats().MirrorFailures)
}

func TestMirrorFileNamesAreCanonicalUUIDs(t *testing.T) {
	assert.True(t, heartbeat.ValidUUID("0123abcd-ef01-2345-6789-abcdef012345"))
	for _, s := range []string{"", "../../../../etc/passwd-xxxxxxxxxxxxxxx", "0123ABCD-EF01-2345-6789-ABCDEF012345", "0123abcd0ef01-2345-6789-abcdef012345", "0123abcd-ef01-2345-6789-abcdef01234g"} {
		assert.False(t, heartbeat.ValidUUID(s), s)
	}
}
