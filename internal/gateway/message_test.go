package gateway_test

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/testkit"
	"github.com/ws2api/ws2api/internal/upstream"
)

func upstream0(timeout time.Duration) upstream.HostOptions {
	return upstream.HostOptions{Timeout: timeout}
}

func TestTextAndBinaryMessagesAndReplies(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	api.Handle(func(c testkit.Call) testkit.Answer {
		switch c.Body {
		case "silent":
			return testkit.Answer{}
		case "want-binary":
			return testkit.Answer{Body: "\x00\x01bin", ContentType: "application/octet-stream"}
		case "want-text":
			return testkit.Answer{Body: "plain", ContentType: "text/html; charset=utf-8"}
		case "refuse":
			return testkit.Answer{Status: 422, Body: "bad message"}
		}
		return testkit.Default(c)
	})
	c := testkit.Dial(t, h.url("m1"), nil)

	send := func(typ int, body string) {
		t.Helper()
		if err := c.WriteMessage(typ, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	send(websocket.TextMessage, "hello")
	if typ, got := testkit.Read(t, c, wait); typ != websocket.TextMessage || got != "echo:hello" {
		t.Fatalf("reply %d %q", typ, got)
	}
	send(websocket.BinaryMessage, "\xff\xfe raw")
	if typ, got := testkit.Read(t, c, wait); typ != websocket.BinaryMessage || got != "echo:\xff\xfe raw" {
		t.Fatalf("binary reply %d %q", typ, got)
	}
	send(websocket.TextMessage, "want-binary")
	if typ, got := testkit.Read(t, c, wait); typ != websocket.BinaryMessage || got != "\x00\x01bin" {
		t.Fatalf("octet-stream reply %d %q", typ, got)
	}
	send(websocket.TextMessage, "want-text")
	if typ, got := testkit.Read(t, c, wait); typ != websocket.TextMessage || got != "plain" {
		t.Fatalf("html reply %d %q", typ, got)
	}
	// An empty answer sends nothing, a refused message neither: the next
	// reply is the next message's.
	send(websocket.TextMessage, "silent")
	send(websocket.TextMessage, "refuse")
	send(websocket.TextMessage, "after")
	if _, got := testkit.Read(t, c, wait); got != "echo:after" {
		t.Fatalf("after an empty answer and a 4xx: got %q", got)
	}

	posts := map[string]string{}
	for _, call := range api.CallsFor("m1") {
		if call.Method == "POST" {
			posts[call.Body] = call.Header.Get("Content-Type")
		}
	}
	if ct := posts["hello"]; ct != "text/plain; charset=utf-8" {
		t.Errorf("text message Content-Type %q", ct)
	}
	if ct := posts["\xff\xfe raw"]; ct != "application/octet-stream" {
		t.Errorf("binary message Content-Type %q", ct)
	}
	if got := h.m.APIRefused.Get(); got != 1 {
		t.Errorf("ws2api_api_refused_total = %d, want 1", got)
	}
	// The 4xx was not retried.
	n := 0
	for _, call := range api.CallsFor("m1") {
		if call.Body == "refuse" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("refused message sent %d times", n)
	}
}

func TestFragmentedMessageIsOnePOST(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	r := testkit.DialRaw(t, h.addr, "frag")
	r.WriteFrame(t, 0x01, []byte("hel"))      // text, not final
	r.WriteFrame(t, 0x89, []byte("ping"))     // a ping in between
	r.WriteFrame(t, 0x80, []byte("lo world")) // continuation, final
	post := api.WaitFor(wait, "POST", func(c testkit.Call) bool { return c.Method == "POST" })
	if post.Body != "hello world" {
		t.Fatalf("POST body %q", post.Body)
	}
}

// The API sees one connection's messages one at a time, in order, and the
// replies come back in that order, whatever the API's timing.
func TestOneConnectionsMessagesStayInOrder(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	var inFlight, overlap atomic.Int32
	api.Handle(func(c testkit.Call) testkit.Answer {
		if c.Method != "POST" {
			return testkit.Default(c)
		}
		if inFlight.Add(1) > 1 {
			overlap.Add(1)
		}
		defer inFlight.Add(-1)
		n, _ := strconv.Atoi(c.Body)
		time.Sleep(time.Duration(n%4) * time.Millisecond)
		return testkit.Answer{Body: "r" + c.Body}
	})
	c := testkit.Dial(t, h.url("seq"), nil)
	const N = 60
	for i := range N {
		if err := c.WriteMessage(websocket.TextMessage, []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range N {
		if _, got := testkit.Read(t, c, wait); got != "r"+strconv.Itoa(i) {
			t.Fatalf("reply %d is %q", i, got)
		}
	}
	if n := overlap.Load(); n != 0 {
		t.Fatalf("%d POSTs of one connection overlapped", n)
	}
	var bodies []string
	for _, call := range api.CallsFor("seq") {
		if call.Method == "POST" {
			bodies = append(bodies, call.Body)
		}
	}
	for i, b := range bodies {
		if b != strconv.Itoa(i) {
			t.Fatalf("POST %d carried %q; order: %v", i, b, bodies)
		}
	}
}

// Connections do not wait for each other: the API holds one connection's
// message until another's arrives, which it can only do if the other is
// not queued behind the first on its API connection.
func TestConnectionsAreServedConcurrently(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	second := make(chan struct{})
	var once sync.Once
	api.Handle(func(c testkit.Call) testkit.Answer {
		switch {
		case c.Method == "POST" && c.ID == "a":
			select {
			case <-second:
				return testkit.Answer{Body: "a done"}
			case <-time.After(3 * time.Second):
				return testkit.Answer{Body: "a timed out: b never arrived"}
			}
		case c.Method == "POST" && c.ID == "b":
			once.Do(func() { close(second) })
			return testkit.Answer{Body: "b done"}
		}
		return testkit.Default(c)
	})
	a := testkit.Dial(t, h.url("a"), nil)
	b := testkit.Dial(t, h.url("b"), nil)
	_ = a.WriteMessage(1, []byte("x"))
	api.WaitFor(wait, "POST /a", func(c testkit.Call) bool { return c.Method == "POST" && c.ID == "a" })
	_ = b.WriteMessage(1, []byte("y"))
	if _, got := testkit.Read(t, b, wait); got != "b done" {
		t.Fatalf("b: %q", got)
	}
	if _, got := testkit.Read(t, a, wait); got != "a done" {
		t.Fatalf("a: %q", got)
	}
}

// A burst from many clients at once is all delivered while the gateway
// holds at most max-conns-per-host connections to the API.
func TestBurstIsQueuedNotDropped(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{http: upstream.HostOptions{MaxConns: 4}})
	var open, peak atomic.Int32
	api.Handle(func(c testkit.Call) testkit.Answer {
		if c.Method != "POST" {
			return testkit.Default(c)
		}
		n := open.Add(1)
		defer open.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(2 * time.Millisecond)
		return testkit.Default(c)
	})
	const clients = 50
	conns := make([]*websocket.Conn, clients)
	for i := range conns {
		conns[i] = testkit.Dial(t, h.url(fmt.Sprintf("b%d", i)), nil)
	}
	for i, c := range conns {
		_ = c.WriteMessage(1, []byte(fmt.Sprint("m", i)))
	}
	for i, c := range conns {
		if _, got := testkit.Read(t, c, 10*time.Second); got != fmt.Sprint("echo:m", i) {
			t.Fatalf("client %d got %q", i, got)
		}
	}
	if p := peak.Load(); p > 4 {
		t.Fatalf("%d requests in flight at once, max-conns-per-host is 4", p)
	}
}

func TestLargeMessageBothWays(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	c := testkit.Dial(t, h.url("big"), nil)
	big := strings.Repeat("0123456789", 50_000) // 500 KB, over the pooled-frame size
	_ = c.WriteMessage(1, []byte(big))
	if _, got := testkit.Read(t, c, wait); got != "echo:"+big {
		t.Fatalf("reply of %d bytes, want %d", len(got), len(big)+5)
	}
}
