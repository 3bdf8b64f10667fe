package upstream

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ws2api/ws2api/internal/http1"
)

// h2Reader parses the frames an API sends on one [h2Conn], on its poller.
// The Framer reads a frame only once the bytes of all of it (and of every
// CONTINUATION of a header block) have arrived, so it never waits.
type h2Reader struct {
	pc      *h2Conn
	in      []byte // bytes of a frame split between reads
	src     frameSrc
	fr      *http2.Framer
	settled bool     // the API's first frame, SETTINGS, has come
	free    [][]byte // body buffers of answers delivered, for the next ones
}

// recycle keeps a delivered answer's body buffer for another answer (its
// callback has returned: nothing refers to it).
func (r *h2Reader) recycle(b []byte) {
	if cap(b) > 0 && cap(b) <= 64<<10 && len(r.free) < 64 {
		r.free = append(r.free, b[:0])
	}
}

// buffer returns a body buffer for an answer.
func (r *h2Reader) buffer() []byte {
	if n := len(r.free); n > 0 {
		b := r.free[n-1]
		r.free = r.free[:n-1]
		return b
	}
	return nil
}

// frameSrc hands the Framer the frames already known to be whole.
type frameSrc struct{ b []byte }

func (s *frameSrc) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, errors.New("h2: read past the frames at hand") // never: frameSpan checked
	}
	n := copy(p, s.b)
	s.b = s.b[n:]
	return n, nil
}

const h2MaxReadFrame = 16384 // ws2api never raises SETTINGS_MAX_FRAME_SIZE

func (r *h2Reader) init(pc *h2Conn) {
	r.pc = pc
	r.fr = http2.NewFramer(nil, &r.src)
	r.fr.SetMaxReadFrameSize(h2MaxReadFrame)
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	r.fr.MaxHeaderListSize = http1.MaxHeadBytes
}

// feed parses what arrived. An error ends the connection.
func (r *h2Reader) feed(data []byte) error {
	buf := data
	if len(r.in) > 0 {
		r.in = append(r.in, data...)
		buf = r.in
	}
	if !r.settled && bytes.HasPrefix(buf, []byte("HTTP/")) {
		return fmt.Errorf("%w: %s does not speak HTTP/2 (it answered %q): use an http:// URL for it", http1.ErrMalformed, r.pc.h.addr, firstLine(buf))
	}
	for {
		n, err := frameSpan(buf)
		if err != nil {
			return fmt.Errorf("%w: %w", http1.ErrMalformed, err)
		}
		if n == 0 {
			break
		}
		r.src.b = buf[:n]
		for len(r.src.b) > 0 {
			f, err := r.fr.ReadFrame()
			if err != nil {
				var se http2.StreamError
				if errors.As(err, &se) {
					r.pc.refuse(se.StreamID, se.Code, err)
					continue
				}
				return fmt.Errorf("%w: HTTP/2: %w", http1.ErrMalformed, err)
			}
			if err := r.handle(f); err != nil {
				return err
			}
		}
		buf = buf[n:]
	}
	switch {
	case len(buf) == 0:
		r.in = r.in[:0]
		if cap(r.in) > 256<<10 {
			r.in = nil
		}
	case len(r.in) > 0:
		r.in = r.in[:copy(r.in, buf)]
	default:
		r.in = append(r.in[:0], buf...)
	}
	return nil
}

// firstLine returns b's first line, at most 80 bytes of it.
func firstLine(b []byte) []byte {
	if i := bytes.IndexAny(b, "\r\n"); i >= 0 {
		b = b[:i]
	}
	return b[:min(len(b), 80)]
}

