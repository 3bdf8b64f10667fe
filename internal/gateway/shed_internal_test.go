package gateway

import (
	"log/slog"
	"testing"
	"time"

	"github.com/ws2api/ws2api/internal/metrics"
)

// TestShedTakesTheOldestBacklogsAndTheLargestOfOneFanOut: which clients a
// shed closes, from their backlogs alone. Backlogs begun in one broadcast's
// fan-out are as old as each other, and the largest go first (the reader
// written first in the broadcast that crossed the total was once shed
// before clients that read nothing); otherwise the oldest go first,
// however small, even a few milliseconds older (a reader fallen behind
// holds more than a client that stopped).
func TestShedTakesTheOldestBacklogsAndTheLargestOfOneFanOut(t *testing.T) {
	t0 := time.Now().UnixNano()
	type client struct {
		id       string
		since    time.Duration // after t0
		n        int64
		fanout   uint64 // the broadcast that began it, 0 for a push
		wantShed bool
	}
	for _, tc := range []struct {
		name    string
		clients []client
	}{
		{"one fan-out", []client{
			{"reader", 0, 100, 7, false}, // written first; the kernel took most of it
			{"stalled1", time.Millisecond, 320, 7, true},
			{"stalled2", 2 * time.Millisecond, 310, 7, true},
			{"stalled3", 3 * time.Millisecond, 300, 7, false},
		}},
		{"two broadcasts", []client{
			{"stalled", 0, 100, 1, true},
			{"reader", time.Second, 400, 2, true},
			{"other", time.Second + time.Millisecond, 300, 2, false},
			{"late", 2 * time.Second, 200, 3, false},
		}},
		{"pushes", []client{
			{"old", 0, 400, 0, true},
			{"behind", 5 * time.Millisecond, 600, 0, false}, // a reader fallen behind
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &Server{m: metrics.New(), log: slog.New(slog.DiscardHandler)}
			s.opts.MaxOutgoingTotal = 1000
			s.reg.init()
			socks := map[string]*fakeSocket{}
			var total int64
			for _, cl := range tc.clients {
				sock := &fakeSocket{}
				c := &conn{s: s, sock: sock, id: cl.id}
				c.outq.Store(cl.n)
				c.backlogSince.Store(t0 + int64(cl.since))
				c.backlogFanout.Store(cl.fanout)
				s.reg.swap(c)
				socks[cl.id] = sock
				total += cl.n
			}
			s.outgoing.Store(total)
			writer := &conn{s: s, sock: &fakeSocket{}}
			if !s.shed(writer, 100) {
				t.Fatal("the writer, with no backlog, was taken for shed")
			}
			for _, cl := range tc.clients {
				if socks[cl.id].closed != cl.wantShed {
					t.Errorf("%s (backlog %d, begun at +%v): shed %v, want %v", cl.id, cl.n, cl.since, socks[cl.id].closed, cl.wantShed)
				}
			}
		})
	}
}
