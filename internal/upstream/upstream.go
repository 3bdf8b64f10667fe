// Package upstream owns the API side of ws2api: the requests the gateway
// makes (GET at connect, POST per message, DELETE at close), the HTTP client
// that sends them, how failures are classified, and the retry policy that
// makes an API restart lose nothing.
//
// The gateway never blocks on the API: [Client.Do] queues a request and
// returns at once, and the answer arrives through a callback on one of the
// client's own goroutines.
package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ws2api/ws2api/internal/http1"
)

// Header is one request or response header.
type Header = http1.Header

// Request is one request to the API.
type Request struct {
	Method string // GET, POST or DELETE
	// Path is appended to the API's base URL as it is: the client's
	// canonical id, already escaped (gateway.EscapeID), so that it is
	// one path segment under the base whatever the id.
	Path string
	// Query is the raw query string without '?', sent on GET only.
	Query       string
	Header      []Header
	ContentType string
	Body        []byte
	// Key, if set, is sent as the Idempotency-Key header.
	Key Key
}

// Key is a request's Idempotency-Key, <Prefix>.<Seq>: the gateway's
// connection id and that connection's count of messages, so that each is
// unique to one message and the same on every re-send of it. It is
// written straight into the request, so a message costs no allocation.
type Key struct {
	Prefix string
	Seq    uint64
}

// String returns the header's value, or "" for no key.
func (k Key) String() string {
	if k.Prefix == "" {
		return ""
	}
	return string(k.append(nil))
}

func (k Key) append(b []byte) []byte {
	b = append(b, k.Prefix...)
	b = append(b, '.')
	return strconv.AppendUint(b, k.Seq, 10)
}

// Response is the API's answer.
type Response struct {
	Status int
	Header []Header
	Body   []byte
	// Truncated is set when the body was longer than the client keeps:
	// Body is then empty.
	Truncated bool
}

// Get returns the first value of the named header, matched without regard
// to case, or "".
func (r *Response) Get(name string) string {
	for _, h := range r.Header {
		if strings.EqualFold(h.Name, name) {
			return h.Value
		}
	}
	return ""
}

// ContentType returns the response's media type without parameters, in
// lower case.
func (r *Response) ContentType() string {
	ct := r.Get("Content-Type")
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.ToLower(strings.TrimSpace(ct))
}

// Client sends requests to the API.
type Client interface {
	// Do queues r and returns at once. done is called exactly once, on
	// another goroutine, with the API's response or the error that stopped
	// the request. Do never blocks, whatever the API does; r and its body
	// must stay unchanged until done is called.
	Do(r *Request, done func(*Response, error))
	// Cancel takes r out of the line if it is still waiting for a
	// connection, and reports whether it did: done is then never called,
	// and nothing of r reaches the API. A request already sent runs its
	// course.
	Cancel(r *Request) bool
	// Close fails the requests waiting or in flight with [ErrClosed],
	// closes the connections and stops the client's goroutines.
	Close()
}

// Observer is told of every request sent to the API, each attempt of a
// retried one included.
type Observer interface {
	Started(method string)
	Finished(method string, d time.Duration, delivered bool)
	// Resent is told of each request sent again, with the cause of the
	// failure before it (see [Cause]).
	Resent(method, cause string)
}

// HeaderIdempotencyKey names the key every POST and DELETE carries: unique
// to one message (or one close) and the same on each re-send of it, so
// that an API can drop a duplicate (the IETF's Idempotency-Key header).
const HeaderIdempotencyKey = "Idempotency-Key"

// The causes of a re-send, the label values of ws2api_api_retries_total.
const (
	// CauseUnreachable: no connection to the API could be opened, so the
	// request was never sent. Never a duplicate.
	CauseUnreachable = "unreachable"
	// CauseStatus: the API answered 5xx (or another status that is not
	// 2xx or 4xx). The API decided; a 503 usually means not processed.
	CauseStatus = "status"
	// CauseTimeout: no whole answer in time. May have been processed.
	CauseTimeout = "timeout"
	// CauseLost: the connection closed or reset after the request was
	// sent and before a whole answer. May have been processed.
	CauseLost = "lost"
	// CauseMalformed: an answer that could not be read as HTTP/1.1 (a
	// garbage status line, bad chunking, a lying Content-Length). May have
	// been processed.
	CauseMalformed = "malformed"
)

// Causes lists every cause, for metrics.
var Causes = []string{CauseUnreachable, CauseStatus, CauseTimeout, CauseLost, CauseMalformed}

// Cause says why a request [Failed], as one of the Cause constants.
func Cause(resp *Response, err error) string {
	switch {
	case err == nil:
		return CauseStatus
	case errors.Is(err, ErrUnreachable):
		return CauseUnreachable
	case IsTimeout(err):
		return CauseTimeout
	case errors.Is(err, http1.ErrMalformed):
		return CauseMalformed
	}
	return CauseLost
}

// Outcome is what a request's result means for the message it carried.
type Outcome uint8

// The outcomes of one request.
const (
	// Delivered: the API answered 2xx.
	Delivered Outcome = iota
	// Refused: the API answered 4xx. It saw the request and does not want
	// it; sending it again would not help.
	Refused
	// Failed: no answer, a 5xx or another status. The API may be
	// restarting: try again later.
	Failed
)

// Classify maps a request's result to its outcome. It is the one place that
// decides what is retried.
func Classify(resp *Response, err error) Outcome {
	switch {
	case err != nil:
		return Failed
	case resp.Status >= 200 && resp.Status < 300:
		return Delivered
	case resp.Status >= 400 && resp.Status < 500:
		return Refused
	}
	return Failed
}

// IsTimeout reports whether err is the API not answering in time (as
// opposed to refusing the connection or answering badly).
func IsTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrTimeout) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ErrTimeout is the API not answering a request within the client's timeout.
var ErrTimeout = errors.New("api timeout")

// ErrUnreachable is a request that never left: no connection to the API
// could be opened. It is safe to send elsewhere.
var ErrUnreachable = errors.New("API unreachable")

// ErrClosed is returned for requests made after Close.
var ErrClosed = errors.New("upstream client closed")

// ParseBaseURL checks an API base URL: http or https, a host, no query or
// fragment. The path gets a final '/' so that ids append cleanly.
func ParseBaseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("api url %q: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("api url %q: scheme must be http or https", s)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("api url %q: no host", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		// Redacted: the error is printed, and user info may hold a password.
		return nil, fmt.Errorf("api url %q: no query, fragment or user info allowed", u.Redacted())
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
		if u.RawPath != "" {
			u.RawPath += "/"
		}
	}
	return u, nil
}

// BackendAddr returns the host:port a base URL's connections go to: its
// port, else 443 for https and 80 for http.
func BackendAddr(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
	}
	return net.JoinHostPort(u.Hostname(), port)
}
