package gateway_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/testkit"
)

func TestConnectSendsGETWithIdentity(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	hdr := http.Header{}
	hdr.Set("Origin", "https://app.example")
	hdr.Set("Cookie", "session=abc")
	hdr.Set("Authorization", "Bearer t0k")
	hdr.Set("User-Agent", "charger/1.0")
	hdr.Set("X-Forwarded-For", "203.0.113.7")
	hdr.Set("X-Ws2api-Meta-User", "spoofed")
	hdr.Set("X-Ws2api-Connection-Id", "spoofed")
	hdr.Set("X-Other", "not forwarded")
	testkit.Dial(t, h.url("CP-001?token=x&y=1"), hdr)

	get := api.WaitFor(wait, "GET", func(c testkit.Call) bool { return c.Method == "GET" })
	checks := map[string]string{
		"Origin":             "https://app.example",
		"Cookie":             "session=abc",
		"Authorization":      "Bearer t0k",
		"User-Agent":         "charger/1.0",
		"X-Forwarded-For":    "127.0.0.1", // the client's own claim is dropped: no -trusted-proxies
		"X-Forwarded-Proto":  "http",
		"X-Forwarded-Host":   h.addr,
		"X-Ws2api-Meta-User": "",
		"X-Other":            "",
	}
	if get.ID != "CP-001" || get.Query != "token=x&y=1" {
		t.Errorf("GET /%s?%s, want /CP-001?token=x&y=1", get.ID, get.Query)
	}
	for name, want := range checks {
		if got := get.Header.Get(name); got != want {
			t.Errorf("GET header %s = %q, want %q", name, got, want)
		}
	}
	if id := get.ConnID(); id == "" || id == "spoofed" {
		t.Errorf("X-Ws2api-Connection-Id = %q: want one set by ws2api", id)
	}
}

func TestBadUpgradesAre400AndNeverReachTheAPI(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	upgrade := "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	long := strings.Repeat("a", 256)
	cases := []struct{ name, head, want string }{
		{"plain GET", "GET /abc HTTP/1.1\r\nHost: x\r\n\r\n", "not a WebSocket upgrade"},
		{"POST push attempt", "POST /abc HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", "method must be GET"},
		{"empty id", "GET / HTTP/1.1\r\nHost: x\r\n" + upgrade + "\r\n", "empty id"},
		{"control character", "GET /a%01b HTTP/1.1\r\nHost: x\r\n" + upgrade + "\r\n", "control character"},
		{"escaped slash", "GET /..%2Fadmin%2F HTTP/1.1\r\nHost: x\r\n" + upgrade + "\r\n", "'/'"},
		{"dot segment", "GET /%2e%2e HTTP/1.1\r\nHost: x\r\n" + upgrade + "\r\n", "'..'"},
		{"escaped reserved", "GET /%6Detrics HTTP/1.1\r\nHost: x\r\n" + upgrade + "\r\n", "reserved"},
		{"id too long", "GET /" + long + " HTTP/1.1\r\nHost: x\r\n" + upgrade + "\r\n", "longer than 255"},
		{"bad escape", "GET /ab%zz HTTP/1.1\r\nHost: x\r\n" + upgrade + "\r\n", "two hex digits"},
		{"reserved metrics", "GET /metrics HTTP/1.1\r\nHost: x\r\n" + upgrade + "\r\n", "reserved"},
		{"reserved healthz", "GET /healthz HTTP/1.1\r\nHost: x\r\n" + upgrade + "\r\n", "reserved"},
		{"reserved debug", "GET /debug/pprof HTTP/1.1\r\nHost: x\r\n" + upgrade + "\r\n", "reserved"},
		{"version 8", "GET /abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", "version"},
		{"no key", "GET /abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", "Sec-WebSocket-Key"},
		{"HTTP/1.0", "GET /abc HTTP/1.0\r\nHost: x\r\n" + upgrade + "\r\n", "HTTP/1.1"},
		{"no host", "GET /abc HTTP/1.1\r\n" + upgrade + "\r\n", "Host"},
		{"garbage", "\x16\x03\x01\x02\x00\x01\r\n\r\n", "malformed"},
		{"control char in header", "GET /abc HTTP/1.1\r\nHost: x\r\nUser-Agent: a\x01b\r\n" + upgrade + "\r\n", "control character"},
	}
	for _, c := range cases {
		status, body := testkit.RawRequest(t, h.addr, c.head)
		if status != 400 || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %q, want 400 containing %q", c.name, status, body, c.want)
		}
	}
	if calls := api.Calls(); len(calls) != 0 {
		t.Errorf("the API was called for bad upgrades: %v", calls)
	}
}

func TestOversizedHeadIs431(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{MaxHeaderBytes: 1024}})
	head := "GET /abc HTTP/1.1\r\nHost: x\r\nCookie: " + strings.Repeat("c", 2000) + "\r\n\r\n"
	if status, _ := testkit.RawRequest(t, h.addr, head); status != 431 {
		t.Fatalf("status %d, want 431", status)
	}
}

