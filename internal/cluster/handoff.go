package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"
)

// A binary upgrade keeps the node's name: the new process takes the old
// one's connections over with their connection ids, which name the node,
// so every presence record stays true. For a moment both processes are
// subscribed to the node's channel, and each request on it must be served
// by one of them: the old process serves (forwarding to the new one what
// it no longer holds) every request before its hand-off marker, the new
// one every request after. Redis delivers a channel's messages to all its
// subscribers in the same order, so both see the marker at the same place
// in the stream.
//
//	new  Options.Successor: stands by (drops requests) from the start
//	old  HandOff: publishes the marker; at its return serves no more
//	both the marker: the old retires, the new serves from the next message
//
// If the old process cannot publish (Redis is away) or dies first, the new
// one ends its standby when the upgrade link closes (EndStandby): requests
// published in between are answered by nobody, and time out.

// handOff is the marker the old process waits to see come back.
type handOff struct {
	nonce string
	seen  chan struct{}
}

// HandOff publishes this process's hand-off marker on the node's channel
// and waits, for at most timeout, until it comes back; from then on the
// process serves no request from other nodes, and its Close leaves the
// node's name in the live set. It reports whether the marker came back.
func (b *Bus) HandOff(timeout time.Duration) bool {
	var n [8]byte
	_, _ = rand.Read(n[:])
	h := &handOff{nonce: hex.EncodeToString(n[:]), seen: make(chan struct{})}
	b.retiring.Store(h)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := b.publish(ctx, b.nodeChannel(b.node), &envelope{Kind: kindHandOff, From: b.node, Conn: h.nonce})
	if err == nil {
		select {
		case <-h.seen:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	b.retired.Store(true)
	if err != nil {
		b.warn.Warn(b.log, "cluster bus: the hand-off marker did not come back; the new process serves once this one is gone", "error", err)
		return false
	}
	return true
}

// handedOff takes a hand-off marker off the bus (on rueidis's goroutine).
func (b *Bus) handedOff(e envelope) {
	if h := b.retiring.Load(); h != nil {
		if e.Conn == h.nonce && !b.retired.Load() {
			b.retired.Store(true)
			close(h.seen)
		}
		return
	}
	if b.standby.Swap(false) {
		b.log.Info("cluster bus: the old process handed the node off; serving its requests", "node", b.node)
	}
}

// EndStandby makes a process that took the node over serve requests now,
// whether or not the marker came (the old process is gone).
func (b *Bus) EndStandby() {
	if b.standby.Swap(false) {
		b.log.Info("cluster bus: serving the node's requests (the old process is gone)", "node", b.node)
	}
}
