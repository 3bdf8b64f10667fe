package upstream

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/ws2api/ws2api/internal/http1"
)

// errAnnounced ends a connection after an answer that said
// Connection: close (or came from an HTTP/1.0 server): the answer is
// whole, and the connection takes no other request.
var errAnnounced = errors.New("connection: close")

// respReader turns a connection's incoming bytes into the answer to its
// one request in flight, in every framing a server uses: Content-Length,
// chunked (trailers dropped), a body that runs to the connection's end,
// and interim 1xx answers before the final one. A body that arrives whole
// within one read is handed on without a copy.
type respReader struct {
	state   readState
	head    []byte // bytes of a head split between reads
	h       http1.ResponseHead
	remain  int // Content-Length bytes still to come
	body    []byte
	chunked http1.Chunked
	over    bool // the body passed MaxBodyBytes: counted, not kept
	resp    Response
}

type readState uint8

const (
	readHead readState = iota
	readLength
	readChunked
	readToEOF
)

// feed parses what arrived and completes the connection's request when
// its answer is whole. It returns errAnnounced after an answer that ends
// the connection, or the error that makes the connection unusable: bytes
// with no request waiting for them, or more bytes than the answer's
// framing says (a server that lied about its length: the answer is not
// delivered, since it cannot be told what is in it).
func (r *respReader) feed(pc *apiConn, data []byte) error {
	maxBody := int(pc.h.opts.MaxBodyBytes)
	for len(data) > 0 {
		switch r.state {
		case readHead:
			if len(r.head) == 0 {
				// Some servers end an answer with a stray CRLF: between
				// answers, empty lines are skipped (RFC 9112 section 2.2).
				if data = bytes.TrimLeft(data, "\r\n"); len(data) == 0 {
					return nil
				}
			}
			keepAll, ok := pc.answering()
			if !ok {
				return fmt.Errorf("%w: %d bytes with no request waiting for them", http1.ErrMalformed, len(data))
			}
			buf := data
			if len(r.head) > 0 {
				r.head = append(r.head, data...)
				buf = r.head
			}
			ok, err := http1.ParseResponseHead(buf, keepAll, &r.h)
			if err != nil {
				return err
			}
			if !ok {
				if len(r.head) == 0 {
					r.head = append(r.head, data...)
				}
				return nil
			}
			data = buf[r.h.HeadLen:]
			r.head = r.head[:0]
			if r.h.Status < 200 {
				continue // 100 Continue and the like: the answer follows
			}
			r.body, r.over = r.body[:0], false
			switch {
			case r.h.Chunked:
				r.state, r.chunked = readChunked, http1.Chunked{}
			case r.h.UntilEOF:
				r.state = readToEOF
			case r.h.Length > maxBody:
				r.state, r.remain, r.over = readLength, r.h.Length, true
			case len(data) >= r.h.Length:
				// The whole body has arrived: no copy (it is handed on
				// before r.head or the read buffer is used again).
				body := data[:r.h.Length]
				data = data[r.h.Length:]
				if err := r.finish(pc, body, data); err != nil {
					return err
				}
			default:
				r.state, r.remain = readLength, r.h.Length
			}
		case readLength:
			n := min(r.remain, len(data))
			if !r.over {
				r.body = append(r.body, data[:n]...)
			}
			r.remain -= n
			data = data[n:]
			if r.remain == 0 {
				if err := r.finish(pc, r.body, data); err != nil {
					return err
				}
			}
		case readChunked:
			var n int
			var done bool
			var err error
			r.body, n, done, err = r.chunked.Feed(r.body, data, !r.over)
			if err != nil {
				return err
			}
			data = data[n:]
			if r.chunked.Size() > int64(maxBody) && !r.over {
				r.over, r.body = true, r.body[:0]
			}
			if done {
				if err := r.finish(pc, r.body, data); err != nil {
					return err
				}
			}
		case readToEOF:
			if !r.over {
				r.body = append(r.body, data...)
				if len(r.body) > maxBody {
					r.over, r.body = true, r.body[:0]
				}
			}
			return nil
		}
	}
	return nil
}

// finish delivers a whole answer; rest is what arrived after it.
func (r *respReader) finish(pc *apiConn, body, rest []byte) error {
	r.state = readHead
	if len(bytes.TrimLeft(rest, "\r\n")) > 0 {
		return fmt.Errorf("%w: %d bytes past the end of the answer its head announced", http1.ErrMalformed, len(rest))
	}
	body = r.keep(body)
	pc.complete(&r.h, body, r.over)
	if r.h.Close {
		return errAnnounced
	}
	return nil
}

// keep returns body, or nothing if it was over the limit. A large buffer
// is not kept for the next answer (body still holds it until delivered).
func (r *respReader) keep(body []byte) []byte {
	if cap(r.body) > 256<<10 {
		r.body = nil
	}
	if r.over {
		return nil
	}
	return body
}

// eof completes an answer whose body ran to the end of the connection.
// Any other answer cut short by the close is not delivered: the request
// fails (it may have been processed).
func (r *respReader) eof(pc *apiConn) {
	if r.state != readToEOF {
		return
	}
	r.state = readHead
	pc.complete(&r.h, r.keep(r.body), r.over)
}
