package configs

import (
	"fmt"
	"sort"
	"strings"
)

// Problem is one thing wrong with a configuration, at a path such as
// `hosts[3].bmcs[0].port`. Line is 0 when the problem has no single line
// (a missing key, an environment override).
type Problem struct {
	Path string `json:"path"`
	Line int    `json:"line,omitempty"`
	Msg  string `json:"message"`
}

func (p Problem) String() string {
	loc := p.Path
	if p.Line > 0 {
		loc = fmt.Sprintf("%s (line %d)", p.Path, p.Line)
	}
	if loc == "" {
		return p.Msg
	}
	return loc + ": " + p.Msg
}

// Error is every problem found in one configuration file.
type Error struct {
	File     string
	Problems []Problem
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problem(s):", e.File, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}

type problems []Problem

func (ps *problems) add(path string, line int, format string, args ...any) {
	*ps = append(*ps, Problem{Path: path, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// sorted orders by line so the report reads top to bottom, keeping the
// order of problems without a line.
func (ps problems) sorted() []Problem {
	out := append([]Problem(nil), ps...)
	sort.SliceStable(out, func(i, j int) bool {
		li, lj := out[i].Line, out[j].Line
		if li == 0 || lj == 0 {
			return li != 0 && lj == 0
		}
		return li < lj
	})
	return out
}
