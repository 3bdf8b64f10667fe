package metrics

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// The README's metrics table lists every close cause, and no other: a cause
// added to the code is documented where dashboards are built from.
func TestREADMEListsEveryCloseCause(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for line := range strings.SplitSeq(string(b), "\n") {
		if _, row, ok := strings.Cut(line, "| `ws2api_closes_total{cause}` | closes by cause: "); ok {
			for c := range strings.SplitSeq(strings.TrimSuffix(strings.TrimSpace(row), "|"), ",") {
				listed = append(listed, strings.TrimSpace(c))
			}
		}
	}
	if len(listed) == 0 {
		t.Fatal("README has no ws2api_closes_total{cause} row")
	}
	for _, c := range closeCauses {
		if !slices.Contains(listed, c) {
			t.Errorf("README does not list close cause %q", c)
		}
	}
	for _, c := range listed {
		if !slices.Contains(closeCauses, c) {
			t.Errorf("README lists close cause %q, which the code does not count", c)
		}
	}
}
