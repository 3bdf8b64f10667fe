package cluster

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ws2api/ws2api/internal/hub"
)

// nodeOnly is a Local that only has a name: a bus that cannot reach Redis
// must not touch the node's clients.
type nodeOnly struct{ Local }

func (nodeOnly) Node() string { return "n1" }

func TestCheckURL(t *testing.T) {
	for _, ok := range []string{"redis://127.0.0.1:6379/0", "rediss://:pw@redis.internal:6380/2", "redis://user:pw@host:1/0"} {
		if err := CheckURL(ok); err != nil {
			t.Errorf("CheckURL(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"http://host:6379", "redis://:hunter2@host:1/notadb", "host:6379"} {
		err := CheckURL(bad)
		if err == nil {
			t.Errorf("CheckURL(%q) accepted it", bad)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("CheckURL(%q) shows the password: %v", bad, err)
		}
	}
}

// A node whose Redis is away starts at once, serves its own clients
// (the bus is not asked), and answers relays and broadcasts with
// ErrUnavailable rather than waiting.
func TestBusWithoutRedis(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now

	start := time.Now()
	b, err := New(Options{URL: "redis://:pw@" + addr + "/0", Local: nodeOnly{}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Up() {
		t.Fatal("the bus says it is up with no Redis")
	}
	if _, err := b.Do(hub.Op{Kind: hub.KindPush, ID: "x", Data: []byte("m")}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Push: %v, want ErrUnavailable", err)
	}
	if _, _, err := b.Broadcast("", false, []byte("m")); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Broadcast: %v, want ErrUnavailable", err)
	}
	if missing, err := b.PushMany([]string{"a", "b"}, false, []byte("m")); !errors.Is(err, ErrUnavailable) || len(missing) != 2 {
		t.Errorf("PushMany: %v %v, want both missing and ErrUnavailable", missing, err)
	}
	b.Connected("a", "n1-1") // queued, not written: must not block
	b.Disconnected("a", "n1-1")
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("all of that took %v while Redis is away", took)
	}
}

// A close and a reconnect of one id in the same batch leave it connected:
// the batch writes connects and disconnects as two groups.
func TestLastPerIDKeepsEachIDsLastUpdateInOrder(t *testing.T) {
	ops := []presenceOp{{"a", "n-1", true}, {"b", "n-2", true}, {"a", "n-1", false}, {"c", "n-3", false}, {"a", "n-4", true}, {"b", "n-2", false}}
	got := lastPerID(ops)
	want := []presenceOp{{"c", "n-3", false}, {"a", "n-4", true}, {"b", "n-2", false}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}