// frameSpan returns how many bytes at the start of b hold one whole frame,
// or a whole header block (HEADERS and its CONTINUATIONs, which the
// Framer reads as one), or 0 if they have not all arrived.
func frameSpan(b []byte) (int, error) {
	off := 0
	for {
		if len(b)-off < 9 {
			return 0, nil
		}
		length := int(b[off])<<16 | int(b[off+1])<<8 | int(b[off+2])
		typ, flags := http2.FrameType(b[off+3]), http2.Flags(b[off+4])
		if length > h2MaxReadFrame {
			return 0, fmt.Errorf("HTTP/2 frame of %d bytes, over the %d announced", length, h2MaxReadFrame)
		}
		if len(b)-off < 9+length {
			return 0, nil
		}
		off += 9 + length
		block := typ == http2.FrameHeaders || typ == http2.FrameContinuation || typ == http2.FramePushPromise
		if !block || flags.Has(http2.FlagHeadersEndHeaders) {
			return off, nil
		}
		if off > http1.MaxHeadBytes+64<<10 {
			return 0, fmt.Errorf("HTTP/2 header block over %d bytes", http1.MaxHeadBytes)
		}
	}
}

// handle acts on one frame from the API.
func (r *h2Reader) handle(f http2.Frame) error {
	pc := r.pc
	if !r.settled {
		if _, ok := f.(*http2.SettingsFrame); !ok {
			return fmt.Errorf("%w: HTTP/2: the API's first frame is %v, not SETTINGS", http1.ErrMalformed, f.Header().Type)
		}
		r.settled = true
	}
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		if err := pc.settings(f); err != nil {
			return err
		}
		pc.h.serveWaiting() // the stream limit may have grown
	case *http2.MetaHeadersFrame:
		return r.headers(f)
	case *http2.DataFrame:
		return r.data(f)
	case *http2.RSTStreamFrame:
		pc.reset(f.StreamID, f.ErrCode, fmt.Errorf("the API reset the stream: %v", f.ErrCode))
	case *http2.GoAwayFrame:
		pc.goAway(f.LastStreamID, f.ErrCode)
	case *http2.PingFrame:
		if !f.IsAck() {
			return pc.write(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
		}
	case *http2.WindowUpdateFrame:
		return pc.windowUpdate(f.StreamID, f.Increment)
	case *http2.PushPromiseFrame:
		return fmt.Errorf("%w: HTTP/2: PUSH_PROMISE although push is disabled", http1.ErrMalformed)
	}
	return nil // PRIORITY and unknown frame types are ignored
}

// stream returns open stream id, or nil; an id never opened is an error.
func (r *h2Reader) stream(id uint32) (*h2Stream, error) {
	pc := r.pc
	pc.mu.Lock()
	defer pc.mu.Unlock()
	s := pc.open[id]
	if s == nil && (id >= pc.nextID || id%2 == 0) {
		return nil, fmt.Errorf("%w: HTTP/2: a frame for stream %d, which ws2api never opened", http1.ErrMalformed, id)
	}
	return s, nil // nil: a stream that ended (reset after a timeout)
}

func (r *h2Reader) headers(f *http2.MetaHeadersFrame) error {
	s, err := r.stream(f.StreamID)
	if s == nil {
		return err
	}
	if s.headed { // trailers: dropped
		if !f.StreamEnded() {
			r.pc.refuse(s.id, http2.ErrCodeProtocol, errors.New("HTTP/2 trailers without END_STREAM"))
			return nil
		}
		r.end(s)
		return nil
	}
	if f.Truncated {
		r.pc.refuse(s.id, http2.ErrCodeProtocol, fmt.Errorf("an answer's headers over %d bytes", http1.MaxHeadBytes))
		return nil
	}
	status, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || status < 100 || status > 999 {
		r.pc.refuse(s.id, http2.ErrCodeProtocol, fmt.Errorf("an answer with :status %q", f.PseudoValue("status")))
		return nil
	}
	if status < 200 {
		if f.StreamEnded() {
			r.pc.refuse(s.id, http2.ErrCodeProtocol, errors.New("an interim answer that ends the stream"))
		}
		return nil // 100 Continue and the like: the answer follows
	}
	s.headed, s.status, s.resp = true, status, r.buffer()
	for _, hf := range f.RegularFields() {
		if hf.Name == "content-length" {
			n, err := strconv.Atoi(hf.Value)
			if err != nil || n < 0 {
				r.pc.refuse(s.id, http2.ErrCodeProtocol, fmt.Errorf("content-length %q", hf.Value))
				return nil
			}
			s.length = n
		}
		if s.keepAll || hf.Name == "content-type" {
			s.header = append(s.header, Header{Name: hf.Name, Value: hf.Value})
		}
	}
	if f.StreamEnded() {
		r.end(s)
	}
	return nil
}

