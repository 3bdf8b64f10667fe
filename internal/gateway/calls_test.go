package gateway_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/gateway"
	"github.com/ws2api/ws2api/internal/hub"
	"github.com/ws2api/ws2api/internal/testkit"
)

// TestCallReturnsTheClientsAnswer: POST /<id>?await= answers with the
// client's CALLRESULT or CALLERROR to the CALL, matched by unique id, and
// that answer is not POSTed to the API; other messages the client sends
// meanwhile still are.
func TestCallReturnsTheClientsAnswer(t *testing.T) {
	t.Parallel()
	api := quietAPI(t)
	h := newHarness(t, api, harnessOpts{})
	c := testkit.Dial(t, h.url("CP1"), nil)
	h.waitCount(1)

	type reply struct {
		status int
		body   string
	}
	done := make(chan reply, 1)
	go func() {
		status, body := h.ctl("POST", "/CP1?await=5s", "application/json", `[2,"r-1","Reset",{"type":"Soft"}]`)
		done <- reply{status, body}
	}()
	if _, got := testkit.Read(t, c, wait); got != `[2,"r-1","Reset",{"type":"Soft"}]` {
		t.Fatalf("client got %q", got)
	}
	// A message of its own first, then the answer, then an answer to a
	// call nobody waits for: the API gets the first and the last.
	send := func(m string) {
		if err := c.WriteMessage(websocket.TextMessage, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	send(`[2,"c-1","Heartbeat",{}]`)
	send(` [3, "r-1", {"status":"Accepted"}]`)
	send(`[3,"other",{}]`)
	r := <-done
	if r.status != 200 || r.body != ` [3, "r-1", {"status":"Accepted"}]` {
		t.Fatalf("call: %d %q, want 200 and the CALLRESULT as sent", r.status, r.body)
	}
	api.WaitFor(wait, "the unmatched answer as a POST", func(call testkit.Call) bool {
		return call.Method == "POST" && call.Body == `[3,"other",{}]`
	})
	for _, call := range api.Calls() {
		if strings.Contains(call.Body, `"r-1"`) {
			t.Errorf("the call's answer reached the API too: %s %q", call.Method, call.Body)
		}
	}
	api.WaitFor(wait, "the client's own CALL, sent while the call waited, as a POST", func(call testkit.Call) bool {
		return call.Body == `[2,"c-1","Heartbeat",{}]`
	})

	// A CALLERROR is an answer too.
	go func() {
		status, body := h.ctl("POST", "/CP1?await=5", "text/plain", `[2,"r-2","UnlockConnector",{"connectorId":1}]`)
		done <- reply{status, body}
	}()
	testkit.Read(t, c, wait)
	send(`[4,"r-2","NotSupported","no lock",{}]`)
	if r := <-done; r.status != 200 || r.body != `[4,"r-2","NotSupported","no lock",{}]` {
		t.Fatalf("call answered by a CALLERROR: %d %q", r.status, r.body)
	}
	if got := h.m.Calls["answered"].Get(); got != 2 {
		t.Errorf(`ws2api_calls_total{outcome="answered"} = %d, want 2`, got)
	}
}

// TestConcurrentCallsAreMatchedByID: several calls wait on one client at
// once; answered in reverse order, each gets its own answer.
func TestConcurrentCallsAreMatchedByID(t *testing.T) {
	t.Parallel()
	api := quietAPI(t)
	h := newHarness(t, api, harnessOpts{})
	c := testkit.Dial(t, h.url("CP2"), nil)
	h.waitCount(1)

	const n = 5
	var wg sync.WaitGroup
	got := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, body := h.ctl("POST", "/CP2?await=5s", "", fmt.Sprintf(`[2,"u%d","GetConfiguration",{}]`, i))
			got[i] = fmt.Sprint(status, " ", body)
		}()
	}
	var uids []string
	for range n {
		_, m := testkit.Read(t, c, wait)
		uids = append(uids, strings.Split(m, `"`)[1])
	}
	for i := len(uids) - 1; i >= 0; i-- {
		_ = c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`[3,%q,{"n":%q}]`, uids[i], uids[i])))
	}
	wg.Wait()
	for i := range n {
		if want := fmt.Sprintf(`200 [3,"u%d",{"n":"u%d"}]`, i, i); got[i] != want {
			t.Errorf("call %d: %s, want %s", i, got[i], want)
		}
	}
}

// TestCallJSONRPC: a JSON-RPC 2.0 request is answered by the response
// with its id, a string or a number.
func TestCallJSONRPC(t *testing.T) {
	t.Parallel()
	api := quietAPI(t)
	h := newHarness(t, api, harnessOpts{})
	c := testkit.Dial(t, h.url("rpc"), nil)
	h.waitCount(1)
	for _, tc := range []struct{ req, notification, resp string }{
		{`{"jsonrpc":"2.0","method":"ping","id":7}`, `{"jsonrpc":"2.0","method":"tick"}`, `{"jsonrpc":"2.0","result":"pong","id":7}`},
		{`{"jsonrpc":"2.0","method":"ping","id":"a"}`, `{"jsonrpc":"2.0","result":1,"id":7}`, `{"jsonrpc":"2.0","error":{"code":-1,"message":"no"},"id":"a"}`},
	} {
		done := make(chan string, 1)
		go func() {
			status, body := h.ctl("POST", "/rpc?await=5s", "", tc.req)
			done <- fmt.Sprint(status, " ", body)
		}()
		testkit.Read(t, c, wait)
		_ = c.WriteMessage(websocket.TextMessage, []byte(tc.notification)) // not the answer
		_ = c.WriteMessage(websocket.TextMessage, []byte(tc.resp))
		if got := <-done; got != "200 "+tc.resp {
			t.Errorf("call %s: %s", tc.req, got)
		}
		api.WaitFor(wait, "the message that was not the answer as a POST", func(call testkit.Call) bool { return call.Body == tc.notification })
	}
}

