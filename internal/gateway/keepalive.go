package gateway

import (
	"strconv"
	"strings"
	"time"

	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/upstream"
	"github.com/ws2api/ws2api/internal/ws"
)

// The keeper finds dead and idle clients. One goroutine ticks a few times
// per PingTimeout (at most once a second) and looks at every connected
// client's clocks, which are atomics, so that a sweep over a million
// clients takes no lock but its registry shard's:
//
//	silent for PingInterval          -> ping
//	no byte within PingTimeout after -> dead: socket closed, DELETE 1006 "ping timeout"
//	no message for IdleTimeout       -> close 1001 "idle timeout"
//
// A chatty client is never pinged: any byte read proves it alive. The
// clock the event loop stamps reads with is the keeper's tick (s.clock),
// not time.Now, so a read costs two atomic operations.

var (
	closeIdle         = closeInfo{code: ws.CloseGoingAway, reason: "idle timeout", cause: metrics.CauseIdle}
	closePingTimeout  = closeInfo{code: ws.CloseAbnormal, reason: "ping timeout", cause: metrics.CausePingTimeout}
	closeControlFlood = closeInfo{code: ws.ClosePolicyViolation, reason: "too many control frames", cause: metrics.CauseControlFlood}
)

// keeperTick is how often the keeper sweeps: a quarter of the shortest
// time it enforces, between 10ms and 1s.
func (o *Options) keeperTick() time.Duration {
	shortest := time.Second * 4
	if o.IdleTimeout > 0 {
		shortest = min(shortest, o.IdleTimeout)
	}
	if o.PingInterval > 0 {
		shortest = min(shortest, o.PingInterval, o.PingTimeout)
	}
	return max(shortest/4, 10*time.Millisecond)
}

// keep runs the keeper until stop closes.
func (s *Server) keep(stop <-chan struct{}) {
	t := time.NewTicker(s.opts.keeperTick())
	defer t.Stop()
	var due []*conn
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			s.clock.Store(now.UnixNano())
			due = s.sweep(now.UnixNano(), due[:0])
		}
	}
}

// sweep acts on every client due a ping or a close; due is scratch space,
// returned for the next sweep.
func (s *Server) sweep(now int64, due []*conn) []*conn {
	for i := range s.reg.shards {
		sh := &s.reg.shards[i]
		sh.mu.RLock()
		for _, c := range sh.m {
			if c.keeperDue(now) {
				due = append(due, c)
			}
		}
		sh.mu.RUnlock()
		for j, c := range due {
			c.keep(now)
			due[j] = nil
		}
		due = due[:0]
	}
	return due
}

// keeperDue says, from the atomics alone, whether the keeper has something
// to do for c.
func (c *conn) keeperDue(now int64) bool {
	o := &c.s.opts
	if o.IdleTimeout > 0 && now-c.lastActive.Load() >= int64(o.IdleTimeout) {
		return true
	}
	every := c.pingInterval()
	if every <= 0 {
		return false
	}
	if sent := c.pingSent.Load(); sent != 0 {
		return now-sent >= int64(o.PingTimeout)
	}
	return now-c.lastRead.Load() >= int64(every)
}

// pingInterval is how long c may be silent before it is pinged: the API's
// choice for it, else -ping-interval; 0 or less: never.
func (c *conn) pingInterval() time.Duration {
	if c.pingEvery != 0 {
		return c.pingEvery
	}
	return c.s.opts.PingInterval
}

// HeaderPingInterval, in the API's connect answer, sets that client's ping
// interval: seconds ("45") or a Go duration ("1m30s"), 1s to 24h, or 0 for
// never (a charger that does not answer pings: OCPP's
// WebSocketPingInterval is the same setting on the charger's side).
const HeaderPingInterval = "X-Ws2api-Ping-Interval"

// pingOverride reads HeaderPingInterval from a connect answer: 0 if it is
// absent, negative for never.
func pingOverride(resp *upstream.Response) (time.Duration, *reject) {
	v := strings.TrimSpace(resp.Get(HeaderPingInterval))
	if v == "" {
		return 0, nil
	}
	var d time.Duration
	n, err := strconv.Atoi(v)
	if err == nil {
		d = time.Duration(n) * time.Second
	} else {
		d, err = time.ParseDuration(v)
	}
	switch {
	case err == nil && d == 0:
		return -1, nil
	case err != nil || d < time.Second || d > 24*time.Hour:
		return 0, &reject{status: 502, text: "the API sent a bad " + HeaderPingInterval + " " + quote(v) + ": seconds or a duration from 1s to 24h, or 0 for never"}
	}
	return d, nil
}