func (r *h2Reader) data(f *http2.DataFrame) error {
	pc := r.pc
	// Every DATA byte counts against the connection's window, whoever it
	// was for; it is given back as it is taken.
	n := int(f.Length)
	pc.mu.Lock()
	pc.recvAcked += n
	if pc.recvAcked >= h2AckEvery {
		_ = pc.fr.WriteWindowUpdate(0, uint32(pc.recvAcked))
		pc.recvAcked = 0
		pc.scheduleFlush()
	}
	pc.mu.Unlock()
	s, err := r.stream(f.StreamID)
	if s == nil {
		return err
	}
	if !s.headed {
		pc.refuse(s.id, http2.ErrCodeProtocol, errors.New("HTTP/2 DATA before the answer's headers"))
		return nil
	}
	data := f.Data()
	s.got += len(data)
	switch {
	case s.over:
	case len(s.resp)+len(data) > int(pc.h.opts.MaxBodyBytes):
		s.over, s.resp = true, nil
	default:
		s.resp = append(s.resp, data...)
	}
	if f.StreamEnded() {
		r.end(s)
		return nil
	}
	if s.unacked += n; s.unacked >= h2AckEvery {
		inc := s.unacked
		s.unacked = 0
		return pc.write(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(s.id, uint32(inc)) })
	}
	return nil
}

// end completes a stream whose answer is whole, unless its length is not
// the one announced.
func (r *h2Reader) end(s *h2Stream) {
	if s.length >= 0 && s.length != s.got {
		r.pc.refuse(s.id, http2.ErrCodeProtocol, fmt.Errorf("an answer of %d bytes whose content-length said %d", s.got, s.length))
		return
	}
	r.pc.complete(s)
}

// settings applies the API's SETTINGS and acknowledges them.
func (pc *h2Conn) settings(f *http2.SettingsFrame) error {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingMaxConcurrentStreams:
			pc.peerMax.Store(int32(min(st.Val, h2MaxStreams)))
		case http2.SettingInitialWindowSize:
			delta := int64(st.Val) - pc.initWin
			for _, s := range pc.open {
				s.sendWin += delta
			}
			pc.initWin = int64(st.Val)
		case http2.SettingMaxFrameSize:
			pc.maxFrame = int(st.Val)
		case http2.SettingHeaderTableSize:
			pc.enc.SetMaxDynamicTableSizeLimit(st.Val)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w: HTTP/2 SETTINGS: %w", http1.ErrMalformed, err)
	}
	_ = pc.fr.WriteSettingsAck()
	pc.pump()
	pc.scheduleFlush()
	return nil
}

// windowUpdate grows a send window and sends what it lets through.
func (pc *h2Conn) windowUpdate(id, inc uint32) error {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if id == 0 {
		if pc.sendWin += int64(inc); pc.sendWin > h2MaxStreamID {
			return fmt.Errorf("%w: HTTP/2: the connection's window over 2^31-1", http1.ErrMalformed)
		}
	} else if s := pc.open[id]; s != nil {
		s.sendWin += int64(inc) // a stream's overflow is the API's loss: it only grows what we may send
	}
	pc.pump()
	pc.scheduleFlush()
	return nil
}