// TestCallFailures: each way a call fails has its status and a line.
func TestCallFailures(t *testing.T) {
	t.Parallel()
	api := quietAPI(t)
	h := newHarness(t, api, harnessOpts{})
	c := testkit.Dial(t, h.url("CP3"), nil)
	h.waitCount(1)

	for _, tc := range []struct{ path, body string }{
		{"/CP3?await=5s", `hello`},
		{"/CP3?await=5s", `[3,"x",{}]`},
		{"/CP3?await=5s", `[2,"","Reset",{}]`},
		{"/CP3?await=5s", `[2,"x","Reset"]`},
		{"/CP3?await=5s", `{"jsonrpc":"2.0","method":"m"}`},
		{"/CP3?await=5s", `{"jsonrpc":"2.0","method":"m","id":null}`},
		{"/CP3?await=0", `[2,"x","Reset",{}]`},
		{"/CP3?await=1h", `[2,"x","Reset",{}]`},
		{"/CP3?await=soon", `[2,"x","Reset",{}]`},
		{"/CP3?await=", `[2,"x","Reset",{}]`},
		{"/CP3?await=5s&x=%zz", `[2,"x","Reset",{}]`},
		{"/?id=CP3&await=5s", `[2,"x","Reset",{}]`},
	} {
		if status, body := h.ctl("POST", tc.path, "", tc.body); status != 400 || strings.Count(body, "\n") > 1 || body == "" {
			t.Errorf("POST %s %s: %d %q, want 400 and a line", tc.path, tc.body, status, body)
		}
	}
	if status, _ := h.ctl("POST", "/nobody?await=1s", "", `[2,"x","Reset",{}]`); status != 404 {
		t.Errorf("a call to nobody: %d, want 404", status)
	}

	// No answer in time: 504, and the late answer goes to the API.
	start := time.Now()
	status, body := h.ctl("POST", "/CP3?await=200ms", "", `[2,"late","Reset",{}]`)
	if status != 504 || !strings.Contains(body, "200ms") {
		t.Errorf("an unanswered call: %d %q, want 504", status, body)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("the call gave up after %v, before its 200ms", d)
	}
	testkit.Read(t, c, wait)
	_ = c.WriteMessage(websocket.TextMessage, []byte(`[3,"late",{}]`))
	api.WaitFor(wait, "the late answer as a POST", func(call testkit.Call) bool { return call.Body == `[3,"late",{}]` })

	// The same unique id twice at once: 409 for the second.
	first := make(chan int, 1)
	go func() {
		status, _ := h.ctl("POST", "/CP3?await=5s", "", `[2,"dup","Reset",{}]`)
		first <- status
	}()
	testkit.Read(t, c, wait) // the first is with the client
	if status, body := h.ctl("POST", "/CP3?await=5s", "", `[2,"dup","Reset",{}]`); status != 409 {
		t.Errorf("a second call with a waiting id: %d %q, want 409", status, body)
	}
	// The client leaves: 410 for the call still waiting.
	c.Close()
	if status := <-first; status != 410 {
		t.Errorf("a call whose client left: %d, want 410", status)
	}
	for outcome, want := range map[string]uint64{"timeout": 1, "conflict": 1, "gone": 1, "not_connected": 1} {
		if got := h.m.Calls[outcome].Get(); got != want {
			t.Errorf(`ws2api_calls_total{outcome=%q} = %d, want %d`, outcome, got, want)
		}
	}
}

func TestCallKey(t *testing.T) {
	t.Parallel()
	for body, want := range map[string]string{
		`[2,"a b","Reset",{}]`:                    "o:a b",
		` [ 2 , "\u0041" , "X" , {} ] `:           "o:A",
		`{"jsonrpc":"2.0","method":"m","id":1}`:   "n:1",
		`{"jsonrpc":"2.0","method":"m","id":"1"}`: "s:1",
	} {
		if got, err := gateway.CallKey([]byte(body)); err != nil || got != want {
			t.Errorf("CallKey(%s) = %q, %v; want %q", body, got, err, want)
		}
	}
	for _, body := range []string{``, `2`, `[2]`, `[2,1,"X",{}]`, `[2,"a","X",{},5]`, `["2","a","X",{}]`, `{"method":"m","id":1}`, `{"jsonrpc":"2.0","id":1}`, `{"jsonrpc":"2.0","method":"m","id":[1]}`} {
		if _, err := gateway.CallKey([]byte(body)); !errors.Is(err, hub.ErrNotACall) {
			t.Errorf("CallKey(%s): %v, want ErrNotACall", body, err)
		}
	}
}

// quietAPI accepts every client and answers its messages with nothing:
// what a client reads is what the control API sent it.
func quietAPI(t *testing.T) *testkit.API {
	api := testkit.NewAPI(t)
	api.Handle(func(c testkit.Call) testkit.Answer {
		if c.Method == "GET" {
			return testkit.Answer{Body: "ok"}
		}
		return testkit.Answer{}
	})
	return api
}
