package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/ws2api/ws2api/internal/hub"
	"github.com/ws2api/ws2api/internal/metrics"
)

// A relayed request's way, for an id this node does not hold:
//
//	holder    GET id:<id> -> the node holding it, or none (not connected)
//	call      PUBLISH node:<holder> a request -> that node's serve runs it
//	          on its clients and PUBLISHes the answer on node:<us>
//	received  the answer wakes call, which returns it
//
// A PUBLISH no node hears means the holder is gone (crashed, or cut off
// from Redis): its record is stale, deleted, and the id is not connected.

// Kinds of bus message.
const (
	kindRequest   = "req"
	kindAnswer    = "ans"
	kindBroadcast = "bc"
	kindReplaced  = "rpl"
	kindHandOff   = "hof" // a binary upgrade's: the old process serves no request after it (handoff.go)
)

// Request operations beside an Op on one client (hub.Kind).
const opPushMany = "pushmany"

// envelope is every message on the bus, as JSON.
type envelope struct {
	Kind string `json:"k"`
	Req  uint64 `json:"r,omitempty"` // request number, chosen by From
	From string `json:"f,omitempty"` // the requesting node

	// Requests: an operation on one client, or a many-id push (Op.Kind
	// opPushMany, with IDs); broadcasts (Binary, Data, Group).
	hub.Op
	IDs []string `json:"ids,omitempty"`

	// Answers.
	hub.Result
	NotConnected bool     `json:"nc,omitempty"`   // the id is not (or no longer) here
	Err          string   `json:"err,omitempty"`  // a refusal, e.g. a bad group name
	Fail         string   `json:"fail,omitempty"` // an error of hub.Named, by its name
	Count        int      `json:"count,omitempty"`
	Missing      []string `json:"missing,omitempty"`

	// Replaced notices: the connection of ID that another took over.
	Conn string `json:"conn,omitempty"`
}

// errRefused carries another node's refusal (a bad group or meta name)
// back as the error its own hub gave.
type errRefused struct{ msg string }

func (e errRefused) Error() string { return e.msg }

// Do runs op on the node holding its client: the bus's side of every
// operation on one client (hub.Op.Apply runs it there).
func (b *Bus) Do(op hub.Op) (hub.Result, error) {
	a, err := b.relay(op.ID, envelope{Op: op})
	return a.Result, err
}

// PushMany sends a message to each of ids, none held by this node: one
// request per node holding some of them. It returns the ids connected
// nowhere.
func (b *Bus) PushMany(ids []string, binary bool, data []byte) (notConnected []string, err error) {
	if !b.up.Load() {
		b.m.Relays[metrics.RelayUnavailable].Inc()
		return ids, ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.opts.Timeout)
	defer cancel()
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = b.idKey(id)
	}
	holders, err := b.doRead(ctx, func(c rueidis.Client) rueidis.Completed { return c.B().Mget().Key(keys...).Build() }).ToArray()
	if err != nil {
		b.m.Relays[metrics.RelayUnavailable].Inc()
		return ids, ErrUnavailable
	}
	byNode := map[string][]string{}
	for i, h := range holders {
		holder, err := h.ToString()
		node := nodeOf(holder)
		if err != nil || node == b.node {
			notConnected = append(notConnected, ids[i])
			continue
		}
		byNode[node] = append(byNode[node], ids[i])
	}
	type result struct {
		ids     []string
		missing []string
		err     error
	}
	results := make(chan result, len(byNode))
	for node, nodeIDs := range byNode {
		go func() {
			a, err := b.call(ctx, node, envelope{Op: hub.Op{Kind: opPushMany, Binary: binary, Data: data}, IDs: nodeIDs})
			results <- result{nodeIDs, a.Missing, err}
		}()
	}
	for range byNode {
		r := <-results
		switch {
		case errors.Is(r.err, errNobody):
			notConnected = append(notConnected, r.ids...)
		case r.err != nil:
			notConnected = append(notConnected, r.ids...)
			err = r.err
		default:
			notConnected = append(notConnected, r.missing...)
		}
	}
	return notConnected, err
}

// relay runs a request on the node holding id.
func (b *Bus) relay(id string, req envelope) (envelope, error) {
	start := time.Now()
	a, err := b.relayOnce(id, req)
	outcome := metrics.RelayDelivered
	switch {
	case errors.Is(err, hub.ErrNotConnected):
		outcome = metrics.RelayNotFound
	case errors.Is(err, ErrUnavailable):
		outcome = metrics.RelayUnavailable
	case errors.Is(err, ErrTimeout):
		outcome = metrics.RelayTimeout
	}
	b.m.Relays[outcome].Inc()
	if outcome == metrics.RelayDelivered {
		b.m.Latency.Update(time.Since(start).Seconds())
	}
	return a, err
}

func (b *Bus) relayOnce(id string, req envelope) (envelope, error) {
	if !b.up.Load() {
		return envelope{}, ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.opts.Timeout+req.Op.Timeout())
	defer cancel()
	holder, err := b.doRead(ctx, func(c rueidis.Client) rueidis.Completed { return c.B().Get().Key(b.idKey(id)).Build() }).ToString()
	node := nodeOf(holder)
	switch {
	case rueidis.IsRedisNil(err):
		return envelope{}, hub.ErrNotConnected
	case err != nil:
		b.warn.Warn(b.log, "cluster bus: cannot look a client up in Redis", "error", err)
		return envelope{}, ErrUnavailable
	case node == b.node:
		// Ours, yet not here: the id just left (its record goes with the
		// next presence batch) or left while Redis was away (the record
		// expires). Not deleted here: the id may be connecting again.
		return envelope{}, hub.ErrNotConnected
	}
	a, err := b.call(ctx, node, req)
	switch {
	case errors.Is(err, errNobody):
		b.forget(ctx, id, holder)
		return envelope{}, hub.ErrNotConnected
	case errors.Is(err, ErrTimeout) && !b.live(node):
		// A node that lost its power: Redis still holds its subscription
		// (until TCP keepalive gives up, 300 s by default), but it has
		// not stamped its heartbeat within liveWindow. Its record is
		// stale, as if nobody had heard.
		ctx, cancel := context.WithTimeout(context.Background(), b.opts.Timeout)
		defer cancel()
		b.forget(ctx, id, holder)
		return envelope{}, hub.ErrNotConnected
	case err != nil:
		return envelope{}, err
	case a.NotConnected:
		return a, hub.ErrNotConnected
	case hub.Named[a.Fail] != nil:
		return a, hub.Named[a.Fail]
	case a.Err != "":
		return a, errRefused{a.Err}
	}
	return a, nil
}

