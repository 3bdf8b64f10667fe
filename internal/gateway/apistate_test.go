package gateway

import (
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/upstream"
	"github.com/ws2api/ws2api/internal/ws"
)

// The API side's state machine in memory: a connection with a socket and
// an API client that only record, driven one event at a time, its state
// and the drain's count checked after each (coder/websocket's newConnTest
// pattern). No network, no timers to wait out.

// fakeAPI records the requests a connection sends; the test answers them.
type fakeAPI struct {
	mu       sync.Mutex
	sent     []*fakeRequest
	cancelOK bool // Cancel finds a request still waiting for a connection
}

type fakeRequest struct {
	r    *upstream.Request
	done func(*upstream.Response, error)
}

func (a *fakeAPI) Do(r *upstream.Request, done func(*upstream.Response, error)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sent = append(a.sent, &fakeRequest{r, done})
}

// Cancel takes r back if cancelOK: it was still waiting for a connection.
func (a *fakeAPI) Cancel(r *upstream.Request) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.cancelOK {
		return false
	}
	for i, f := range a.sent {
		if f.r == r {
			a.sent = append(a.sent[:i], a.sent[i+1:]...)
			return true
		}
	}
	return false
}
func (a *fakeAPI) Close() {}

// take returns the oldest request not answered yet, which must be method.
func (a *fakeAPI) take(t *testing.T, method string) *fakeRequest {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.sent) == 0 {
		t.Fatalf("no request in flight, want a %s", method)
	}
	r := a.sent[0]
	a.sent = a.sent[1:]
	if r.r.Method != method {
		t.Fatalf("request %s %s, want %s", r.r.Method, r.r.Path, method)
	}
	return r
}

func (a *fakeAPI) none(t *testing.T) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.sent) > 0 {
		t.Fatalf("%d requests in flight, want none (first: %s)", len(a.sent), a.sent[0].r.Method)
	}
}

// fakeSocket takes writes and closes.
type fakeSocket struct{ closed bool }

func (f *fakeSocket) Write(b []byte) (int, error)     { return len(b), nil }
func (f *fakeSocket) Close() error                    { f.closed = true; return nil }
func (f *fakeSocket) CloseWithError(error) error      { f.closed = true; return nil }
func (f *fakeSocket) SetReadDeadline(time.Time) error { return nil }

type connTest struct {
	t   *testing.T
	s   *Server
	api *fakeAPI
	c   *conn
}

