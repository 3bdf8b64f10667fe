package gateway

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// A client's id is the first path segment of its upgrade URL, percent-decoded
// once ([ParseID]). That decoded string is the id's one canonical form,
// used everywhere: the registry (so /CP%31 and /CP1 are the same client),
// the reserved names, the control API, groups and meta, the cluster bus,
// Info and the logs. In a URL sent to the API it is escaped again, always
// the same way ([EscapeID]), so that no id can make a request reach a path
// outside the API base: it can hold no '/' or '\', and cannot be '.' or
// '..', so it is always one segment, never a dot segment.

// maxIDLen bounds a client id, decoded.
const maxIDLen = 255

// reservedIDs are the control listener's own paths: an id may not be one
// of them, so that every control path is unambiguous.
var reservedIDs = map[string]bool{"metrics": true, "healthz": true, "debug": true}

// Errors of [ParseID] and [CheckID].
var (
	ErrIDEmpty    = errors.New("empty id")
	ErrIDTooLong  = errors.New("id longer than 255 bytes (decoded)")
	ErrIDEscape   = errors.New("id has a '%' not followed by two hex digits")
	ErrIDUTF8     = errors.New("id is not valid UTF-8 (decoded)")
	ErrIDSlash    = errors.New("id has a '/' or '\\' (decoded)")
	ErrIDControl  = errors.New("id has a control character (decoded)")
	ErrIDDots     = errors.New("id is '.' or '..' (decoded)")
	ErrIDReserved = errors.New("id is reserved (metrics, healthz, debug)")
)

// ParseID decodes seg, an id as it appears in a URL path, once and checks
// the result: it returns the id's canonical form. '+' stays '+' (this is a
// path, not a form).
func ParseID(seg string) (string, error) {
	id, err := unescapeID(seg)
	if err != nil {
		return "", err
	}
	return id, CheckID(id)
}

// CheckID checks a decoded id: 1 to 255 bytes of valid UTF-8, no '/', '\',
// NUL or other control character (C0, DEL, C1), not '.' or '..', and not a
// reserved name.
func CheckID(id string) error {
	switch {
	case id == "":
		return ErrIDEmpty
	case len(id) > maxIDLen:
		return ErrIDTooLong
	case !utf8.ValidString(id):
		return ErrIDUTF8
	case id == "." || id == "..":
		return ErrIDDots
	case reservedIDs[id]:
		return ErrIDReserved
	}
	for _, r := range id {
		switch {
		case r == '/' || r == '\\':
			return ErrIDSlash
		case r < 0x20 || r == 0x7f || 0x80 <= r && r <= 0x9f:
			return ErrIDControl
		}
	}
	return nil
}

// idSafe holds the bytes [EscapeID] writes as themselves: RFC 3986's
// unreserved characters (ALPHA DIGIT - . _ ~) and the sub-delims
// ! $ & ' ( ) * , =, which no server we know of reads specially inside a
// path segment. Every other byte is written %XX: among them '%', '/', '\',
// '?', '#', space, every control and every non-ASCII byte, ':' and '@', and
// two sub-delims: '+', which form decoding reads as a space (a+b would
// meet "a b"), and ';', at which Tomcat and Jetty end a segment (..;x
// would become a dot segment there).
var idSafe = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte("-._~!$&'()*,=", byte(c)) >= 0
	}
	return t
}()

// EscapeID returns id, a canonical id, as it goes into the API's URLs:
// the bytes outside idSafe as %XX, upper-case hex. An id that needs no
// escaping is returned as it is, without allocating.
func EscapeID(id string) string {
	n := 0
	for i := 0; i < len(id); i++ {
		if !idSafe[id[i]] {
			n++
		}
	}
	if n == 0 {
		return id
	}
	const hex = "0123456789ABCDEF"
	b := make([]byte, 0, len(id)+2*n)
	for i := 0; i < len(id); i++ {
		if c := id[i]; idSafe[c] {
			b = append(b, c)
		} else {
			b = append(b, '%', hex[c>>4], hex[c&15])
		}
	}
	return string(b)
}

// unescapeID decodes every %XX of seg, once.
func unescapeID(seg string) (string, error) {
	i := strings.IndexByte(seg, '%')
	if i < 0 {
		return seg, nil
	}
	b := make([]byte, 0, len(seg))
	b = append(b, seg[:i]...)
	for ; i < len(seg); i++ {
		c := seg[i]
		if c != '%' {
			b = append(b, c)
			continue
		}
		if i+2 >= len(seg) || !isHex(seg[i+1]) || !isHex(seg[i+2]) {
			return "", ErrIDEscape
		}
		b = append(b, unhex(seg[i+1])<<4|unhex(seg[i+2]))
		i += 2
	}
	return string(b), nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}
