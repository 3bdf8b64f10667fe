package bench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// runAbandon is `ws2api bench abandon`: a storm of upgrade requests that
// each carry a large cookie and hang up before any answer, as clients do
// that give up on a slow API. With -pid it reports the gateway's memory
// before and after; the abandoned upgrades should cost it nothing once gone.
func runAbandon(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("ws2api bench abandon", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:7001", "the gateway's public listener (host:port)")
	n := fs.Int("n", 15000, "upgrade requests to send")
	cookie := fs.Int("cookie", 7000, "bytes of Cookie header on each")
	hold := fs.Duration("hold", 20*time.Millisecond, "how long each waits before it hangs up")
	at := fs.Int("at-once", 512, "connections open at once")
	pid := fs.Int("pid", 0, "the gateway's process id, for its memory")
	settle := fs.Duration("settle", 3*time.Second, "wait after the storm before measuring again")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rss := func() string {
		if *pid == 0 {
			return "?"
		}
		s, err := ReadProc(*pid)
		if err != nil {
			return err.Error()
		}
		return fmt.Sprintf("%.1f MiB", float64(s.RSSBytes)/(1<<20))
	}
	fmt.Fprintf(stdout, "gateway rss before: %s\n", rss())
	head := "Cookie: s=" + strings.Repeat("c", *cookie) + "\r\n"
	var failed atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, *at)
	start := time.Now()
	for i := 0; i < *n && ctx.Err() == nil; i++ {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", *addr, 5*time.Second)
			if err != nil {
				failed.Add(1)
				return
			}
			fmt.Fprintf(c, "GET /abandon%d HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
				"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n%s\r\n", i, *addr, head)
			time.Sleep(*hold)
			c.Close()
		})
	}
	wg.Wait()
	fmt.Fprintf(stdout, "storm        %d upgrades of %d-byte cookies, each hung up after %v, in %v; %d dials failed\n",
		*n, *cookie, *hold, time.Since(start).Round(time.Millisecond), failed.Load())
	select {
	case <-ctx.Done():
	case <-time.After(*settle):
	}
	fmt.Fprintf(stdout, "gateway rss %v after the storm: %s\n", *settle, rss())
	return nil
}
