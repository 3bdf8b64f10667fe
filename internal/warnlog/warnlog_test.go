package warnlog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// A warning repeated by many clients at once is one line a second, the
// next one counting those held back.
func TestRepeatedWarningsAreRateLimited(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(slog.NewTextHandler(&out, nil))
	var r Limiter
	for range 1000 {
		r.Warn(log, "connection refused: max connections reached")
	}
	r.Warn(log, "another warning")
	if lines := strings.Count(out.String(), "\n"); lines != 2 {
		t.Fatalf("%d lines for 1,000 repeats and one other warning:\n%s", lines, out.String())
	}
	time.Sleep(1100 * time.Millisecond)
	r.Warn(log, "connection refused: max connections reached")
	if !strings.Contains(out.String(), "suppressed=999") {
		t.Fatalf("the line after the pause does not count the 999 held back:\n%s", out.String())
	}
}
