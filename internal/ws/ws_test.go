package ws

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

var testKey = [4]byte{0x12, 0x34, 0x56, 0x78}

func TestAcceptKeyRFCExample(t *testing.T) {
	// RFC 6455 section 1.3.
	if got, want := AcceptKey("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="; got != want {
		t.Fatalf("AcceptKey = %q, want %q", got, want)
	}
	if !ValidKey("dGhlIHNhbXBsZSBub25jZQ==") {
		t.Fatal("RFC example key rejected")
	}
	for _, k := range []string{"", "abc", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZQ=!"} {
		if ValidKey(k) {
			t.Errorf("ValidKey(%q) = true", k)
		}
	}
}

func TestFrameRoundTripAllLengths(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 0xffff, 0x10000, 70000} {
		payload := bytes.Repeat([]byte{'x'}, n)
		for i := range payload {
			payload[i] = byte(i)
		}
		wire := AppendFrame(nil, OpBinary, payload, &testKey)
		// Feed the frame one byte short: must ask for more.
		if _, got, err := ParseFrame(append([]byte(nil), wire[:len(wire)-1]...), Server, 1<<20); err != nil || got != 0 {
			t.Fatalf("n=%d: short frame: consumed %d, err %v", n, got, err)
		}
		f, got, err := ParseFrame(wire, Server, 1<<20)
		if err != nil || got != len(wire) {
			t.Fatalf("n=%d: consumed %d of %d, err %v", n, got, len(wire), err)
		}
		if !f.Fin || f.Op != OpBinary || !bytes.Equal(f.Payload, payload) {
			t.Fatalf("n=%d: frame mismatch (fin %v op %v len %d)", n, f.Fin, f.Op, len(f.Payload))
		}
		// Server to client: unmasked.
		wire = AppendFrame(nil, OpText, payload, nil)
		f, got, err = ParseFrame(wire, Client, 1<<20)
		if err != nil || got != len(wire) || !bytes.Equal(f.Payload, payload) {
			t.Fatalf("n=%d unmasked: consumed %d, err %v", n, got, err)
		}
	}
}

func TestMaskInPiecesMatchesWhole(t *testing.T) {
	data := []byte(strings.Repeat("abcdefghij", 10))
	whole := append([]byte(nil), data...)
	Mask(whole, testKey, 0)
	pieces := append([]byte(nil), data...)
	pos := 0
	for _, cut := range [][2]int{{0, 3}, {3, 40}, {40, 41}, {41, 100}} {
		pos = Mask(pieces[cut[0]:cut[1]], testKey, pos)
	}
	if !bytes.Equal(whole, pieces) {
		t.Fatal("masking in pieces differs from masking at once")
	}
}

