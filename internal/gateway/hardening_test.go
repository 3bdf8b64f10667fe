package gateway_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/testkit"
	"github.com/ws2api/ws2api/internal/ws"
)

// eventually waits up to wait for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// With Content-Length in -forward-headers, a client's Content-Length was
// copied onto the connect GET: the API read the next request on that
// connection, another client's GET with its cookies, as the body. No
// header that frames or routes the request can be forwarded, however the
// options are built.
func TestForwardHeadersRefuseFramingAndHopByHopHeaders(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"Content-Length", "content-length", "Transfer-Encoding", "Host", "Connection",
		"Upgrade", "Expect", "Keep-Alive", "TE", "te", "Trailer", "Proxy-Authorization", "proxy-connection",
		"Proxy-Anything", "X-Ws2api-Meta-User", "Bad Name", "Bad:Name", "Café"} {
		_, err := gateway.New(gateway.Options{API: noAPI{}, ForwardHeaders: []string{"Origin", name}})
		if err == nil {
			t.Errorf("gateway.New accepted %q as a forwarded header", name)
		}
		if gateway.CheckForwardHeader(name) == nil {
			t.Errorf("CheckForwardHeader(%q) = nil", name)
		}
	}
	for _, name := range []string{"Origin", "Cookie", "X-Request-Id", "Sec-WebSocket-Protocol", "X-Forwarded-For"} {
		if err := gateway.CheckForwardHeader(name); err != nil {
			t.Errorf("CheckForwardHeader(%q) = %v", name, err)
		}
	}
}

// A client facing the gateway directly claimed any address, host and
// scheme (even gopher) in X-Forwarded-*, and the API believed it. From a
// peer not in TrustedProxies they are dropped and ws2api says what it
// knows.
func TestForwardedHeadersFromAClientAreReplacedByTheGatewaysOwn(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{TrustedProxies: []string{"10.0.0.0/8", "192.0.2.1"}}})
	hdr := http.Header{}
	hdr.Add("X-Forwarded-For", "203.0.113.7")
	hdr.Add("X-Forwarded-For", "198.51.100.1")
	hdr.Set("X-Forwarded-Proto", "gopher")
	hdr.Set("X-Forwarded-Host", "bank.example")
	testkit.Dial(t, h.url("direct"), hdr)
	get := api.WaitFor(wait, "GET /direct", func(c testkit.Call) bool { return c.Method == "GET" && c.ID == "direct" })
	for name, want := range map[string]string{"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http", "X-Forwarded-Host": h.addr} {
		if got := get.Header.Values(name); len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

// Behind a proxy in TrustedProxies, its X-Forwarded-* reach the API, the
// proxy's address appended to X-Forwarded-For; a scheme other than http or
// https is still replaced.
func TestForwardedHeadersFromATrustedProxyAreKept(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{TrustedProxies: []string{"127.0.0.1"}}})
	hdr := http.Header{}
	hdr.Set("X-Forwarded-For", "203.0.113.7")
	hdr.Set("X-Forwarded-Proto", "https")
	hdr.Set("X-Forwarded-Host", "ws.example.com")
	testkit.Dial(t, h.url("proxied"), hdr)
	hdr.Set("X-Forwarded-Proto", "gopher")
	testkit.Dial(t, h.url("odd-scheme"), hdr)
	for id, want := range map[string][3]string{
		"proxied":    {"203.0.113.7, 127.0.0.1", "https", "ws.example.com"},
		"odd-scheme": {"203.0.113.7, 127.0.0.1", "http", "ws.example.com"},
	} {
		get := api.WaitFor(wait, "GET /"+id, func(c testkit.Call) bool { return c.Method == "GET" && c.ID == id })
		for i, name := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"} {
			if got := get.Header.Get(name); got != want[i] {
				t.Errorf("%s: %s = %q, want %q", id, name, got, want[i])
			}
		}
	}
}

