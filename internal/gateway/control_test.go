package gateway_test

import (
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/hub"
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
	if status, _ := h.ctl("POST", "/bad%2Fid", "text/plain", "x"); status != 400 {
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
	h.drain() // the DELETE's answer is in: requests_succeeded counts it

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

func TestInfoDescribesTheConnection(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	api.Handle(func(c testkit.Call) testkit.Answer {
		if c.Method == "GET" {
			return testkit.Answer{Body: "ok", Header: http.Header{
				"X-Ws2api-Groups": {"site-7, chargers"}, "X-Ws2api-Meta-Tenant": {"acme"}}}
		}
		return testkit.Default(c)
	})
	c := testkit.Dial(t, h.url("CP-info"), http.Header{"User-Agent": {"charger/2.1"}})
	_ = c.WriteMessage(1, []byte("hi"))
	testkit.Read(t, c, wait)
	status, body := h.ctl("GET", "/CP-info", "", "")
	var info hub.Info
	if status != 200 || json.Unmarshal([]byte(body), &info) != nil {
		t.Fatalf("%d %s", status, body)
	}
	if info.UserAgent != "charger/2.1" || !slices.Equal(info.Groups, []string{"site-7", "chargers"}) ||
		info.Meta["Tenant"] != "acme" || info.MessagesIn != 1 || info.MessagesOut != 1 || info.RemoteAddr == "" ||
		time.Since(info.ConnectedAt) > time.Minute || info.LastActiveAt.Before(info.ConnectedAt) {
		t.Fatalf("info %+v", info)
	}
}

func TestGroups(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	api.Handle(func(c testkit.Call) testkit.Answer {
		if c.Method != "GET" {
			return testkit.Default(c)
		}
		switch c.ID {
		case "g1", "g2":
			return testkit.Answer{Body: "ok", Header: http.Header{"X-Ws2api-Groups": {"room"}}}
		case "badgroup":
			return testkit.Answer{Body: "ok", Header: http.Header{"X-Ws2api-Groups": {"ok-name, no spaces"}}}
		}
		return testkit.Default(c)
	})
	g1 := testkit.Dial(t, h.url("g1"), nil)
	g2 := testkit.Dial(t, h.url("g2"), nil)
	g3 := testkit.Dial(t, h.url("g3"), nil)
	h.waitCount(3)

	// g3 joins through the control API.
	if status, body := h.ctl("PUT", "/g3/groups/room", "", ""); status != 200 {
		t.Fatalf("join: %d %s", status, body)
	}
	status, body := h.ctl("POST", "/?group=room", "text/plain", "to the room")
	if status != 200 || !strings.Contains(body, `"delivered":3`) {
		t.Fatalf("group broadcast: %d %s", status, body)
	}
	for _, c := range []*websocket.Conn{g1, g2, g3} {
		if _, got := testkit.Read(t, c, wait); got != "to the room" {
			t.Fatalf("got %q", got)
		}
	}
	// Members, two to a page.
	var page struct {
		Members []string `json:"members"`
		Next    string   `json:"next"`
	}
	_, body = h.ctl("GET", "/?group=room&limit=2", "", "")
	if json.Unmarshal([]byte(body), &page) != nil || !slices.Equal(page.Members, []string{"g1", "g2"}) || page.Next != "g2" {
		t.Fatalf("page 1: %s", body)
	}
	_, body = h.ctl("GET", "/?group=room&limit=2&after="+page.Next, "", "")
	if json.Unmarshal([]byte(body), &page) != nil || !slices.Equal(page.Members, []string{"g3"}) || page.Next != "" {
		t.Fatalf("page 2: %s", body)
	}
	// g1 leaves; a closed client leaves by itself.
	if status, _ := h.ctl("DELETE", "/g1/groups/room", "", ""); status != 200 {
		t.Fatalf("leave: %d", status)
	}
	if status, _ := h.ctl("DELETE", "/g1/groups/room", "", ""); status != 404 {
		t.Fatalf("leaving twice: %d, want 404", status)
	}
	g2.Close()
	api.WaitDelete("g2", wait)
	_, body = h.ctl("GET", "/?group=room", "", "")
	if !strings.Contains(body, `"members":["g3"]`) {
		t.Fatalf("members after leaving: %s", body)
	}
	_, body = h.ctl("GET", "/", "", "")
	if !strings.Contains(body, `"room":1`) || !strings.Contains(body, `"connections":2`) {
		t.Fatalf("summary: %s", body)
	}

	// Bad names are refused with a clear answer.
	for _, c := range []struct{ method, path string }{
		{"PUT", "/g3/groups/bad!name"}, {"POST", "/?group=bad!name"}, {"GET", "/?group=bad!name"},
	} {
		if status, body := h.ctl(c.method, c.path, "text/plain", "x"); status != 400 || !strings.Contains(body, "group name") {
			t.Errorf("%s %s: %d %q, want 400 naming the group", c.method, c.path, status, body)
		}
	}
	if status, _ := h.ctl("PUT", "/nobody/groups/room", "", ""); status != 404 {
		t.Errorf("join an unknown id: %d, want 404", status)
	}
	// An API naming a bad group fails the connect with 502.
	if status, body := testkit.DialStatus(t, h.url("badgroup"), nil); status != 502 || !strings.Contains(body, "group") {
		t.Fatalf("API naming a bad group: %d %q", status, body)
	}
}

func TestPushToManyIDs(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	a := testkit.Dial(t, h.url("m-a"), nil)
	b := testkit.Dial(t, h.url("m-b"), nil)
	h.waitCount(2)
	status, body := h.ctl("POST", "/?id=m-a&id=m-b&id=m-gone", "application/octet-stream", "\x01\x02")
	var res struct {
		Delivered    int      `json:"delivered"`
		NotConnected []string `json:"not_connected"`
	}
	if status != 200 || json.Unmarshal([]byte(body), &res) != nil || res.Delivered != 2 || !slices.Equal(res.NotConnected, []string{"m-gone"}) {
		t.Fatalf("%d %s", status, body)
	}
	for _, c := range []*websocket.Conn{a, b} {
		if typ, got := testkit.Read(t, c, wait); typ != websocket.BinaryMessage || got != "\x01\x02" {
			t.Fatalf("got %d %q", typ, got)
		}
	}
	if status, _ := h.ctl("POST", "/?id=m-a&group=x", "text/plain", "x"); status != 400 {
		t.Fatalf("ids and a group: %d, want 400", status)
	}
	if status, _ := h.ctl("POST", "/?id=bad%2Fid", "text/plain", "x"); status != 400 {
		t.Fatalf("a bad id: %d, want 400", status)
	}
}

func TestMetaHeadersChangeThroughTheControlAPI(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	c := testkit.Dial(t, h.url("meta2"), nil)
	h.waitCount(1)
	if status, body := h.ctl("PUT", "/meta2/meta/Role", "text/plain", "admin"); status != 200 {
		t.Fatalf("set: %d %s", status, body)
	}
	_ = c.WriteMessage(1, []byte("one"))
	testkit.Read(t, c, wait)
	if status, _ := h.ctl("DELETE", "/meta2/meta/Role", "", ""); status != 200 {
		t.Fatal("remove")
	}
	_ = c.WriteMessage(1, []byte("two"))
	testkit.Read(t, c, wait)
	posts := api.CallsFor("meta2")[1:]
	if got := posts[0].Header.Get("X-Ws2api-Meta-Role"); got != "admin" {
		t.Errorf("first POST carries Role %q", got)
	}
	if got := posts[1].Header.Get("X-Ws2api-Meta-Role"); got != "" {
		t.Errorf("second POST still carries Role %q", got)
	}
	if status, _ := h.ctl("PUT", "/meta2/meta/Bad%20Name", "text/plain", "x"); status != 400 {
		t.Errorf("a bad name: %d, want 400", status)
	}
	if status, _ := h.ctl("PUT", "/meta2/meta/Role", "text/plain", "line\nbreak"); status != 400 {
		t.Errorf("a value with a line break: %d, want 400", status)
	}
}

// A client that stops reading is closed once its outgoing queue passes the
// cap; another client keeps getting every message meanwhile.
func TestSlowConsumerIsClosedWhileOthersReceive(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{MaxOutgoingBytes: 256 << 10, MaxMessageBytes: 1 << 20}})
	slow := testkit.DialRaw(t, h.addr, "slow") // never reads
	fast := testkit.Dial(t, h.url("fast"), nil)
	h.waitCount(2)
	chunk := strings.Repeat("z", 512<<10)
	received := make(chan int, 1)
	go func() {
		n := 0
		for {
			_ = fast.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, _, err := fast.ReadMessage(); err != nil {
				received <- n
				return
			}
			if n++; n == 60 {
				received <- n
				return
			}
		}
	}()
	slowClosed := false
	for range 60 {
		_, _ = h.ctl("POST", "/fast", "text/plain", chunk)
		if status, _ := h.ctl("POST", "/slow", "text/plain", chunk); status == 404 {
			slowClosed = true
		}
	}
	if n := <-received; n != 60 {
		t.Fatalf("the fast client got %d of 60 messages", n)
	}
	if !slowClosed {
		t.Fatal("30 MiB pushed to a client that does not read, and it is still connected")
	}
	del := api.WaitDelete("slow", wait)
	if del.Header.Get("X-Ws2api-Close-Code") != "1008" {
		t.Fatalf("DELETE code %q, want 1008", del.Header.Get("X-Ws2api-Close-Code"))
	}
	if n := h.m.Closes["slow_consumer"].Get(); n != 1 {
		t.Fatalf("closes{cause=slow_consumer} = %d", n)
	}
	_ = slow.Close()
}
