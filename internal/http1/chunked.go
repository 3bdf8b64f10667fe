package http1

import (
	"bytes"
	"fmt"
)

// Chunked decodes a chunked body as it arrives, in pieces of any size
// (RFC 9112 section 7.1): chunk sizes with extensions, the chunks, the last
// chunk and the trailer section, which is read and dropped. Every line ends
// in CRLF, as net/http requires (a bare LF is refused). The zero value is
// ready for a new body.
type Chunked struct {
	state  chunkState
	remain int64  // bytes left of the current chunk's data
	crlf   int    // bytes of the CRLF after a chunk's data seen
	line   []byte // a size or trailer line split between pieces
	size   int64  // decoded bytes so far
}

type chunkState uint8

const (
	chunkSize chunkState = iota
	chunkData
	chunkDataEnd
	chunkTrailer
	chunkDone
)

// ChunkedBody decodes a chunked body at the start of b if b holds all of
// it: its decoded size and the bytes it takes on the wire (trailers
// included), and the body itself unless it is over max (then nil). wire is
// 0 while b does not hold all of it yet.
func ChunkedBody(b []byte, max int64) (body []byte, size int64, wire int, err error) {
	var measure Chunked
	_, wire, done, err := measure.Feed(nil, b, false)
	if err != nil || !done {
		return nil, measure.Size(), 0, err
	}
	if measure.Size() > max {
		return nil, measure.Size(), wire, nil
	}
	var c Chunked
	body, _, _, _ = c.Feed(make([]byte, 0, measure.Size()), b[:wire], true)
	return body, c.Size(), wire, nil
}

// maxChunkLine bounds a chunk-size or trailer line.
const maxChunkLine = 4096

// Size is the number of body bytes decoded so far.
func (c *Chunked) Size() int64 { return c.size }

// Feed decodes from src. The body's bytes are appended to dst when keep is
// set (otherwise only counted). It returns dst, the bytes of src used, and
// whether the body ended; bytes after the end are not used.
func (c *Chunked) Feed(dst, src []byte, keep bool) (out []byte, used int, done bool, err error) {
	for used < len(src) {
		rest := src[used:]
		switch c.state {
		case chunkData:
			n := int(min(c.remain, int64(len(rest))))
			if keep {
				dst = append(dst, rest[:n]...)
			}
			c.remain -= int64(n)
			c.size += int64(n)
			used += n
			if c.remain == 0 {
				c.state, c.crlf = chunkDataEnd, 0
			}
		case chunkDataEnd:
			if rest[0] != "\r\n"[c.crlf] {
				return dst, used, false, fmt.Errorf("%w: chunk not followed by CRLF", ErrMalformed)
			}
			used++
			if c.crlf++; c.crlf == 2 {
				c.state = chunkSize
			}
		case chunkSize, chunkTrailer:
			line, n, ok, err := c.takeLine(rest)
			used += n
			if err != nil || !ok {
				return dst, used, false, err
			}
			if c.state == chunkTrailer {
				if len(line) == 0 {
					c.state = chunkDone
					return dst, used, true, nil
				}
				continue
			}
			size, err := parseChunkSize(line)
			if err != nil {
				return dst, used, false, err
			}
			if size == 0 {
				c.state = chunkTrailer
			} else {
				c.state, c.remain = chunkData, size
			}
		case chunkDone:
			return dst, used, true, nil
		}
	}
	return dst, used, c.state == chunkDone, nil
}

// takeLine returns the line at the start of b without its CRLF, joined
// to what an earlier piece left, and the bytes of b it took. Without a
// line end in b, it keeps b and returns false.
func (c *Chunked) takeLine(b []byte) (line []byte, n int, ok bool, err error) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		c.line = append(c.line, b...)
		if len(c.line) > maxChunkLine {
			return nil, len(b), false, fmt.Errorf("%w: chunk line over %d bytes", ErrMalformed, maxChunkLine)
		}
		return nil, len(b), false, nil
	}
	line = b[:i]
	if len(c.line) > 0 {
		c.line = append(c.line, line...)
		line = c.line
		c.line = c.line[:0]
	}
	switch {
	case len(line) > maxChunkLine:
		return nil, i + 1, false, fmt.Errorf("%w: chunk line over %d bytes", ErrMalformed, maxChunkLine)
	case len(line) == 0 || line[len(line)-1] != '\r':
		return nil, i + 1, false, fmt.Errorf("%w: chunk line ends in a bare LF", ErrMalformed)
	case bytes.IndexByte(line[:len(line)-1], '\r') >= 0:
		// A bare CR is invalid in HTTP/1.1 (RFC 9112 section 2.2), and
		// readers disagree on where such a line ends: refused, as
		// net/http refuses it.
		return nil, i + 1, false, fmt.Errorf("%w: bare CR in a chunk line", ErrMalformed)
	}
	return line[:len(line)-1], i + 1, true, nil
}

func parseChunkSize(line []byte) (int64, error) {
	if semi := bytes.IndexByte(line, ';'); semi >= 0 {
		line = line[:semi]
	}
	line = bytes.TrimRight(line, " \t")
	if len(line) == 0 || len(line) > 10 {
		return 0, fmt.Errorf("%w: chunk size %q", ErrMalformed, truncateBytes(line, 20))
	}
	var n int64
	for _, b := range line {
		var d byte
		switch {
		case b >= '0' && b <= '9':
			d = b - '0'
		case b|0x20 >= 'a' && b|0x20 <= 'f':
			d = b | 0x20 - 'a' + 10
		default:
			return 0, fmt.Errorf("%w: chunk size %q", ErrMalformed, truncateBytes(line, 20))
		}
		n = n<<4 | int64(d)
	}
	return n, nil
}
