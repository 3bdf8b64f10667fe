package upstream

import (
	"errors"
	"fmt"

	"github.com/ws2api/ws2api/internal/http1"
)

// errAnnounced ends a connection after an answer that said
// Connection: close: the requests behind it were not processed.
var errAnnounced = errors.New("connection: close")

// respReader turns a connection's incoming bytes into answers. Bytes that
// do not yet make a whole answer wait in buf; a body that is complete in
// what arrived is handed on without a copy.
type respReader struct {
	buf     []byte // bytes of an incomplete answer
	h       http1.ResponseHead
	chunked []byte // a dechunked body
	skip    int    // bytes of an oversized body still to discard
	resp    Response
}

// feed parses what arrived and delivers every complete answer to its call.
// It returns errAnnounced after an answer with Connection: close, or the
// error that makes the connection unusable.
func (r *respReader) feed(pc *pipeConn, data []byte) error {
	buf := data
	if len(r.buf) > 0 {
		r.buf = append(r.buf, data...)
		buf = r.buf
	}
	maxBody := int(pc.p.opts.MaxBodyBytes)
	var err error
	for len(buf) > 0 {
		if r.skip > 0 {
			n := min(r.skip, len(buf))
			r.skip -= n
			buf = buf[n:]
			continue
		}
		c := pc.front()
		ok, perr := http1.ParseResponseHead(buf, c != nil && c.r.Method == "GET", &r.h)
		if perr != nil {
			err = perr
			break
		}
		if !ok {
			break
		}
		h := &r.h
		if c == nil {
			err = fmt.Errorf("%w: an answer with no request", http1.ErrMalformed)
			break
		}
		if h.Status < 200 {
			buf = buf[h.HeadLen:] // 100 Continue and the like
			continue
		}
		rest := buf[h.HeadLen:]
		var body []byte
		truncated := false
		switch {
		case h.Chunked:
			size, wire, cerr := http1.ChunkedEnd(rest)
			if cerr != nil {
				err = cerr
				goto keep
			}
			if wire == 0 {
				goto keep
			}
			if size > maxBody {
				truncated = true
			} else {
				r.chunked = http1.Dechunk(r.chunked[:0], rest[:wire])
				body = r.chunked
			}
			buf = rest[wire:]
		case h.UntilEOF:
			goto keep // complete at the end of the connection
		case h.Length > maxBody:
			truncated = true
			r.skip = h.Length
			buf = rest
		default:
			if len(rest) < h.Length {
				goto keep
			}
			body = rest[:h.Length]
			buf = rest[h.Length:]
		}
		pc.deliver(c, h, body, truncated)
		if h.Close {
			err = errAnnounced
			break
		}
	}
keep:
	if err != nil {
		r.buf = nil
		return err
	}
	switch {
	case len(buf) == 0:
		if cap(r.buf) > 64<<10 {
			r.buf = nil
		} else {
			r.buf = r.buf[:0]
		}
	case len(r.buf) > 0: // buf is the tail of r.buf
		r.buf = r.buf[:copy(r.buf, buf)]
	default:
		r.buf = append(r.buf[:0], buf...)
	}
	if len(r.buf) > maxBody+http1.MaxHeadBytes+64 {
		return fmt.Errorf("%w: answer larger than the body limit", http1.ErrMalformed)
	}
	return nil
}

// eof completes an answer whose body ran to the end of the connection.
func (r *respReader) eof(pc *pipeConn) {
	if len(r.buf) == 0 {
		return
	}
	c := pc.front()
	if c == nil {
		return
	}
	ok, err := http1.ParseResponseHead(r.buf, c.r.Method == "GET", &r.h)
	if err != nil || !ok || !r.h.UntilEOF {
		return
	}
	body := r.buf[r.h.HeadLen:]
	pc.deliver(c, &r.h, body, len(body) > int(pc.p.opts.MaxBodyBytes))
	r.buf = nil
}
