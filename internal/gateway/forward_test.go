package gateway_test

import (
	"context"
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

// Every POST and DELETE carries an Idempotency-Key unique to its message
// (or to the close) and the same on each re-send, so that the API can drop
// a duplicate.
func TestIdempotencyKeyIsPerMessageAndKeptOnRetry(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	var failed atomic.Bool
	api.Handle(func(c testkit.Call) testkit.Answer {
		if c.Method == http.MethodPost && c.Body == "retried" && !failed.Swap(true) {
			return testkit.Answer{Status: http.StatusServiceUnavailable}
		}
		return testkit.Default(c)
	})
	h := newHarness(t, api, harnessOpts{})
	c := testkit.Dial(t, h.url("keyed"), nil)
	for _, msg := range []string{"retried", "second"} {
		_ = c.WriteMessage(websocket.TextMessage, []byte(msg))
		if _, got := testkit.Read(t, c, wait); got != "echo:"+msg {
			t.Fatalf("reply %q", got)
		}
	}
	_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye"))
	api.WaitDelete("keyed", wait)

	keys := map[string][]string{} // body (or DELETE) -> the keys it came with
	var connID string
	for _, call := range api.CallsFor("keyed") {
		what := call.Body
		switch call.Method {
		case http.MethodGet:
			connID = call.ConnID()
			if k := call.Header.Get("Idempotency-Key"); k != "" {
				t.Errorf("connect GET carries Idempotency-Key %q", k)
			}
			continue
		case http.MethodDelete:
			what = "DELETE"
		}
		keys[what] = append(keys[what], call.Header.Get("Idempotency-Key"))
	}
	retried, second, del := keys["retried"], keys["second"], keys["DELETE"]
	if len(retried) != 2 || retried[0] == "" || retried[0] != retried[1] {
		t.Fatalf("the retried message's keys %q: want two, the same", retried)
	}
	if len(second) != 1 || second[0] == "" || second[0] == retried[0] {
		t.Fatalf("the second message's key %q: want one of its own (the first's: %q)", second, retried[0])
	}
	if len(del) != 1 || del[0] == "" || del[0] == retried[0] || del[0] == second[0] {
		t.Fatalf("the DELETE's key %q: want one of its own", del)
	}
	for _, k := range []string{retried[0], second[0], del[0]} {
		if !strings.HasPrefix(k, connID+".") {
			t.Errorf("key %q does not start with the connection id %q", k, connID)
		}
	}
}

// Each waiting message counts against the pending cap beyond its payload:
// a client cannot queue empty messages without limit behind a slow API.
func TestEmptyMessagesCountAgainstThePendingCap(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	release := make(chan struct{})
	answer := sync.OnceFunc(func() { close(release) })
	defer answer() // before the harness's shutdown drains the queue
	api.Handle(func(c testkit.Call) testkit.Answer {
		if c.Method == http.MethodPost {
			<-release
		}
		return testkit.Default(c)
	})
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{MaxPendingBytes: 16 << 10}})
	c := testkit.Dial(t, h.url("empty"), nil)
	go func() {
		for range 10_000 {
			if c.WriteMessage(websocket.TextMessage, nil) != nil {
				return
			}
		}
	}()
	testkit.ExpectClose(t, c, 1013, "try again later", wait)
	// 16 KiB holds 64 messages at 256 bytes each.
	if pending := h.m.PendingMessages.Get(); pending > 64 {
		t.Fatalf("%v messages waiting, over the cap", pending)
	}
	answer()
	if del := api.WaitDelete("empty", wait); del.Header.Get("X-Ws2api-Close-Code") != "1013" {
		t.Fatalf("DELETE code %q, want 1013", del.Header.Get("X-Ws2api-Close-Code"))
	}
	if got := h.m.Closes["backlog"].Get(); got != 1 {
		t.Fatalf("closes{cause=backlog} = %d, want 1", got)
	}
}

// A paced POST waits within the connection's own queue: the drain still
// delivers it, and Shutdown's wait covers it.
func TestPacedMessagesAreDeliveredByTheDrain(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{gw: gateway.Options{MaxMessageRate: 10}})
	c := testkit.Dial(t, h.url("paced"), nil)
	go func() { // reads the replies and answers the close
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}()
	for i := range 15 {
		_ = c.WriteMessage(websocket.TextMessage, []byte(itoa(i)))
	}
	api.WaitFor(wait, "the first POST", func(c testkit.Call) bool { return c.Method == http.MethodPost })
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := h.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	calls := api.CallsFor("paced")
	var posts []testkit.Call
	for _, call := range calls {
		if call.Method == http.MethodPost {
			posts = append(posts, call)
		}
	}
	if len(posts) != 15 {
		t.Fatalf("%d POSTs after the drain, want 15", len(posts))
	}
	if last := calls[len(calls)-1]; last.Method != http.MethodDelete {
		t.Fatalf("last call %v, want the DELETE after the POSTs", last)
	}
	// 10 at once, then one per 100 ms.
	if d := posts[14].At.Sub(posts[0].At); d < 400*time.Millisecond {
		t.Errorf("the last POST came %v after the first: not paced", d)
	}
}
