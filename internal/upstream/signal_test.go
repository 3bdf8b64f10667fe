package upstream

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// signal is an event a test's API raises (a request is with it) and the
// test waits for, instead of sleeping for a time it guesses is enough.
type signal struct {
	once sync.Once
	ch   chan struct{}
}

func newSignal() *signal { return &signal{ch: make(chan struct{})} }

// raise marks the event; later raises do nothing.
func (s *signal) raise() { s.once.Do(func() { close(s.ch) }) }

// wait waits for the event, or fails the test after 10s.
func (s *signal) wait(t *testing.T, what string) {
	t.Helper()
	select {
	case <-s.ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// callback returns a done function for Do that sends a copy of the result
// on results, and next, which takes the next result, or fails the test's
// request after 20s, as do does.
func callback(results chan result) (done func(*Response, error), next func() result) {
	done = func(resp *Response, err error) {
		if err != nil {
			results <- result{err: err}
			return
		}
		results <- result{status: resp.Status, body: string(resp.Body), header: append([]Header(nil), resp.Header...), truncated: resp.Truncated}
	}
	next = func() result {
		select {
		case r := <-results:
			return r
		case <-time.After(20 * time.Second):
			return result{err: errors.New("test: no callback within 20s")}
		}
	}
	return done, next
}
