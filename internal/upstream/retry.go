package upstream

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// Backoff is the wait before each retry: First, doubling up to Max, with
// jitter so that clients cut off together do not come back together. The
// zero value picks the defaults noted.
type Backoff struct {
	First time.Duration // default 100ms
	Max   time.Duration // default 5s
}

func (b Backoff) withDefaults() Backoff {
	if b.First <= 0 {
		b.First = 100 * time.Millisecond
	}
	if b.Max <= 0 {
		b.Max = 5 * time.Second
	}
	if b.Max < b.First {
		b.Max = b.First
	}
	return b
}

// Delay returns the wait before retry number attempt (1 for the first
// retry): between half and all of min(First*2^(attempt-1), Max).
func (b Backoff) Delay(attempt int) time.Duration {
	b = b.withDefaults()
	d := b.First
	for i := 1; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	half := d / 2
	return half + rand.N(d-half+1)
}

// ErrGaveUp wraps the last failure of a request that kept failing for
// longer than the Retrier's GiveUpAfter.
var ErrGaveUp = errors.New("gave up")

// RetryOptions configures a [Retrier]. The zero value picks the defaults.
type RetryOptions struct {
	Backoff Backoff
	// GiveUpAfter bounds how long a request keeps being retried from its
	// first attempt. Default 5m.
	GiveUpAfter time.Duration
	// OnRetry, if set, is called before each retry (for metrics).
	OnRetry func()
}

// Retrier is a [Client] that sends failed requests again: no answer, a
// timeout or a 5xx is retried after a backoff until the API answers 2xx or
// 4xx, or GiveUpAfter passes. A 2xx is never sent again. Each caller still
// has one request in flight at a time, so a connection's later messages wait
// behind the one being retried.
type Retrier struct {
	next Client
	opts RetryOptions

	mu      sync.Mutex
	waiting map[*retry]struct{}
	closed  bool
}

type retry struct {
	r       *Request
	done    func(*Response, error)
	first   time.Time
	attempt int
	timer   *time.Timer
}

var _ Client = (*Retrier)(nil)

// NewRetrier wraps next.
func NewRetrier(next Client, opts RetryOptions) *Retrier {
	opts.Backoff = opts.Backoff.withDefaults()
	if opts.GiveUpAfter <= 0 {
		opts.GiveUpAfter = 5 * time.Minute
	}
	return &Retrier{next: next, opts: opts, waiting: map[*retry]struct{}{}}
}

// Do implements [Client].
func (rt *Retrier) Do(r *Request, done func(*Response, error)) {
	rt.send(&retry{r: r, done: done, first: time.Now()})
}

func (rt *Retrier) send(x *retry) {
	rt.next.Do(x.r, func(resp *Response, err error) { rt.answered(x, resp, err) })
}

func (rt *Retrier) answered(x *retry, resp *Response, err error) {
	if Classify(resp, err) != Failed || errors.Is(err, ErrClosed) {
		x.done(resp, err)
		return
	}
	x.attempt++
	wait := rt.opts.Backoff.Delay(x.attempt)
	if time.Since(x.first)+wait > rt.opts.GiveUpAfter {
		if err == nil {
			err = fmt.Errorf("api answered %d", resp.Status)
		}
		x.done(resp, fmt.Errorf("%w after %d attempts: %w", ErrGaveUp, x.attempt, err))
		return
	}
	rt.mu.Lock()
	if rt.closed {
		rt.mu.Unlock()
		x.done(nil, ErrClosed)
		return
	}
	rt.waiting[x] = struct{}{}
	x.timer = time.AfterFunc(wait, func() {
		rt.mu.Lock()
		_, ok := rt.waiting[x]
		delete(rt.waiting, x)
		rt.mu.Unlock()
		if ok {
			if rt.opts.OnRetry != nil {
				rt.opts.OnRetry()
			}
			rt.send(x)
		}
	})
	rt.mu.Unlock()
}

// Close fails every request waiting for a retry with [ErrClosed] and closes
// the wrapped client.
func (rt *Retrier) Close() {
	rt.mu.Lock()
	rt.closed = true
	waiting := rt.waiting
	rt.waiting = map[*retry]struct{}{}
	rt.mu.Unlock()
	for x := range waiting {
		x.timer.Stop()
		x.done(nil, ErrClosed)
	}
	rt.next.Close()
}
