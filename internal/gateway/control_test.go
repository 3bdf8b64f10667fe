package gateway_test

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/testkit"
)

func TestPushReachesTheClient(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	c := testkit.Dial(t, h.url("CP7"), nil)
	h.waitCount(1)

	if status, body := h.ctl("POST", "/CP7", "text/plain", `[2,"1","Reset",{}]`); status != 200 || body != "ok" {
		t.Fatalf("push: %d %q", status, body)
	}
	if typ, got := testkit.Read(t, c, wait); typ != websocket.TextMessage || got != `[2,"1","Reset",{}]` {
		t.Fatalf("client got %d %q", typ, got)
	}
	if status, _ := h.ctl("POST", "/CP7", "application/octet-stream", "\x00\x01"); status != 200 {
		t.Fatalf("binary push: %d", status)
	}
	if typ, got := testkit.Read(t, c, wait); typ != websocket.BinaryMessage || got != "\x00\x01" {
		t.Fatalf("client got %d %q", typ, got)
	}
	if status, body := h.ctl("POST", "/nobody", "text/plain", "x"); status != 404 || body != "not found" {
		t.Fatalf("push to unknown id: %d %q", status, body)
	}
	if status, body := h.ctl("POST", "/CP7", "text/plain", "\xff"); status != 400 || !strings.Contains(body, "UTF-8") {
		t.Fatalf("invalid UTF-8 text push: %d %q", status, body)
	}
	if status, _ := h.ctl("POST", "/bad$id", "text/plain", "x"); status != 400 {
		t.Fatalf("push to a bad id: %d, want 400", status)
	}
	// A client's reply to a pushed message reaches the API as an ordinary
	// message.
	_ = c.WriteMessage(1, []byte(`[3,"1",{}]`))
	api.WaitFor(wait, "the reply as a POST", func(call testkit.Call) bool {
		return call.Method == "POST" && call.Body == `[3,"1",{}]`
	})
	if got := h.m.Pushes.Get(); got != 2 {
		t.Errorf("ws2api_pushes_total = %d, want 2", got)
	}
}

func TestPushIsNeverAcceptedOnThePublicListener(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	c := testkit.Dial(t, h.url("victim"), nil)
	status, _ := testkit.RawRequest(t, h.addr, "POST /victim HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nevil!")
	if status != 400 {
		t.Fatalf("POST on the public listener: %d, want 400", status)
	}
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, m, err := c.ReadMessage(); err == nil {
		t.Fatalf("client received %q through the public listener", m)
	}
}

func TestInfoKickAndBroadcast(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	a := testkit.Dial(t, h.url("i1"), nil)
	b := testkit.Dial(t, h.url("i2"), nil)
	h.waitCount(2)

	status, body := h.ctl("GET", "/i1", "", "")
	var info map[string]any
	if status != 200 || json.Unmarshal([]byte(body), &info) != nil {
		t.Fatalf("info: %d %q", status, body)
	}
	for _, k := range []string{"id", "connected_at", "last_active_at", "remote_addr", "subprotocol", "pending_messages", "pending_bytes"} {
		if _, ok := info[k]; !ok {
			t.Errorf("info lacks %q: %s", k, body)
		}
	}
	if info["id"] != "i1" {
		t.Errorf("info id %v", info["id"])
	}
	if status, _ := h.ctl("GET", "/nobody", "", ""); status != 404 {
		t.Errorf("info on unknown id: %d", status)
	}

	status, body = h.ctl("POST", "/", "text/plain", "to all")
	if status != 200 || !strings.Contains(body, `"delivered":2`) {
		t.Fatalf("broadcast: %d %q", status, body)
	}
	for _, c := range []*websocket.Conn{a, b} {
		if _, got := testkit.Read(t, c, wait); got != "to all" {
			t.Fatalf("broadcast received as %q", got)
		}
	}

	if status, _ := h.ctl("DELETE", "/i1?code=1500", "", ""); status != 400 {
		t.Errorf("kick with code 1500: %d, want 400", status)
	}
	if status, _ := h.ctl("DELETE", "/i1?code=4321&reason=maintenance", "", ""); status != 200 {
		t.Fatalf("kick: %d", status)
	}
	testkit.ExpectClose(t, a, 4321, "maintenance", wait)
	del := api.WaitDelete("i1", wait)
	if del.Header.Get("X-Ws2api-Close-Code") != "4321" || del.Body != "maintenance" {
		t.Fatalf("kick DELETE: code %q body %q", del.Header.Get("X-Ws2api-Close-Code"), del.Body)
	}
	if status, _ := h.ctl("DELETE", "/i1", "", ""); status != 404 {
		t.Errorf("kick after the close: %d, want 404", status)
	}
}

func TestMetricsExposeTheSeedCountersWithHelpAndType(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	c := testkit.Dial(t, h.url("metered"), nil)
	_ = c.WriteMessage(1, []byte("x"))
	testkit.Read(t, c, wait)
	_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
	api.WaitDelete("metered", wait)
	h.waitCount(0)
	time.Sleep(50 * time.Millisecond)

	status, body := h.ctl("GET", "/metrics", "", "")
	if status != 200 {
		t.Fatalf("/metrics %d", status)
	}
	want := map[string]string{
		"connections_opened":                        "1",
		"connections_closed":                        "1",
		"requests_started":                          "3", // GET, POST, DELETE
		"requests_succeeded":                        "3",
		"requests_failed":                           "0",
		"ws2api_connections":                        "0",
		"ws2api_messages_in_total":                  "1",
		`ws2api_messages_out_total{source="reply"}`: "1",
		`ws2api_closes_total{cause="client"}`:       "1",
	}
	for name, v := range want {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` ` + v + `$`).MatchString(body) {
			t.Errorf("metric %s is not %s", name, v)
		}
	}
	for _, fam := range []string{"connections_opened", "connections_closed", "requests_started", "requests_failed",
		"requests_succeeded", "ws2api_api_request_duration_seconds", "ws2api_closes_total", "ws2api_pending_bytes"} {
		if !regexp.MustCompile(`(?m)^# HELP ` + fam + ` \S.*\n# TYPE ` + fam + ` (counter|gauge|histogram)$`).MatchString(body) {
			t.Errorf("family %s lacks HELP and TYPE lines", fam)
		}
	}
	if !strings.Contains(body, `ws2api_api_request_duration_seconds_bucket{method="POST",le="+Inf"} 1`) {
		t.Errorf("POST latency histogram missing:\n%s", body)
	}
	if status, _ := h.ctl("GET", "/debug/pprof/", "", ""); status != 200 {
		t.Errorf("/debug/pprof/ %d", status)
	}
}