// Two clients that do not read and one that does. With the gateway's
// outgoing total nearly reached, the next write closes the client with
// the largest backlog (and the oldest: see the next test for a larger one
// that is younger), as a slow consumer; the smaller backlog and the reader
// carry on.
func TestOutgoingTotalClosesTheLargestBacklogFirst(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	const limit = 1 << 20
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{MaxOutgoingTotal: limit}})
	testkit.DialRawSmallWindow(t, h.addr, "big")
	testkit.DialRawSmallWindow(t, h.addr, "small")
	reader := testkit.Dial(t, h.url("reader"), nil)
	h.waitCount(3)
	chunk := strings.Repeat("x", 64<<10)
	push := func(id string) int {
		status, _ := h.ctl("POST", "/"+id, "", chunk)
		return status
	}
	// big: 896 KiB sent, a little of which the kernel holds.
	for i := range 14 {
		if status := push("big"); status != 200 {
			t.Fatalf("push %d to big: %d", i, status)
		}
	}
	eventually(t, "big's backlog", func() bool { return h.srv.Outgoing() > 400<<10 })
	bigBacklog := h.srv.Outgoing()
	// small: until the total is reached and a shed closes big.
	for i := 0; h.m.Closes["outgoing_total"].Get() == 0; i++ {
		if i == 20 {
			t.Fatalf("no client shed after %d pushes to small; outgoing %d", i, h.srv.Outgoing())
		}
		if status := push("small"); status != 200 {
			t.Fatalf("push %d to small: %d (outgoing %d, big's backlog %d)", i, status, h.srv.Outgoing(), bigBacklog)
		}
		if status := push("reader"); status != 200 {
			t.Fatalf("push %d to reader: %d", i, status)
		}
		testkit.Read(t, reader, wait)
	}
	del := api.WaitDelete("big", wait)
	if code := del.Header.Get("X-Ws2api-Close-Code"); code != "1008" || del.Body != "slow consumer" {
		t.Errorf("big's DELETE: %s %q, want 1008 \"slow consumer\"", code, del.Body)
	}
	if status, _ := h.ctl("GET", "/small", "", ""); status != 200 {
		t.Errorf("small, the smaller backlog, was closed too: info %d", status)
	}
	if n := h.m.Closes["outgoing_total"].Get(); n != 1 {
		t.Errorf("closes{cause=outgoing_total} = %d, want 1", n)
	}
	if got := h.srv.Outgoing(); got > limit {
		t.Errorf("outgoing %d after the shed, over the total %d", got, limit)
	}
	if status := push("reader"); status != 200 {
		t.Fatalf("push to reader after the shed: %d", status)
	}
	testkit.Read(t, reader, wait)
}

// 680,000 pings a second from one client took a core and made every other
// client wait. Pings and pongs count against -max-msg-rate: past it they
// are not answered, and a flood of ten times the rate is closed with
// 1008. Another client's pings within the rate are all answered, and its
// messages round-trip as before.
func TestPingFloodIsAnsweredAtTheRateThenClosed(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	const rate = 100
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{MaxMessageRate: rate}})
	flooder := testkit.DialRaw(t, h.addr, "flooder")
	polite := testkit.DialRaw(t, h.addr, "polite")
	other := testkit.Dial(t, h.url("other"), nil)
	h.waitCount(3)

	key := [4]byte{1, 2, 3, 4}
	pings := func(n int) []byte {
		var b []byte
		for range n {
			b = ws.AppendFrame(b, ws.OpPing, []byte("p"), &key)
		}
		return b
	}
	// The polite client's keepalive, within its budget: every ping answered.
	if _, err := polite.Write(pings(rate / 2)); err != nil {
		t.Fatal(err)
	}
	if pongs, code, _ := readPongs(polite, rate/2, wait); pongs != rate/2 || code != 0 {
		t.Fatalf("the polite client got %d pongs of %d (close %d)", pongs, rate/2, code)
	}

	start := time.Now()
	var wg sync.WaitGroup
	wg.Go(func() {
		batch := pings(1000)
		for range 50 { // 50,000 pings, as fast as the socket takes them
			if _, err := flooder.Write(batch); err != nil {
				return // closed by the gateway
			}
		}
	})
	var worst time.Duration
	for i := range 20 {
		t0 := time.Now()
		msg := fmt.Sprintf("m%d", i)
		if err := other.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		if _, got := testkit.Read(t, other, wait); got != "echo:"+msg {
			t.Fatalf("other client got %q", got)
		}
		worst = max(worst, time.Since(t0))
	}
	pongs, code, reason := readPongs(flooder, -1, wait)
	elapsed := time.Since(start)
	wg.Wait()
	if code != 1008 || reason != "too many control frames" {
		t.Errorf("flooder closed with %d %q, want 1008 \"too many control frames\"", code, reason)
	}
	// A second's worth at once, then the rate.
	if budget := rate + int(rate*elapsed.Seconds()) + 1; pongs > budget || pongs == 0 {
		t.Errorf("flooder got %d pongs in %v; the rate allows 1 to %d", pongs, elapsed, budget)
	}
	if worst > 2*time.Second {
		t.Errorf("another client's round trip took %v during the flood", worst)
	}
	api.WaitDelete("flooder", wait) // the socket closes once the close frame had its time
	if n := h.m.Closes["control_flood"].Get(); n != 1 {
		t.Errorf("closes{cause=control_flood} = %d, want 1", n)
	}
	if h.m.ControlDropped.Get() == 0 {
		t.Error("no dropped control frame counted")
	}
	t.Logf("flood: %d pongs in %v; other client's worst round trip %v", pongs, elapsed, worst)
}

