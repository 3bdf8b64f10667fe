// Package http1 is the HTTP/1.1 that ws2api speaks, without any I/O:
// request heads (upgrades from clients, control requests), response heads
// (the API's answers), chunked bodies, and the checks on names and values
// that keep headers from smuggling lines. Parsers work on bytes already
// read, report "not yet complete" instead of blocking, and do not allocate
// on the paths a message takes.
package http1

import (
	"net/textproto"
	"strings"
)

// Header is one header field. Requests and answers carry a short list of
// them rather than an http.Header map.
type Header struct {
	Name, Value string
}

// CanonicalName returns the canonical form of a header name
// (content-type -> Content-Type).
func CanonicalName(name string) string { return textproto.CanonicalMIMEHeaderKey(name) }

// ValidToken reports whether s is an HTTP token: a valid header name or
// method.
func ValidToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x80 || !tokenChars[c] {
			return false
		}
	}
	return true
}

var tokenChars = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// ValidFieldValue reports whether s may be a header value: no control
// characters but tab.
func ValidFieldValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// HasToken reports whether a comma-separated header value holds token, in
// any case.
func HasToken(value, token string) bool {
	for t := range strings.SplitSeq(value, ",") {
		if strings.EqualFold(strings.TrimSpace(t), token) {
			return true
		}
	}
	return false
}
