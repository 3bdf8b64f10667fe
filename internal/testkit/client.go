package testkit

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/ws"
)

// Dial connects a WebSocket client to url (ws://host/id) and closes it when
// the test ends. It fails the test if the upgrade fails.
func Dial(t testing.TB, url string, header http.Header, protocols ...string) *websocket.Conn {
	t.Helper()
	c, resp, err := TryDial(url, header, protocols...)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, status)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TryDial connects and returns the handshake's response, whatever it was;
// on failure the response body is readable.
func TryDial(url string, header http.Header, protocols ...string) (*websocket.Conn, *http.Response, error) {
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, Subprotocols: protocols}
	return d.Dial(url, header)
}

// DialStatus makes an upgrade request expected to fail and returns the
// status and body.
func DialStatus(t testing.TB, url string, header http.Header) (int, string) {
	t.Helper()
	c, resp, err := TryDial(url, header)
	if err == nil {
		c.Close()
		t.Fatalf("dial %s: upgrade succeeded, want an error status", url)
	}
	if resp == nil {
		t.Fatalf("dial %s: %v (no HTTP response)", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// Read reads one message within timeout.
func Read(t testing.TB, c *websocket.Conn, timeout time.Duration) (int, string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	typ, b, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return typ, string(b)
}

// ExpectClose reads until the server's close frame and checks its code and
// reason.
func ExpectClose(t testing.TB, c *websocket.Conn, code int, reason string, timeout time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("want close %d %q, got %v", code, reason, err)
		}
		if ce.Code != code || ce.Text != reason {
			t.Fatalf("close = %d %q, want %d %q", ce.Code, ce.Text, code, reason)
		}
		return
	}
}

// Raw is a client that writes bytes of its own choosing after a valid
// upgrade: for frames no library would send.
type Raw struct {
	net.Conn
	R *bufio.Reader
}

// DialRaw upgrades a plain TCP connection to addr for id.
func DialRaw(t testing.TB, addr, id string) *Raw {
	t.Helper()
	return dialRaw(t, &net.Dialer{Timeout: 5 * time.Second}, addr, id)
}

// DialRawSmallWindow is DialRaw with a 4 KiB receive buffer and 1,000-byte
// segments: when it stops reading, what it is sent waits in the gateway,
// not in the kernel (over loopback a socket otherwise holds megabytes).
func DialRawSmallWindow(t testing.TB, addr, id string) *Raw {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10)
			if serr == nil {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, 1000)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return dialRaw(t, d, addr, id)
}

func dialRaw(t testing.TB, d *net.Dialer, addr, id string) *Raw {
	t.Helper()
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { nc.Close() })
	req := "GET /" + id + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := io.WriteString(nc, req); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(nc)
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("upgrade response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: status %d", resp.StatusCode)
	}
	return &Raw{Conn: nc, R: r}
}

// RawRequest sends a request head to addr and returns the status line and
// body of the answer.
func RawRequest(t testing.TB, addr, head string) (int, string) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer nc.Close()
	if _, err := io.WriteString(nc, head); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatalf("response to %q: %v", strings.SplitN(head, "\r\n", 2)[0], err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

var clientKey = [4]byte{1, 2, 3, 4}

// WriteFrame sends one masked frame with the given first byte (FIN, RSV,
// opcode) as a client would.
func (r *Raw) WriteFrame(t testing.TB, b0 byte, payload []byte) {
	t.Helper()
	w := ws.AppendHeader(nil, ws.Opcode(b0&0x0f), b0&0x80 != 0, len(payload), &clientKey)
	w[0] = b0
	start := len(w)
	w = append(w, payload...)
	ws.Mask(w[start:], clientKey, 0)
	if _, err := r.Write(w); err != nil {
		t.Fatalf("write frame: %v", err)
	}
}

// ReadClose reads frames until a close frame and returns its code and
// reason.
func (r *Raw) ReadClose(t testing.TB, timeout time.Duration) (int, string) {
	t.Helper()
	_ = r.SetReadDeadline(time.Now().Add(timeout))
	var buf []byte
	chunk := make([]byte, 4096)
	for {
		for {
			f, n, err := ws.ParseFrame(buf, ws.Client, 1<<24)
			if err != nil {
				t.Fatalf("server sent a bad frame: %v", err)
			}
			if n == 0 {
				break
			}
			buf = buf[n:]
			if f.Op == ws.OpClose {
				code, reason, err := ws.ParseClose(f.Payload)
				if err != nil {
					t.Fatalf("bad close payload: %v", err)
				}
				return code, reason
			}
		}
		if r.R.Buffered() > 0 {
			n, _ := r.R.Read(chunk)
			buf = append(buf, chunk[:n]...)
			continue
		}
		n, err := r.Conn.Read(chunk)
		if err != nil {
			t.Fatalf("connection ended without a close frame: %v", err)
		}
		buf = append(buf, chunk[:n]...)
	}
}
