// Package testkit holds what the tests of several packages share: an API
// server that records every request ws2api makes and answers as a test
// scripts it, and helpers to dial the gateway as a WebSocket client. It is
// used only by tests.
package testkit

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// Call is one request the API received.
type Call struct {
	Method string
	ID     string // the path after the base
	Query  string
	Header http.Header
	Body   string
	At     time.Time
}

// ConnID is the call's X-Ws2api-Connection-Id.
func (c Call) ConnID() string { return c.Header.Get("X-Ws2api-Connection-Id") }

func (c Call) String() string {
	return fmt.Sprintf("%s /%s conn=%s body=%q", c.Method, c.ID, c.ConnID(), c.Body)
}

// Answer is what the API sends back.
type Answer struct {
	Status      int // default 200
	Body        string
	ContentType string
	Header      http.Header
	Delay       time.Duration // wait before answering
}

// API is a real HTTP server standing in for the application behind
// ws2api. By default it accepts every connect ("ok"), answers messages
// "echo:<body>" and DELETEs with nothing.
type API struct {
	*httptest.Server
	t testing.TB

	mu    sync.Mutex
	calls []Call
	// Handle, if set, answers instead of the defaults; the body has been
	// read into call.Body.
	handle func(Call) Answer
	notify chan Call
}

// NewAPI starts an API server, closed when the test ends.
func NewAPI(t testing.TB) *API {
	a := &API{t: t, notify: make(chan Call, 1<<16)}
	a.Server = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.Server.Close)
	return a
}

// URL returns the base URL to give ws2api's -api.
func (a *API) URL() string { return a.Server.URL + "/" }

// Handle replaces the API's answers.
func (a *API) Handle(f func(Call) Answer) {
	a.mu.Lock()
	a.handle = f
	a.mu.Unlock()
}

func (a *API) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	c := Call{Method: r.Method, ID: strings.TrimPrefix(r.URL.EscapedPath(), "/"), Query: r.URL.RawQuery,
		Header: r.Header.Clone(), Body: string(body), At: time.Now()}
	a.mu.Lock()
	a.calls = append(a.calls, c)
	h := a.handle
	a.mu.Unlock()
	select {
	case a.notify <- c:
	default:
	}
	ans := Default(c)
	if h != nil {
		ans = h(c)
	}
	if ans.Delay > 0 {
		select {
		case <-time.After(ans.Delay):
		case <-r.Context().Done():
			return
		}
	}
	for k, vs := range ans.Header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	if ans.ContentType != "" {
		w.Header().Set("Content-Type", ans.ContentType)
	}
	if ans.Status == 0 {
		ans.Status = http.StatusOK
	}
	w.WriteHeader(ans.Status)
	_, _ = io.WriteString(w, ans.Body)
}

// Default is the API's answer when no handler is set.
func Default(c Call) Answer {
	switch c.Method {
	case http.MethodGet:
		return Answer{Body: "ok"}
	case http.MethodPost:
		return Answer{Body: "echo:" + c.Body, ContentType: c.Header.Get("Content-Type")}
	}
	return Answer{}
}

// Calls returns a copy of every request so far.
func (a *API) Calls() []Call {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]Call(nil), a.calls...)
}

// CallsFor returns the requests for one id.
func (a *API) CallsFor(id string) []Call {
	var out []Call
	for _, c := range a.Calls() {
		if c.ID == id {
			out = append(out, c)
		}
	}
	return out
}

// WaitFor waits until a request matching f has arrived and returns it; the
// test fails after timeout.
func (a *API) WaitFor(timeout time.Duration, what string, f func(Call) bool) Call {
	a.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, c := range a.Calls() {
			if f(c) {
				return c
			}
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("API never received %s; it received:\n%s", what, a.dump())
		}
		select {
		case <-a.notify:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// WaitDelete waits for the DELETE of id.
func (a *API) WaitDelete(id string, timeout time.Duration) Call {
	a.t.Helper()
	return a.WaitFor(timeout, "DELETE /"+id, func(c Call) bool { return c.Method == http.MethodDelete && c.ID == id })
}

func (a *API) dump() string {
	var b strings.Builder
	for _, c := range a.Calls() {
		b.WriteString("  " + c.String() + "\n")
	}
	return b.String()
}
