// Package ws is the part of RFC 6455 that ws2api needs, without any I/O:
// parsing and encoding frames, close payloads and the handshake's accept key.
//
// The gateway and the load tool both read sockets through nbio's event loop
// and call into this package with whatever bytes arrived; nothing here
// blocks, allocates per frame, or keeps state between calls except the
// [Reader] that joins fragments.
package ws

import (
	"encoding/binary"
	"fmt"
)

// Opcode is a frame's opcode (RFC 6455 section 5.2).
type Opcode byte

// The opcodes RFC 6455 defines; every other value is reserved.
const (
	OpContinuation Opcode = 0x0
	OpText         Opcode = 0x1
	OpBinary       Opcode = 0x2
	OpClose        Opcode = 0x8
	OpPing         Opcode = 0x9
	OpPong         Opcode = 0xA
)

// IsControl reports whether op is a control opcode (close, ping, pong).
func (op Opcode) IsControl() bool { return op&0x8 != 0 }

func (op Opcode) String() string {
	switch op {
	case OpContinuation:
		return "continuation"
	case OpText:
		return "text"
	case OpBinary:
		return "binary"
	case OpClose:
		return "close"
	case OpPing:
		return "ping"
	case OpPong:
		return "pong"
	}
	return fmt.Sprintf("opcode(%d)", byte(op))
}

// MaxControlPayload is the largest payload a control frame may carry.
const MaxControlPayload = 125

// MaxHeaderLen is the longest frame header: 2 bytes, 8 of length, 4 of mask.
const MaxHeaderLen = 14

// ProtocolError is a violation of RFC 6455 by the peer; the connection must be
// closed with Code.
type ProtocolError struct {
	Code   int
	Reason string
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("websocket: %s (close %d)", e.Reason, e.Code)
}

// Errors a peer can cause while sending frames.
var (
	ErrReservedBits     = &ProtocolError{CloseProtocolError, "reserved bits set"}
	ErrReservedOpcode   = &ProtocolError{CloseProtocolError, "reserved opcode"}
	ErrUnmasked         = &ProtocolError{CloseProtocolError, "client frame not masked"}
	ErrMasked           = &ProtocolError{CloseProtocolError, "server frame masked"}
	ErrControlTooLong   = &ProtocolError{CloseProtocolError, "control frame payload over 125 bytes"}
	ErrControlFragment  = &ProtocolError{CloseProtocolError, "fragmented control frame"}
	ErrBadLength        = &ProtocolError{CloseProtocolError, "non-minimal or oversized length"}
	ErrUnexpectedCont   = &ProtocolError{CloseProtocolError, "continuation frame without a message"}
	ErrExpectedCont     = &ProtocolError{CloseProtocolError, "new message inside a fragmented one"}
	ErrTooBig           = &ProtocolError{CloseMessageTooBig, "message too big"}
	ErrInvalidUTF8      = &ProtocolError{CloseInvalidPayload, "text message is not valid UTF-8"}
	ErrBadClosePayload  = &ProtocolError{CloseProtocolError, "close frame payload of 1 byte"}
	ErrInvalidCloseCode = &ProtocolError{CloseProtocolError, "invalid close code"}
)

// Frame is one parsed frame. Payload is already unmasked and aliases the
// buffer given to [ParseFrame].
type Frame struct {
	Fin bool
	Op  Opcode
	// Compressed is RSV1 on the first frame of a data message, allowed
	// only on a connection that negotiated permessage-deflate.
	Compressed bool
	Payload    []byte
}

// Role says which side of the connection parses: a server requires masked
// frames, a client requires unmasked ones.
type Role uint8

// The two roles.
const (
	Server Role = iota
	Client
)

// ParseFrame parses the frame at the start of b. It returns n == 0 and no
// error when b holds only part of a frame (more bytes are needed). maxPayload
// bounds a data frame's payload: a longer one is [ErrTooBig] before any of it
// is buffered. Masked payloads are unmasked in place in b.
func ParseFrame(b []byte, role Role, maxPayload int64) (f Frame, n int, err error) {
	return parseFrame(b, role, maxPayload, false)
}

