// Package cluster owns the bus between ws2api nodes: one Redis server,
// reached through rueidis, that knows which node holds each client id,
// carries a control request to the node holding its client, and fans
// broadcasts out to every node.
//
// What lives in Redis (every key under Options.Prefix, default "ws2api:"):
//
//	id:<id>     the connection holding <id>, by its X-Ws2api-Connection-Id
//	            (its node's name, "-", a number), with an expiry: a crashed
//	            node's ids disappear by themselves (presence.go)
//	node:<name> a channel per node: requests for its clients, answers to
//	            its own requests (relay.go)
//	all         a channel every node hears: broadcasts
//	nodes       a sorted set of the live nodes, by their last heartbeat
//
// A node that cannot reach Redis keeps serving its own clients; what
// needs another node answers ErrUnavailable (the control API's 503) until
// the bus is back, when the node subscribes again and writes its presence
// anew.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/ws2api/ws2api/internal/hub"
	"github.com/ws2api/ws2api/internal/metrics"
	"github.com/ws2api/ws2api/internal/warnlog"
)

// Local is the node's own side, what the bus acts on for other nodes: a
// *gateway.Server.
type Local interface {
	hub.Clients
	CloseReplaced(id, connID string)
	Held() []hub.Held
	Node() string
}

// maxServing bounds the requests from other nodes served at once (each
// holds its message until the answer is published).
const maxServing = 4096

// Errors of the bus.
var (
	// ErrUnavailable: Redis cannot be reached, so another node's clients
	// cannot be either.
	ErrUnavailable = errors.New("the cluster bus (Redis) is unavailable")
	// ErrTimeout: the node holding the client did not answer in time.
	ErrTimeout = errors.New("another node did not answer in time")
)

// Options configures a [Bus]. URL and Local are required.
type Options struct {
	// URL is Redis's: redis://[:password@]host:port/db, or rediss:// for
	// TLS; redis-sentinel://[:password@]host:port,.../<master> for Redis
	// under Sentinel (url.go).
	URL   string
	Local Local
	// Prefix starts every key and channel, so that clusters can share a
	// Redis. Default "ws2api:".
	Prefix string
	// Timeout bounds one relayed request, Redis and the other node
	// included. Default 2s.
	Timeout time.Duration
	// PresenceTTL is how long an id's record outlives its node's last
	// refresh; a node refreshes its ids every third of it. Default 10m.
	PresenceTTL time.Duration
	Logger      *slog.Logger
	Metrics     *metrics.Metrics
	// Successor: this process takes the node over from the one before it
	// (a binary upgrade), under the same name: it serves no request from
	// other nodes until that one has handed off (handoff.go).
	Successor bool
}

// Defaults are the values Options' zero fields take, and the flags'
// defaults.
var Defaults = Options{Prefix: "ws2api:", Timeout: 2 * time.Second, PresenceTTL: 10 * time.Minute}

// Bus is one node's connection to the cluster.
type Bus struct {
	opts Options
	node string
	log  *slog.Logger
	m    *metrics.Cluster
	rc   atomic.Value // rueidis.Client, once connected

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	up       atomic.Bool   // subscribed: relays may be tried
	seq      atomic.Uint64 // request numbers
	mu       sync.Mutex
	waiting  map[uint64]chan envelope // answers awaited, by request number
	presence presenceQueue
	resync   chan struct{} // one token: write every local id's presence again
	beat     chan struct{} // one token: stamp this node in nodes now
	serving  chan struct{} // a token per request from another node being served
	warn     warnlog.Limiter

	// A binary upgrade (handoff.go): the new process stands by, the old
	// one retires once its hand-off marker comes back.
	standby  atomic.Bool
	retiring atomic.Pointer[handOff]
	retired  atomic.Bool
}

