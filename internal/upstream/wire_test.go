package upstream

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"testing"
)

func TestAppendRequestIsReadableByNetHTTP(t *testing.T) {
	r := &Request{
		Method: "POST", Path: "CP%2F1", ContentType: "text/plain; charset=utf-8", Body: []byte("hello"), Key: Key{Prefix: "abc-1", Seq: 42},
		Header: []Header{{Name: "X-Ws2api-Connection-Id", Value: "abc-1"}, {Name: "X-Ws2api-Meta-User", Value: "42"}},
	}
	get := &Request{Method: "GET", Path: "CP1", Query: "a=1&b=2", Header: []Header{{Name: "Origin", Value: "https://x"}}}
	del := &Request{Method: "DELETE", Path: "CP1", ContentType: "text/plain; charset=utf-8"}
	var b []byte
	for _, req := range []*Request{r, get, del} {
		b = appendRequest(b, req, "api:8000", "/ws/")
	}
	br := bufio.NewReader(bytes.NewReader(b))
	want := []struct{ method, uri, body, ct string }{
		{"POST", "/ws/CP%2F1", "hello", "text/plain; charset=utf-8"},
		{"GET", "/ws/CP1?a=1&b=2", "", ""},
		{"DELETE", "/ws/CP1", "", "text/plain; charset=utf-8"},
	}
	for i, w := range want {
		req, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(req.Body)
		if i == 0 && req.Header.Get("Idempotency-Key") != "abc-1.42" {
			t.Errorf("request %d: Idempotency-Key %q", i, req.Header.Get("Idempotency-Key"))
		}
		if req.Method != w.method || req.RequestURI != w.uri || string(body) != w.body || req.Header.Get("Content-Type") != w.ct || req.Host != "api:8000" {
			t.Errorf("request %d: %s %s body %q ct %q host %q", i, req.Method, req.RequestURI, body, req.Header.Get("Content-Type"), req.Host)
		}
	}
	if _, err := http.ReadRequest(br); err != io.EOF {
		t.Fatalf("trailing bytes: %v", err)
	}
}

// Encoding a message's POST allocates nothing once the buffer is warm.
func TestRequestEncodingAllocatesNothing(t *testing.T) {
	r := &Request{Method: "POST", Path: "CP1", ContentType: "text/plain; charset=utf-8", Body: []byte(`[2,"1","Heartbeat",{}]`),
		Header: []Header{{Name: "X-Ws2api-Connection-Id", Value: "a1b2c3d4-1"}}}
	var out []byte
	round := func() {
		out = appendRequest(out[:0], r, "api:8000", "/")
	}
	round()
	if allocs := testing.AllocsPerRun(1000, round); allocs > 0 {
		t.Fatalf("%.1f allocations per request", allocs)
	}
}

func BenchmarkRequestEncode(b *testing.B) {
	r := &Request{Method: "POST", Path: "CP1", ContentType: "text/plain; charset=utf-8", Body: []byte(`[2,"1","Heartbeat",{}]`),
		Header: []Header{{Name: "X-Ws2api-Connection-Id", Value: "a1b2c3d4-1"}}}
	var out []byte
	b.ReportAllocs()
	for b.Loop() {
		out = appendRequest(out[:0], r, "api:8000", "/")
	}
}