// readPongs counts the pongs r receives until it has want of them (-1:
// until a close frame or the end), and returns the close frame's code and
// reason if one came.
func readPongs(r *testkit.Raw, want int, timeout time.Duration) (pongs, code int, reason string) {
	_ = r.SetReadDeadline(time.Now().Add(timeout))
	var buf []byte
	chunk := make([]byte, 64<<10)
	for {
		for {
			f, n, err := ws.ParseFrame(buf, ws.Client, 1<<24)
			if err != nil || n == 0 {
				break
			}
			buf = buf[n:]
			switch f.Op {
			case ws.OpPong:
				pongs++
				if pongs == want {
					return pongs, 0, ""
				}
			case ws.OpClose:
				code, reason, _ := ws.ParseClose(f.Payload)
				return pongs, code, reason
			}
		}
		n, err := r.R.Read(chunk)
		if err != nil {
			return pongs, 0, ""
		}
		buf = append(buf, chunk[:n]...)
	}
}

// Upgrade heads that RFC 9112 and RFC 6455 make ambiguous are refused;
// the forms they allow are accepted.
func TestUpgradeHeadsAreReadStrictly(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	const key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	const version = "Sec-WebSocket-Version: 13\r\n"
	const upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\n"
	head := func(id, extra string) string {
		return "GET /" + id + " HTTP/1.1\r\nHost: gw.example\r\n" + upgrade + version + key + extra + "\r\n"
	}
	for _, c := range []struct{ name, head, want string }{
		{"two Hosts", head("a", "Host: other.example\r\n"), "more than one Host"},
		{"two keys", head("a", "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n"), "more than one Sec-WebSocket-Key"},
		{"two versions", head("a", version), "more than one Sec-WebSocket-Version"},
		{"a body", head("a", "Content-Length: 5\r\n") + "hello", "Content-Length must be 0"},
		{"a chunked body", head("a", "Transfer-Encoding: chunked\r\n") + "0\r\n\r\n", "Transfer-Encoding"},
		{"a subprotocol that is no token", head("a", "Sec-WebSocket-Protocol: ocpp1.6, ocpp/2.0\r\n"), "subprotocol"},
		{"a subprotocol with a space", head("a", "Sec-WebSocket-Protocol: ocpp 1.6\r\n"), "subprotocol"},
	} {
		if status, body := testkit.RawRequest(t, h.addr, c.head); status != 400 || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %q, want 400 naming %q", c.name, status, body, c.want)
		}
	}
	if calls := api.Calls(); len(calls) != 0 {
		t.Fatalf("the API was called for refused upgrades: %v", calls)
	}

	for _, c := range []struct{ name, head, id, host string }{
		{"absolute form", "GET http://gw.example:7001/abs?x=1 HTTP/1.1\r\nHost: gw.example:7001\r\n" + upgrade + version + key + "\r\n", "abs", "gw.example:7001"},
		{"leading empty lines", "\r\n\r\n" + head("lead", ""), "lead", "gw.example"},
		{"Content-Length: 0", head("zero", "Content-Length: 0\r\n"), "zero", "gw.example"},
		{"empty list elements", head("list", "Sec-WebSocket-Protocol: , ocpp1.6,,\r\n"), "list", "gw.example"},
	} {
		if status, body := testkit.RawRequest(t, h.addr, c.head); status != 101 {
			t.Errorf("%s: %d %q, want 101", c.name, status, body)
			continue
		}
		get := api.WaitFor(wait, "GET /"+c.id, func(call testkit.Call) bool { return call.Method == "GET" && call.ID == c.id })
		if got := get.Header.Get("X-Forwarded-Host"); got != c.host {
			t.Errorf("%s: X-Forwarded-Host %q, want %q", c.name, got, c.host)
		}
	}
}

