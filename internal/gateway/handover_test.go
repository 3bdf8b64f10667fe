package gateway_test

import (
	"context"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/testkit"
	"github.com/ws2api/ws2api/internal/ws"
)

// A connection passed from one gateway to another in the same process, as
// a binary upgrade passes it between two (cmd/ws2api's tests do that
// through the binary): the new one carries on a fragmented message and a
// frame half-sent before the hand-over, answers through the same socket,
// serves a push and a kick sent to the old one, and the API sees one
// connect GET, no DELETE until the kick, and a key of its own for each
// message.
func TestHandOverCarriesAConnectionOnWhereItWas(t *testing.T) {
	api := testkit.NewAPI(t)
	from := newHarness(t, api, harnessOpts{})
	to := newHarness(t, api, harnessOpts{})
	to.srv.AwaitHandover()

	r := testkit.DialRaw(t, from.addr, "mover")
	r.WriteFrame(t, 0x81, []byte("one"))
	if got := readText(t, r); got != "echo:one" {
		t.Fatalf("before the hand-over: %q", got)
	}
	// A fragmented message begun, and half of its last frame.
	r.WriteFrame(t, 0x01, []byte("frag-"))
	last := maskedFrame(0x80, "ment")
	if _, err := r.Write(last[:4]); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	moved, closed, err := from.srv.HandOver(ctx, to.srv,
		func(ids []string) error { to.srv.Expect(ids); return nil },
		func(ms []*gateway.Moving, fds []int) error {
			for i, m := range ms {
				var f *os.File
				if fds[i] >= 0 {
					dup, err := unix.Dup(fds[i]) // the receiving process's own, as SCM_RIGHTS gives it
					if err != nil {
						return err
					}
					f = os.NewFile(uintptr(dup), "client socket")
				}
				if err := to.srv.Adopt(m, f); err != nil {
					return err
				}
			}
			return nil
		})
	if err != nil || moved != 1 || closed != 0 {
		t.Fatalf("HandOver: moved %d, closed %d, %v", moved, closed, err)
	}
	to.srv.Arrived(moved, closed)
	if from.srv.Count() != 0 || to.srv.Count() != 1 {
		t.Fatalf("clients: %d in the old gateway, %d in the new", from.srv.Count(), to.srv.Count())
	}

	if _, err := r.Write(last[4:]); err != nil {
		t.Fatal(err)
	}
	if got := readText(t, r); got != "echo:frag-ment" {
		t.Fatalf("the message finished after the hand-over: %q", got)
	}
	// A push to the old gateway goes to the new one, which holds the client.
	if status, body := from.ctl("POST", "/mover", "text/plain", "pushed"); status != 200 {
		t.Fatalf("push through the old gateway: %d %s", status, body)
	}
	if got := readText(t, r); got != "pushed" {
		t.Fatalf("push: %q", got)
	}
	r.WriteFrame(t, 0x81, []byte("two"))
	if got := readText(t, r); got != "echo:two" {
		t.Fatalf("after the hand-over: %q", got)
	}

	calls := api.CallsFor("mover")
	var methods []string
	keys := map[string]bool{}
	connIDs := map[string]bool{}
	for _, c := range calls {
		methods = append(methods, c.Method+" "+c.Body)
		connIDs[c.ConnID()] = true
		if c.Method == "POST" {
			keys[c.Header.Get("Idempotency-Key")] = true
		}
	}
	if len(calls) != 4 || calls[0].Method != "GET" || calls[1].Body != "one" || calls[2].Body != "frag-ment" || calls[3].Body != "two" {
		t.Fatalf("the API saw %q, want the GET and three POSTs", methods)
	}
	if len(keys) != 3 || len(connIDs) != 1 {
		t.Fatalf("keys %v, connection ids %v: want three keys, one connection", keys, connIDs)
	}
	// A kick through the old gateway closes it from the new one.
	if status, body := from.ctl("DELETE", "/mover?code=4001&reason=moved+on", "", ""); status != 200 {
		t.Fatalf("kick through the old gateway: %d %s", status, body)
	}
	if code, reason := r.ReadClose(t, wait); code != 4001 || reason != "moved on" {
		t.Fatalf("closed with %d %q", code, reason)
	}
	r.WriteFrame(t, 0x88, ws.AppendClose(nil, 4001, "")) // the handshake's end
	del := api.WaitDelete("mover", wait)
	if del.Header.Get("X-Ws2api-Close-Code") != "4001" || !connIDs[del.ConnID()] {
		t.Fatalf("DELETE %v", del)
	}
}

// maskedFrame is one whole client frame: first byte b0, payload s.
func maskedFrame(b0 byte, s string) []byte {
	key := [4]byte{9, 8, 7, 6}
	w := ws.AppendHeader(nil, ws.Opcode(b0&0x0f), b0&0x80 != 0, len(s), &key)
	w[0] = b0
	start := len(w)
	w = append(w, s...)
	ws.Mask(w[start:], key, 0)
	return w
}

// readText reads one unfragmented data frame from the gateway.
func readText(t *testing.T, r *testkit.Raw) string {
	t.Helper()
	_ = r.SetReadDeadline(time.Now().Add(wait))
	var buf []byte
	chunk := make([]byte, 4096)
	for {
		f, n, err := ws.ParseFrame(buf, ws.Client, 1<<20)
		if err != nil {
			t.Fatalf("bad frame from the gateway: %v", err)
		}
		if n > 0 {
			if rest := buf[n:]; len(rest) > 0 {
				t.Fatalf("more than one frame at once: %d bytes after", len(rest))
			}
			return string(f.Payload)
		}
		m, err := r.R.Read(chunk)
		if err != nil {
			t.Fatalf("reading: %v", err)
		}
		buf = append(buf, chunk[:m]...)
	}
}
