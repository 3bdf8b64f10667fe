package gateway_test

import (
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/testkit"
	"github.com/ws2api/ws2api/internal/upstream"
)

// The limits and checks of a gateway that faces the internet: origins,
// connection count, message rate, keepalive, idle timeout, TLS.

func TestOriginsOutsideTheAllowListAre403BeforeTheAPI(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{
		Origins: []string{"https://app.example.com", "https://*.example.org:8443", "null"},
	}})
	origin := func(o string) http.Header { return http.Header{"Origin": {o}} }
	for _, o := range []string{"https://evil.example", "http://app.example.com", "https://app.example.com.evil", "https://example.org:8443", "https://x.example.org", "garbage"} {
		if status, body := testkit.DialStatus(t, h.url("refused"), origin(o)); status != 403 || body != "ws2api: origin not allowed\n" {
			t.Errorf("Origin %q: %d %q, want 403", o, status, body)
		}
	}
	if calls := api.CallsFor("refused"); len(calls) != 0 {
		t.Fatalf("the API was asked about refused origins: %v", calls)
	}
	for i, o := range []string{"https://app.example.com", "HTTPS://APP.example.com:443", "https://a.b.example.org:8443", "null", ""} {
		hdr := origin(o)
		if o == "" {
			hdr = nil // a device: no Origin at all
		}
		c := testkit.Dial(t, h.url("ok"+itoa(i)), hdr)
		_ = c.WriteMessage(websocket.TextMessage, []byte("hi"))
		if _, got := testkit.Read(t, c, wait); got != "echo:hi" {
			t.Fatalf("Origin %q: %q", o, got)
		}
	}
}

func TestBadOriginListIsRefusedAtStart(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"example.com", "https://", "https://a/b", "https://*", "https://a.*.com", "https://a:x", "https://user@a"} {
		_, err := gateway.New(gateway.Options{API: noAPI{}, Origins: []string{bad}})
		if err == nil {
			t.Errorf("origin %q accepted", bad)
		}
	}
}

func TestMaxConnsAnswers503(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{MaxConns: 2}})
	a := testkit.Dial(t, h.url("a"), nil)
	testkit.Dial(t, h.url("b"), nil)
	if status, body := testkit.DialStatus(t, h.url("c"), nil); status != 503 || body != "ws2api: too many connections\n" {
		t.Fatalf("third client: %d %q, want 503", status, body)
	}
	if calls := api.CallsFor("c"); len(calls) != 0 {
		t.Fatalf("the API was asked about a refused client: %v", calls)
	}
	a.Close()
	h.waitCount(1)
	// The slot is free again once the closed connection is gone: OnClose
	// gives it back before it leaves the registry.
	c, resp, err := testkit.TryDial(h.url("c"), nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("after a client left: %d %v", status, err)
	}
	c.Close()
}

