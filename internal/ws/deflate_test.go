package ws

import (
	"bytes"
	stdflate "compress/flate"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
)

// What ws2api deflates, the standard library inflates (as a browser's zlib
// would), and what the standard library deflates in a client's way
// (sync flush, tail stripped), ws2api inflates.
func TestDeflateInteroperatesWithTheStandardLibrary(t *testing.T) {
	msgs := [][]byte{
		nil, []byte("x"),
		[]byte(`[2,"19223201","BootNotification",{"chargePointVendor":"VendorX","chargePointModel":"SingleSocketCharger"}]`),
		bytes.Repeat([]byte(`{"sampledValue":[{"value":"1234.5","measurand":"Energy.Active.Import.Register"}]}`), 2000),
	}
	for _, m := range msgs {
		ours := AppendDeflated(nil, m)
		r := stdflate.NewReader(io.MultiReader(bytes.NewReader(ours), bytes.NewReader(deflateTail)))
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, m) {
			t.Fatalf("stdlib inflating ours (%d bytes): %v, %d bytes back", len(m), err, len(got))
		}
		var buf bytes.Buffer
		w, _ := stdflate.NewWriter(&buf, stdflate.DefaultCompression)
		w.Write(m)
		w.Flush()
		theirs := bytes.TrimSuffix(buf.Bytes(), []byte{0, 0, 0xff, 0xff})
		got, err = Inflate(nil, theirs, 1<<30)
		if err != nil || !bytes.Equal(got, m) {
			t.Fatalf("inflating the stdlib's (%d bytes): %v, %d bytes back", len(m), err, len(got))
		}
	}
}

// Messages on both sides of the one-pass size inflate whole, and a
// message exactly at the limit passes while one byte more does not.
func TestInflateAroundItsSizes(t *testing.T) {
	for _, n := range []int{0, 1, inflateDirect - 1, inflateDirect, inflateDirect + 1, 100_000} {
		m := bytes.Repeat([]byte("abcdefgh"), n/8+1)[:n]
		d := AppendDeflated(nil, m)
		if got, err := Inflate(nil, d, int64(n)); err != nil || !bytes.Equal(got, m) {
			t.Errorf("%d bytes at a limit of %d: %v, %d back", n, n, err, len(got))
		}
		if n > 0 {
			if _, err := Inflate(nil, d, int64(n-1)); !errors.Is(err, ErrTooBig) {
				t.Errorf("%d bytes at a limit of %d: %v, want ErrTooBig", n, n-1, err)
			}
		}
		prefix := []byte("kept:")
		if got, err := Inflate(prefix, d, 1<<20); err != nil || !bytes.Equal(got, append([]byte("kept:"), m...)) {
			t.Errorf("%d bytes after a prefix: %v", n, err)
		}
	}
}