// A client that reads but has fallen behind (starved of CPU, or on a slow
// link) can hold more than a client that stopped reading long ago; the
// shed closes the one whose backlog is older, not the larger. late, a
// reader that has not read yet, gets a larger backlog than old's, begun
// after old's; the shed closes old, and late then reads every byte sent to
// it. (Ranked by size, late was closed: the reading client of
// TestAbuseBroadcastsToClientsThatDoNotRead... was, under load.)
func TestOutgoingTotalClosesTheOldestBacklogFirst(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	const limit = 4 << 20
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{MaxOutgoingTotal: limit, MaxOutgoingBytes: 4 * limit}, maxWriteBuffer: 4 * limit})
	old := testkit.DialRawSmallWindow(t, h.addr, "old")
	late := testkit.DialRawSmallWindow(t, h.addr, "late")
	h.waitCount(2)
	chunk := strings.Repeat("y", 64<<10)
	push := func(id string) int {
		status, _ := h.ctl("POST", "/"+id, "", chunk)
		return status
	}
	// old: 1.5 MiB sent, of which the kernel holds some hundreds of KiB
	// at most; late then piles up more than old's backlog until the total
	// passes 4 MiB, and closing old alone brings it under the shed's target
	// (3 MiB less a push).
	for range 24 {
		if status := push("old"); status != 200 {
			t.Fatalf("push to old: %d", status)
		}
	}
	eventually(t, "old's backlog", func() bool { return h.srv.Outgoing() > 1200<<10 })
	sent := 0
	for h.m.Closes["outgoing_total"].Get() == 0 {
		if sent == 80 {
			t.Fatalf("no shed after %d pushes to late; outgoing %d", sent, h.srv.Outgoing())
		}
		if status := push("late"); status != 200 {
			t.Fatalf("push %d to late: %d", sent, status)
		}
		sent++
	}
	del := api.WaitDelete("old", wait)
	if code := del.Header.Get("X-Ws2api-Close-Code"); code != "1008" || del.Body != "slow consumer" {
		t.Errorf("old's DELETE: %s %q, want 1008 \"slow consumer\"", code, del.Body)
	}
	if n := h.m.Closes["outgoing_total"].Get(); n != 1 {
		t.Fatalf("%d clients shed, want 1 (old)", n)
	}
	// late was kept: it reads all it was sent.
	_ = late.SetReadDeadline(time.Now().Add(wait))
	want := sent * len(chunk)
	got := 0
	for got < want {
		f, err := readFramePayload(late)
		if err != nil {
			t.Fatalf("late read %d of %d bytes: %v", got, want, err)
		}
		got += f
	}
	_ = old.Close()
}

// readFramePayload reads one unmasked server frame and returns its payload
// length.
func readFramePayload(r *testkit.Raw) (int, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r.R, hdr[:]); err != nil {
		return 0, err
	}
	n := int(hdr[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r.R, b[:]); err != nil {
			return 0, err
		}
		n = int(b[0])<<8 | int(b[1])
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r.R, b[:]); err != nil {
			return 0, err
		}
		n = int(binary.BigEndian.Uint64(b[:]))
	}
	_, err := io.CopyN(io.Discard, r.R, int64(n))
	return n, err
}