// A client sending faster than MaxMessageRate is paced, not punished: a
// second's worth of messages goes at once, the rest wait their turn, and
// every one reaches the API in order. Another client is not held back.
func TestMessagesOverTheRateArePacedNotDropped(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{MaxMessageRate: 100}})
	flood := testkit.Dial(t, h.url("flood"), nil)
	const n = 200
	for i := range n {
		if err := flood.WriteMessage(websocket.TextMessage, []byte(itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	calm := testkit.Dial(t, h.url("calm"), nil)
	start := time.Now()
	_ = calm.WriteMessage(websocket.TextMessage, []byte("not held back"))
	if _, got := testkit.Read(t, calm, wait); got != "echo:not held back" {
		t.Fatalf("calm client: %q", got)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("calm client answered after %v, behind the paced one", d)
	}

	for i := range n {
		if _, got := testkit.Read(t, flood, wait); got != "echo:"+itoa(i) {
			t.Fatalf("reply %d: %q", i, got)
		}
	}
	var posts []testkit.Call
	for _, c := range api.CallsFor("flood") {
		switch c.Method {
		case "POST":
			posts = append(posts, c)
		case "DELETE":
			t.Fatalf("the paced client was closed: %v", c)
		}
	}
	if len(posts) != n {
		t.Fatalf("%d POSTs, want %d", len(posts), n)
	}
	for i, p := range posts {
		if p.Body != itoa(i) {
			t.Fatalf("POST %d carries %q: out of order", i, p.Body)
		}
	}
	// 100 at once, then one per 10 ms: the last about a second after the
	// first.
	if d := posts[99].At.Sub(posts[0].At); d > 500*time.Millisecond {
		t.Errorf("the first second's worth took %v: the burst was held back", d)
	}
	if d := posts[n-1].At.Sub(posts[0].At); d < 800*time.Millisecond || d > 3*time.Second {
		t.Errorf("the last POST came %v after the first, want about 1s", d)
	}
	if got := h.m.Closes["backlog"].Get(); got != 0 {
		t.Errorf("closes{cause=backlog} = %d", got)
	}
	_ = flood.WriteMessage(websocket.TextMessage, []byte("still here"))
	if _, got := testkit.Read(t, flood, wait); got != "echo:still here" {
		t.Fatalf("paced client afterwards: %q", got)
	}
}

// A rate below one message a second still lets one through at once, then
// one per interval (a second's worth of a rate of 0.5 is less than one
// message, and every message once waited for ever).
func TestARateBelowOneASecondStillPaces(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{MaxMessageRate: 0.5}})
	c := testkit.Dial(t, h.url("slowrate"), nil)
	start := time.Now()
	for _, m := range []string{"one", "two"} {
		if err := c.WriteMessage(websocket.TextMessage, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	if _, got := testkit.Read(t, c, wait); got != "echo:one" {
		t.Fatalf("first: %q", got)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the first message waited %v", d)
	}
	if _, got := testkit.Read(t, c, wait); got != "echo:two" {
		t.Fatalf("second: %q", got)
	}
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Errorf("the second message came after %v, want about 2s", d)
	}
}

func TestDeadPeerIsClosedAndItsDELETESent(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	const interval, timeout = 100 * time.Millisecond, 200 * time.Millisecond
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{PingInterval: interval, PingTimeout: timeout}})

	// A client that answers pings (gorilla does, while it reads) stays.
	alive := testkit.Dial(t, h.url("alive"), nil)
	var answered atomic.Int32
	alive.SetPingHandler(func(data string) error {
		answered.Add(1)
		return alive.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(wait))
	})
	go func() {
		for {
			if _, _, err := alive.ReadMessage(); err != nil {
				return
			}
		}
	}()

	// A raw client that reads nothing and answers nothing is dead.
	start := time.Now()
	dead := testkit.DialRaw(t, h.addr, "dead")
	del := api.WaitDelete("dead", wait)
	took := time.Since(start)
	if code := del.Header.Get("X-Ws2api-Close-Code"); code != "1006" || del.Body != "ping timeout" {
		t.Fatalf("DELETE code %s body %q, want 1006 \"ping timeout\"", code, del.Body)
	}
	// Within interval + timeout, plus the keeper's tick and scheduling.
	if took > interval+timeout+time.Second {
		t.Fatalf("dead peer closed after %v; configured %v + %v", took, interval, timeout)
	}
	// It was pinged, then its socket closed.
	_ = dead.SetReadDeadline(time.Now().Add(wait))
	b := make([]byte, 64)
	n, _ := dead.R.Read(b)
	if n < 2 || b[0] != 0x89 {
		t.Fatalf("first bytes after the upgrade %x, want a ping frame", b[:n])
	}
	if n := h.m.Closes["ping_timeout"].Get(); n != 1 {
		t.Fatalf("closes{cause=ping_timeout} = %d, want 1", n)
	}

	// Three more ping cycles, each of which would have closed it had its
	// pong not counted (TestKeepaliveTimeline has the exact timeline).
	before := answered.Load()
	eventually(t, "alive to answer three more pings", func() bool { return answered.Load() >= before+3 })
	if calls := api.CallsFor("alive"); calls[len(calls)-1].Method == "DELETE" {
		t.Fatal("a client answering pings was closed")
	}
	_ = alive.WriteMessage(websocket.TextMessage, []byte("hi"))
	api.WaitFor(wait, "alive's POST", func(c testkit.Call) bool { return c.Method == "POST" && c.Body == "hi" })
}

