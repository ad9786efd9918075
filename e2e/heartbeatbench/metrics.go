package heartbeatbench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/chimestack/chime-fence/api"
)

// daemonMetrics are the /metrics series the report keeps: where the
// daemon's memory and descriptors go.
var daemonMetrics = []string{
	"go_goroutines", "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes",
	"go_memstats_sys_bytes", "process_open_fds", "process_max_fds",
}

// heartbeatsMetric is the daemon's heartbeat counter, labelled by result
// and transport.
const heartbeatsMetric = "chime_fence_heartbeats_total"

// scrape reads the daemon's Prometheus endpoint.
func (h *historyClient) scrape(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.base+api.PathMetrics, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+h.token)
	resp, err := h.http.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: HTTP %d", api.PathMetrics, resp.StatusCode)
	}
	return string(b), nil
}

// parseMetrics picks unlabelled samples out of the Prometheus text format.
func parseMetrics(text string, names []string) map[string]float64 {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]float64{}
	for line := range strings.SplitSeq(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !want[f[0]] {
			continue
		}
		if v, err := strconv.ParseFloat(f[1], 64); err == nil {
			out[f[0]] = v
		}
	}
	return out
}

// HeartbeatCounts is the daemon's chime_fence_heartbeats_total: result
// (accepted, malformed, unauthorized, unknown_host, too_large) →
// transport (udp, http; "" for a sample without the label) → count.
type HeartbeatCounts map[string]map[string]float64

// Total is result's count summed over transports.
func (c HeartbeatCounts) Total(result string) float64 {
	var sum float64
	for _, v := range c[result] {
		sum += v
	}
	return sum
}

// String is "accepted N (udp N, http N); refused: result=N …", refusals
// summed over transports and only when counted.
func (c HeartbeatCounts) String() string {
	if len(c) == 0 {
		return "none"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "accepted %.0f", c.Total("accepted"))
	if by := c["accepted"]; len(by) > 0 {
		trs := sortedKeys(by)
		parts := make([]string, len(trs))
		for i, tr := range trs {
			if tr == "" {
				tr = "unlabelled"
			}
			parts[i] = fmt.Sprintf("%s %.0f", tr, by[trs[i]])
		}
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	}
	var refused []string
	for _, res := range sortedKeys(c) {
		if n := c.Total(res); res != "accepted" && n > 0 {
			refused = append(refused, fmt.Sprintf("%s=%.0f", res, n))
		}
	}
	if len(refused) == 0 {
		b.WriteString("; refused none")
	} else {
		b.WriteString("; refused " + strings.Join(refused, " "))
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// parseHeartbeatCounts reads every chime_fence_heartbeats_total sample;
// one whose labels do not parse is skipped.
func parseHeartbeatCounts(text string) HeartbeatCounts {
	out := HeartbeatCounts{}
	for line := range strings.SplitSeq(text, "\n") {
		rest, ok := strings.CutPrefix(line, heartbeatsMetric+"{")
		if !ok {
			continue
		}
		labels, rest, ok := parseLabels(rest)
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 1 || labels["result"] == "" {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		res := labels["result"]
		if out[res] == nil {
			out[res] = map[string]float64{}
		}
		out[res][labels["transport"]] += v
	}
	return out
}

// parseLabels reads `name="value",…}` (the text after a sample's '{') and
// returns the labels and what follows the '}'. Values may hold the
// format's escapes \\, \" and \n.
func parseLabels(s string) (map[string]string, string, bool) {
	labels := map[string]string{}
	for {
		s = strings.TrimLeft(s, " ")
		if rest, ok := strings.CutPrefix(s, "}"); ok {
			return labels, rest, true
		}
		name, rest, ok := strings.Cut(s, `="`)
		if !ok || name == "" || strings.ContainsAny(name, `,}" `) {
			return nil, "", false
		}
		var v strings.Builder
		i := 0
		for ; i < len(rest) && rest[i] != '"'; i++ {
			if rest[i] != '\\' {
				v.WriteByte(rest[i])
				continue
			}
			if i++; i == len(rest) {
				return nil, "", false
			}
			switch rest[i] {
			case 'n':
				v.WriteByte('\n')
			case '\\', '"':
				v.WriteByte(rest[i])
			default:
				return nil, "", false
			}
		}
		if i == len(rest) {
			return nil, "", false
		}
		labels[name] = v.String()
		s = strings.TrimPrefix(rest[i+1:], ",")
	}
}
