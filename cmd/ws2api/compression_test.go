package main

import (
	"bufio"
	"bytes"
	stdflate "compress/flate"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/bench"
	"github.com/ws2api/ws2api/internal/ws"
)

// rawDeflateClient is a WebSocket client written out frame by frame, so
// that the test sees RSV1 on the wire; its compression is the standard
// library's flate, not ws2api's.
type rawDeflateClient struct {
	c   net.Conn
	br  *bufio.Reader
	ext string // the Sec-WebSocket-Extensions of the 101
}

func dialDeflate(t *testing.T, addr, id, offer string) *rawDeflateClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "GET /%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n", id, addr)
	if offer != "" {
		fmt.Fprintf(c, "Sec-WebSocket-Extensions: %s\r\n", offer)
	}
	fmt.Fprintf(c, "\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	return &rawDeflateClient{c: c, br: br, ext: resp.Header.Get("Sec-WebSocket-Extensions")}
}

func stdDeflate(b []byte) []byte {
	var buf bytes.Buffer
	w, _ := stdflate.NewWriter(&buf, stdflate.DefaultCompression)
	w.Write(b)
	w.Flush()
	return bytes.TrimSuffix(buf.Bytes(), []byte{0, 0, 0xff, 0xff})
}

func stdInflate(t *testing.T, b []byte) []byte {
	t.Helper()
	out, err := io.ReadAll(stdflate.NewReader(io.MultiReader(bytes.NewReader(b), bytes.NewReader([]byte{0, 0, 0xff, 0xff, 1, 0, 0, 0xff, 0xff}))))
	if err != nil {
		t.Fatalf("the standard library cannot inflate ws2api's frame: %v", err)
	}
	return out
}

// send writes one masked text message, compressed (RSV1) or not, in
// frames of at most split bytes of payload.
func (rc *rawDeflateClient) send(t *testing.T, msg []byte, compress bool, split int) {
	t.Helper()
	payload := msg
	if compress {
		payload = stdDeflate(msg)
	}
	key := [4]byte{9, 8, 7, 6}
	op := ws.OpText
	for first := true; first || len(payload) > 0; first = false {
		n := min(len(payload), split)
		b := ws.AppendHeader(nil, op, n == len(payload), n, &key)
		if first && compress {
			b[0] |= 0x40
		}
		start := len(b)
		b = append(b, payload[:n]...)
		ws.Mask(b[start:], key, 0)
		if _, err := rc.c.Write(b); err != nil {
			t.Fatal(err)
		}
		payload, op = payload[n:], ws.OpContinuation
	}
}

// read returns the next message and whether its frame had RSV1.
func (rc *rawDeflateClient) read(t *testing.T) (op ws.Opcode, payload []byte, rsv1 bool) {
	t.Helper()
	var buf []byte
	for {
		f, n, err := ws.ParseFrame(buf, ws.Client, 1<<30)
		if err == ws.ErrReservedBits && len(buf) > 0 && buf[0]&0x40 != 0 {
			buf[0] &^= 0x40 // RSV1: compressed; parse the rest as usual
			rsv1 = true
			continue
		}
		if err != nil {
			t.Fatalf("a frame from ws2api: %v", err)
		}
		if n > 0 {
			if rsv1 {
				return f.Op, stdInflate(t, f.Payload), true
			}
			return f.Op, f.Payload, false
		}
		b := make([]byte, 64<<10)
		m, err := rc.br.Read(b)
		if err != nil {
			t.Fatalf("reading: %v", err)
		}
		buf = append(buf, b[:m]...)
	}
}