// keep pings c or closes it, as keeperDue found.
func (c *conn) keep(now int64) {
	o := &c.s.opts
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stOpen || c.moving != notMoving { // (moving: the next process keeps it)
		return
	}
	switch sent := c.pingSent.Load(); {
	case o.IdleTimeout > 0 && now-c.lastActive.Load() >= int64(o.IdleTimeout):
		c.closeLocked(closeIdle)
	case c.pingInterval() <= 0:
	case sent != 0 && now-sent >= int64(o.PingTimeout):
		// A dead peer reads no close frame: just close the socket.
		c.setEndLocked(closePingTimeout)
		c.discard = true
		c.state = stClosing
		end(c.sock)
	case sent == 0 && now-c.lastRead.Load() >= int64(c.pingInterval()):
		c.pingSent.Store(now)
		_ = c.writeFrameLocked(ws.OpPing, nil)
	}
}

// heard notes that c's client sent something: it is alive.
func (c *conn) heard() {
	if now := c.s.clock.Load(); c.lastRead.Load() != now {
		c.lastRead.Store(now)
	}
	if c.pingSent.Load() != 0 {
		c.pingSent.Store(0)
	}
}

// rateWaitLocked returns how long a POST of c's starting at now must wait to
// keep c within MaxMessageRate, or 0 if it may go now (it is then counted).
// The rule is GCRA: a client may send a second's worth of messages at
// once (at least one, for a rate below one a second), then one per
// interval; the messages beyond wait their turn in c's queue. The clock is
// s.epoch's monotonic one: a step of the wall clock cannot hold a client
// back.
func (c *conn) rateWaitLocked(now time.Time) time.Duration {
	interval := c.s.rateInterval
	if interval == 0 {
		return 0
	}
	t := int64(now.Sub(c.s.epoch))
	tat := max(c.rateTAT, t)
	if wait := tat - t - burst(interval); wait > 0 {
		return time.Duration(wait)
	}
	c.rateTAT = tat + interval
	return 0
}

// controlFrameLocked counts a ping or pong from c against MaxMessageRate and
// reports whether to act on it (answer a ping). A data message over the
// rate waits its turn; a control frame has nothing to wait for, and each
// one answered costs a write. So pings and pongs have a budget of their
// own at the same rate, a second's worth at once, so that a client's
// keepalive never holds back its messages: past it they are dropped,
// unanswered, and counted. A client sending them at ten times the rate
// (again a second's worth at once) is flooding: it is closed with 1008
// "too many control frames", its later input discarded. c.mu is held.
func (c *conn) controlFrameLocked() bool {
	s := c.s
	interval := s.rateInterval
	if interval == 0 {
		return true
	}
	t := int64(time.Since(s.epoch))
	if !conforms(&c.floodTAT, t, max(interval/10, 1)) {
		s.warn.Warn(s.log, "client closed: it floods control frames", "id", c.id, "max_msg_rate", s.opts.MaxMessageRate)
		c.closeLocked(closeControlFlood)
		c.discard = true
		return false
	}
	if !conforms(&c.ctlTAT, t, interval) {
		s.m.ControlDropped.Inc()
		return false
	}
	return true
}

// conforms is GCRA, as rateWaitLocked's: whether an event at t fits a rate of
// one per interval with a second's worth at once; if it does, it is
// counted in *tat.
func conforms(tat *int64, t, interval int64) bool {
	at := max(*tat, t)
	if at-t > burst(interval) {
		return false
	}
	*tat = at + interval
	return true
}

// burst is GCRA's tolerance for a rate of one per interval: a second's
// worth of events at once, and never less than one (with a rate below one
// a second, a second's worth is less than one, and a tolerance below zero
// would refuse every event for ever).
func burst(interval int64) int64 { return max(int64(time.Second)-interval, 0) }