// parseFrame is ParseFrame; with deflate, RSV1 is allowed on a data frame
// that starts a message (the caller checks it is not a continuation).
func parseFrame(b []byte, role Role, maxPayload int64, deflate bool) (f Frame, n int, err error) {
	if len(b) < 2 {
		return f, 0, nil
	}
	b0, b1 := b[0], b[1]
	f.Fin = b0&0x80 != 0
	f.Op = Opcode(b0 & 0x0f)
	f.Compressed = b0&rsv1 != 0
	if b0&0x30 != 0 || f.Compressed && (!deflate || f.Op.IsControl() || f.Op == OpContinuation) {
		return f, 0, ErrReservedBits
	}
	switch f.Op {
	case OpContinuation, OpText, OpBinary:
	case OpClose, OpPing, OpPong:
		if !f.Fin {
			return f, 0, ErrControlFragment
		}
	default:
		return f, 0, ErrReservedOpcode
	}
	masked := b1&0x80 != 0
	if role == Server && !masked {
		return f, 0, ErrUnmasked
	}
	if role == Client && masked {
		return f, 0, ErrMasked
	}
	hdr := 2
	length := int64(b1 & 0x7f)
	switch length {
	case 126:
		if len(b) < 4 {
			return f, 0, nil
		}
		length = int64(binary.BigEndian.Uint16(b[2:4]))
		hdr = 4
		if length < 126 {
			return f, 0, ErrBadLength
		}
	case 127:
		if len(b) < 10 {
			return f, 0, nil
		}
		u := binary.BigEndian.Uint64(b[2:10])
		if u>>63 != 0 || u <= 0xffff {
			return f, 0, ErrBadLength
		}
		length = int64(u)
		hdr = 10
	}
	if f.Op.IsControl() && length > MaxControlPayload {
		return f, 0, ErrControlTooLong
	}
	if !f.Op.IsControl() && length > maxPayload {
		return f, 0, ErrTooBig
	}
	var key [4]byte
	if masked {
		if len(b) < hdr+4 {
			return f, 0, nil
		}
		copy(key[:], b[hdr:hdr+4])
		hdr += 4
	}
	if int64(len(b)-hdr) < length {
		return f, 0, nil
	}
	end := hdr + int(length)
	f.Payload = b[hdr:end:end]
	if masked {
		Mask(f.Payload, key, 0)
	}
	return f, end, nil
}

// Mask XORs b with key, starting at position pos of the key stream, and
// returns the position after b (for masking a payload in pieces).
func Mask(b []byte, key [4]byte, pos int) int {
	next := (pos + len(b)) & 3
	if len(b) >= 16 {
		// Rotate the key so an 8-byte word lines up with pos 0.
		var k [4]byte
		for i := range 4 {
			k[i] = key[(pos+i)&3]
		}
		k32 := binary.LittleEndian.Uint32(k[:])
		k64 := uint64(k32) | uint64(k32)<<32
		for len(b) >= 8 {
			binary.LittleEndian.PutUint64(b, binary.LittleEndian.Uint64(b)^k64)
			b = b[8:]
		}
		key, pos = k, 0
	}
	for i := range b {
		b[i] ^= key[(pos+i)&3]
	}
	return next
}

// AppendHeader appends a frame header for a payload of n bytes to dst. A
// non-nil mask key adds the masking key (the caller masks the payload).
func AppendHeader(dst []byte, op Opcode, fin bool, n int, mask *[4]byte) []byte {
	b0 := byte(op)
	if fin {
		b0 |= 0x80
	}
	var mbit byte
	if mask != nil {
		mbit = 0x80
	}
	switch {
	case n < 126:
		dst = append(dst, b0, mbit|byte(n))
	case n <= 0xffff:
		dst = append(dst, b0, mbit|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, b0, mbit|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	if mask != nil {
		dst = append(dst, mask[:]...)
	}
	return dst
}

// AppendFrame appends a whole unfragmented frame to dst; with a mask key the
// payload is masked as it is copied (client to server).
func AppendFrame(dst []byte, op Opcode, payload []byte, mask *[4]byte) []byte {
	dst = AppendHeader(dst, op, true, len(payload), mask)
	start := len(dst)
	dst = append(dst, payload...)
	if mask != nil {
		Mask(dst[start:], *mask, 0)
	}
	return dst
}