// startWithEcho runs the gateway in front of the load tool's echo API
// (POST answers its body, with its Content-Type), which logs nothing.
func startWithEcho(t *testing.T, flags ...string) *proc {
	t.Helper()
	api, err := bench.StartEchoAPI("127.0.0.1:0", 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(api.Stop)
	return start(t, nil, append([]string{"-api", "http://" + api.Addr + "/"}, flags...)...)
}

// permessage-deflate end to end through the binary, against the standard
// library's deflate: negotiated without context takeover, compressed
// messages in one frame and fragmented reach the API inflated (its echo
// proves it), replies (the echo API's) at or over -compression-min come back compressed
// (RSV1) and inflate with the standard library, shorter ones plain, and a
// client that did not negotiate gets no RSV1 ever.
func TestCompressionEndToEnd(t *testing.T) {
	t.Parallel()
	p := startWithEcho(t, "-compression", "on")
	rc := dialDeflate(t, p.public, "z1", "permessage-deflate; client_max_window_bits")
	if rc.ext != ws.DeflateExtension {
		t.Fatalf("negotiated %q, want %q", rc.ext, ws.DeflateExtension)
	}
	big := []byte(strings.Repeat(`{"measurand":"Energy.Active.Import.Register","value":"1234.5"},`, 4000))
	for _, tc := range []struct {
		name     string
		msg      []byte
		compress bool
		split    int
		wantRSV1 bool
	}{
		{"short, plain", []byte("hi"), false, 1 << 20, false},
		{"short, compressed", []byte("hi"), true, 1 << 20, false},
		{"OCPP-sized, compressed", []byte(`[2,"19223201","MeterValues",{"connectorId":1,"transactionId":1733,"meterValue":[{"timestamp":"2026-12-01T10:00:00Z","sampledValue":[{"value":"12345.6","measurand":"Energy.Active.Import.Register","unit":"Wh"},{"value":"7.2","measurand":"Power.Active.Import","unit":"kW"}]}]}]`), true, 1 << 20, true},
		{"250 KB, compressed, fragmented", big, true, 1000, true},
		{"250 KB, plain", big, false, 1 << 20, true},
	} {
		rc.send(t, tc.msg, tc.compress, tc.split)
		op, got, rsv1 := rc.read(t)
		if op != ws.OpText || string(got) != string(tc.msg) {
			t.Fatalf("%s: reply %v of %d bytes, want the echo of %d bytes", tc.name, op, len(got), len(tc.msg))
		}
		if rsv1 != tc.wantRSV1 {
			t.Errorf("%s: reply RSV1 %v, want %v", tc.name, rsv1, tc.wantRSV1)
		}
	}
	// A push of a large message, compressed for this client.
	resp, err := http.Post(p.control+"/z1", "text/plain", bytes.NewReader(big))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("push: %v %v", resp, err)
	}
	resp.Body.Close()
	if _, got, rsv1 := rc.read(t); !rsv1 || !bytes.Equal(got, big) {
		t.Errorf("push: RSV1 %v, %d bytes", rsv1, len(got))
	}

	plain := dialDeflate(t, p.public, "z2", "")
	if plain.ext != "" {
		t.Fatalf("negotiated %q without an offer", plain.ext)
	}
	plain.send(t, big, false, 1<<20)
	if _, got, rsv1 := plain.read(t); rsv1 || string(got) != string(big) {
		t.Errorf("a client that did not negotiate: RSV1 %v", rsv1)
	}
}

// Bad compressed input gets the close codes of RFC 7692 and 6455: data
// that does not inflate 1007, a message that inflates past
// -max-message-size 1009 (a 1 MiB limit and 8 MiB of zeros in a few KiB),
// RSV1 without negotiation 1002.
func TestCompressionBadInput(t *testing.T) {
	t.Parallel()
	p := startWithEcho(t, "-compression", "on")
	zeros := stdDeflate(make([]byte, 8<<20))
	for _, tc := range []struct {
		name      string
		offer     string
		payload   []byte
		wantClose int
	}{
		{"corrupt", "permessage-deflate", []byte{0xff, 0xff, 0xff, 0xff}, 1007},
		{"bomb", "permessage-deflate", zeros, 1009},
		{"not negotiated", "", stdDeflate([]byte("hello")), 1002},
	} {
		rc := dialDeflate(t, p.public, "in-"+strings.ReplaceAll(tc.name, " ", "-"), tc.offer)
		key := [4]byte{1, 2, 3, 4}
		b := ws.AppendHeader(nil, ws.OpText, true, len(tc.payload), &key)
		b[0] |= 0x40
		start := len(b)
		b = append(b, tc.payload...)
		ws.Mask(b[start:], key, 0)
		if _, err := rc.c.Write(b); err != nil {
			t.Fatal(err)
		}
		op, payload, _ := rc.read(t)
		code, reason, _ := ws.ParseClose(payload)
		if op != ws.OpClose || code != tc.wantClose {
			t.Errorf("%s: got %v %d %q, want close %d", tc.name, op, code, reason, tc.wantClose)
		}
	}
}

