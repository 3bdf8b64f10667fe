package http1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"testing"
)

// What AppendResponse writes, net/http reads back as it was meant.
func TestAppendResponseReadsBackInNetHTTP(t *testing.T) {
	for _, r := range []Response{
		{Status: 200, ContentType: "application/json", Body: []byte(`{"a":1}`)},
		{Status: 503, ContentType: "text/plain; charset=utf-8", Header: []Header{{"Retry-After", "5"}}, Close: true, Body: []byte("busy\n")},
		{Status: 405, Header: []Header{{"Allow", "GET, POST"}}},
	} {
		b := AppendResponse(nil, &r)
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b)), nil)
		if err != nil {
			t.Fatalf("%q: %v", b, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != r.Status || string(body) != string(r.Body) || resp.Header.Get("Content-Type") != r.ContentType || resp.Close != r.Close {
			t.Errorf("%q read back as %d %q %q close=%v", b, resp.StatusCode, body, resp.Header.Get("Content-Type"), resp.Close)
		}
		for _, h := range r.Header {
			if resp.Header.Get(h.Name) != h.Value {
				t.Errorf("%q: %s %q", b, h.Name, resp.Header.Get(h.Name))
			}
		}
	}
}