// live reports whether node stamped its heartbeat within liveWindow; a
// node whose liveness cannot be read is taken as live.
func (b *Bus) live(node string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), b.opts.Timeout)
	defer cancel()
	score, err := b.doRead(ctx, func(c rueidis.Client) rueidis.Completed {
		return c.B().Zscore().Key(b.nodesKey()).Member(node).Build()
	}).AsFloat64()
	switch {
	case rueidis.IsRedisNil(err):
		return false // not stamped for a minute: swept from nodes
	case err != nil:
		return true
	}
	return time.Since(time.Unix(int64(score), 0)) <= liveWindow
}

// errNobody: a request no node heard.
var errNobody = errors.New("no node is listening")

// await numbers a new request and registers where its answers go (up to
// n held at once); done unregisters it.
func (b *Bus) await(n int) (req uint64, answers chan envelope, done func()) {
	req, answers = b.seq.Add(1), make(chan envelope, n)
	b.mu.Lock()
	b.waiting[req] = answers
	b.mu.Unlock()
	return req, answers, func() {
		b.mu.Lock()
		delete(b.waiting, req)
		b.mu.Unlock()
	}
}

// call sends req to node and waits for its answer.
func (b *Bus) call(ctx context.Context, node string, req envelope) (envelope, error) {
	req.Kind, req.From = kindRequest, b.node
	var ch chan envelope
	var done func()
	req.Req, ch, done = b.await(1)
	defer done()
	n, err := b.publish(ctx, b.nodeChannel(node), &req)
	switch {
	case err != nil:
		b.warn.Warn(b.log, "cluster bus: cannot publish a request", "error", err)
		return envelope{}, err
	case n == 0:
		return envelope{}, errNobody
	}
	select {
	case a := <-ch:
		return a, nil
	case <-ctx.Done():
		return envelope{}, ErrTimeout
	}
}

// serve runs another node's request or broadcast on this node's clients
// and sends the answer back.
func (b *Bus) serve(e envelope) {
	b.m.Served.Inc()
	l := b.opts.Local
	a := envelope{Kind: kindAnswer, Req: e.Req}
	var err error
	switch {
	case e.Kind == kindBroadcast:
		if e.Group != "" {
			a.Count, err = l.BroadcastGroup(e.Group, e.Binary, e.Data)
		} else {
			a.Count = l.Broadcast(e.Binary, e.Data)
		}
	case e.Op.Kind == opPushMany:
		a.Missing = l.PushMany(e.IDs, e.Binary, e.Data)
	default:
		a.Result, err = e.Op.Apply(l)
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.opts.Timeout)
	defer cancel()
	switch {
	case errors.Is(err, hub.ErrNotConnected):
		// (A record naming this node for an id it does not hold is not
		// deleted here, as in relayOnce.)
		a.NotConnected = true
	case hub.NameOf(err) != "":
		a.Fail = hub.NameOf(err)
	case err != nil:
		a.Err = err.Error()
	}
	if _, err := b.publish(ctx, b.nodeChannel(e.From), &a); err != nil {
		b.warn.Warn(b.log, "cluster bus: cannot answer another node", "node", e.From, "error", err)
	}
}

// Broadcast sends a message to every other node's clients (group "" for
// all, else that group's members) and returns how many received it and
// how many nodes answered; the caller delivers to its own.
func (b *Bus) Broadcast(group string, binary bool, data []byte) (delivered, nodes int, err error) {
	if !b.up.Load() {
		return 0, 0, ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.opts.Timeout)
	defer cancel()
	req, ch, done := b.await(1024) // answers may come before PUBLISH returns
	defer done()
	e := envelope{Kind: kindBroadcast, From: b.node, Req: req, Op: hub.Op{Group: group, Binary: binary, Data: data}}
	c := b.client()
	body, err := json.Marshal(&e)
	if err != nil {
		return 0, 0, err
	}
	since := strconv.FormatInt(time.Now().Add(-liveWindow).Unix(), 10)
	res := c.DoMulti(ctx,
		c.B().Publish().Channel(b.allChannel()).Message(rueidis.BinaryString(body)).Build(),
		c.B().Zcount().Key(b.nodesKey()).Min(since).Max("+inf").Build())
	heard, err := res[0].AsInt64()
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	// Every node heard it, this one too; the others answer with a count.
	// Subscribers that are not live nodes are not waited for.
	if live, err := res[1].AsInt64(); err == nil && live > 0 && live < heard {
		heard = live
	}
	for range heard - 1 {
		select {
		case a := <-ch:
			delivered += a.Count
			nodes++
		case <-ctx.Done():
			return delivered, nodes, ErrTimeout
		}
	}
	return delivered, nodes, nil
}

// nodeOf returns the node of a connection id: what precedes its last "-".
func nodeOf(connID string) string {
	if i := strings.LastIndexByte(connID, '-'); i >= 0 {
		return connID[:i]
	}
	return connID
}
