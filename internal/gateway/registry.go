package gateway

import (
	"hash/maphash"
	"sync"

	"github.com/ws2api/ws2api/internal/hub"
)

// registry maps each connected id to its connection. It is split into
// shards so that connects, closes and pushes on different ids rarely meet on
// one lock.
type registry struct {
	seed   maphash.Seed
	shards [64]shard
}

type shard struct {
	mu sync.RWMutex
	m  map[string]*conn
}

func (r *registry) init() {
	r.seed = maphash.MakeSeed()
	for i := range r.shards {
		r.shards[i].m = map[string]*conn{}
	}
}

func (r *registry) shard(id string) *shard {
	return &r.shards[maphash.String(r.seed, id)%uint64(len(r.shards))]
}

// get returns the connection holding id, or nil.
func (r *registry) get(id string) *conn {
	sh := r.shard(id)
	sh.mu.RLock()
	c := sh.m[id]
	sh.mu.RUnlock()
	return c
}

// swap registers c under its id and returns the connection it replaced, if
// any.
func (r *registry) swap(c *conn) (old *conn) {
	sh := r.shard(c.id)
	sh.mu.Lock()
	old = sh.m[c.id]
	sh.m[c.id] = c
	sh.mu.Unlock()
	return old
}

// remove unregisters c, unless its id already belongs to a newer
// connection; it reports whether it did.
func (r *registry) remove(c *conn) bool {
	sh := r.shard(c.id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.m[c.id] != c {
		return false
	}
	delete(sh.m, c.id)
	return true
}

func (r *registry) count() int {
	n := 0
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.RLock()
		n += len(sh.m)
		sh.mu.RUnlock()
	}
	return n
}

// ids returns a snapshot of every connected id.
func (r *registry) held() []hub.Held {
	out := make([]hub.Held, 0, r.count())
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.RLock()
		for id, c := range sh.m {
			out = append(out, hub.Held{ID: id, ConnID: c.connID})
		}
		sh.mu.RUnlock()
	}
	return out
}

// all returns a snapshot of every connection.
func (r *registry) all() []*conn {
	out := make([]*conn, 0, r.count())
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.RLock()
		for _, c := range sh.m {
			out = append(out, c)
		}
		sh.mu.RUnlock()
	}
	return out
}
