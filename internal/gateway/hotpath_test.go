package gateway

import (
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/ws2api/ws2api/internal/loop"
	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/testkit/race"
	"github.com/ws2api/ws2api/internal/upstream"
	"github.com/ws2api/ws2api/internal/ws"
)

// heldAPI is an API client that keeps the request in flight until the test
// answers it: the message path runs on the test's goroutine, end to end.
type heldAPI struct {
	r    *upstream.Request
	done func(*upstream.Response, error)
}

func (h *heldAPI) Do(r *upstream.Request, done func(*upstream.Response, error)) {
	h.r, h.done = r, done
}
func (h *heldAPI) Cancel(*upstream.Request) bool { return false }
func (h *heldAPI) Close()                        {}

// openConn returns a gateway connection in the open state whose socket's
// other end is peer.
func openConn(tb testing.TB, api upstream.Client) (c *conn, peer int) {
	tb.Helper()
	lp, err := loop.New("hotpath", 1, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(lp.Stop)
	s, err := New(Options{API: api, Loop: lp, Metrics: metrics.New()})
	if err != nil {
		tb.Fatal(err)
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[1]), "gateway side")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		tb.Fatal(err)
	}
	nc, err := loop.Wrap(fc)
	if err != nil {
		tb.Fatal(err)
	}
	c = &conn{s: s, sock: nc, connID: "test-1", remoteAddr: "peer", state: stOpen, upgraded: true, api: apiIdle, id: "CP1", path: "CP1"}
	c.apiHeader = []upstream.Header{{Name: HeaderConnectionID, Value: c.connID}}
	if _, err := lp.Add(nc, c); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { nc.Close(); syscall.Close(fds[0]) })
	return c, fds[0]
}

var maskKey = [4]byte{9, 8, 7, 6}

// skipUnderRace skips an allocation guard under the race detector, where
// sync.Pool drops items on purpose; scripts/test runs the guards again
// without it.
func skipUnderRace(t *testing.T) {
	if race.Enabled {
		t.Skip("allocation counts are meaningless under -race; scripts/test runs this without it")
	}
}

// Frame in, POST out, answer in, reply frame out: not one allocation.
func TestMessagePathAllocatesNothing(t *testing.T) {
	skipUnderRace(t)
	api := &heldAPI{}
	c, peer := openConn(t, api)
	payload := []byte(`[2,"19223201","Heartbeat",{}]`)
	wire := ws.AppendFrame(nil, ws.OpText, payload, &maskKey)
	frame := make([]byte, len(wire))
	resp := &upstream.Response{Status: 200, Header: []upstream.Header{{Name: "Content-Type", Value: "text/plain"}},
		Body: []byte(`[3,"19223201",{"currentTime":"2026-11-22T06:00:00Z"}]`)}
	readBuf := make([]byte, 4096)

	round := func() {
		copy(frame, wire) // unmasked in place by the parser
		c.OnData(nil, frame)
		if api.r == nil || string(api.r.Body) != string(payload) {
			t.Fatalf("request %+v", api.r)
		}
		api.r = nil
		api.done(resp, nil)
		n, err := syscall.Read(peer, readBuf)
		if err != nil || n != len(resp.Body)+2 {
			t.Fatalf("reply frame: %d bytes, %v", n, err)
		}
	}
	round()
	if allocs := testing.AllocsPerRun(1000, round); allocs > 0 {
		t.Fatalf("%.1f allocations per message", allocs)
	}
}

func BenchmarkMessagePath(b *testing.B) {
	api := &heldAPI{}
	c, peer := openConn(b, api)
	payload := []byte(`[2,"19223201","Heartbeat",{}]`)
	wire := ws.AppendFrame(nil, ws.OpText, payload, &maskKey)
	frame := make([]byte, len(wire))
	resp := &upstream.Response{Status: 200, Body: []byte(`[3,"19223201",{}]`)}
	readBuf := make([]byte, 4096)
	b.ReportAllocs()
	for b.Loop() {
		copy(frame, wire)
		c.OnData(nil, frame)
		api.done(resp, nil)
		if _, err := syscall.Read(peer, readBuf); err != nil {
			b.Fatal(err)
		}
	}
}

// Push: registry lookup, frame encoding and the write.
func BenchmarkPush(b *testing.B) {
	c, peer := openConn(b, &heldAPI{})
	c.s.reg.swap(c)
	msg := []byte(`[2,"42","Reset",{"type":"Soft"}]`)
	readBuf := make([]byte, 4096)
	b.ReportAllocs()
	for b.Loop() {
		if err := c.s.Push("CP1", false, msg); err != nil {
			b.Fatal(err)
		}
		if _, err := syscall.Read(peer, readBuf); err != nil {
			b.Fatal(err)
		}
	}
}

func TestPushAllocatesNothing(t *testing.T) {
	skipUnderRace(t)
	c, peer := openConn(t, &heldAPI{})
	c.s.reg.swap(c)
	msg := []byte(`[2,"42","Reset",{"type":"Soft"}]`)
	readBuf := make([]byte, 4096)
	push := func() {
		if err := c.s.Push("CP1", false, msg); err != nil {
			t.Fatal(err)
		}
		if _, err := syscall.Read(peer, readBuf); err != nil {
			t.Fatal(err)
		}
	}
	push()
	if allocs := testing.AllocsPerRun(1000, push); allocs > 0 {
		t.Fatalf("%.1f allocations per push", allocs)
	}
}
