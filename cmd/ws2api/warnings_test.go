package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/testkit"
)

// An API base nothing listens on is reported at start-up, and the gateway
// serves anyway: the API may come up later.
func TestUnreachableAPIAtStartUpIsLoggedAndServed(t *testing.T) {
	t.Parallel()
	base := "http://" + freeAddr(t) + "/"
	p := start(t, nil, "-api", base)
	line := logLine(t, p, "API backend unreachable at start-up; serving anyway")
	if line["backend"] != base || !strings.Contains(line["error"].(string), "refused") {
		t.Fatalf("warning %v: want the backend %s and the refused connect", line, base)
	}
	if status, _ := get(t, p.control+"/healthz"); status != http.StatusOK {
		t.Fatalf("healthz %d, want 200", status)
	}
}

// A drain cut short by -drain-timeout says what it drops and exits 1, so
// that systemd shows the loss.
func TestDrainTimeoutWithMessagesUndeliveredExits1(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	api.Handle(func(c testkit.Call) testkit.Answer {
		if c.Method == http.MethodGet {
			return testkit.Default(c)
		}
		return testkit.Answer{Delay: time.Hour} // never answers in time
	})
	p := start(t, nil, "-api", api.URL(), "-drain-timeout", "500ms")
	c := testkit.Dial(t, "ws://"+p.public+"/stuck", nil)
	for _, msg := range []string{"first", "second"} {
		if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	api.WaitFor(5*time.Second, "the first POST", func(c testkit.Call) bool { return c.Method == http.MethodPost })
	if code := p.stop(syscall.SIGTERM, 10*time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	line := logLine(t, p, "drain timed out: undelivered messages and DELETEs dropped")
	if line["level"] != "ERROR" || line["messages"] != 2.0 || line["bytes"] != 11.0 || line["deletes"] != 1.0 {
		t.Fatalf("drain line %v: want ERROR, 2 messages, 11 bytes, 1 DELETE", line)
	}
	if strings.Contains(p.logs(), `"msg":"drained"`) {
		t.Fatal("logged drained as well")
	}
}

// logLine waits for the gateway's JSON log line with msg and returns it.
func logLine(t *testing.T, p *proc, msg string) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		for line := range strings.Lines(p.logs()) {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
				return rec
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log:\n%s", msg, p.logs())
		}
	}
}
