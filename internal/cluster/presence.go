package cluster

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/ws2api/ws2api/internal/hub"
)

// Presence: which node holds which id. Each id connected to a node has a
// record id:<id> = <node> that expires PresenceTTL after the node last
// refreshed it, so that a crashed node's ids disappear by themselves; a
// relay to a node that is gone finds nobody listening and deletes the
// record at once.
//
// The gateway tells the bus of connects and disconnects from its event
// loop, which must not wait for Redis: they are queued and written in
// batches by one goroutine. A connect that finds the id held by another
// node tells that node, which closes its connection as replaced: an id is
// connected once in the whole cluster, as on one node.

// presenceQueue holds the updates not yet written.
type presenceQueue struct {
	mu      sync.Mutex
	ops     []presenceOp
	writing bool // a batch is being written
	wake    chan struct{}
}

// pending reports whether updates wait to be written, or are being.
func (q *presenceQueue) pending() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.ops) > 0 || q.writing
}

type presenceOp struct {
	id        string
	conn      string // the connection's id, the record's value
	connected bool
}

// maxQueued bounds the updates held while Redis is slow or away; past it
// they are dropped and every local id is written again once it is back.
const maxQueued = 1 << 20

// Connected records that id is connected here, by connection connID
// (gateway.Presence).
func (b *Bus) Connected(id, connID string) { b.queue(presenceOp{id, connID, true}) }

// Disconnected records that connection connID of id ended
// (gateway.Presence).
func (b *Bus) Disconnected(id, connID string) { b.queue(presenceOp{id, connID, false}) }

func (b *Bus) queue(op presenceOp) {
	q := &b.presence
	q.mu.Lock()
	if len(q.ops) >= maxQueued {
		q.ops = q.ops[:0]
		q.mu.Unlock()
		b.requestResync()
		return
	}
	q.ops = append(q.ops, op)
	q.mu.Unlock()
	b.wakeWriter()
}

func (b *Bus) requestResync() {
	select {
	case b.resync <- struct{}{}:
	default:
	}
}