// A few KiB that inflate to 64 MiB are refused at the limit: ErrTooBig,
// having allocated nothing of the limit's size, let alone 64 MiB (the
// message is measured before a buffer is made for it).
func TestInflateStopsABombAtTheLimit(t *testing.T) {
	var buf bytes.Buffer
	w, _ := stdflate.NewWriter(&buf, stdflate.BestCompression)
	zeros := make([]byte, 1<<20)
	for range 64 {
		w.Write(zeros)
	}
	w.Flush()
	bomb := bytes.TrimSuffix(buf.Bytes(), []byte{0, 0, 0xff, 0xff})
	if len(bomb) > 128<<10 {
		t.Fatalf("the bomb is %d bytes", len(bomb))
	}
	Inflate(nil, []byte{0x00}, 1) // warm the pool
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := Inflate(nil, bomb, 1<<20)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTooBig) {
		t.Fatalf("got %v, want ErrTooBig", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 256<<10 { // the one-pass buffer, and under -race a new decompressor (the pool drops some)
		t.Errorf("inflating a %d-byte bomb to its 1 MiB limit allocated %d bytes", len(bomb), n)
	}
}

func TestInflateRefusesCorruptData(t *testing.T) {
	for _, b := range [][]byte{{0xff, 0xff, 0xff}, {0x07}, []byte("not deflate at all, really")} {
		if _, err := Inflate(nil, b, 1<<20); !errors.Is(err, ErrBadDeflate) {
			t.Errorf("%q: got %v, want ErrBadDeflate (1007)", b, err)
		}
	}
}

func TestAcceptDeflate(t *testing.T) {
	for _, tc := range []struct {
		offer string
		ok    bool
	}{
		{"permessage-deflate", true},
		{"permessage-deflate; client_max_window_bits", true},    // Chromium, Node's ws
		{"permessage-deflate; client_max_window_bits=12", true}, // Python's websockets
		{"permessage-deflate; server_no_context_takeover; client_no_context_takeover", true},
		{"permessage-deflate; server_max_window_bits=15", true},
		{"permessage-deflate; server_max_window_bits=10", false},                    // cannot be honoured
		{"permessage-deflate; server_max_window_bits=10, permessage-deflate", true}, // the fallback offer
		{"permessage-deflate; client_max_window_bits=16", false},
		{"permessage-deflate; server_no_context_takeover=1", false},
		{"permessage-deflate; server_no_context_takeover; server_no_context_takeover", false},
		{"permessage-deflate; x-unknown", false},
		{"x-webkit-deflate-frame", false},
		{"", false},
	} {
		if got := AcceptDeflate([]string{tc.offer}); got != tc.ok {
			t.Errorf("%q: %v, want %v", tc.offer, got, tc.ok)
		}
	}
}

// maskedFrame encodes a client frame with RSV1 as given.
func maskedFrame(op Opcode, fin, compressed bool, payload []byte) []byte {
	key := [4]byte{1, 2, 3, 4}
	b := AppendHeader(nil, op, fin, len(payload), &key)
	if compressed {
		b[0] |= rsv1
	}
	start := len(b)
	b = append(b, payload...)
	Mask(b[start:], key, 0)
	return b
}

func TestReaderInflatesCompressedMessages(t *testing.T) {
	text := strings.Repeat("MeterValues ", 500)
	d := AppendDeflated(nil, []byte(text))
	r := Reader{Deflate: true}
	m, _, err := r.Next(maskedFrame(OpText, true, true, d), Server, 1<<20)
	if err != nil || string(m.Payload) != text {
		t.Fatalf("one frame: %v", err)
	}
	r.Release()
	// Fragmented: RSV1 on the first frame only.
	half := len(d) / 2
	if _, n, err := r.Next(maskedFrame(OpBinary, false, true, d[:half]), Server, 1<<20); err != nil || n == 0 {
		t.Fatal(err)
	}
	m, _, err = r.Next(maskedFrame(OpContinuation, true, false, d[half:]), Server, 1<<20)
	if err != nil || string(m.Payload) != text || m.Op != OpBinary {
		t.Fatalf("fragmented: %v %v", m.Op, err)
	}
	// Too big once inflated: 1009.
	if _, _, err := r.Next(maskedFrame(OpText, true, true, d), Server, 100); !errors.Is(err, ErrTooBig) {
		t.Errorf("inflating past the limit: %v", err)
	}
	// Not valid UTF-8 once inflated: 1007.
	if _, _, err := r.Next(maskedFrame(OpText, true, true, AppendDeflated(nil, []byte{0xff, 0xfe})), Server, 1<<20); !errors.Is(err, ErrInvalidUTF8) {
		t.Errorf("invalid UTF-8 inside: %v", err)
	}
	// Uncompressed messages still pass on a compressing connection.
	if m, _, err := r.Next(maskedFrame(OpText, true, false, []byte("plain")), Server, 1<<20); err != nil || string(m.Payload) != "plain" {
		t.Errorf("plain message: %v", err)
	}
}

func TestReaderRefusesRSV1WhereItIsNotAllowed(t *testing.T) {
	d := AppendDeflated(nil, []byte("hello"))
	for name, frames := range map[string][][]byte{
		"not negotiated":  {maskedFrame(OpText, true, true, d)},
		"on a ping":       {maskedFrame(OpPing, true, true, nil)},
		"on continuation": {maskedFrame(OpText, false, true, d[:2]), maskedFrame(OpContinuation, true, true, d[2:])},
	} {
		r := Reader{Deflate: name != "not negotiated"}
		var err error
		for _, f := range frames {
			if _, _, err = r.Next(f, Server, 1<<20); err != nil {
				break
			}
		}
		var pe *ProtocolError
		if !errors.As(err, &pe) || pe.Code != CloseProtocolError {
			t.Errorf("RSV1 %s: %v, want close 1002", name, err)
		}
	}
}

func FuzzInflate(f *testing.F) {
	f.Add(AppendDeflated(nil, []byte(`[2,"1","Heartbeat",{}]`)))
	f.Add([]byte{0x00})
	f.Add([]byte{0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := Inflate(nil, b, 64<<10)
		if err == nil && len(out) > 64<<10 {
			t.Fatalf("%d bytes past the limit", len(out))
		}
		if err == nil {
			if back, err := Inflate(nil, AppendDeflated(nil, out), 64<<10); err != nil || !bytes.Equal(back, out) {
				t.Fatalf("round trip of %d bytes: %v", len(out), err)
			}
		}
	})
}
