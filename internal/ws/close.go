package ws

import (
	"encoding/binary"
	"unicode/utf8"
)

// Close codes (RFC 6455 section 7.4.1 and the IANA registry) that ws2api
// sends or reports.
const (
	CloseNormal          = 1000
	CloseGoingAway       = 1001
	CloseProtocolError   = 1002
	CloseUnsupported     = 1003
	CloseNoStatus        = 1005 // never on the wire: the peer's close frame had no code
	CloseAbnormal        = 1006 // never on the wire: the connection dropped without a close frame
	CloseInvalidPayload  = 1007
	ClosePolicyViolation = 1008
	CloseMessageTooBig   = 1009
	CloseInternalError   = 1011
	CloseServiceRestart  = 1012
	CloseTryAgainLater   = 1013
	CloseReplaced        = 4000 // ws2api: another connection took this id
)

// ValidCloseCode reports whether code may appear in a close frame.
func ValidCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// ParseClose reads a close frame's payload. An empty payload is code 1005
// with no reason.
func ParseClose(p []byte) (code int, reason string, err error) {
	switch {
	case len(p) == 0:
		return CloseNoStatus, "", nil
	case len(p) == 1:
		return 0, "", ErrBadClosePayload
	}
	code = int(binary.BigEndian.Uint16(p))
	if !ValidCloseCode(code) {
		return 0, "", ErrInvalidCloseCode
	}
	if !utf8.Valid(p[2:]) {
		return 0, "", ErrInvalidUTF8
	}
	return code, string(p[2:]), nil
}

// AppendClose appends a close payload to dst. The reason is cut to fit a
// control frame, on a UTF-8 boundary.
func AppendClose(dst []byte, code int, reason string) []byte {
	if code == CloseNoStatus || code == 0 {
		return dst
	}
	if len(reason) > MaxControlPayload-2 {
		reason = reason[:MaxControlPayload-2]
		for len(reason) > 0 && !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(code))
	return append(dst, reason...)
}
