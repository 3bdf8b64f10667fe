package ws

import "unicode/utf8"

// Message is a complete data message or a control frame.
type Message struct {
	Op      Opcode
	Payload []byte
}

// Reader joins frames into messages and enforces the rules that span frames:
// fragment order, the message size limit and UTF-8 in text. The zero value
// holds no fragments; it allocates only while a fragmented message is being
// assembled.
type Reader struct {
	op   Opcode // opcode of the fragmented message being assembled, or 0
	frag []byte
}

// Pending reports the bytes of a fragmented message held so far.
func (r *Reader) Pending() int { return len(r.frag) }

// Next consumes the frame at the start of b. n == 0 with no error means b
// holds only part of a frame. A consumed fragment that does not complete a
// message returns m.Op == 0. An unfragmented message's payload aliases b; a
// joined one is valid until the next call. maxMessage bounds a data message.
func (r *Reader) Next(b []byte, role Role, maxMessage int64) (m Message, n int, err error) {
	f, n, err := ParseFrame(b, role, maxMessage-int64(len(r.frag)))
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
		if f.Op == OpText && !utf8.Valid(f.Payload) {
			return m, 0, ErrInvalidUTF8
		}
		return Message{Op: f.Op, Payload: f.Payload}, n, nil
	}
	if f.Op != OpContinuation {
		r.op = f.Op
	}
	r.frag = append(r.frag, f.Payload...)
	if !f.Fin {
		return m, n, nil
	}
	m = Message{Op: r.op, Payload: r.frag}
	r.op, r.frag = 0, r.frag[:0]
	if m.Op == OpText && !utf8.Valid(m.Payload) {
		return Message{}, 0, ErrInvalidUTF8
	}
	if cap(r.frag) > 64<<10 {
		// Do not keep a large buffer for the rest of an idle connection.
		r.frag = nil
	}
	return m, n, nil
}
