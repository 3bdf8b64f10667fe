package gateway

import (
	"testing"

	"github.com/ws2api/ws2api/internal/metrics"
)

// TestAnsweredCallsLeaveNoMapBehind: a connection called once holds no
// memory for it after: the waiters' map goes with the last waiter.
func TestAnsweredCallsLeaveNoMapBehind(t *testing.T) {
	c := &conn{s: &Server{m: metrics.New()}}
	a, b := make(chan callReply, 1), make(chan callReply, 1)
	c.calls = map[string]chan<- callReply{"o:a": a, "s:b": b}
	if c.callAnsweredLocked(false, []byte(`[2,"a","Reset",{}]`)) {
		t.Fatal("a CALL taken for an answer")
	}
	if !c.callAnsweredLocked(false, []byte(`[3,"a",{}]`)) || c.calls == nil {
		t.Fatal("the first answer: not matched, or the map went while a call still waits")
	}
	if r := <-a; string(r.answer.Data) != `[3,"a",{}]` {
		t.Fatalf("woken with %q", r.answer.Data)
	}
	if !c.callAnsweredLocked(false, []byte(`{"jsonrpc":"2.0","result":1,"id":"b"}`)) || c.calls != nil {
		t.Fatalf("after the last answer: calls = %v, want nil", c.calls)
	}
}