// Headless Chromium, which always offers permessage-deflate: the page's
// WebSocket reports the extension, and a large text message and a binary
// one go both ways intact.
func TestCompressionInChromium(t *testing.T) {
	t.Parallel()
	p := startWithEcho(t, "-compression", "on")
	b := startChromium(t)
	tab := b.open(t, p.control+"/healthz") // any page: the socket is the page's
	tab.waitFor(t, `document.readyState === "complete" && document.body.textContent.includes("ok")`)
	tab.eval(t, `window.got = []; window.sock = new WebSocket("ws://`+p.public+`/chromium-z");
		sock.binaryType = "arraybuffer";
		sock.onmessage = (e) => got.push(typeof e.data === "string" ? e.data : "binary:" + new Uint8Array(e.data).length);
		true`)
	tab.waitFor(t, `sock.readyState === 1`)
	if ext := tab.eval(t, `sock.extensions`); ext != ws.DeflateExtension {
		t.Fatalf("Chromium negotiated %q, want %q", ext, ws.DeflateExtension)
	}
	tab.eval(t, `sock.send("meter ".repeat(50000)); sock.send(new Uint8Array(70000).fill(7)); true`)
	tab.waitFor(t, `got.length === 2`)
	if ok := tab.eval(t, `got[0] === "meter ".repeat(50000)`); ok != true {
		t.Errorf("Chromium's large text message did not come back whole: %v", tab.eval(t, `got[0].length`))
	}
	if got := tab.eval(t, `got[1]`); got != "binary:70000" {
		t.Errorf("Chromium's binary message came back as %v, want binary:70000", got)
	}
}

// gorilla/websocket's own permessage-deflate (no context takeover, as
// ws2api's) both ways: its compressed writes are read, ws2api's compressed
// replies are read by it.
func TestCompressionWithGorilla(t *testing.T) {
	t.Parallel()
	p := startWithEcho(t, "-compression", "on")
	d := websocket.Dialer{EnableCompression: true}
	c, resp, err := d.Dial("ws://"+p.public+"/gorilla-z", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := resp.Header.Get("Sec-WebSocket-Extensions"); got != ws.DeflateExtension {
		t.Fatalf("negotiated %q", got)
	}
	before := metricValue(t, p, "ws2api_compressed_messages_in_total")
	msg := strings.Repeat(`{"value":"231.4","measurand":"Voltage"},`, 2000)
	for i := range 20 {
		text := fmt.Sprint(i, msg)
		if err := c.WriteMessage(websocket.TextMessage, []byte(text)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, got, err := c.ReadMessage()
		if err != nil || string(got) != text {
			t.Fatalf("message %d: %v, %d bytes back of %d", i, err, len(got), len(text))
		}
	}
	if n := metricValue(t, p, "ws2api_compressed_messages_in_total") - before; n != 20 {
		t.Errorf("%v of gorilla's 20 messages came compressed, want 20", n)
	}
}

// Off (the default), an offer is not answered and nothing goes compressed.
func TestCompressionIsOffByDefault(t *testing.T) {
	t.Parallel()
	p := startWithEcho(t)
	rc := dialDeflate(t, p.public, "off-1", "permessage-deflate; client_max_window_bits")
	if rc.ext != "" {
		t.Fatalf("negotiated %q with -compression off", rc.ext)
	}
	big := []byte(strings.Repeat("MeterValues ", 1000))
	rc.send(t, big, false, 1<<20)
	if _, got, rsv1 := rc.read(t); rsv1 || !bytes.Equal(got, big) {
		t.Errorf("reply RSV1 %v, %d bytes", rsv1, len(got))
	}
}
