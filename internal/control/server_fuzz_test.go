package control

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/hub"
	"github.com/ws2api/ws2api/internal/metrics"
)

const fuzzToken = "fuzz-T0ken"

// Whatever arrives on the control listener, in whatever pieces: the
// server answers with well-formed HTTP/1.1 responses only, never more
// than one per request, nothing reaches the hub from a request that
// lacks the token, and every id that reaches it is canonical: decoded
// once and valid (gateway.CheckID).
func FuzzControlRequest(f *testing.F) {
	auth := "Authorization: Bearer " + fuzzToken + "\r\n"
	for _, s := range []string{
		"POST /CP1 HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: 5\r\n\r\nhello",
		"POST /CP1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
		"GET /CP1 HTTP/1.1\r\nHost: x\r\n" + auth + "\r\nDELETE /CP1?code=4000&reason=bye HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\n" + auth + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"POST /?group=g HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Type: application/octet-stream\r\nContent-Length: 2\r\n\r\n\x00\x01",
		"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /metrics HTTP/1.1\r\nHost: x\r\n" + auth + "Connection: close\r\n\r\n",
		"PUT /CP1/groups/site-7 HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n",
		"PUT /CP1/meta/User HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: 3\r\n\r\nann",
		"POST /CP%31 HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: 5\r\n\r\nhello",
		"PUT /Z%C3%A4hler%207/groups/g HTTP/1.1\r\nHost: x\r\n" + auth + "\r\nGET /..%2Fadmin HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n",
		"POST /?id=CP%2531&id=%6Detrics HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: 1\r\n\r\nx",
		"POST /a,b HTTP/1.0\r\n" + auth + "Content-Length: 1\r\n\r\nx",
		"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
		"GET /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
	} {
		f.Add([]byte(s), uint16(7))
	}
	f.Fuzz(func(t *testing.T, in []byte, cut uint16) {
		hub := &stubHub{}
		h := New(Options{Hub: hub, Metrics: metrics.New(), MaxBodyBytes: 1 << 10, Token: fuzzToken})
		srv := &Server{h: h, conns: map[*ctlConn]struct{}{}}
		out := &sink{}
		c := &ctlConn{srv: srv, nc: out}
		i := min(int(cut), len(in))
		c.OnData(nil, bytes.Clone(in[:i]))
		c.OnData(nil, bytes.Clone(in[i:]))
		srv.wg.Wait()

		if !bytes.Contains(in, []byte(fuzzToken)) && hub.acted() {
			t.Fatalf("the hub was acted on without the token: %v", hub.calls)
		}
		for _, id := range hub.ids {
			if err := gateway.CheckID(id); err != nil {
				t.Fatalf("the hub was given the id %q: %v", id, err)
			}
		}
		requests := bytes.Count(in, []byte("HTTP/1."))
		r := bufio.NewReader(bytes.NewReader(out.bytes()))
		n := 0
		for {
			if _, err := r.Peek(1); err == io.EOF {
				break
			}
			resp, err := http.ReadResponse(r, nil)
			if err != nil {
				t.Fatalf("answer %d is not HTTP: %v\n%q", n, err, out.bytes())
			}
			if resp.StatusCode < 200 || resp.StatusCode > 599 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if _, err := io.Copy(io.Discard, resp.Body); err != nil {
				t.Fatalf("answer %d body: %v", n, err)
			}
			n++
		}
		if n > requests+1 {
			t.Fatalf("%d answers to at most %d requests", n, requests)
		}
	})
}

// sink collects what the server writes.
type sink struct {
	mu     sync.Mutex
	b      bytes.Buffer
	closed bool
}

func (s *sink) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(b)
}

func (s *sink) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return nil
}

func (s *sink) bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// stubHub records what the control API asks of it; one client, "CP1", is
// connected.
type stubHub struct {
	mu    sync.Mutex
	calls []string
	ids   []string // every id it was given
}

// got records the ids a call names.
func (s *stubHub) got(ids ...string) {
	s.mu.Lock()
	s.ids = append(s.ids, ids...)
	s.mu.Unlock()
}

func (s *stubHub) note(call string) {
	s.mu.Lock()
	s.calls = append(s.calls, call)
	s.mu.Unlock()
}

// acted reports whether anything but the read-only health check ran.
func (s *stubHub) acted() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.calls {
		if c != "Draining" {
			return true
		}
	}
	return false
}

func (s *stubHub) known(id string) error {
	s.got(id)
	if id == "CP1" {
		return nil
	}
	return hub.ErrNotConnected
}

func (s *stubHub) Push(id string, _ bool, _ []byte) error { s.note("Push " + id); return s.known(id) }
func (s *stubHub) PushMany(ids []string, _ bool, _ []byte) []string {
	s.note("PushMany " + strings.Join(ids, ","))
	s.got(ids...)
	return nil
}
func (s *stubHub) Info(id string) (hub.Info, error) {
	s.note("Info " + id)
	return hub.Info{ID: id}, s.known(id)
}
func (s *stubHub) Kick(id string, _ int, _ string) error { s.note("Kick " + id); return s.known(id) }
func (s *stubHub) Broadcast(bool, []byte) int            { s.note("Broadcast"); return 1 }
func (s *stubHub) BroadcastGroup(g string, _ bool, _ []byte) (int, error) {
	s.note("BroadcastGroup " + g)
	return 0, gateway.ValidGroup(g)
}
func (s *stubHub) Join(id, g string) error { s.note("Join " + id + " " + g); return s.known(id) }
func (s *stubHub) Leave(id, g string) (bool, error) {
	s.note("Leave " + id + " " + g)
	return false, s.known(id)
}
func (s *stubHub) Groups() map[string]int { s.note("Groups"); return map[string]int{} }
func (s *stubHub) GroupMembers(g, _ string, _ int) ([]string, string, error) {
	s.note("GroupMembers " + g)
	return nil, "", nil
}
func (s *stubHub) SetMeta(id, name, _ string, _ bool) error {
	s.note("SetMeta " + id + " " + name)
	return s.known(id)
}
func (s *stubHub) Call(id string, _ bool, _ []byte, _ time.Duration) (hub.Answer, error) {
	s.note("Call " + id)
	return hub.Answer{Data: []byte(`[3,"u",{}]`)}, s.known(id)
}
func (s *stubHub) Count() int     { s.note("Count"); return 1 }
func (s *stubHub) Draining() bool { s.note("Draining"); return false }

func (s *stubHub) HandingOver() bool { return false }
