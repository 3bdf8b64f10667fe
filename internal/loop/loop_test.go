package loop

import "testing"

// A loop stopped as soon as it is made stops: nbio loses a Stop that comes
// before its poller goroutines run, and such a poller spins for ever (New
// waits for them).
func TestStopRightAfterNew(t *testing.T) {
	for range 300 {
		l, err := New("t", 2, 0)
		if err != nil {
			t.Fatal(err)
		}
		l.Stop()
	}
}

// Every poller gets a trigger of its own, whatever the number of pollers:
// New can only wait on pollers that have one. (Descriptors are handed out
// lowest first, which once left one poller of two without a trigger in
// about one loop of 130, and the Stop of such a loop hung.)
func TestEveryPollerHasItsTrigger(t *testing.T) {
	for _, pollers := range []int{1, 2, 3, 4, 6, 8} {
		for range 100 {
			l, err := New("t", pollers, 0)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[*trigger]bool{}
			for p, tr := range l.later {
				if tr == nil || seen[tr] {
					l.Stop()
					t.Fatalf("%d pollers: poller %d has no trigger of its own", pollers, p)
				}
				seen[tr] = true
			}
			l.Stop()
		}
	}
}
