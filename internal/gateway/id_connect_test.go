package gateway_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/hub"
	"github.com/ws2api/ws2api/internal/testkit"
)

// CP%31 and CP1 are one client: the second connect replaces the first,
// the API sees /CP1 both times, and the control API reaches it by either
// spelling. Before ids had one canonical form (id.go), CP%31 was a client
// apart, and the API got GET /CP%31 beside GET /CP1.
func TestOneClientWhateverTheEscapingOfItsID(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	first := testkit.Dial(t, h.url("CP1"), nil)
	h.waitCount(1)
	second := testkit.Dial(t, h.url("CP%31"), nil)
	testkit.ExpectClose(t, first, 4000, "replaced", wait)
	h.waitCount(1)
	for _, c := range api.Calls() {
		if c.Method == http.MethodGet && c.ID != "CP1" {
			t.Errorf("connect GET for /%s, want /CP1", c.ID)
		}
	}

	for _, path := range []string{"/CP%31", "/CP1", "/%43%50%31"} {
		if status, body := h.ctl("POST", path, "text/plain", "to "+path); status != 200 {
			t.Fatalf("push to %s: %d %q", path, status, body)
		}
		if _, got := testkit.Read(t, second, wait); got != "to "+path {
			t.Fatalf("client got %q, want the push to %s", got, path)
		}
	}
	status, body := h.ctl("GET", "/C%50%31", "", "")
	var info hub.Info
	if status != 200 || json.Unmarshal([]byte(body), &info) != nil || info.ID != "CP1" {
		t.Fatalf("info for /C%%50%%31: %d %s, want id CP1", status, body)
	}
	if status, body := h.ctl("PUT", "/CP%31/groups/room", "", ""); status != 200 {
		t.Fatalf("join through /CP%%31: %d %q", status, body)
	}
	if _, body := h.ctl("GET", "/?group=room", "", ""); !strings.Contains(body, `"members":["CP1"]`) {
		t.Fatalf("room: %s, want CP1 its member", body)
	}
	if status, body := h.ctl("PUT", "/CP%31/meta/Site", "text/plain", "7"); status != 200 {
		t.Fatalf("meta through /CP%%31: %d %q", status, body)
	}
	if status, body := h.ctl("POST", "/?id=CP%2531&id=CP1", "text/plain", "many"); status != 200 || !strings.Contains(body, `"not_connected":["CP%31"]`) {
		// A query value is decoded once, as a path segment is: CP%2531
		// is the client CP%31, not CP1.
		t.Fatalf("push to ?id=CP%%2531&id=CP1: %d %s", status, body)
	}
	if _, got := testkit.Read(t, second, wait); got != "many" {
		t.Fatalf("client got %q", got)
	}
	_ = second.WriteMessage(websocket.TextMessage, []byte("hello"))
	post := api.WaitFor(wait, "the client's POST", func(c testkit.Call) bool { return c.Method == "POST" && c.Body == "hello" })
	if post.ID != "CP1" || post.Header.Get("X-Ws2api-Meta-Site") != "7" {
		t.Errorf("POST /%s with meta %q, want /CP1 with 7", post.ID, post.Header.Get("X-Ws2api-Meta-Site"))
	}

	// A control path's id is checked as the public listener checks it.
	for _, c := range []struct{ method, path, want string }{
		{"GET", "/%2e%2e", "'..'"}, {"POST", "/a%2Fb", "'/'"}, {"POST", "/a%5Cb", "'/'"}, {"DELETE", "/%6Detrics", "reserved"},
		{"GET", "/CP%00", "control character"}, {"GET", "/%zz", "'%'"}, {"PUT", "/a%2Fb/meta/Site", "'/'"},
		{"DELETE", "/%2e/groups/room", "'..'"}, {"PUT", "/%C0%AF/groups/room", "UTF-8"},
		{"PUT", "/%zz/groups/room", "'%'"}, // (was net/http's own 400: the event loop routes it now)
	} {
		// Raw: net/http's client will not send a malformed escape.
		addr := strings.TrimPrefix(h.control, "http://")
		head := c.method + " " + c.path + " HTTP/1.1\r\nHost: " + addr + "\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx"
		if status, body := testkit.RawRequest(t, addr, head); status != 400 || !strings.Contains(body, c.want) {
			t.Errorf("%s %s: %d %q, want 400 saying %s", c.method, c.path, status, body, c.want)
		}
	}

	if status, _ := h.ctl("DELETE", "/CP%31?code=4001&reason=bye", "", ""); status != 200 {
		t.Fatalf("kick through /CP%%31: %d", status)
	}
	testkit.ExpectClose(t, second, 4001, "bye", wait)
	if del := api.WaitDelete("CP1", wait); del.Header.Get("X-Ws2api-Close-Code") != "4001" {
		t.Errorf("DELETE code %q", del.Header.Get("X-Ws2api-Close-Code"))
	}
}

// Ids beyond ASCII letters and digits reach the API escaped one way
// only, and the control API answers with the decoded id.
func TestIDsReachTheAPIEscapedCanonically(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	for _, c := range []struct{ dial, api, id string }{
		{"Z%C3%A4hler-7", "Z%C3%A4hler-7", "Zähler-7"},
		{"Z%c3%a4hler-8", "Z%C3%A4hler-8", "Zähler-8"},
		{"CP%201", "CP%201", "CP 1"},
		{"a+b", "a%2Bb", "a+b"},
		{"x%3By", "x%3By", "x;y"},
		{"100%25", "100%25", "100%"},
	} {
		conn := testkit.Dial(t, h.url(c.dial), nil)
		_ = conn.WriteMessage(websocket.TextMessage, []byte("hi "+c.id))
		if _, got := testkit.Read(t, conn, wait); got != "echo:hi "+c.id {
			t.Fatalf("%s: reply %q", c.dial, got)
		}
		_, body := h.ctl("GET", "/"+c.dial, "", "")
		var info hub.Info
		if json.Unmarshal([]byte(body), &info) != nil || info.ID != c.id {
			t.Errorf("info for /%s: %s, want id %q", c.dial, body, c.id)
		}
		_ = conn.Close()
		api.WaitDelete(c.api, wait)
		for _, call := range api.Calls() {
			if strings.HasSuffix(call.Body, " "+c.id) && call.ID != c.api {
				t.Errorf("%s: %s /%s, want /%s", c.dial, call.Method, call.ID, c.api)
			}
		}
		if calls := api.CallsFor(c.api); len(calls) != 3 {
			t.Errorf("%s: the API saw %d requests for /%s, want GET, POST and DELETE: %v", c.dial, len(calls), c.api, calls)
		}
	}
}
