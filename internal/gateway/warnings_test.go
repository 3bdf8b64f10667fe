package gateway_test

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/testkit"
)

// logBuffer keeps a gateway's log lines for a test to look for, and
// passes them on to the test's output.
type logBuffer struct {
	mu  sync.Mutex
	b   bytes.Buffer
	out io.Writer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.out.Write(p)
	return l.b.Write(p)
}

// newLog returns a logger for gateway.Options.Logger and what it writes.
func newLog(t *testing.T) (*slog.Logger, *logBuffer) {
	l := &logBuffer{out: t.Output()}
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug})), l
}

// waitLine waits for a line holding every one of parts and returns it.
func (l *logBuffer) waitLine(t *testing.T, parts ...string) string {
	t.Helper()
	for deadline := time.Now().Add(wait); ; time.Sleep(10 * time.Millisecond) {
		l.mu.Lock()
		text := l.b.String()
		l.mu.Unlock()
	lines:
		for line := range strings.Lines(text) {
			for _, p := range parts {
				if !strings.Contains(line, p) {
					continue lines
				}
			}
			return line
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q in:\n%s", parts, text)
		}
	}
}

// A re-send is logged (at most a line a second of them) with what failed.
func TestReSendIsLogged(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	var failed atomic.Bool
	api.Handle(func(c testkit.Call) testkit.Answer {
		if c.Method == http.MethodPost && !failed.Swap(true) {
			return testkit.Answer{Status: http.StatusServiceUnavailable}
		}
		return testkit.Default(c)
	})
	log, lines := newLog(t)
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{Logger: log}})
	c := testkit.Dial(t, h.url("resent"), nil)
	_ = c.WriteMessage(websocket.TextMessage, []byte("hi"))
	if _, got := testkit.Read(t, c, wait); got != "echo:hi" {
		t.Fatalf("reply %q", got)
	}
	lines.waitLine(t, "level=WARN", `msg="re-sending a request to the API"`, "id=resent", "method=POST",
		"cause=status", "attempt=1", `error="status 503"`)
	if n := h.m.APIRetries["status"].Get(); n != 1 {
		t.Fatalf("ws2api_api_retries_total{cause=status} = %d, want 1", n)
	}
}

// A connect GET the API fails is logged with what went wrong, as well as
// answered 502 (or 504).
func TestFailedConnectIsLogged(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	api.Handle(func(c testkit.Call) testkit.Answer {
		return testkit.Answer{Status: http.StatusServiceUnavailable, Body: "maintenance"}
	})
	log, lines := newLog(t)
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{Logger: log}})
	if status, _ := testkit.DialStatus(t, h.url("down"), nil); status != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", status)
	}
	lines.waitLine(t, "level=WARN", "connect GET to the API failed", "id=down", "client_status=502",
		`error="the API answered 503"`)

	// Unreachable: the error names the address it could not reach. (A
	// gateway of its own: the first's warnings are rate limited, one line
	// a second.)
	api.Close()
	h = newHarness(t, api, harnessOpts{gw: gateway.Options{Logger: log}})
	if status, _ := testkit.DialStatus(t, h.url("away"), nil); status != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", status)
	}
	lines.waitLine(t, "level=WARN", "connect GET to the API failed", "id=away", "client_status=502",
		strings.TrimPrefix(api.Server.URL, "http://"))
}
