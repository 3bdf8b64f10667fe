package upstream

import (
	"math/rand/v2"
	"time"
)

// Backoff is the wait before each retry: First, doubling up to Max, with
// jitter so that clients cut off together do not come back together. The
// zero value picks the defaults noted.
type Backoff struct {
	First time.Duration // default 100ms
	Max   time.Duration // default 5s
}

// RetryDefaults are the values RetryPolicy's zero fields take, and the
// flags' defaults.
var RetryDefaults = RetryPolicy{
	Backoff:     Backoff{First: 100 * time.Millisecond, Max: 5 * time.Second},
	GiveUpAfter: 5 * time.Minute,
}

func (b Backoff) withDefaults() Backoff {
	if b.First <= 0 {
		b.First = RetryDefaults.Backoff.First
	}
	if b.Max <= 0 {
		b.Max = RetryDefaults.Backoff.Max
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

// RetryPolicy says when a request that [Failed] is sent again: after a
// backoff, until GiveUpAfter has passed since its first attempt. A request
// the API answered (2xx or 4xx) is never sent again. The zero value picks
// the defaults noted.
//
// The caller keeps the request and its place in line: the gateway retries
// a connection's message while that connection's later messages wait
// behind it, so nothing is lost or reordered while the API is away.
type RetryPolicy struct {
	Backoff     Backoff
	GiveUpAfter time.Duration // default 5m
}

// WithDefaults fills in the defaults.
func (p RetryPolicy) WithDefaults() RetryPolicy {
	p.Backoff = p.Backoff.withDefaults()
	if p.GiveUpAfter <= 0 {
		p.GiveUpAfter = RetryDefaults.GiveUpAfter
	}
	return p
}

// Next returns the wait before retry number attempt of a request first
// sent at first, or false if the request should be given up: its next
// attempt would come after GiveUpAfter.
func (p RetryPolicy) Next(attempt int, first, now time.Time) (time.Duration, bool) {
	wait := p.Backoff.Delay(attempt)
	if now.Add(wait).Sub(first) > p.GiveUpAfter {
		return 0, false
	}
	return wait, true
}
