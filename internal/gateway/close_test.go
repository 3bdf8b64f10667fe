package gateway_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/testkit"
)

func TestCloseSendsDELETEAfterPendingPOSTs(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	api.Handle(func(c testkit.Call) testkit.Answer {
		if c.Method == "POST" {
			return testkit.Answer{Delay: 50 * time.Millisecond}
		}
		return testkit.Default(c)
	})
	c := testkit.Dial(t, h.url("bye"), nil)
	for _, m := range []string{"1", "2", "3"} {
		_ = c.WriteMessage(1, []byte(m))
	}
	_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4001, "done for today"), time.Now().Add(time.Second))
	del := api.WaitDelete("bye", wait)
	if del.Body != "done for today" || del.Header.Get("X-Ws2api-Close-Code") != "4001" {
		t.Fatalf("DELETE body %q code %q", del.Body, del.Header.Get("X-Ws2api-Close-Code"))
	}
	var order []string
	for _, call := range api.CallsFor("bye") {
		order = append(order, call.Method+":"+call.Body)
	}
	want := "GET: POST:1 POST:2 POST:3 DELETE:done for today"
	if got := strings.Join(order, " "); got != want {
		t.Fatalf("order %q, want %q", got, want)
	}
	// The close handshake completes: the client gets its code echoed.
	_ = c.SetReadDeadline(time.Now().Add(wait))
	_, _, err := c.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != 4001 {
		t.Fatalf("after closing: %v, want the close echoed", err)
	}
}

func TestNetworkDropSendsDELETE(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	r := testkit.DialRaw(t, h.addr, "dropped")
	h.waitCount(1)
	r.Conn.Close()
	del := api.WaitDelete("dropped", wait)
	if code := del.Header.Get("X-Ws2api-Close-Code"); code != "1006" {
		t.Fatalf("close code %q, want 1006", code)
	}
	if del.Body == "" {
		t.Fatal("DELETE body is empty; want the cause of the drop")
	}
	h.waitCount(0)
}

func TestCloseWithoutCodeIs1005(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	r := testkit.DialRaw(t, h.addr, "nocode")
	r.WriteFrame(t, 0x88, nil)
	if code, _ := r.ReadClose(t, wait); code != 1005 && code != 0 {
		t.Logf("echoed close code %d", code)
	}
	del := api.WaitDelete("nocode", wait)
	if code := del.Header.Get("X-Ws2api-Close-Code"); code != "1005" {
		t.Fatalf("close code %q, want 1005", code)
	}
}

func TestProtocolErrorsCloseWithTheirCode(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{MaxMessageBytes: 1000}})
	cases := []struct {
		name  string
		b0    byte
		body  []byte
		code  int
		cause string
	}{
		{"invalid utf8", 0x81, []byte("\xff\xfe"), 1007, "protocol"},
		{"reserved opcode", 0x83, nil, 1002, "protocol"},
		{"rsv bit", 0xC1, []byte("x"), 1002, "protocol"},
		{"too big", 0x82, make([]byte, 1001), 1009, "too_big"},
		{"bad close code", 0x88, []byte{0x03, 0xed}, 1002, "protocol"},
	}
	for i, c := range cases {
		id := "perr" + string(rune('a'+i))
		r := testkit.DialRaw(t, h.addr, id)
		r.WriteFrame(t, c.b0, c.body)
		if code, _ := r.ReadClose(t, wait); code != c.code {
			t.Errorf("%s: close %d, want %d", c.name, code, c.code)
		}
		r.Conn.Close()
		del := api.WaitDelete(id, wait)
		if got := del.Header.Get("X-Ws2api-Close-Code"); got != itoa(c.code) {
			t.Errorf("%s: DELETE code %s, want %d", c.name, got, c.code)
		}
	}
	// A well-behaved client is unaffected.
	ok := testkit.Dial(t, h.url("fine"), nil)
	_ = ok.WriteMessage(1, []byte("hi"))
	if _, got := testkit.Read(t, ok, wait); got != "echo:hi" {
		t.Fatalf("other client: %q", got)
	}
	if n := h.m.Closes["protocol"].Get(); n != 4 {
		t.Errorf("closes{cause=protocol} = %d, want 4", n)
	}
}

func TestUnmaskedFrameIsProtocolError(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	r := testkit.DialRaw(t, h.addr, "unmasked")
	_, _ = r.Write([]byte{0x81, 0x02, 'h', 'i'})
	if code, _ := r.ReadClose(t, wait); code != 1002 {
		t.Fatalf("close %d, want 1002", code)
	}
}

func TestPingIsAnsweredWithPong(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	c := testkit.Dial(t, h.url("pinger"), nil)
	got := make(chan string, 1)
	c.SetPongHandler(func(s string) error { got <- s; return nil })
	_ = c.WriteControl(websocket.PingMessage, []byte("are you there"), time.Now().Add(time.Second))
	go func() { _, _, _ = c.ReadMessage() }()
	select {
	case s := <-got:
		if s != "are you there" {
			t.Fatalf("pong %q", s)
		}
	case <-time.After(wait):
		t.Fatal("no pong")
	}
}

func TestShutdownClosesClientsWith1001AndSendsDELETEs(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	a := testkit.Dial(t, h.url("s1"), nil)
	b := testkit.Dial(t, h.url("s2"), nil)
	status, _ := h.ctl("GET", "/healthz", "", "")
	if status != 200 {
		t.Fatalf("healthz %d before shutdown", status)
	}
	done := make(chan error, 1)
	go func() { done <- h.srv.Shutdown(context.Background()) }()
	testkit.ExpectClose(t, a, 1001, "going away", wait)
	testkit.ExpectClose(t, b, 1001, "going away", wait)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"s1", "s2"} {
		del := api.WaitDelete(id, wait)
		if del.Header.Get("X-Ws2api-Close-Code") != "1001" {
			t.Errorf("%s DELETE code %q", id, del.Header.Get("X-Ws2api-Close-Code"))
		}
	}
	if status, body := h.ctl("GET", "/healthz", "", ""); status != 503 {
		t.Fatalf("healthz %d %q while draining, want 503", status, body)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
