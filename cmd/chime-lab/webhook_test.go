package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/alert"
)

func TestWebhookSinkRecordsSignedDuplicateAndBad(t *testing.T) {
	var out bytes.Buffer
	at := time.Date(2026, 3, 1, 12, 0, 0, 5e6, time.UTC)
	sink := &webhookSink{secret: []byte("s3cret"), now: func() time.Time { return at }, out: &out, seen: map[string]bool{}}
	srv := httptest.NewServer(sink)
	defer srv.Close()

	post := func(body []byte, sig string) int {
		req, err := http.NewRequest("POST", srv.URL, bytes.NewReader(body))
		require.NoError(t, err)
		req.Header.Set(alert.HeaderSignature, sig)
		req.Header.Set(alert.HeaderEvent, "fence.succeeded")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	body, err := json.Marshal(alert.Event{ID: "e1", Type: "fence.succeeded", Host: "host1", Summary: "host1 fenced:\n\tipmi"})
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, post(body, alert.Sign([]byte("s3cret"), body)))
	assert.Equal(t, http.StatusOK, post(body, alert.Sign([]byte("s3cret"), body)))
	assert.Equal(t, http.StatusUnauthorized, post(body, alert.Sign([]byte("other"), body)))
	assert.Equal(t, http.StatusUnauthorized, post(body, ""))
	junk := []byte("not json")
	assert.Equal(t, http.StatusBadRequest, post(junk, alert.Sign([]byte("s3cret"), junk)))

	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	assert.Equal(t, []string{
		"2026-03-01T12:00:00.005Z\tsigned\tfence.succeeded\thost1\thost1 fenced:  ipmi",
		"2026-03-01T12:00:00.005Z\tduplicate\tfence.succeeded\thost1\thost1 fenced:  ipmi",
		"2026-03-01T12:00:00.005Z\tBAD SIGNATURE\tfence.succeeded\t-\t-",
		"2026-03-01T12:00:00.005Z\tBAD SIGNATURE\tfence.succeeded\t-\t-",
		"2026-03-01T12:00:00.005Z\tBAD BODY\t-\t-\t-",
	}, lines)
}

func TestWebhookUsageErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(empty, []byte("\n"), 0o600))
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"webhook", "--listen", "127.0.0.1:0"}, 2, "--listen, --secret-file and --out are required"},
		{[]string{"webhook", "--listen", "127.0.0.1:0", "--secret-file", filepath.Join(dir, "none"), "--out", filepath.Join(dir, "o")}, 1, "secret file"},
		{[]string{"webhook", "--listen", "127.0.0.1:0", "--secret-file", empty, "--out", filepath.Join(dir, "o")}, 1, "is empty"},
	} {
		var out, errb bytes.Buffer
		assert.Equal(t, tc.code, run(tc.args, &out, &errb), "%v", tc.args)
		assert.Contains(t, errb.String(), tc.want, "%v", tc.args)
	}
}
