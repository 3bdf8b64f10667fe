package gateway_test

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/ws2api/ws2api/internal/testkit"
)

// A client's complete messages before its hangup all reach the API, then
// the DELETE: a 600 KB message followed at once by a close of the socket
// used to be lost (the loop read three 64 KiB buffers, saw the hangup and
// closed with the rest unread), and the API got only DELETE 1006.
func TestMessagesBeforeAHangupReachTheAPI(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	h := newHarness(t, api, harnessOpts{})
	big := bytes.Repeat([]byte("0123456789abcdef"), 600_000/16)

	// One large message, then close(2): nothing is read back.
	r := testkit.DialRaw(t, h.addr, "closer")
	r.WriteFrame(t, 0x82, big)
	r.Close()
	api.WaitDelete("closer", 10*time.Second)
	if posts := postsOf(api, "closer"); len(posts) != 1 || posts[0] != string(big) {
		t.Fatalf("closer: %d POSTs (sizes %v), want the one message of %d bytes", len(posts), sizes(posts), len(big))
	}

	// Several messages, then a FIN (shutdown of writing): every one, in
	// order, before the DELETE.
	r = testkit.DialRaw(t, h.addr, "halfcloser")
	var want []string
	for i := range 4 {
		msg := fmt.Appendf(nil, "%d:%s", i, big[:150_000])
		want = append(want, string(msg))
		r.WriteFrame(t, 0x82, msg)
	}
	r.Conn.(*net.TCPConn).CloseWrite()
	api.WaitDelete("halfcloser", 10*time.Second)
	posts := postsOf(api, "halfcloser")
	if len(posts) != len(want) {
		t.Fatalf("halfcloser: %d POSTs (sizes %v), want %d", len(posts), sizes(posts), len(want))
	}
	for i := range want {
		if posts[i] != want[i] {
			t.Fatalf("halfcloser: POST %d differs (%d bytes, want %d)", i, len(posts[i]), len(want[i]))
		}
	}
}

func postsOf(api *testkit.API, id string) []string {
	var out []string
	for _, c := range api.CallsFor(id) {
		if c.Method == "POST" {
			out = append(out, c.Body)
		}
	}
	return out
}

func sizes(bodies []string) []int {
	var out []int
	for _, b := range bodies {
		out = append(out, len(b))
	}
	return out
}
