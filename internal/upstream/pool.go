package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// PoolOptions configures a [Pool]. The zero value of every field picks the
// default written beside it.
type PoolOptions struct {
	// Host is the template for every backend's client; its BaseURL is the
	// backend's.
	Host HostOptions
	// FailAfter is the number of failures in a row that take a backend
	// out. Default 3.
	FailAfter int
	// HealthPath, if set, is probed with GET <base><HealthPath>, which must
	// answer 2xx; otherwise a backend is healthy again once it accepts a
	// TCP connection.
	HealthPath string
	// HealthInterval is how often a backend that is out is probed.
	// Default 500ms.
	HealthInterval time.Duration
	// OnChange, if set, is told when a backend goes out or comes back, and
	// when one is added or removed.
	OnChange func(base string, event BackendEvent)
	// OnRecover, if set, is called when a backend comes back while none was
	// healthy: requests waiting for a retry can go now.
	OnRecover func()
}

// BackendEvent is what happened to a backend.
type BackendEvent uint8

// The events of [PoolOptions.OnChange].
const (
	BackendAdded BackendEvent = iota
	BackendDown
	BackendUp
	BackendRemoved
)

func (e BackendEvent) String() string {
	return [...]string{"added", "down", "up", "removed"}[e]
}

// Pool is a [Client] over several API backends: each request goes to a
// healthy backend, in turn. A backend whose requests fail FailAfter times in
// a row is taken out until a probe finds it healthy again. With none
// healthy, requests still go out (in turn) and fail fast, so that their
// callers' retries find the first backend that returns.
//
// The list can change at run time ([Pool.SetBackends]): a removed backend
// takes no new request and closes once its requests in flight are
// answered. A connection's messages stay one at a time and in order
// whichever backend takes each, since the gateway sends the next only when
// the last is answered.
type Pool struct {
	opts PoolOptions

	mu       sync.Mutex
	serving  atomic.Pointer[[]*backend] // the backends requests go to
	draining []*backend
	closed   bool

	next    atomic.Uint32
	allDown atomic.Bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

// backend is one API base URL and its client.
type backend struct {
	base    string
	addr    string // host:port, for the TCP probe
	client  *HostClient
	healthy atomic.Bool
	fails   atomic.Int32
}

var _ Client = (*Pool)(nil)

// NewPool starts clients for the backends; at least one is required.
func NewPool(bases []string, opts PoolOptions) (*Pool, error) {
	if opts.FailAfter <= 0 {
		opts.FailAfter = 3
	}
	if opts.HealthInterval <= 0 {
		opts.HealthInterval = 500 * time.Millisecond
	}
	pl := &Pool{opts: opts, stop: make(chan struct{})}
	empty := []*backend{}
	pl.serving.Store(&empty)
	if err := pl.SetBackends(bases); err != nil {
		pl.Close()
		return nil, err
	}
	pl.wg.Add(1)
	go pl.probe()
	return pl, nil
}

// ParseBackends splits a comma- or newline-separated list of base URLs,
// dropping blanks and # comments, and checks each.
func ParseBackends(list string) ([]string, error) {
	var out []string
	for line := range strings.SplitSeq(strings.ReplaceAll(list, "\n", ","), ",") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		u, err := ParseBaseURL(line)
		if err != nil {
			return nil, err
		}
		if s := u.String(); !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no API base URL")
	}
	return out, nil
}

// Backends returns the serving backends' base URLs and health.
func (pl *Pool) Backends() map[string]bool {
	out := map[string]bool{}
	for _, b := range *pl.serving.Load() {
		out[b.base] = b.healthy.Load()
	}
	return out
}

// SetBackends makes bases the serving list: new ones start, missing ones
// drain and close.
func (pl *Pool) SetBackends(bases []string) error {
	if len(bases) == 0 {
		return errors.New("no API base URL")
	}
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.closed {
		return ErrClosed
	}
	old := *pl.serving.Load()
	var next []*backend
	for _, base := range bases {
		u, err := ParseBaseURL(base)
		if err != nil {
			return err
		}
		base = u.String()
		if i := slices.IndexFunc(old, func(b *backend) bool { return b.base == base }); i >= 0 {
			next = append(next, old[i])
			continue
		}
		b, err := pl.newBackend(u)
		if err != nil {
			for _, nb := range next {
				if !slices.Contains(old, nb) {
					nb.client.Close()
				}
			}
			return err
		}
		next = append(next, b)
		pl.event(b.base, BackendAdded)
	}
	for _, b := range old {
		if !slices.Contains(next, b) {
			pl.draining = append(pl.draining, b)
			pl.event(b.base, BackendRemoved)
		}
	}
	pl.serving.Store(&next)
	return nil
}

func (pl *Pool) newBackend(u *url.URL) (*backend, error) {
	b := &backend{base: u.String(), addr: BackendAddr(u)}
	b.healthy.Store(true)
	opts := pl.opts.Host
	opts.BaseURL = b.base
	opts.outcome = func(o Outcome) { pl.outcome(b, o) }
	c, err := NewHostClient(opts)
	if err != nil {
		return nil, err
	}
	b.client = c
	return b, nil
}

