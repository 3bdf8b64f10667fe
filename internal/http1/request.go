package http1

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
)

// HeadEnd returns the length of the head at the start of b, the blank line
// that ends it included, or -1 if b does not hold all of it. A bare LF
// ends a line as CRLF does. Empty lines before the request line are part
// of the head, and ignored (RFC 9112 section 2.2).
func HeadEnd(b []byte) int {
	start := leadingEmptyLines(b)
	if start == len(b) {
		return -1
	}
	for i := start; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1
		switch {
		case i < len(b) && b[i] == '\n':
			return i + 1
		case i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n':
			return i + 2
		case i >= len(b)-1:
			return -1
		}
	}
}

// leadingEmptyLines returns the length of the empty lines (CRLF or LF) at
// the start of b.
func leadingEmptyLines(b []byte) int {
	i := 0
	for {
		switch {
		case i < len(b) && b[i] == '\n':
			i++
		case i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n':
			i += 2
		default:
			return i
		}
	}
}

// RequestHead is a parsed request head.
type RequestHead struct {
	// Target is in origin form: a path, then any query. A target sent in
	// absolute form (GET http://host/path HTTP/1.1, RFC 9112 section
	// 3.2.2) is reduced to its path and query, its authority kept in
	// Authority.
	Method, Target, Proto string
	// Authority is the host[:port] of an absolute-form target, which
	// stands for the Host header (RFC 9112 section 3.2.2); "" otherwise.
	Authority string
	Header    []Header // canonical names, in order
}

// Get returns the first value of the named header (canonical name), or "".
func (h *RequestHead) Get(name string) string {
	for _, f := range h.Header {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// Values returns every value of the named header (canonical name).
func (h *RequestHead) Values(name string) []string {
	var out []string
	for _, f := range h.Header {
		if f.Name == name {
			out = append(out, f.Value)
		}
	}
	return out
}

// HasToken reports whether any value of the named comma-separated header
// holds token, in any case.
func (h *RequestHead) HasToken(name, token string) bool {
	for _, f := range h.Header {
		if f.Name == name && HasToken(f.Value, token) {
			return true
		}
	}
	return false
}

// ParseRequestHead parses a request head as found by HeadEnd: HTTP/1.0 or
// 1.1, no folded lines, no control characters in the target or a value.
// An error's text is a one-line reason fit for a 400 answer.
func ParseRequestHead(b []byte) (*RequestHead, error) {
	b = b[leadingEmptyLines(b):]
	lines := strings.Split(strings.TrimRight(string(b), "\r\n"), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSuffix(l, "\r")
	}
	parts := strings.Split(lines[0], " ")
	if len(parts) != 3 || !ValidToken(parts[0]) {
		return nil, errors.New("malformed request line")
	}
	h := &RequestHead{Method: parts[0], Target: parts[1], Proto: parts[2]}
	if h.Target == "" || !ValidFieldValue(h.Target) || strings.ContainsAny(h.Target, "\t#") {
		return nil, errors.New("malformed request target")
	}
	if h.Target[0] != '/' && h.Target != "*" {
		if !h.fromAbsoluteForm() {
			return nil, errors.New("malformed request target")
		}
	}
	if h.Proto != "HTTP/1.1" && h.Proto != "HTTP/1.0" {
		return nil, errors.New("unsupported protocol " + strconv.Quote(h.Proto) + ": HTTP/1.1 only")
	}
	h.Header = make([]Header, 0, len(lines)-1)
	for _, l := range lines[1:] {
		if l == "" || l[0] == ' ' || l[0] == '\t' {
			return nil, errors.New("malformed header line")
		}
		name, value, ok := strings.Cut(l, ":")
		if !ok || !ValidToken(name) {
			return nil, errors.New("malformed header line")
		}
		value = strings.Trim(value, " \t")
		if !ValidFieldValue(value) {
			return nil, errors.New("control character in header " + CanonicalName(name))
		}
		h.Header = append(h.Header, Header{Name: CanonicalName(name), Value: value})
	}
	return h, nil
}

// fromAbsoluteForm reduces an absolute-form target (http, https, ws or
// wss, any case) to origin form and keeps its authority; it reports
// whether the target was one.
func (h *RequestHead) fromAbsoluteForm() bool {
	scheme, rest, ok := strings.Cut(h.Target, "://")
	if !ok {
		return false
	}
	switch strings.ToLower(scheme) {
	case "http", "https", "ws", "wss":
	default:
		return false
	}
	authority, path := rest, "/"
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		authority, path = rest[:i], rest[i:]
		if path[0] == '?' {
			path = "/" + path
		}
	}
	if authority == "" || strings.ContainsAny(authority, "@ ") {
		return false // no host, or user information, which HTTP forbids here
	}
	h.Target, h.Authority = path, authority
	return true
}

// BodyLength says how the request's body is framed: n bytes, or chunked.
func (h *RequestHead) BodyLength() (n int, chunked bool, err error) {
	tes := h.Values("Transfer-Encoding")
	cl := h.Values("Content-Length")
	te := ""
	if len(tes) > 0 {
		te = tes[0]
	}
	switch {
	case len(tes) > 1:
		return 0, false, errors.New("more than one Transfer-Encoding header")
	case len(tes) > 0 && len(cl) > 0:
		return 0, false, errors.New("both Content-Length and Transfer-Encoding")
	case len(tes) > 0:
		if !strings.EqualFold(strings.TrimSpace(te), "chunked") {
			return 0, false, errors.New("unsupported Transfer-Encoding " + strconv.Quote(te))
		}
		return 0, true, nil
	case len(cl) == 0:
		return 0, false, nil
	}
	for _, v := range cl[1:] {
		if v != cl[0] {
			return 0, false, errors.New("conflicting Content-Length values")
		}
	}
	n64, err := strconv.ParseInt(cl[0], 10, 64)
	if err != nil || n64 < 0 || n64 > 1<<40 || cl[0][0] < '0' || cl[0][0] > '9' {
		return 0, false, errors.New("malformed Content-Length")
	}
	return int(n64), false, nil
}