// New connects to Redis and subscribes to the node's channels. It returns
// once the URL is checked; the connection itself is made and kept in the
// background, so that a node starts even while Redis is away.
func New(opts Options) (*Bus, error) {
	if opts.Local == nil {
		return nil, errors.New("cluster: Options.Local is required")
	}
	ropts, err := redisOptions(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("cluster: redis url: %v", redactErr(err, opts.URL))
	}
	if opts.Prefix == "" {
		opts.Prefix = Defaults.Prefix
	}
	if opts.Timeout <= 0 {
		opts.Timeout = Defaults.Timeout
	}
	if opts.PresenceTTL <= 0 {
		opts.PresenceTTL = Defaults.PresenceTTL
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.New()
	}
	ropts.Dialer.Timeout = time.Second
	ropts.Sentinel.Dialer.Timeout = time.Second
	ropts.ConnWriteTimeout = 3 * time.Second
	ropts.DisableCache = true
	// No retries inside rueidis: with them, a subscription whose Redis
	// went away never returns, and the bus would not know it is down.
	// Lookups retry by themselves (doRead).
	ropts.DisableRetry = true
	// One connection for commands and the subscription: when Redis comes
	// back, the subscription's reconnect renews the connection the
	// commands use too, rather than leaving a second, dead one for the
	// next command to find.
	ropts.PipelineMultiplex = -1
	ropts.ClientName = "ws2api-" + opts.Local.Node()
	ropts.Sentinel.ClientName = ropts.ClientName
	// New fails when Redis is away; the node must start anyway, so the
	// client is made lazily, by the connect loop.
	b := &Bus{
		opts:    opts,
		node:    opts.Local.Node(),
		log:     opts.Logger,
		waiting: map[uint64]chan envelope{},
		resync:  make(chan struct{}, 1),
		warn:    warnlog.Limiter{Every: 10 * time.Second},
		beat:    make(chan struct{}, 1),
		serving: make(chan struct{}, maxServing),
	}
	b.m = opts.Metrics.Cluster(b.up.Load)
	// Request numbers start at random: after an upgrade two processes
	// share a node's name, and its channel's answers, for a moment.
	b.seq.Store(mrand.Uint64() >> 1)
	b.standby.Store(opts.Successor)
	b.presence.wake = make(chan struct{}, 1)
	b.ctx, b.cancel = context.WithCancel(context.Background())
	ready := make(chan struct{})
	b.wg.Go(func() { b.connect(ropts, ready) })
	<-ready
	return b, nil
}

// Node is this node's name on the bus.
func (b *Bus) Node() string { return b.node }

// Up reports whether the node is subscribed to the bus.
func (b *Bus) Up() bool { return b.up.Load() }

// Close writes the presence updates still queued (within a second: the
// disconnects of a shutdown), lets the requests from other nodes being
// served answer (within Timeout), then unsubscribes and closes the
// connection.
func (b *Bus) Close() {
	b.Flush(time.Second)
	// The requests from other nodes being served answer first (after an
	// upgrade's hand-off, those forwarded to the new process).
	deadline := time.Now().Add(b.opts.Timeout)
	for len(b.serving) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	b.cancel()
	b.wg.Wait()
	if c := b.client(); c != nil {
		c.Close()
	}
}