func TestIdleClientIsClosedWith1001(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	const idle = 300 * time.Millisecond
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{IdleTimeout: idle}})
	// From before quiet's dial: its idle time counts from its upgrade,
	// which comes after (counted from after the dials, a run under load
	// saw it closed "early", at 298 ms).
	start := time.Now()
	quiet := testkit.Dial(t, h.url("quiet"), nil)
	busy := testkit.Dial(t, h.url("busy"), nil)
	stop := make(chan struct{})
	defer close(stop)
	var trips atomic.Int32 // busy's round trips
	go func() {
		t := time.NewTicker(idle / 5)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if busy.WriteMessage(websocket.TextMessage, []byte("tick")) != nil {
					return
				}
				if _, _, err := busy.ReadMessage(); err != nil {
					return
				}
				trips.Add(1)
			}
		}
	}()
	testkit.ExpectClose(t, quiet, 1001, "idle timeout", wait)
	if took := time.Since(start); took < idle {
		t.Fatalf("closed after %v, before the idle timeout %v", took, idle)
	}
	del := api.WaitDelete("quiet", wait)
	if code := del.Header.Get("X-Ws2api-Close-Code"); code != "1001" {
		t.Fatalf("DELETE code %s", code)
	}
	// Twice the idle timeout of busy's traffic (a round trip each fifth
	// of it), after which it is still there (TestKeepaliveTimeline has the
	// exact timeline).
	before := trips.Load()
	eventually(t, "ten more round trips of busy's", func() bool { return trips.Load() >= before+10 })
	if h.srv.Count() != 1 {
		t.Fatalf("%d clients connected; the busy one should stay", h.srv.Count())
	}
}

