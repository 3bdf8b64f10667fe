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