// Flush waits, for at most timeout and while Redis is reachable, until
// the presence updates queued so far are written.
func (b *Bus) Flush(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for b.up.Load() && b.presence.pending() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// client returns the Redis client, nil before the first connection.
func (b *Bus) client() rueidis.Client {
	c, _ := b.rc.Load().(rueidis.Client)
	return c
}

func (b *Bus) nodeChannel(node string) string { return b.opts.Prefix + "node:" + node }
func (b *Bus) allChannel() string             { return b.opts.Prefix + "all" }
func (b *Bus) idKey(id string) string         { return b.opts.Prefix + "id:" + id }
func (b *Bus) nodesKey() string               { return b.opts.Prefix + "nodes" }

// connect makes the Redis client (retrying while Redis is away), then
// keeps the subscription and the presence writer running until Close.
func (b *Bus) connect(ropts rueidis.ClientOption, ready chan struct{}) {
	backoff := 100 * time.Millisecond
	for {
		c, err := rueidis.NewClient(ropts)
		if err == nil {
			b.rc.Store(c)
			break
		}
		if backoff == 100*time.Millisecond {
			close(ready) // start serving local clients meanwhile
		}
		b.warn.Warn(b.log, "cluster bus: cannot reach Redis; retrying", "error", err)
		select {
		case <-b.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	if backoff == 100*time.Millisecond {
		close(ready)
	}
	b.wg.Go(b.writePresence)
	b.wg.Go(b.refreshPresence)
	b.wg.Go(b.heartbeat)
	b.subscribe()
}

// Liveness: every node stamps its name in the sorted set nodes every
// heartbeatEvery. A broadcast waits for answers from the nodes that both
// heard it and stamped within liveWindow: a subscriber that is no node (a
// person's redis-cli SUBSCRIBE) or a node whose machine died (Redis keeps
// its subscription until TCP keepalive gives up) is not waited for.
const (
	heartbeatEvery = 5 * time.Second
	liveWindow     = 3 * heartbeatEvery
)

func (b *Bus) heartbeat() {
	tick := time.NewTicker(heartbeatEvery)
	defer tick.Stop()
	for {
		c := b.client()
		ctx, cancel := context.WithTimeout(b.ctx, b.opts.Timeout)
		now := time.Now().Unix()
		c.DoMulti(ctx,
			c.B().Zadd().Key(b.nodesKey()).ScoreMember().ScoreMember(float64(now), b.node).Build(),
			c.B().Zremrangebyscore().Key(b.nodesKey()).Min("-inf").Max(strconv.FormatInt(now-60, 10)).Build())
		cancel()
		select {
		case <-b.ctx.Done():
			if b.retired.Load() {
				return // the node lives on, in the new process
			}
			// Leaving: broadcasts stop waiting for this node at once.
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			c.Do(ctx, c.B().Zrem().Key(b.nodesKey()).Member(b.node).Build())
			cancel()
			return
		case <-tick.C:
		case <-b.beat:
		}
	}
}

// subscribe listens on the node's channel and the broadcast channel,
// again after every failure, until Close.
func (b *Bus) subscribe() {
	hook := func(s rueidis.PubSubSubscription) {
		if s.Kind == "subscribe" && s.Count == 2 {
			// Subscribed (again): relays may go, and the presence written
			// while Redis was away, or lost with it, is written anew.
			if !b.up.Swap(true) {
				b.log.Info("cluster bus up", "node", b.node)
			}
			b.wakeWriter() // the updates queued while it was down
			b.requestResync()
			select { // Redis may have come back empty
			case b.beat <- struct{}{}:
			default:
			}
		}
	}
	ctx := rueidis.WithOnSubscriptionHook(b.ctx, hook)
	backoff := 100 * time.Millisecond
	c := b.client()
	for b.ctx.Err() == nil {
		cmd := c.B().Subscribe().Channel(b.nodeChannel(b.node), b.allChannel()).Build()
		err := c.Receive(ctx, cmd, b.received)
		if b.ctx.Err() != nil {
			break
		}
		if b.up.Swap(false) {
			b.log.Warn("cluster bus down: relays answer 503 until it is back", "error", err)
			// A fresh outage: try again soon (a failover to a replica
			// takes seconds), not after the last outage's backoff.
			backoff = 100 * time.Millisecond
		}
		select {
		case <-b.ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
	b.up.Store(false)
}

// received takes one message from the bus, on rueidis's reading
// goroutine: it must not block.
func (b *Bus) received(msg rueidis.PubSubMessage) {
	var e envelope
	if err := json.Unmarshal([]byte(msg.Message), &e); err != nil {
		b.warn.Warn(b.log, "cluster bus: unreadable message", "channel", msg.Channel, "error", err)
		return
	}
	switch e.Kind {
	case kindAnswer:
		b.mu.Lock()
		ch := b.waiting[e.Req]
		b.mu.Unlock()
		if ch != nil {
			select {
			case ch <- e:
			default: // a late duplicate
			}
		}
	case kindHandOff:
		b.handedOff(e)
	case kindRequest, kindBroadcast:
		if e.From == b.node {
			return // our own broadcast: delivered locally already
		}
		if b.standby.Load() || b.retired.Load() {
			return // the other process of an upgrade serves it (handoff.go)
		}
		select {
		case b.serving <- struct{}{}:
			go func() {
				defer func() { <-b.serving }()
				b.serve(e)
			}()
		default:
			// Its sender times out (504): better than memory without bound.
			b.warn.Warn(b.log, "cluster bus: too many requests from other nodes at once; dropped one", "from", e.From, "max", cap(b.serving))
		}
	case kindReplaced:
		b.opts.Local.CloseReplaced(e.ID, e.Conn)
	}
}

// publish sends e on channel and returns how many nodes heard it.
func (b *Bus) publish(ctx context.Context, channel string, e *envelope) (int64, error) {
	c := b.client()
	if c == nil {
		return 0, ErrUnavailable
	}
	body, err := json.Marshal(e)
	if err != nil {
		return 0, err
	}
	n, err := c.Do(ctx, c.B().Publish().Channel(channel).Message(rueidis.BinaryString(body)).Build()).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return n, nil
}

// doRead runs a read-only command, again on a connection error: after
// Redis restarts, the first command on each old connection fails (EOF)
// while rueidis replaces it. Writes are not retried: one might have been
// carried out.
func (b *Bus) doRead(ctx context.Context, cmd func(c rueidis.Client) rueidis.Completed) rueidis.RedisResult {
	c := b.client()
	var r rueidis.RedisResult
	for range 4 {
		r = c.Do(ctx, cmd(c))
		err := r.Error()
		if _, redisErr := rueidis.IsRedisErr(err); err == nil || redisErr || rueidis.IsRedisNil(err) || ctx.Err() != nil {
			return r
		}
	}
	return r
}

// CheckURL reports whether url is a Redis URL the bus can use.
func CheckURL(url string) error {
	if _, err := redisOptions(url); err != nil {
		return errors.New(redactErr(err, url))
	}
	return nil
}

// redactErr keeps a password in the URL out of an error's text.
func redactErr(err error, url string) string {
	s := err.Error()
	if i := strings.Index(url, "://"); i >= 0 {
		if at := strings.LastIndex(url, "@"); at > i+3 {
			s = strings.ReplaceAll(s, url[i+3:at], "***")
		}
	}
	return s
}
