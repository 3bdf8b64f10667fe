package gateway

import (
	"errors"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
)

// Groups let the API address many clients at once: a client joins the
// groups its connect answer names (X-Ws2api-Groups: a,b) and those the
// control API adds it to, and leaves them all when it closes. Only clients
// in groups pay for them.

// HeaderGroups is the connect answer's header naming the client's groups.
const HeaderGroups = "X-Ws2api-Groups"

// Errors of [ValidGroup].
var (
	ErrGroupEmpty   = errors.New("empty group name")
	ErrGroupTooLong = errors.New("group name longer than 255 bytes")
	ErrGroupChar    = errors.New("group name has a character outside A-Z a-z 0-9 : . _ ~ -")
)

// ValidGroup checks a group name: 1 to 255 bytes of A-Z a-z 0-9 . _ ~ - :
// (so that it fits a URL path segment and a header list as it is).
func ValidGroup(name string) error {
	switch {
	case name == "":
		return ErrGroupEmpty
	case len(name) > maxIDLen:
		return ErrGroupTooLong
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '~', c == '-', c == ':':
		default:
			return ErrGroupChar
		}
	}
	return nil
}

// parseGroups reads a comma-separated list of group names.
func parseGroups(list string) ([]string, error) {
	var out []string
	for g := range strings.SplitSeq(list, ",") {
		if g = strings.TrimSpace(g); g == "" {
			continue
		}
		if err := ValidGroup(g); err != nil {
			return nil, err
		}
		if !slices.Contains(out, g) {
			out = append(out, g)
		}
	}
	return out, nil
}

// groups maps each group to its members, in shards.
type groups struct {
	seed   maphash.Seed
	shards [64]groupShard
}

type groupShard struct {
	mu sync.RWMutex
	m  map[string]map[*conn]struct{}
}

func (g *groups) init() {
	g.seed = maphash.MakeSeed()
	for i := range g.shards {
		g.shards[i].m = map[string]map[*conn]struct{}{}
	}
}

func (g *groups) shard(name string) *groupShard {
	return &g.shards[maphash.String(g.seed, name)%uint64(len(g.shards))]
}

func (g *groups) add(name string, c *conn) {
	sh := g.shard(name)
	sh.mu.Lock()
	members := sh.m[name]
	if members == nil {
		members = map[*conn]struct{}{}
		sh.m[name] = members
	}
	members[c] = struct{}{}
	sh.mu.Unlock()
}

func (g *groups) remove(name string, c *conn) {
	sh := g.shard(name)
	sh.mu.Lock()
	if members := sh.m[name]; members != nil {
		delete(members, c)
		if len(members) == 0 {
			delete(sh.m, name)
		}
	}
	sh.mu.Unlock()
}

// members returns a snapshot of a group's connections.
func (g *groups) members(name string) []*conn {
	sh := g.shard(name)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	out := make([]*conn, 0, len(sh.m[name]))
	for c := range sh.m[name] {
		out = append(out, c)
	}
	return out
}

// sizes returns every group's member count.
func (g *groups) sizes() map[string]int {
	out := map[string]int{}
	for i := range g.shards {
		sh := &g.shards[i]
		sh.mu.RLock()
		for name, members := range sh.m {
			out[name] = len(members)
		}
		sh.mu.RUnlock()
	}
	return out
}

// joinLocked adds an open connection to a group; c.mu is held.
func (c *conn) joinLocked(name string) {
	if slices.Contains(c.groups, name) {
		return
	}
	c.groups = append(c.groups, name)
	c.s.groups.add(name, c)
}

// leaveLocked removes it; c.mu is held.
func (c *conn) leaveLocked(name string) bool {
	i := slices.Index(c.groups, name)
	if i < 0 {
		return false
	}
	c.groups = slices.Delete(c.groups, i, i+1)
	c.s.groups.remove(name, c)
	return true
}

// leaveAllLocked removes it from every group, at its close; c.mu is held.
func (c *conn) leaveAllLocked() {
	for _, name := range c.groups {
		c.s.groups.remove(name, c)
	}
	c.groups = nil
}