func TestTLSListener(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	cert := testkit.NewCert(t, "gw")
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{
		TLS:              &tls.Config{Certificates: []tls.Certificate{cert.TLS}, MinVersion: tls.VersionTLS12},
		HandshakeTimeout: 500 * time.Millisecond,
		MaxOutgoingBytes: 64 << 10,
	}})
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: cert.Pool}, HandshakeTimeout: wait}
	c, _, err := d.Dial(h.url("secure"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	get := api.CallsFor("secure")[0]
	if p := get.Header.Get("X-Forwarded-Proto"); p != "https" {
		t.Fatalf("X-Forwarded-Proto %q, want https", p)
	}
	for i := range 50 {
		_ = c.WriteMessage(websocket.TextMessage, []byte(itoa(i)))
	}
	for i := range 50 {
		if _, got := testkit.Read(t, c, wait); got != "echo:"+itoa(i) {
			t.Fatalf("reply %d: %q", i, got)
		}
	}
	if status, body := h.ctl("POST", "/secure", "", "pushed"); status != 200 {
		t.Fatalf("push: %d %s", status, body)
	}
	if _, got := testkit.Read(t, c, wait); got != "pushed" {
		t.Fatalf("push arrived as %q", got)
	}

	// Plain text on the TLS port, and a client that never finishes its
	// TLS handshake, are dropped without harm.
	plain, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	_, _ = plain.Write([]byte("GET /x HTTP/1.1\r\nHost: x\r\n\r\n"))
	stalled, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	_ = stalled.SetReadDeadline(time.Now().Add(wait))
	if _, err := stalled.Read(make([]byte, 1)); err == nil {
		t.Fatal("a client that sent nothing got bytes")
	}

	// A slow consumer over TLS is closed like any other.
	slowRaw, err := tls.Dial("tcp", h.addr, &tls.Config{RootCAs: cert.Pool})
	if err != nil {
		t.Fatal(err)
	}
	defer slowRaw.Close()
	_, _ = slowRaw.Write([]byte("GET /slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"))
	h.waitCount(2)
	big := string(make([]byte, 32<<10))
	for range 200 {
		if status, _ := h.ctl("POST", "/slow", "application/octet-stream", big); status != 200 {
			break
		}
	}
	del := api.WaitDelete("slow", wait)
	if del.Body != "slow consumer" {
		t.Fatalf("slow consumer's DELETE body %q", del.Body)
	}
	// The first client never noticed.
	_ = c.WriteMessage(websocket.TextMessage, []byte("after"))
	if _, got := testkit.Read(t, c, wait); got != "echo:after" {
		t.Fatalf("after: %q", got)
	}
}

// noAPI is a client that is never called: for options that fail New.
type noAPI struct{}

func (noAPI) Do(*upstream.Request, func(*upstream.Response, error)) {}
func (noAPI) Cancel(*upstream.Request) bool                         { return false }
func (noAPI) Close()                                                {}

// A charger that never answers pings (gorilla with a ping handler that does
// nothing: it reads, but sends no pong) is closed as dead by the ping
// timeout, unless the API's connect answer says X-Ws2api-Ping-Interval: 0
// for it; with "1" it is pinged after a second of silence, not after
// -ping-interval. A bad value refuses the connect with 502.
func TestAPISetsAConnectionsPingInterval(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	api.Handle(func(c testkit.Call) testkit.Answer {
		if c.Method != http.MethodGet {
			return testkit.Default(c)
		}
		h := http.Header{}
		switch {
		case strings.HasPrefix(c.ID, "never"):
			h.Set(gateway.HeaderPingInterval, "0")
		case strings.HasPrefix(c.ID, "slow"):
			h.Set(gateway.HeaderPingInterval, "1")
		case strings.HasPrefix(c.ID, "bad"):
			h.Set(gateway.HeaderPingInterval, strings.TrimPrefix(c.ID, "bad-"))
		}
		return testkit.Answer{Body: "ok", Header: h}
	})
	const interval, timeout = 100 * time.Millisecond, 200 * time.Millisecond
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{PingInterval: interval, PingTimeout: timeout}})
	deaf := func(id string, pinged *atomic.Int32) *websocket.Conn {
		c := testkit.Dial(t, h.url(id), nil)
		c.SetPingHandler(func(string) error { pinged.Add(1); return nil }) // never answers
		go func() {
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
			}
		}()
		return c
	}
	// witness answers its pings: their count tells how many ping cycles
	// of -ping-interval have passed.
	witness := testkit.Dial(t, h.url("witness"), nil)
	var witnessed atomic.Int32
	witness.SetPingHandler(func(data string) error {
		witnessed.Add(1)
		return witness.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(wait))
	})
	go func() {
		for {
			if _, _, err := witness.ReadMessage(); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	var pinged [3]atomic.Int32
	deaf("default", &pinged[0])
	deaf("never", &pinged[1])
	deaf("slow", &pinged[2])
	del := api.WaitDelete("default", wait)
	if code := del.Header.Get("X-Ws2api-Close-Code"); code != "1006" || del.Body != "ping timeout" {
		t.Fatalf("default's DELETE: %s %q, want 1006 \"ping timeout\"", code, del.Body)
	}
	del = api.WaitDelete("slow", wait)
	if took := time.Since(start); took < time.Second {
		t.Errorf("slow (1s interval) closed after %v, before its interval", took)
	}
	if del.Body != "ping timeout" {
		t.Errorf("slow's DELETE body %q", del.Body)
	}
	// never stays silent for 5 more ping cycles of -ping-interval (the
	// witness's) since slow was found dead: it is still there, and was
	// never pinged (TestKeepaliveTimeline has the exact timeline).
	before := witnessed.Load()
	eventually(t, "five more of the witness's pings", func() bool { return witnessed.Load() >= before+5 })
	if calls := api.CallsFor("never"); calls[len(calls)-1].Method == http.MethodDelete {
		t.Fatal("a connection the API exempted from pings was closed")
	}
	if n := pinged[1].Load(); n != 0 {
		t.Fatalf("the connection the API exempted from pings was pinged %d times", n)
	}
	if status, _ := h.ctl("GET", "/never", "", ""); status != 200 {
		t.Fatalf("never: info %d", status)
	}
	for _, bad := range []string{"-5", "abc", "500ms", "25h"} {
		_, resp, err := websocket.DefaultDialer.Dial(h.url("bad-"+bad), nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusBadGateway {
			t.Errorf("ping interval %q: %v, want 502", bad, err)
		}
	}
}