// Scripts that touch an id's record only while it names this node.
var (
	// forgetScript deletes the record if it still names the connection.
	forgetScript = rueidis.NewLuaScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`)
	// refreshScript renews a connection's record, or writes it if there
	// is none (Redis lost it); another connection's it leaves alone.
	refreshScript = rueidis.NewLuaScript(`local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 2 end
return 0`)
)

// batch is the most updates written in one round trip.
const batch = 512

// writePresence writes queued updates until Close. While the bus is down
// they stay queued (up to maxQueued), and are written in order once it is
// back: a connect made meanwhile then takes its record over from the node
// that held the id before, as any connect does.
func (b *Bus) writePresence() {
	q := &b.presence
	ttl := int64(b.opts.PresenceTTL / time.Second)
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-q.wake:
		}
		for b.up.Load() {
			q.mu.Lock()
			ops := q.ops
			q.ops = nil
			q.writing = len(ops) > 0
			q.mu.Unlock()
			if len(ops) == 0 {
				break
			}
			ops = lastPerID(ops)
			for len(ops) > 0 {
				n := min(len(ops), batch)
				b.writeOps(ops[:n], ttl)
				ops = ops[n:]
			}
		}
		q.mu.Lock()
		q.writing = false
		q.mu.Unlock()
	}
}

// wakeWriter has the presence writer look at its queue.
func (b *Bus) wakeWriter() {
	select {
	case b.presence.wake <- struct{}{}:
	default:
	}
}

// lastPerID keeps each id's last update, in queue order: a batch writes
// its connects and its disconnects as two groups, so an id must not be in
// both.
func lastPerID(ops []presenceOp) []presenceOp {
	last := make(map[string]int, len(ops))
	for i, op := range ops {
		last[op.id] = i
	}
	if len(last) == len(ops) {
		return ops
	}
	kept := ops[:0]
	for i, op := range ops {
		if last[op.id] == i {
			kept = append(kept, op)
		}
	}
	return kept
}

// writeOps writes one batch: a connect is SET ... GET, so that a previous
// holder on another node hears it was replaced; a disconnect deletes the
// record if it is still this node's.
func (b *Bus) writeOps(ops []presenceOp, ttl int64) {
	c := b.client()
	ctx, cancel := context.WithTimeout(b.ctx, b.opts.Timeout)
	defer cancel()
	var sets rueidis.Commands
	var setIDs []string
	var forgets []rueidis.LuaExec
	for _, op := range ops {
		if op.connected {
			sets = append(sets, c.B().Set().Key(b.idKey(op.id)).Value(op.conn).Get().ExSeconds(ttl).Build())
			setIDs = append(setIDs, op.id)
		} else {
			forgets = append(forgets, rueidis.LuaExec{Keys: []string{b.idKey(op.id)}, Args: []string{op.conn}})
		}
	}
	failed := false
	var replaced rueidis.Commands
	if len(sets) > 0 {
		for i, r := range c.DoMulti(ctx, sets...) {
			old, err := r.ToString()
			switch {
			case rueidis.IsRedisNil(err):
			case err != nil:
				failed = true
			case nodeOf(old) != b.node:
				// Another node held it: tell it to let go of that
				// connection (not of a newer one it may have since).
				body, _ := json.Marshal(&envelope{Kind: kindReplaced, Op: hub.Op{ID: setIDs[i]}, Conn: old, From: b.node})
				replaced = append(replaced, c.B().Publish().Channel(b.nodeChannel(nodeOf(old))).Message(rueidis.BinaryString(body)).Build())
			}
		}
	}
	if len(replaced) > 0 {
		for _, r := range c.DoMulti(ctx, replaced...) {
			if r.Error() != nil {
				failed = true
			}
		}
	}
	if len(forgets) > 0 {
		for _, r := range forgetScript.ExecMulti(ctx, c, forgets...) {
			if r.Error() != nil {
				failed = true
			}
		}
	}
	if failed {
		b.m.PresenceErr.Inc()
		b.requestResync()
	}
}

// refreshPresence renews every local id's record every third of the TTL,
// and at once when asked to (the bus came back).
func (b *Bus) refreshPresence() {
	tick := time.NewTicker(b.opts.PresenceTTL / 3)
	defer tick.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-tick.C:
		case <-b.resync:
		}
		if b.up.Load() && !b.refreshAll() {
			// Try again shortly.
			time.AfterFunc(time.Second, b.requestResync)
		}
	}
}

// refreshAll writes every local id's record; it reports success.
func (b *Bus) refreshAll() bool {
	held := b.opts.Local.Held()
	c := b.client()
	ttl := strconv.FormatInt(int64(b.opts.PresenceTTL/time.Second), 10)
	execs := make([]rueidis.LuaExec, 0, batch)
	for len(held) > 0 {
		n := min(len(held), batch)
		execs = execs[:0]
		for _, h := range held[:n] {
			execs = append(execs, rueidis.LuaExec{Keys: []string{b.idKey(h.ID)}, Args: []string{h.ConnID, ttl}})
		}
		held = held[n:]
		ctx, cancel := context.WithTimeout(b.ctx, b.opts.Timeout)
		results := refreshScript.ExecMulti(ctx, c, execs...)
		cancel()
		for _, r := range results {
			if r.Error() != nil {
				b.m.PresenceErr.Inc()
				b.warn.Warn(b.log, "cluster bus: cannot refresh presence", "error", r.Error())
				return false
			}
		}
	}
	return true
}

// forget deletes id's record if it still names connection connID.
func (b *Bus) forget(ctx context.Context, id, connID string) {
	_ = forgetScript.Exec(ctx, b.client(), []string{b.idKey(id)}, []string{connID}).Error()
}
