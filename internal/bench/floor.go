package bench

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"

	"github.com/lesismal/nbio"

	"github.com/ws2api/ws2api/internal/loop"
	"github.com/ws2api/ws2api/internal/ws"
)

// FloorServer is what no gateway can do with less work: on the same event
// loop and WebSocket codec as ws2api, it accepts any upgrade and echoes
// every message straight back, with no API behind it. Run behind the load
// tool, its CPU per message is this machine's cost of one read and one
// write on a client socket: the floor under ws2api's own figure.
type FloorServer struct {
	loop *loop.Loop
	ln   net.Listener
}

// StartFloor listens on addr.
func StartFloor(addr string, pollers int) (*FloorServer, error) {
	l, err := loop.New("floor", pollers, 0)
	if err != nil {
		return nil, err
	}
	l.OnAccept(func(*nbio.Conn) loop.Handler { return &floorConn{} })
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		l.Stop()
		return nil, err
	}
	l.AddAll(ln)
	return &FloorServer{loop: l, ln: ln}, nil
}

// Addr is the listening address.
func (f *FloorServer) Addr() string { return f.ln.Addr().String() }

// Stop closes everything.
func (f *FloorServer) Stop() {
	f.ln.Close()
	f.loop.Stop()
}

type floorConn struct {
	mu       sync.Mutex
	upgraded bool
	in       []byte
	rd       ws.Reader
	out      []byte
}

func (fc *floorConn) OnData(c *nbio.Conn, data []byte) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	buf := append(fc.in, data...)
	if !fc.upgraded {
		end := bytes.Index(buf, []byte("\r\n\r\n"))
		if end < 0 {
			fc.in = buf
			return
		}
		key := ""
		for line := range bytes.SplitSeq(buf[:end], []byte("\r\n")) {
			if k, v, ok := bytes.Cut(line, []byte(":")); ok && bytes.EqualFold(bytes.TrimSpace(k), []byte("Sec-WebSocket-Key")) {
				key = string(bytes.TrimSpace(v))
			}
		}
		_, _ = c.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + ws.AcceptKey(key) + "\r\n\r\n"))
		fc.upgraded = true
		buf = buf[end+4:]
	}
	fc.out = fc.out[:0]
	for len(buf) > 0 {
		m, n, err := fc.rd.Next(buf, ws.Server, 1<<20)
		if err != nil {
			_ = c.Close()
			return
		}
		if n == 0 {
			break
		}
		buf = buf[n:]
		if m.Op == ws.OpText || m.Op == ws.OpBinary {
			fc.out = ws.AppendFrame(fc.out, m.Op, m.Payload, nil)
		}
	}
	if len(fc.out) > 0 {
		_, _ = c.Write(fc.out)
	}
	fc.in = append(fc.in[:0], buf...)
}

func (fc *floorConn) OnClose(*nbio.Conn, error) {}

// runFloor is `ws2api bench floor`.
func runFloor(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("ws2api bench floor", flag.ContinueOnError)
	fs.SetOutput(stdout)
	listen := fs.String("listen", "127.0.0.1:17001", "address to serve on")
	pollers := fs.Int("pollers", 1, "event-loop goroutines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	f, err := StartFloor(*listen, *pollers)
	if err != nil {
		return fmt.Errorf("floor server: %w", err)
	}
	slog.Info("floor server serving", "addr", f.Addr())
	<-ctx.Done()
	f.Stop()
	return nil
}
