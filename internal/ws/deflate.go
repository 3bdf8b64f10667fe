package ws

import (
	"bytes"
	"errors"
	"io"
	"slices"
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
	src     tailReader
	fr      io.ReadCloser
	scratch [8 << 10]byte // where a large message is measured
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
// payload to dst. A message that inflates past maxBytes is [ErrTooBig],
// found without allocating its size: a message that does not fit in
// inflateDirect bytes is first only measured, through a fixed scratch
// buffer, and inflated a second time into a buffer of exactly its size if
// it is within the limit. A bomb of a few KiB that would inflate to
// gigabytes costs the scratch buffer and the CPU to inflate maxBytes, no
// memory. Data that does not inflate is [ErrBadDeflate].
func Inflate(dst, compressed []byte, maxBytes int64) ([]byte, error) {
	f := inflaters.Get().(*inflater)
	defer inflaters.Put(f)
	start := len(dst)
	// Most messages are small: inflate straight into dst, up to
	// inflateDirect bytes.
	direct := min(maxBytes, inflateDirect)
	dst, n, err := f.inflate(dst, compressed, direct+1)
	switch {
	case err != nil:
		return dst[:start], err
	case n <= direct:
		return dst, nil
	case maxBytes <= inflateDirect:
		return dst[:start], ErrTooBig
	}
	// Larger: measure it first, into the scratch buffer.
	size, err := f.measure(compressed, maxBytes+1)
	switch {
	case err != nil:
		return dst[:start], err
	case size > maxBytes:
		return dst[:start], ErrTooBig
	}
	dst = slices.Grow(dst[:start], int(size))
	dst, _, err = f.inflate(dst, compressed, size)
	if err != nil {
		return dst[:start], err
	}
	return dst, nil
}

// inflateDirect is the size up to which a message is inflated in one pass.
const inflateDirect = 32 << 10

// reset starts the decompressor on a message's bytes.
func (f *inflater) reset(compressed []byte) error {
	f.src = tailReader{b: compressed, tail: deflateTail}
	if err := f.fr.(flate.Resetter).Reset(&f.src, nil); err != nil {
		return ErrBadDeflate
	}
	return nil
}

// inflate appends to dst at most limit bytes of the message, growing dst
// as needed, and returns how many it appended: limit means there may be
// more.
func (f *inflater) inflate(dst, compressed []byte, limit int64) ([]byte, int64, error) {
	if err := f.reset(compressed); err != nil {
		return dst, 0, err
	}
	start := len(dst)
	for int64(len(dst)-start) < limit {
		if len(dst) == cap(dst) {
			dst = slices.Grow(dst, int(min(int64(max(cap(dst), 4096)), limit-int64(len(dst)-start))))
		}
		room := min(int64(cap(dst)-len(dst)), limit-int64(len(dst)-start))
		n, err := f.fr.Read(dst[len(dst) : len(dst)+int(room)])
		dst = dst[:len(dst)+n]
		switch {
		case errors.Is(err, io.EOF):
			return dst, int64(len(dst) - start), nil
		case err != nil:
			return dst, 0, ErrBadDeflate
		}
	}
	return dst, limit, nil
}

// measure inflates the message into the scratch buffer, counting, and
// stops at limit bytes.
func (f *inflater) measure(compressed []byte, limit int64) (int64, error) {
	if err := f.reset(compressed); err != nil {
		return 0, err
	}
	var total int64
	for total < limit {
		n, err := f.fr.Read(f.scratch[:min(int64(len(f.scratch)), limit-total)])
		total += int64(n)
		switch {
		case errors.Is(err, io.EOF):
			return total, nil
		case err != nil:
			return 0, ErrBadDeflate
		}
	}
	return total, nil
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
