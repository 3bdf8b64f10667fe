package ws

import (
	"bytes"
	stdflate "compress/flate"
	"os"
	"testing"

	"github.com/klauspost/compress/flate"
)

// ocppCorpus is typical OCPP 1.6 traffic (testdata/ocpp16.txt): a
// charger's calls and the central system's answers, one a line.
func ocppCorpus(b testing.TB) [][]byte {
	raw, err := os.ReadFile("testdata/ocpp16.txt")
	if err != nil {
		b.Fatal(err)
	}
	return bytes.Split(bytes.TrimSpace(raw), []byte("\n"))
}

// BenchmarkOCPPWireBytes reports the corpus's bytes on the wire
// (payloads) without compression, each deflated on its own (no context
// takeover), and what ws2api sends: deflated if at or over the default
// -compression-min (256) and smaller for it.
func BenchmarkOCPPWireBytes(b *testing.B) {
	corpus := ocppCorpus(b)
	var raw, deflated, mixed int
	for range b.N {
		raw, deflated, mixed = 0, 0, 0
		for _, m := range corpus {
			d := len(AppendDeflated(nil, m))
			raw += len(m)
			deflated += d
			if len(m) >= 256 && d < len(m) {
				mixed += d
			} else {
				mixed += len(m)
			}
		}
	}
	b.ReportMetric(float64(raw), "raw-bytes")
	b.ReportMetric(float64(deflated), "deflated-bytes")
	b.ReportMetric(float64(mixed), "sent-bytes")
	b.ReportMetric(float64(raw)/float64(mixed), "ratio")
}

// BenchmarkDeflateMessage compresses the corpus one message at a time, as
// a connection without context takeover does: klauspost/compress at the
// level ws2api uses and its default, against the standard library's.
func BenchmarkDeflateMessage(b *testing.B) {
	corpus := ocppCorpus(b)
	n := 0
	for _, m := range corpus {
		n += len(m)
	}
	for _, tc := range []struct {
		name string
		new  func(w *bytes.Buffer) (func([]byte), func())
	}{
		{"klauspost-level1", klauspost(flate.BestSpeed)},
		{"klauspost-level5", klauspost(5)},
		{"klauspost-huffman-only", klauspost(flate.HuffmanOnly)},
		{"stdlib-level1", stdlib(stdflate.BestSpeed)},
		{"stdlib-default", stdlib(stdflate.DefaultCompression)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var buf bytes.Buffer
			write, reset := tc.new(&buf)
			out := 0
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for range b.N {
				out = 0
				for _, m := range corpus {
					buf.Reset()
					reset()
					write(m)
					out += buf.Len() - 4
				}
			}
			b.ReportMetric(float64(out), "out-bytes")
		})
	}
}

func klauspost(level int) func(*bytes.Buffer) (func([]byte), func()) {
	return func(buf *bytes.Buffer) (func([]byte), func()) {
		w, _ := flate.NewWriter(buf, level)
		return func(m []byte) { w.Write(m); w.Flush() }, func() { w.Reset(buf) }
	}
}

func stdlib(level int) func(*bytes.Buffer) (func([]byte), func()) {
	return func(buf *bytes.Buffer) (func([]byte), func()) {
		w, _ := stdflate.NewWriter(buf, level)
		return func(m []byte) { w.Write(m); w.Flush() }, func() { w.Reset(buf) }
	}
}

// BenchmarkInflateMessage is the other way: one message at a time through
// ws2api's pooled decompressor.
func BenchmarkInflateMessage(b *testing.B) {
	corpus := ocppCorpus(b)
	var deflated [][]byte
	n := 0
	for _, m := range corpus {
		deflated = append(deflated, AppendDeflated(nil, m))
		n += len(m)
	}
	dst := make([]byte, 0, 4096)
	b.SetBytes(int64(n))
	b.ReportAllocs()
	for range b.N {
		for _, d := range deflated {
			var err error
			if dst, err = Inflate(dst[:0], d, 1<<20); err != nil {
				b.Fatal(err)
			}
		}
	}
}