func TestParseFrameRejects(t *testing.T) {
	masked := func(b0 byte, payload []byte) []byte {
		w := AppendHeader(nil, Opcode(b0&0x0f), b0&0x80 != 0, len(payload), &testKey)
		w[0] = b0
		return append(w, payload...)
	}
	cases := []struct {
		name string
		wire []byte
		role Role
		want error
	}{
		{"rsv1", masked(0x80|0x40|byte(OpText), nil), Server, ErrReservedBits},
		{"reserved opcode 3", masked(0x80|0x3, nil), Server, ErrReservedOpcode},
		{"reserved opcode 0xB", masked(0x80|0xB, nil), Server, ErrReservedOpcode},
		{"unmasked from client", AppendFrame(nil, OpText, []byte("hi"), nil), Server, ErrUnmasked},
		{"masked from server", AppendFrame(nil, OpText, []byte("hi"), &testKey), Client, ErrMasked},
		{"fragmented ping", masked(byte(OpPing), nil), Server, ErrControlFragment},
		{"long ping", masked(0x80|byte(OpPing), make([]byte, 126)), Server, ErrControlTooLong},
		{"too big", AppendFrame(nil, OpBinary, make([]byte, 101), &testKey), Server, ErrTooBig},
		{"non-minimal 16-bit length", []byte{0x82, 0x80 | 126, 0, 5, 1, 2, 3, 4}, Server, ErrBadLength},
		{"64-bit length with top bit", []byte{0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0}, Server, ErrBadLength},
	}
	for _, c := range cases {
		_, _, err := ParseFrame(c.wire, c.role, 100)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
}

func TestReaderJoinsFragmentsAroundControlFrames(t *testing.T) {
	var wire []byte
	wire = append(AppendHeader(wire, OpText, false, 3, &testKey), maskCopy("hel")...)
	wire = AppendFrame(wire, OpPing, []byte("p"), &testKey)
	wire = append(AppendHeader(wire, OpContinuation, false, 2, &testKey), maskCopy("lo")...)
	wire = append(AppendHeader(wire, OpContinuation, true, 6, &testKey), maskCopy(" world")...)
	var r Reader
	var got []Message
	for len(wire) > 0 {
		m, n, err := r.Next(wire, Server, 100)
		if err != nil || n == 0 {
			t.Fatalf("Next: n=%d err=%v", n, err)
		}
		wire = wire[n:]
		if m.Op != 0 {
			got = append(got, Message{Op: m.Op, Payload: append([]byte(nil), m.Payload...)})
		}
	}
	if len(got) != 2 || got[0].Op != OpPing || got[1].Op != OpText || string(got[1].Payload) != "hello world" {
		t.Fatalf("messages = %+v", got)
	}
}

func TestReaderRejects(t *testing.T) {
	frag := func(op Opcode, fin bool, s string) []byte {
		return append(AppendHeader(nil, op, fin, len(s), &testKey), maskCopy(s)...)
	}
	cases := []struct {
		name   string
		frames [][]byte
		max    int64
		want   error
	}{
		{"continuation first", [][]byte{frag(OpContinuation, true, "x")}, 100, ErrUnexpectedCont},
		{"text inside text", [][]byte{frag(OpText, false, "a"), frag(OpText, true, "b")}, 100, ErrExpectedCont},
		{"invalid utf8", [][]byte{frag(OpText, true, "\xff\xfe")}, 100, ErrInvalidUTF8},
		{"invalid utf8 across fragments", [][]byte{frag(OpText, false, "\xe2\x82"), frag(OpContinuation, true, "\x28")}, 100, ErrInvalidUTF8},
		{"fragments over limit", [][]byte{frag(OpBinary, false, "123456"), frag(OpContinuation, true, "7890")}, 8, ErrTooBig},
	}
	for _, c := range cases {
		var r Reader
		var err error
		for _, f := range c.frames {
			if _, _, err = r.Next(f, Server, c.max); err != nil {
				break
			}
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
	// A text message split inside a multi-byte rune is valid once joined.
	var r Reader
	if _, _, err := r.Next(frag(OpText, false, "\xe2\x82"), Server, 100); err != nil {
		t.Fatal(err)
	}
	m, _, err := r.Next(frag(OpContinuation, true, "\xac"), Server, 100)
	if err != nil || string(m.Payload) != "€" {
		t.Fatalf("euro split across fragments: %q, %v", m.Payload, err)
	}
}

func TestCloseRoundTrip(t *testing.T) {
	p := AppendClose(nil, 4000, "replaced")
	code, reason, err := ParseClose(p)
	if err != nil || code != 4000 || reason != "replaced" {
		t.Fatalf("ParseClose = %d %q %v", code, reason, err)
	}
	if code, _, err := ParseClose(nil); err != nil || code != CloseNoStatus {
		t.Fatalf("empty close = %d %v", code, err)
	}
	for _, bad := range [][]byte{{3}, {0x03, 0xed}, {0x03, 0xe8, 0xff}, {0x0b, 0xb7}} { // 1 byte, 1005, bad utf8, 2999
		if _, _, err := ParseClose(bad); err == nil {
			t.Errorf("ParseClose(%x) accepted", bad)
		}
	}
	long := AppendClose(nil, 1000, strings.Repeat("é", 100))
	if len(long) > MaxControlPayload {
		t.Fatalf("close payload %d bytes", len(long))
	}
	if _, _, err := ParseClose(long); err != nil {
		t.Fatalf("cut reason is not valid: %v", err)
	}
}

func maskCopy(s string) []byte {
	b := []byte(s)
	Mask(b, testKey, 0)
	return b
}

func FuzzReader(f *testing.F) {
	f.Add(AppendFrame(nil, OpText, []byte("hello"), &testKey))
	f.Add(append(AppendHeader(nil, OpText, false, 3, &testKey), maskCopy("abc")...))
	f.Add(AppendFrame(nil, OpClose, AppendClose(nil, 1000, "bye"), &testKey))
	f.Add([]byte{0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Reader
		for len(b) > 0 {
			m, n, err := r.Next(b, Server, 1<<16)
			if err != nil {
				var pe *ProtocolError
				if !errors.As(err, &pe) || !ValidCloseCode(pe.Code) {
					t.Fatalf("error %v is not a protocol error with a valid close code", err)
				}
				return
			}
			if n == 0 {
				return
			}
			if n > len(b) {
				t.Fatalf("consumed %d of %d", n, len(b))
			}
			if m.Op == OpText && !validUTF8(m.Payload) {
				t.Fatal("invalid UTF-8 text delivered")
			}
			if len(m.Payload) > 1<<16 {
				t.Fatalf("message of %d bytes passed a 64 KiB limit", len(m.Payload))
			}
			b = b[n:]
		}
	})
}

func validUTF8(b []byte) bool { return utf8.Valid(b) }

func BenchmarkReadMaskedFrame(b *testing.B) {
	wire := AppendFrame(nil, OpText, []byte(`[2,"19223201","Heartbeat",{}]`), &testKey)
	frame := make([]byte, len(wire))
	var r Reader
	b.ReportAllocs()
	for b.Loop() {
		copy(frame, wire)
		if _, n, err := r.Next(frame, Server, 1<<20); err != nil || n != len(frame) {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriteFrame(b *testing.B) {
	payload := []byte(`[3,"19223201",{"currentTime":"2026-11-22T06:00:00Z"}]`)
	var out []byte
	b.ReportAllocs()
	for b.Loop() {
		out = AppendFrame(out[:0], OpText, payload, nil)
	}
}

// A fragmented message begun in one Reader is finished in another, through
// Fragment and Resume (a connection passed to a new process mid-message).
func TestReaderResumesAFragmentedMessage(t *testing.T) {
	first := append(AppendHeader(nil, OpText, false, 4, &testKey), maskCopy("half")...)
	rest := append(AppendHeader(nil, OpContinuation, true, 5, &testKey), maskCopy(" more")...)
	var a Reader
	if m, n, err := a.Next(first, Server, 100); err != nil || n != len(first) || m.Op != 0 {
		t.Fatalf("first fragment: %+v %d %v", m, n, err)
	}
	f := a.Fragment()
	if f.Op != OpText || string(f.Data) != "half" {
		t.Fatalf("Fragment() = %+v", f)
	}
	var b Reader
	b.Resume(f)
	m, n, err := b.Next(rest, Server, 100)
	if err != nil || n != len(rest) || m.Op != OpText || string(m.Payload) != "half more" {
		t.Fatalf("in the second reader: %q %d %v", m.Payload, n, err)
	}
	var empty Reader
	if empty.Fragment().Op != 0 || b.Fragment().Op != 0 {
		t.Fatal("a Reader with no fragment pending returned one")
	}
}
