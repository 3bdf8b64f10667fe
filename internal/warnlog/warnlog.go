// Package warnlog keeps a warning that many clients or retries repeat at
// once to one log line per interval, the next line counting the ones held
// back. The gateway and the cluster bus log their repeatable warnings
// through it.
package warnlog

import (
	"log/slog"
	"sync"
	"time"
)

// Limiter passes each distinct message at most once per Every (default one
// second). Its zero value is ready to use.
type Limiter struct {
	Every time.Duration

	mu         sync.Mutex
	last       map[string]time.Time
	suppressed map[string]int
}

// Warn logs msg at warning level on l, unless the same msg was logged less
// than Every ago; then it only counts it, and the next line that passes
// carries "suppressed" with that count.
func (r *Limiter) Warn(l *slog.Logger, msg string, args ...any) {
	every := r.Every
	if every <= 0 {
		every = time.Second
	}
	r.mu.Lock()
	if r.last == nil {
		r.last, r.suppressed = map[string]time.Time{}, map[string]int{}
	}
	now := time.Now()
	if now.Sub(r.last[msg]) < every {
		r.suppressed[msg]++
		r.mu.Unlock()
		return
	}
	n := r.suppressed[msg]
	r.last[msg], r.suppressed[msg] = now, 0
	r.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	l.Warn(msg, args...)
}
