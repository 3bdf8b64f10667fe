package upstream

import (
	"errors"
	"log/slog"
	"sync"
	"time"
)

// line is the requests of one backend waiting for a connection, oldest
// first. Its owner (HostClient) guards it with its own mutex.
type line struct {
	waiting []*call            // oldest first; canceled ones are skipped
	queued  map[*Request]*call // the waiting calls that are not canceled, for cancel
}

func newLine() line { return line{queued: map[*Request]*call{}} }

// push puts c at the end of the line.
func (l *line) push(c *call) {
	l.waiting = append(l.waiting, c)
	l.queued[c.r] = c
}

// len is the number of calls waiting that are not canceled.
func (l *line) len() int { return len(l.queued) }

// pop takes the oldest waiting call that is not canceled, or nil.
func (l *line) pop() *call {
	for len(l.waiting) > 0 {
		c := l.waiting[0]
		l.waiting[0] = nil
		l.waiting = l.waiting[1:]
		if c.canceled {
			callPool.Put(c)
			continue
		}
		delete(l.queued, c.r)
		return c
	}
	l.waiting = nil
	return nil
}

// takeAll empties the line and returns its calls that are not canceled.
func (l *line) takeAll() []*call {
	var out []*call
	for c := l.pop(); c != nil; c = l.pop() {
		out = append(out, c)
	}
	return out
}

// cancel takes r out of the line if it waits there: the line keeps only
// an empty call until it is skipped. It returns r's method and queuing
// time for the observer.
func (l *line) cancel(r *Request) (method string, start time.Time, ok bool) {
	c, ok := l.queued[r]
	if !ok {
		return "", time.Time{}, false
	}
	delete(l.queued, r)
	c.canceled = true
	method, start = r.Method, c.start
	c.r, c.done = nil, nil
	return method, start, true
}

// expire takes out the calls that have waited longer than limit.
func (l *line) expire(now time.Time, limit time.Duration) []*call {
	var expired []*call
	keep := l.waiting[:0]
	for _, c := range l.waiting {
		switch {
		case c.canceled:
			callPool.Put(c)
		case now.Sub(c.start) > limit:
			delete(l.queued, c.r)
			expired = append(expired, c)
		default:
			keep = append(keep, c)
		}
	}
	clear(l.waiting[len(keep):])
	l.waiting = keep
	return expired
}

// finish completes a call with its result; nothing refers to it
// afterwards. It is told to the observer and to the pool's health.
func (o *HostOptions) finish(c *call, resp *Response, err error) {
	outcome := Classify(resp, err)
	if o.Observer != nil {
		o.Observer.Finished(c.r.Method, time.Since(c.start), outcome == Delivered)
	}
	if o.outcome != nil && !errors.Is(err, ErrClosed) {
		o.outcome(outcome)
	}
	done := c.done
	*c = call{}
	callPool.Put(c)
	done(resp, err)
}

// warnings logs the first failure of each cause of one backend.
type warnings struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (w *warnings) once(log *slog.Logger, base, cause string, err error) {
	if log == nil {
		return
	}
	w.mu.Lock()
	first := !w.seen[cause]
	if w.seen == nil {
		w.seen = map[string]bool{}
	}
	w.seen[cause] = true
	w.mu.Unlock()
	if first {
		log.Warn("a request to the API failed without a usable answer (logged once per backend and cause; counted in ws2api_api_retries_total)",
			"api", base, "cause", cause, "error", err)
	}
}
