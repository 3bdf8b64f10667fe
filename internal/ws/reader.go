package ws

import (
	"sync"
	"unicode/utf8"
)

// Message is a complete data message or a control frame.
type Message struct {
	Op      Opcode
	Payload []byte
	// Compressed is the size of the message on the wire if it came
	// compressed (permessage-deflate), else 0.
	Compressed int
}

// Reader joins frames into messages and enforces the rules that span frames:
// fragment order, the message size limit and UTF-8 in text. The zero value
// holds no fragments; it allocates only while a fragmented message is being
// assembled.
type Reader struct {
	// Deflate is set on a connection that negotiated permessage-deflate:
	// a message whose first frame has RSV1 is inflated (deflate.go).
	Deflate bool

	op         Opcode // opcode of the fragmented message being assembled, or 0
	compressed bool   // ... and whether it is compressed
	frag       []byte
	inflated   *[]byte // the last compressed message, inflated (pooled: see Release)
}

// Pending reports the bytes of a fragmented message held so far.
func (r *Reader) Pending() int { return len(r.frag) }

// Next consumes the frame at the start of b. n == 0 with no error means b
// holds only part of a frame. A consumed fragment that does not complete a
// message returns m.Op == 0. An unfragmented message's payload aliases b; a
// joined one is valid until the next call. maxMessage bounds a data message.
func (r *Reader) Next(b []byte, role Role, maxMessage int64) (m Message, n int, err error) {
	f, n, err := parseFrame(b, role, maxMessage-int64(len(r.frag)), r.Deflate)
	if err != nil || n == 0 {
		return m, 0, err
	}
	if f.Op.IsControl() {
		return Message{Op: f.Op, Payload: f.Payload}, n, nil
	}
	switch {
	case f.Op == OpContinuation && r.op == 0:
		return m, 0, ErrUnexpectedCont
	case f.Op != OpContinuation && r.op != 0:
		return m, 0, ErrExpectedCont
	}
	if f.Op != OpContinuation && f.Fin {
		payload, wire := f.Payload, 0
		if f.Compressed {
			wire = len(payload)
			if payload, err = r.inflate(payload, maxMessage); err != nil {
				return m, 0, err
			}
		}
		if f.Op == OpText && !utf8.Valid(payload) {
			return m, 0, ErrInvalidUTF8
		}
		return Message{Op: f.Op, Payload: payload, Compressed: wire}, n, nil
	}
	if f.Op != OpContinuation {
		r.op, r.compressed = f.Op, f.Compressed
	}
	r.frag = append(r.frag, f.Payload...)
	if !f.Fin {
		return m, n, nil
	}
	m = Message{Op: r.op, Payload: r.frag}
	if r.compressed {
		m.Compressed = len(r.frag)
		if m.Payload, err = r.inflate(r.frag, maxMessage); err != nil {
			return Message{}, 0, err
		}
	}
	r.op, r.compressed, r.frag = 0, false, r.frag[:0]
	if m.Op == OpText && !utf8.Valid(m.Payload) {
		return Message{}, 0, ErrInvalidUTF8
	}
	if cap(r.frag) > 64<<10 {
		// Do not keep a large buffer for the rest of an idle connection.
		r.frag = nil
	}
	return m, n, nil
}

// inflate decompresses one message into a pooled buffer, valid until the
// next call or Release.
func (r *Reader) inflate(compressed []byte, max int64) ([]byte, error) {
	if r.inflated == nil {
		r.inflated = inflatedPool.Get().(*[]byte)
	}
	out, err := Inflate((*r.inflated)[:0], compressed, max)
	*r.inflated = out
	return out, err
}

// Release gives back the buffer of the last inflated message: call it once
// the messages Next returned are used, so that an idle connection holds no
// buffer.
func (r *Reader) Release() {
	if r.inflated == nil {
		return
	}
	if cap(*r.inflated) <= 64<<10 {
		inflatedPool.Put(r.inflated)
	}
	r.inflated = nil
}

var inflatedPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// Fragment is the part of a fragmented message a Reader holds: what a
// connection passed to another process (a binary upgrade) carries on with.
type Fragment struct {
	Op         Opcode `json:"op,omitempty"`
	Compressed bool   `json:"compressed,omitempty"`
	Data       []byte `json:"data,omitempty"`
}

// Fragment returns a copy of the fragmented message being assembled (a
// zero Fragment when none).
func (r *Reader) Fragment() Fragment {
	if r.op == 0 {
		return Fragment{}
	}
	return Fragment{Op: r.op, Compressed: r.compressed, Data: append([]byte(nil), r.frag...)}
}

// Resume continues the fragmented message f (from Fragment, in another
// Reader): the next frames read complete it.
func (r *Reader) Resume(f Fragment) {
	r.op, r.compressed, r.frag = f.Op, f.Compressed, f.Data
}