func TestAPIAnswersDecideTheUpgrade(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{http: upstream0(300 * time.Millisecond)})
	api.Handle(func(c testkit.Call) testkit.Answer {
		switch c.ID {
		case "refused":
			return testkit.Answer{Body: "unknown charger, go away"}
		case "broken":
			return testkit.Answer{Status: 500, Body: "stack trace"}
		case "notfound":
			return testkit.Answer{Status: 404, Body: "nope"}
		case "slow":
			return testkit.Answer{Body: "ok", Delay: 2 * time.Second}
		case "okish":
			return testkit.Answer{Body: "ok\n"}
		}
		return testkit.Default(c)
	})
	cases := []struct {
		id     string
		status int
		body   string
	}{
		{"refused", 403, "unknown charger, go away"},
		{"broken", 502, "ws2api: the API answered 500\n"},
		{"notfound", 502, "ws2api: the API answered 404\n"},
		{"slow", 504, "ws2api: the API did not answer in time\n"},
		{"okish", 403, "ok\n"},
	}
	for _, c := range cases {
		status, body := testkit.DialStatus(t, h.url(c.id), nil)
		if status != c.status || body != c.body {
			t.Errorf("%s: %d %q, want %d %q", c.id, status, body, c.status, c.body)
		}
	}
	// Nothing was upgraded, so there is nothing to DELETE: none once the
	// gateway has drained.
	h.drain()
	for _, c := range api.Calls() {
		if c.Method != "GET" {
			t.Errorf("unexpected %s", c)
		}
	}
}

func TestAPIUnreachableIs502Quickly(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	api.Server.Close()
	start := time.Now()
	status, body := testkit.DialStatus(t, h.url("abc"), nil)
	if status != 502 || body != "ws2api: the API is unreachable\n" {
		t.Fatalf("%d %q, want 502", status, body)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("502 took %v", d)
	}
}

func TestSubprotocolIsTheOneTheAPINames(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	api.Handle(func(c testkit.Call) testkit.Answer {
		if c.Method != "GET" {
			return testkit.Default(c)
		}
		pick := "ocpp1.6"
		if c.ID == "wrong" {
			pick = "mqtt"
		}
		return testkit.Answer{Body: "ok", Header: http.Header{"Sec-Websocket-Protocol": {pick}}}
	})
	c := testkit.Dial(t, h.url("CP1"), nil, "ocpp2.0.1", "ocpp1.6")
	if got := c.Subprotocol(); got != "ocpp1.6" {
		t.Fatalf("subprotocol %q, want ocpp1.6", got)
	}
	get := api.WaitFor(wait, "GET /CP1", func(c testkit.Call) bool { return c.ID == "CP1" })
	if got := get.Header.Get("Sec-Websocket-Protocol"); got != "ocpp2.0.1, ocpp1.6" {
		t.Errorf("offered protocols sent to the API: %q", got)
	}
	_, resp, err := testkit.TryDial(h.url("wrong"), nil, "ocpp1.6")
	if err == nil || resp == nil || resp.StatusCode != 502 {
		t.Fatalf("API naming an unoffered protocol: err %v, resp %v; want 502", err, resp)
	}
}

func TestSameIDReplacesTheOldConnection(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	first := testkit.Dial(t, h.url("dup"), nil)
	second := testkit.Dial(t, h.url("dup"), nil)
	testkit.ExpectClose(t, first, 4000, "replaced", wait)

	// The id now belongs to the second connection.
	if err := second.WriteMessage(1, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	if _, got := testkit.Read(t, second, wait); got != "echo:still here" {
		t.Fatalf("second connection got %q", got)
	}
	gets := []string{}
	for _, c := range api.CallsFor("dup") {
		if c.Method == "GET" {
			gets = append(gets, c.ConnID())
		}
	}
	if len(gets) != 2 || gets[0] == gets[1] {
		t.Fatalf("connection ids of the two GETs: %v, want two distinct", gets)
	}
	second.Close()
	del := api.WaitDelete("dup", wait)
	if del.ConnID() != gets[1] {
		t.Fatalf("DELETE for connection %s, want only the second's (%s)", del.ConnID(), gets[1])
	}
	h.drain() // every DELETE due has been sent
	n := 0
	for _, c := range api.CallsFor("dup") {
		if c.Method == "DELETE" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d DELETEs, want 1 (none for the replaced connection)", n)
	}
}

func TestEveryRequestCarriesTheConnectionID(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	c := testkit.Dial(t, h.url("who"), nil)
	_ = c.WriteMessage(1, []byte("m"))
	testkit.Read(t, c, wait)
	c.Close()
	api.WaitDelete("who", wait)
	calls := api.CallsFor("who")
	if len(calls) != 3 {
		t.Fatalf("calls: %v", calls)
	}
	for _, call := range calls {
		if call.ConnID() == "" || call.ConnID() != calls[0].ConnID() {
			t.Errorf("%s: connection id %q, want %q on every request", call.Method, call.ConnID(), calls[0].ConnID())
		}
	}
}

func TestMetaHeadersFollowTheConnection(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	api.Handle(func(c testkit.Call) testkit.Answer {
		if c.Method == "GET" {
			return testkit.Answer{Body: "ok", Header: http.Header{"X-Ws2api-Meta-User": {"42"}, "X-Other": {"x"}}}
		}
		return testkit.Default(c)
	})
	hdr := http.Header{"X-Ws2api-Meta-User": {"spoofed"}}
	c := testkit.Dial(t, h.url("meta"), hdr)
	_ = c.WriteMessage(1, []byte("m"))
	testkit.Read(t, c, wait)
	c.Close()
	del := api.WaitDelete("meta", wait)
	post := api.CallsFor("meta")[1]
	for _, call := range []testkit.Call{post, del} {
		if got := call.Header.Values("X-Ws2api-Meta-User"); len(got) != 1 || got[0] != "42" {
			t.Errorf("%s X-Ws2api-Meta-User = %q, want [42]", call.Method, got)
		}
		if call.Header.Get("X-Other") != "" {
			t.Errorf("%s carries a non-meta header from the connect answer", call.Method)
		}
	}
}