func (pl *Pool) event(base string, e BackendEvent) {
	if pl.opts.OnChange != nil {
		pl.opts.OnChange(base, e)
	}
}

// outcome keeps a backend's health from its requests' outcomes.
func (pl *Pool) outcome(b *backend, o Outcome) {
	if o == Failed {
		if int(b.fails.Add(1)) >= pl.opts.FailAfter && b.healthy.Swap(false) {
			pl.event(b.base, BackendDown)
			if !pl.checkAllDown() {
				// What waits for one of its connections goes to a healthy
				// backend now (Do sends an unsent request on). With none
				// healthy it stays: nowhere else would serve it sooner.
				go b.client.failWaiting(fmt.Errorf("%w: %s is out", ErrUnreachable, b.base))
			}
		}
		return
	}
	b.fails.Store(0)
	if !b.healthy.Swap(true) {
		pl.up(b)
	}
}

func (pl *Pool) up(b *backend) {
	pl.event(b.base, BackendUp)
	if pl.allDown.Swap(false) && pl.opts.OnRecover != nil {
		pl.opts.OnRecover()
	}
}

// checkAllDown notes, and reports, whether no backend is healthy.
func (pl *Pool) checkAllDown() bool {
	for _, b := range *pl.serving.Load() {
		if b.healthy.Load() {
			return false
		}
	}
	pl.allDown.Store(true)
	return true
}

// Do implements [Client]: the request goes to the next healthy backend, or
// the next one if none is. A request that never left (ErrUnreachable: no
// connection could be opened, or its backend went out while it waited)
// goes on to the other backends at once: a backend that just died is not
// yet known to be out, and nothing of it reached the API.
func (pl *Pool) Do(r *Request, done func(*Response, error)) {
	list := *pl.serving.Load()
	if len(list) == 0 {
		go done(nil, ErrClosed)
		return
	}
	b := pl.pick(list, nil)
	if len(list) == 1 {
		b.client.Do(r, done)
		return
	}
	tried := []*backend{b}
	var try func(*Response, error)
	try = func(resp *Response, err error) {
		if errors.Is(err, ErrUnreachable) && len(tried) < len(list) {
			next := pl.pick(list, tried)
			tried = append(tried, next)
			next.client.Do(r, try)
			return
		}
		done(resp, err)
	}
	b.client.Do(r, try)
}

// Cancel implements [Client]: r leaves whichever backend's line holds it.
func (pl *Pool) Cancel(r *Request) bool {
	for _, b := range *pl.serving.Load() {
		if b.client.Cancel(r) {
			return true
		}
	}
	pl.mu.Lock()
	draining := slices.Clone(pl.draining)
	pl.mu.Unlock()
	for _, b := range draining {
		if b.client.Cancel(r) {
			return true
		}
	}
	return false
}

// pick returns the next healthy backend not in skip, else the next one not
// in skip.
func (pl *Pool) pick(list, skip []*backend) *backend {
	start := int(pl.next.Add(1))
	var fallback *backend
	for i := range list {
		b := list[(start+i)%len(list)]
		if slices.Contains(skip, b) {
			continue
		}
		if b.healthy.Load() {
			return b
		}
		if fallback == nil {
			fallback = b
		}
	}
	if fallback == nil {
		return list[start%len(list)]
	}
	return fallback
}

// probe checks the backends that are out, and closes drained ones.
func (pl *Pool) probe() {
	defer pl.wg.Done()
	t := time.NewTicker(pl.opts.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-pl.stop:
			return
		case <-t.C:
		}
		for _, b := range *pl.serving.Load() {
			if !b.healthy.Load() && pl.healthy(b) {
				b.fails.Store(0)
				if !b.healthy.Swap(true) {
					pl.up(b)
				}
			}
		}
		pl.mu.Lock()
		keep := pl.draining[:0]
		for _, b := range pl.draining {
			if b.client.Idle() {
				go b.client.Close()
			} else {
				keep = append(keep, b)
			}
		}
		pl.draining = keep
		pl.mu.Unlock()
	}
}

// healthy probes one backend.
func (pl *Pool) healthy(b *backend) bool {
	ctx, cancel := context.WithTimeout(context.Background(), max(pl.opts.HealthInterval, time.Second))
	defer cancel()
	if pl.opts.HealthPath == "" {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", b.addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.base+strings.TrimPrefix(pl.opts.HealthPath, "/"), nil)
	if err != nil {
		return false
	}
	resp, err := healthClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 300
}

var healthClient = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

// Close closes every backend's client.
func (pl *Pool) Close() {
	pl.mu.Lock()
	if pl.closed {
		pl.mu.Unlock()
		return
	}
	pl.closed = true
	all := append(append([]*backend(nil), *pl.serving.Load()...), pl.draining...)
	empty := []*backend{}
	pl.serving.Store(&empty)
	pl.draining = nil
	pl.mu.Unlock()
	close(pl.stop)
	pl.wg.Wait()
	for _, b := range all {
		b.client.Close()
	}
}

// String describes the pool for logs.
func (pl *Pool) String() string {
	var parts []string
	for base, up := range pl.Backends() {
		parts = append(parts, fmt.Sprintf("%s (healthy %v)", base, up))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}
