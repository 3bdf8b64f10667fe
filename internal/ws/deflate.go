package ws

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/klauspost/compress/flate"
)

// The permessage-deflate extension (RFC 7692) without context takeover in
// either direction: every message is compressed and decompressed on its
// own, so a connection keeps no compression state between messages, and
// the compressors and decompressors come from pools shared by all.

// DeflateExtension is the Sec-WebSocket-Extensions value the server answers
// with: no context takeover either way, so that no window is kept per
// connection.
const DeflateExtension = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"

// AcceptDeflate reports whether any offer in the client's
// Sec-WebSocket-Extensions values can be answered with [DeflateExtension].
// An offer is declined (and the next one tried) if it has a parameter the
// RFC does not define, one twice, a bad value, or server_max_window_bits
// below 15: the compressor always uses the 32 KiB window, and would break a
// smaller one. client_max_window_bits needs no answer: the decompressor
// reads any window.
func AcceptDeflate(values []string) bool {
	for _, v := range values {
		for offer := range strings.SplitSeq(v, ",") {
			if acceptableOffer(offer) {
				return true
			}
		}
	}
	return false
}

func acceptableOffer(offer string) bool {
	params := strings.Split(offer, ";")
	if strings.TrimSpace(params[0]) != "permessage-deflate" {
		return false
	}
	seen := map[string]bool{}
	for _, p := range params[1:] {
		name, value, hasValue := strings.Cut(strings.TrimSpace(p), "=")
		name = strings.TrimSpace(name)
		value = strings.Trim(strings.TrimSpace(value), `"`)
		if seen[name] {
			return false
		}
		seen[name] = true
		switch name {
		case "server_no_context_takeover", "client_no_context_takeover":
			if hasValue {
				return false
			}
		case "server_max_window_bits":
			if bits, err := strconv.Atoi(value); !hasValue || err != nil || bits != 15 {
				return false
			}
		case "client_max_window_bits":
			if bits, err := strconv.Atoi(value); hasValue && (err != nil || bits < 8 || bits > 15) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// ErrBadDeflate is compressed data that does not inflate.
var ErrBadDeflate = &ProtocolError{CloseInvalidPayload, "invalid compressed data"}

// deflateTail ends a message's compressed bytes: the empty stored block
// the sender stripped (RFC 7692 section 7.2.2), then a final empty block,
// so that the decompressor reaches its end instead of waiting for more.
var deflateTail = []byte{0x00, 0x00, 0xff, 0xff, 0x01, 0x00, 0x00, 0xff, 0xff}

// inflater is a pooled decompressor with the reader it reads from.
type inflater struct {
	src tailReader
	fr  io.ReadCloser
}

// tailReader reads a message's bytes, then deflateTail.
type tailReader struct{ b, tail []byte }

func (t *tailReader) Read(p []byte) (int, error) {
	if len(t.b) == 0 {
		if len(t.tail) == 0 {
			return 0, io.EOF
		}
		t.b, t.tail = t.tail, nil
	}
	n := copy(p, t.b)
	t.b = t.b[n:]
	return n, nil
}

// ReadByte makes tailReader an io.ByteReader: the decompressor then reads
// it as it is, instead of wrapping it in a 4 KiB bufio.Reader per message.
func (t *tailReader) ReadByte() (byte, error) {
	if len(t.b) == 0 {
		if len(t.tail) == 0 {
			return 0, io.EOF
		}
		t.b, t.tail = t.tail, nil
	}
	c := t.b[0]
	t.b = t.b[1:]
	return c, nil
}

var inflaters = sync.Pool{New: func() any {
	f := &inflater{}
	f.fr = flate.NewReader(&f.src)
	return f
}}

// Inflate appends the decompressed form of one message's compressed
// payload to dst. A message that inflates past maxBytes is [ErrTooBig]:
// it is read only that far (a bomb of a few KiB costs buffers up to
// maxBytes, never its inflated size). Data that does not inflate is
// [ErrBadDeflate].
func Inflate(dst, compressed []byte, maxBytes int64) ([]byte, error) {
	f := inflaters.Get().(*inflater)
	defer inflaters.Put(f)
	f.src = tailReader{b: compressed, tail: deflateTail}
	if err := f.fr.(flate.Resetter).Reset(&f.src, nil); err != nil {
		return dst, ErrBadDeflate
	}
	start := len(dst)
	limit := start + int(min(maxBytes, int64(^uint(0)>>2))) + 1 // one byte past the limit tells a bomb
	for {
		if len(dst) == cap(dst) {
			// Double, but never past the limit: a bomb costs the
			// buffers grown up to maxBytes (about 3x maxBytes of
			// allocation in all), whatever it would inflate to.
			grown := make([]byte, len(dst), min(max(2*cap(dst), 4096), limit))
			copy(grown, dst)
			dst = grown
		}
		// Never ask for more than one byte past the limit.
		room := min(cap(dst)-len(dst), limit-len(dst))
		n, err := f.fr.Read(dst[len(dst) : len(dst)+room])
		dst = dst[:len(dst)+n]
		if int64(len(dst)-start) > maxBytes {
			return dst[:start], ErrTooBig
		}
		switch {
		case errors.Is(err, io.EOF):
			return dst, nil
		case err != nil:
			return dst[:start], ErrBadDeflate
		}
	}
}

// deflater is a pooled compressor writing into buf.
type deflater struct {
	buf bytes.Buffer
	fw  *flate.Writer
}

// DeflateLevel is the compression level ws2api uses: the fastest of
// klauspost/compress's levels, which on small JSON gives nearly the ratio
// of the default level (BENCHMARKS.md, "Compression").
const DeflateLevel = flate.BestSpeed

var deflaters = sync.Pool{New: func() any {
	d := &deflater{}
	d.fw, _ = flate.NewWriter(&d.buf, DeflateLevel)
	return d
}}

// AppendDeflated appends one message's payload compressed for a frame
// with RSV1 set: deflated on its own, the final empty block stripped.
func AppendDeflated(dst, payload []byte) []byte {
	d := deflaters.Get().(*deflater)
	defer deflaters.Put(d)
	d.buf.Reset()
	d.fw.Reset(&d.buf)
	_, _ = d.fw.Write(payload)
	_ = d.fw.Flush()
	out := d.buf.Bytes()
	out = out[:len(out)-4] // the 00 00 ff ff of the flush
	if d.buf.Cap() > 256<<10 {
		d.buf = bytes.Buffer{} // do not keep a large buffer in the pool
	}
	if len(out) == 0 {
		out = []byte{0x00} // an empty message: one empty block (RFC 7692 section 7.2.3.6)
	}
	return append(dst, out...)
}

// AppendCompressedHeader appends the header of an unfragmented, unmasked
// frame (server to client) whose n-byte payload is deflated
// (AppendDeflated): RSV1 set.
func AppendCompressedHeader(dst []byte, op Opcode, n int) []byte {
	start := len(dst)
	dst = AppendHeader(dst, op, true, n, nil)
	dst[start] |= rsv1
	return dst
}

// AppendCompressedFrame appends a whole such frame.
func AppendCompressedFrame(dst []byte, op Opcode, deflated []byte) []byte {
	return append(AppendCompressedHeader(dst, op, len(deflated)), deflated...)
}

const rsv1 = 0x40