func newConnTest(t *testing.T) *connTest {
	t.Helper()
	api := &fakeAPI{}
	s, err := New(Options{API: api, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: metrics.New(),
		Retry: upstream.RetryPolicy{Backoff: upstream.Backoff{First: time.Hour, Max: time.Hour}, GiveUpAfter: 2 * time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s.ownLoop {
			s.loop.Stop()
		}
	})
	return &connTest{t: t, s: s, api: api, c: s.newConn(&fakeSocket{}, "192.0.2.1:5000")}
}

const upgradeHead = "GET /CP1 HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"

// event is one step: what happens, then what must hold.
type event struct {
	do   string
	api  apiState
	work int64 // s.apiWork after it
	owed int64 // s.deletesDue after it
}

func (ct *connTest) run(events []event) {
	t := ct.t
	mask := [4]byte{1, 2, 3, 4}
	ok := &upstream.Response{Status: 200, Body: []byte("ok")}
	empty := &upstream.Response{Status: 200}
	for i, e := range events {
		switch e.do {
		case "upgrade":
			ct.c.OnData(nil, []byte(upgradeHead))
		case "accept":
			ct.api.take(t, "GET").done(ok, nil)
		case "refuse":
			ct.api.take(t, "GET").done(&upstream.Response{Status: 200, Body: []byte("go away")}, nil)
		case "message":
			ct.c.OnData(nil, ws.AppendFrame(nil, ws.OpText, []byte("hello"), &mask))
		case "answer POST":
			ct.api.take(t, "POST").done(empty, nil)
		case "fail POST":
			ct.api.take(t, "POST").done(&upstream.Response{Status: 503}, nil)
		case "retry":
			ct.c.wake()
		case "answer DELETE":
			ct.api.take(t, "DELETE").done(empty, nil)
		case "hang up":
			ct.c.OnClose(nil, io.EOF)
		case "replaced":
			ct.c.closeWith(closeReplaced)
		default:
			t.Fatalf("unknown event %q", e.do)
		}
		ct.c.mu.Lock()
		got := ct.c.api
		ct.c.mu.Unlock()
		if got != e.api || ct.s.apiWork.Load() != e.work || ct.s.deletesDue.Load() != e.owed {
			t.Fatalf("after %d %q: api %s, drain waits for %d, DELETEs owed %d; want %s, %d, %d",
				i, e.do, got, ct.s.apiWork.Load(), ct.s.deletesDue.Load(), e.api, e.work, e.owed)
		}
	}
	ct.api.none(t)
}

func TestAPIStateMachine(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cancelOK bool
		events   []event
	}{
		{"messages, then the close after them", false, []event{
			{"upgrade", apiConnecting, 1, 0},
			{"accept", apiIdle, 0, 1},
			{"message", apiPosting, 1, 1},
			{"message", apiPosting, 1, 1}, // queued behind the first
			{"answer POST", apiPosting, 1, 1},
			{"answer POST", apiIdle, 0, 1},
			{"hang up", apiDeleting, 1, 1},
			{"answer DELETE", apiDone, 0, 0},
		}},
		{"a hang-up while a POST is in flight: the DELETE follows it", false, []event{
			{"upgrade", apiConnecting, 1, 0},
			{"accept", apiIdle, 0, 1},
			{"message", apiPosting, 1, 1},
			{"hang up", apiPosting, 1, 1},
			{"answer POST", apiDeleting, 1, 1},
			{"answer DELETE", apiDone, 0, 0},
		}},
		{"a failed POST waits out its backoff, still in flight", false, []event{
			{"upgrade", apiConnecting, 1, 0},
			{"accept", apiIdle, 0, 1},
			{"message", apiPosting, 1, 1},
			{"fail POST", apiPosting, 1, 1},
			{"retry", apiPosting, 1, 1},
			{"answer POST", apiIdle, 0, 1},
			{"hang up", apiDeleting, 1, 1},
			{"answer DELETE", apiDone, 0, 0},
		}},
		{"refused: no DELETE", false, []event{
			{"upgrade", apiConnecting, 1, 0},
			{"refuse", apiDone, 0, 0},
			{"hang up", apiDone, 0, 0},
		}},
		{"gone before the GET was sent: the API never hears of it", true, []event{
			{"upgrade", apiConnecting, 1, 0},
			{"hang up", apiDone, 0, 0},
		}},
		{"gone while the GET was with the API, then accepted: a DELETE", false, []event{
			{"upgrade", apiConnecting, 1, 0},
			{"hang up", apiConnecting, 1, 0},
			{"accept", apiDeleting, 1, 1},
			{"answer DELETE", apiDone, 0, 0},
		}},
		{"replaced while idle: no DELETE", false, []event{
			{"upgrade", apiConnecting, 1, 0},
			{"accept", apiIdle, 0, 1},
			{"replaced", apiIdle, 0, 1},
			{"hang up", apiDone, 0, 0},
		}},
		{"replaced while posting: the queue goes, no DELETE", false, []event{
			{"upgrade", apiConnecting, 1, 0},
			{"accept", apiIdle, 0, 1},
			{"message", apiPosting, 1, 1},
			{"message", apiPosting, 1, 1},
			{"replaced", apiPosting, 1, 1},
			{"hang up", apiPosting, 1, 0},
			{"answer POST", apiPosting, 1, 0},
			{"answer POST", apiDone, 0, 0},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ct := newConnTest(t)
			ct.api.cancelOK = tc.cancelOK
			ct.run(tc.events)
		})
	}
}

// TestAPIMovesAreTheOnlyOnes: a move outside apiMoves is a bug, stopped at
// once.
func TestAPIMovesAreTheOnlyOnes(t *testing.T) {
	ct := newConnTest(t)
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "from unknown to posting") {
			t.Fatalf("recovered %v, want the move named", r)
		}
	}()
	ct.c.mu.Lock()
	defer ct.c.mu.Unlock()
	ct.c.setAPILocked(apiPosting)
}
