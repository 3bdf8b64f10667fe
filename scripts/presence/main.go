// Command presence measures the cluster bus's presence records in Redis
// (BENCHMARKS.md, "Cluster presence at scale"). It speaks RESP itself, so
// that what it adds to Redis's counters is known exactly.
//
//	go run ./scripts/presence fill   -redis 127.0.0.1:6379 -n 1000000 [-del]
//	go run ./scripts/presence sample -redis 127.0.0.1:6379 -every 100ms -for 30s
//	go run ./scripts/presence proxy  -listen 127.0.0.1:6380 -to 127.0.0.1:6379
//	go run ./scripts/presence relay  -control http://127.0.0.1:7002 -ids 100 -rate 200 -duration 20s
//	go run ./scripts/presence refresh -redis 127.0.0.1:6379 -n 1000000
//
// fill writes records of ws2api's shape: <prefix>id:<idprefix><n> =
// "<node>-<n in base 36>", SET ... EX ttl (presence.go: a connect is SET
// key value GET EX PresenceTTL, 600 s by default).
//
// sample reads INFO stats, commandstats and memory every -every and prints
// one line per sample, then a summary of the SET rate: what a node writes
// while its clients connect.
//
// proxy stands between a node and Redis and counts the node's round trips:
// a round trip starts when the node sends after Redis has answered. It
// reports how many commands (SETs, EVALSHAs...) each carried: the depth of
// the presence writer's pipelines. SIGUSR1 prints the round trips since the
// last SIGUSR1; SIGINT or SIGTERM prints them and exits.
//
// refresh runs presence.go's refresh script over fill's records, 512 to a
// round trip as a node's refreshAll does, and reports the time and Redis's
// CPU: what a node's refresh of that many ids costs (every 200 s), or, on
// an empty Redis, what every node's rewrite after Redis came back costs.
//
// relay POSTs to ids at a steady rate through a control listener and
// reports each POST's latency: for ids held by another node, a relay over
// Redis.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: presence fill|sample|proxy|relay|refresh [flags]")
		os.Exit(2)
	}
	var err error
	args := os.Args[2:]
	switch os.Args[1] {
	case "fill":
		err = fill(args)
	case "sample":
		err = sample(args)
	case "proxy":
		err = proxy(args)
	case "relay":
		err = relay(args)
	case "refresh":
		err = refresh(args)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "presence:", err)
		os.Exit(1)
	}
}

// appendCommand appends a RESP array of bulk strings.
func appendCommand(b []byte, args ...string) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, "\r\n"...)
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, "\r\n"...)
		b = append(b, a...)
		b = append(b, "\r\n"...)
	}
	return b
}

// readReply reads one RESP reply and returns it as text (a bulk string's
// body, a simple string, an integer's digits), or the error it carries.
// Arrays are not expected.
func readReply(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return "", errors.New("empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", errors.New(line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", err
		}
		if n < 0 {
			return "", nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("unexpected reply %q", line)
}

func base36(n int) string { return strconv.FormatInt(int64(n), 36) }

func fill(args []string) error {
	fs := flag.NewFlagSet("fill", flag.ExitOnError)
	addr := fs.String("redis", "127.0.0.1:6379", "Redis address")
	n := fs.Int("n", 1000000, "records to write")
	start := fs.Int("start", 0, "first record's number")
	prefix := fs.String("prefix", "ws2api:", "ws2api's -cluster-prefix")
	idPrefix := fs.String("id-prefix", "synth-", "start of each id")
	node := fs.String("node", "5e1f5e1f", "node name in each value (8 hex digits, as ws2api's)")
	ttl := fs.Int("ttl", 600, "seconds each record lives (ws2api's PresenceTTL)")
	batch := fs.Int("batch", 1000, "commands per round trip")
	del := fs.Bool("del", false, "delete those records instead (DEL)")
	_ = fs.Parse(args)

	c, err := net.Dial("tcp", *addr)
	if err != nil {
		return err
	}
	defer c.Close()
	r := bufio.NewReaderSize(c, 1<<16)
	ttlS := strconv.Itoa(*ttl)
	t0 := time.Now()
	var buf []byte
	for i := *start; i < *start+*n; {
		m := min(*batch, *start+*n-i)
		buf = buf[:0]
		for j := range m {
			k := i + j
			key := *prefix + "id:" + *idPrefix + strconv.Itoa(k)
			if *del {
				buf = appendCommand(buf, "DEL", key)
			} else {
				buf = appendCommand(buf, "SET", key, *node+"-"+base36(k+1), "EX", ttlS)
			}
		}
		if _, err := c.Write(buf); err != nil {
			return err
		}
		for range m {
			if _, err := readReply(r); err != nil {
				return err
			}
		}
		i += m
	}
	d := time.Since(t0)
	verb := "wrote"
	if *del {
		verb = "deleted"
	}
	fmt.Printf("%s %d records (%s%d..%d) in %.2fs: %.0f/s\n", verb, *n, *idPrefix, *start, *start+*n-1, d.Seconds(), float64(*n)/d.Seconds())
	return nil
}

// info is one INFO reading.
type info struct {
	at    time.Time
	field map[string]int64 // total_commands_processed, used_memory, ...
	cpu   float64          // used_cpu_user + used_cpu_sys, seconds
	calls map[string]int64 // commandstats calls by command
	keys  int64
}

func readInfo(c net.Conn, r *bufio.Reader) (info, error) {
	var b []byte
	b = appendCommand(b, "INFO", "stats", "commandstats", "memory", "cpu")
	b = appendCommand(b, "DBSIZE")
	if _, err := c.Write(b); err != nil {
		return info{}, err
	}
	text, err := readReply(r)
	if err != nil {
		return info{}, err
	}
	keys, err := readReply(r)
	if err != nil {
		return info{}, err
	}
	in := info{at: time.Now(), field: map[string]int64{}, calls: map[string]int64{}}
	in.keys, _ = strconv.ParseInt(keys, 10, 64)
	for line := range strings.SplitSeq(text, "\r\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if cmd, ok := strings.CutPrefix(name, "cmdstat_"); ok {
			// calls=N,usec=...
			calls, _, _ := strings.Cut(strings.TrimPrefix(value, "calls="), ",")
			in.calls[cmd], _ = strconv.ParseInt(calls, 10, 64)
			continue
		}
		if name == "used_cpu_user" || name == "used_cpu_sys" {
			v, _ := strconv.ParseFloat(value, 64)
			in.cpu += v
			continue
		}
		if v, err := strconv.ParseInt(value, 10, 64); err == nil {
			in.field[name] = v
		}
	}
	return in, nil
}

func sample(args []string) error {
	fs := flag.NewFlagSet("sample", flag.ExitOnError)
	addr := fs.String("redis", "127.0.0.1:6379", "Redis address")
	every := fs.Duration("every", 100*time.Millisecond, "sampling interval")
	dur := fs.Duration("for", 30*time.Second, "how long to sample (SIGINT stops sooner)")
	quiet := fs.Bool("quiet", false, "print only the samples in which something was written, and the summary")
	_ = fs.Parse(args)

	c, err := net.Dial("tcp", *addr)
	if err != nil {
		return err
	}
	defer c.Close()
	r := bufio.NewReaderSize(c, 1<<16)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *dur)
	defer cancel()

	first, err := readInfo(c, r)
	if err != nil {
		return err
	}
	samples := []info{first}
	fmt.Printf("# started %s\n", first.at.Format("15:04:05.000"))
	fmt.Println("# t_s\tcmds/s\tset/s\tevalsha/s\tpublish/s\tget/s\treads/s\tinst_ops/s\tkeys\tused_memory")
	tick := time.NewTicker(*every)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
			continue
		case <-tick.C:
		}
		cur, err := readInfo(c, r)
		if err != nil {
			return err
		}
		prev := samples[len(samples)-1]
		samples = append(samples, cur)
		dt := cur.at.Sub(prev.at).Seconds()
		rate := func(d int64) float64 { return float64(d) / dt }
		// Every sample is two commands of ours (INFO, DBSIZE) and one read.
		cmds := cur.field["total_commands_processed"] - prev.field["total_commands_processed"] - 2
		sets := cur.calls["set"] - prev.calls["set"]
		if *quiet && sets == 0 && cur.calls["evalsha"] == prev.calls["evalsha"] {
			continue
		}
		fmt.Printf("%.2f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%d\t%d\t%d\n", cur.at.Sub(first.at).Seconds(),
			rate(cmds), rate(sets), rate(cur.calls["evalsha"]-prev.calls["evalsha"]),
			rate(cur.calls["publish"]-prev.calls["publish"]), rate(cur.calls["get"]-prev.calls["get"]),
			rate(cur.field["total_reads_processed"]-prev.field["total_reads_processed"]-1),
			cur.field["instantaneous_ops_per_sec"], cur.keys, cur.field["used_memory"])
	}
	summarize(samples)
	return nil
}

// summarize reports the SET rate over the samples that wrote any.
func summarize(s []info) {
	firstW, lastW := -1, -1
	for i := 1; i < len(s); i++ {
		if s[i].calls["set"] > s[i-1].calls["set"] {
			if firstW < 0 {
				firstW = i
			}
			lastW = i
		}
	}
	if firstW < 0 {
		span := s[len(s)-1].at.Sub(s[0].at).Seconds()
		cpu := s[len(s)-1].cpu - s[0].cpu
		fmt.Printf("# no SET in the window; Redis CPU %.3fs over %.1fs (%.2f%% of a core, %.0f µs per sample)\n",
			cpu, span, 100*cpu/span, 1e6*cpu/float64(len(s)-1))
		return
	}
	from, to := s[firstW-1], s[lastW]
	sets := to.calls["set"] - from.calls["set"]
	reads := to.field["total_reads_processed"] - from.field["total_reads_processed"] - int64(lastW-firstW+1)
	cmds := to.field["total_commands_processed"] - from.field["total_commands_processed"] - 2*int64(lastW-firstW+1)
	span := to.at.Sub(from.at).Seconds()
	peak := 0.0
	for i := firstW; i <= lastW; i++ {
		peak = max(peak, float64(s[i].calls["set"]-s[i-1].calls["set"])/s[i].at.Sub(s[i-1].at).Seconds())
	}
	// The busiest second: the most SETs between two samples about 1 s apart.
	peak1 := 0.0
	for i := firstW - 1; i <= lastW; i++ {
		for j := i + 1; j < len(s); j++ {
			if d := s[j].at.Sub(s[i].at); d >= time.Second {
				peak1 = max(peak1, float64(s[j].calls["set"]-s[i].calls["set"])/d.Seconds())
				break
			}
		}
	}
	d := func(cmd string) int64 { return to.calls[cmd] - from.calls[cmd] }
	fmt.Printf("# in that window: PUBLISH %d, EVALSHA %d, EVAL %d\n", d("publish"), d("evalsha"), d("eval"))
	fmt.Printf("# writing: %.2fs (samples %d..%d); SET %d, mean %.0f/s, peak %.0f/s (one sample), %.0f/s (busiest second); all commands %d (%.0f/s); Redis socket reads %d (%.1f SETs per read)\n",
		span, firstW, lastW, sets, float64(sets)/span, peak, peak1, cmds, float64(cmds)/span, reads, float64(sets)/float64(max(reads, 1)))
	cpu := to.cpu - from.cpu
	fmt.Printf("# Redis CPU while writing: %.3fs, %.1f%% of a core, %.1f µs per SET (the samples included)\n", cpu, 100*cpu/span, 1e6*cpu/float64(sets))
	fmt.Printf("# keys %d -> %d; used_memory %d -> %d\n", s[0].keys, s[len(s)-1].keys, s[0].field["used_memory"], s[len(s)-1].field["used_memory"])
}

// trips counts a client's round trips through the proxy.
type trips struct {
	mu       sync.Mutex
	answered bool // Redis wrote to the client since its last chunk
	cur      map[string]int
	done     []map[string]int // commands of each round trip, by name
}

func (t *trips) closeTrip() {
	if len(t.cur) > 0 {
		t.done = append(t.done, t.cur)
	}
	t.cur = map[string]int{}
}

// report prints the round trips since the last report, and forgets them.
func (t *trips) report(w io.Writer, name string) {
	t.mu.Lock()
	all := t.done
	if len(t.cur) > 0 {
		all = append(all, t.cur)
		t.cur = map[string]int{}
	}
	t.done = nil
	t.mu.Unlock()
	cmds := 0
	for _, c := range all {
		for _, n := range c {
			cmds += n
		}
	}
	fmt.Fprintf(w, "%s: %d round trips, %d commands\n", name, len(all), cmds)
	for _, cmd := range []string{"SET", "EVALSHA", "EVAL", "PUBLISH", "GET"} {
		var per []int
		total := 0
		for _, c := range all {
			if n := c[cmd]; n > 0 {
				per = append(per, n)
				total += n
			}
		}
		if len(per) == 0 {
			continue
		}
		slices.Sort(per)
		q := func(p float64) int { return per[min(len(per)-1, int(p*float64(len(per))))] }
		fmt.Fprintf(w, "  %s: %d in %d round trips: per round trip mean %.1f, p50 %d, p90 %d, p99 %d, max %d; by size:",
			cmd, total, len(per), float64(total)/float64(len(per)), q(.5), q(.9), q(.99), per[len(per)-1])
		for _, b := range [][2]int{{1, 1}, {2, 9}, {10, 99}, {100, 511}, {512, 512}} {
			n, sum := 0, 0
			for _, v := range per {
				if v >= b[0] && v <= b[1] {
					n++
					sum += v
				}
			}
			fmt.Fprintf(w, " [%d-%d] %d trips / %d;", b[0], b[1], n, sum)
		}
		fmt.Fprintln(w)
	}
}

// respCounter counts the commands (arrays of bulk strings) in a stream.
type respCounter struct {
	state int // 0: at '*', 1: in array header, 2: at '$', 3: in bulk header, 4: in bulk body
	num   int
	left  int // bulks left in the array
	body  int // bytes left in the bulk, CRLF included
	first bool
	name  []byte
	onCmd func(name []byte)
}

func (p *respCounter) feed(b []byte) {
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch p.state {
		case 0:
			if c == '*' {
				p.state, p.num = 1, 0
			}
		case 1, 3:
			switch {
			case c >= '0' && c <= '9':
				p.num = p.num*10 + int(c-'0')
			case c == '\n':
				if p.state == 1 {
					p.left, p.first, p.name = p.num, true, p.name[:0]
					p.state = 2
					if p.left == 0 {
						p.state = 0
					}
				} else {
					p.body = p.num + 2
					p.state = 4
				}
			}
		case 2:
			if c == '$' {
				p.state, p.num = 3, 0
			}
		case 4:
			n := min(p.body, len(b)-i)
			if p.first {
				p.name = append(p.name, b[i:i+min(n, max(p.body-2, 0))]...)
			}
			p.body -= n
			i += n - 1
			if p.body == 0 {
				if p.first {
					p.first = false
				}
				p.left--
				if p.left == 0 {
					p.onCmd(p.name)
					p.state = 0
				} else {
					p.state = 2
				}
			}
		}
	}
}

func proxy(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:6380", "address to listen on")
	to := fs.String("to", "127.0.0.1:6379", "Redis address")
	_ = fs.Parse(args)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	var clients []*trips
	printAll := func() {
		mu.Lock()
		cs := slices.Clone(clients)
		mu.Unlock()
		for i, t := range cs {
			t.report(os.Stdout, "connection "+strconv.Itoa(i+1))
		}
	}
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGUSR1, os.Interrupt, syscall.SIGTERM)
	go func() {
		for s := range sig {
			printAll()
			if s != syscall.SIGUSR1 {
				os.Exit(0)
			}
		}
	}()
	fmt.Fprintf(os.Stderr, "proxy %s -> %s\n", *listen, *to)
	for {
		cc, err := ln.Accept()
		if err != nil {
			return err
		}
		sc, err := net.Dial("tcp", *to)
		if err != nil {
			cc.Close()
			continue
		}
		t := &trips{answered: true, cur: map[string]int{}}
		mu.Lock()
		clients = append(clients, t)
		mu.Unlock()
		p := &respCounter{onCmd: func(name []byte) { t.cur[strings.ToUpper(string(name))]++ }}
		go func() { // client -> Redis
			buf := make([]byte, 1<<18)
			for {
				n, err := cc.Read(buf)
				if n > 0 {
					t.mu.Lock()
					if t.answered {
						t.closeTrip()
						t.answered = false
					}
					p.feed(buf[:n])
					t.mu.Unlock()
					if _, err := sc.Write(buf[:n]); err != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			sc.Close()
			cc.Close()
		}()
		go func() { // Redis -> client
			buf := make([]byte, 1<<18)
			for {
				n, err := sc.Read(buf)
				if n > 0 {
					t.mu.Lock()
					t.answered = true
					t.mu.Unlock()
					if _, err := cc.Write(buf[:n]); err != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			sc.Close()
			cc.Close()
		}()
	}
}

func relay(args []string) error {
	fs := flag.NewFlagSet("relay", flag.ExitOnError)
	control := fs.String("control", "http://127.0.0.1:7002", "the control listener to POST to")
	prefix := fs.String("prefix", "bench-", "id prefix")
	ids := fs.Int("ids", 100, "ids <prefix>0 .. <prefix>ids-1, taken in turn")
	rate := fs.Int("rate", 200, "POSTs a second, sent on schedule")
	dur := fs.Duration("duration", 20*time.Second, "how long to send")
	conns := fs.Int("conns", 16, "HTTP connections (keep-alive)")
	warmup := fs.Int("warmup", 50, "POSTs sent first and not counted")
	timeline := fs.Bool("timeline", false, "also print each second's p50, p99 and max (by when the POST was due), with the wall clock")
	_ = fs.Parse(args)

	tr := &http.Transport{MaxIdleConnsPerHost: *conns, MaxConnsPerHost: *conns, DisableCompression: true}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	post := func(i int) (time.Duration, int, error) {
		id := *prefix + strconv.Itoa(i%*ids)
		t0 := time.Now()
		resp, err := client.Post(*control+"/"+id, "text/plain", strings.NewReader("presence relay "+strconv.Itoa(i)))
		if err != nil {
			return 0, 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return time.Since(t0), resp.StatusCode, nil
	}
	for i := range *warmup {
		if _, code, err := post(i); err != nil || code != 200 {
			return fmt.Errorf("warm-up POST %d: %d %v", i, code, err)
		}
	}
	total := int(float64(*rate) * dur.Seconds())
	lat := make([]time.Duration, total)
	codes := make([]int, total)
	var errs atomic.Int64
	var wg sync.WaitGroup
	work := make(chan int, total)
	for range *conns {
		wg.Go(func() {
			for i := range work {
				d, code, err := post(i)
				if err != nil {
					errs.Add(1)
				}
				lat[i], codes[i] = d, code
			}
		})
	}
	t0 := time.Now()
	late := 0
	for i := range total {
		at := t0.Add(time.Duration(i) * time.Second / time.Duration(*rate))
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		} else if d < -5*time.Millisecond {
			late++
		}
		work <- i
	}
	close(work)
	wg.Wait()
	elapsed := time.Since(t0)
	byCode := map[int]int{}
	var ok []time.Duration
	for i := range total {
		byCode[codes[i]]++
		if codes[i] == 200 {
			ok = append(ok, lat[i])
		}
	}
	slices.Sort(ok)
	q := func(p float64) float64 {
		if len(ok) == 0 {
			return 0
		}
		return float64(ok[min(len(ok)-1, int(p*float64(len(ok))))].Microseconds()) / 1000
	}
	var sum time.Duration
	for _, d := range ok {
		sum += d
	}
	mean := 0.0
	if len(ok) > 0 {
		mean = float64(sum.Microseconds()) / 1000 / float64(len(ok))
	}
	fmt.Printf("relay: %d POSTs in %.1fs (%.0f/s) to %s, %d ids; answers %v, %d errors, %d sent >5ms late\n",
		total, elapsed.Seconds(), float64(total)/elapsed.Seconds(), *control, *ids, byCode, errs.Load(), late)
	fmt.Printf("latency ms: p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n", q(.5), q(.9), q(.99), q(.999), q(1), mean)
	if *timeline {
		for sec := 0; sec*(*rate) < total; sec++ {
			var d []time.Duration
			for i := sec * *rate; i < min(total, (sec+1)**rate); i++ {
				if codes[i] == 200 {
					d = append(d, lat[i])
				}
			}
			slices.Sort(d)
			if len(d) == 0 {
				continue
			}
			at := func(p float64) float64 {
				return float64(d[min(len(d)-1, int(p*float64(len(d))))].Microseconds()) / 1000
			}
			fmt.Printf("  %s +%2ds: %d ok, p50 %.3f p99 %.3f max %.3f ms\n", t0.Add(time.Duration(sec)*time.Second).Format("15:04:05"), sec, len(d), at(.5), at(.99), at(1))
		}
	}
	return nil
}

// refreshLua is presence.go's refreshScript, verbatim.
const refreshLua = `local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 2 end
return 0`

func refresh(args []string) error {
	fs := flag.NewFlagSet("refresh", flag.ExitOnError)
	addr := fs.String("redis", "127.0.0.1:6379", "Redis address")
	n := fs.Int("n", 1000000, "ids to refresh")
	prefix := fs.String("prefix", "ws2api:", "ws2api's -cluster-prefix")
	idPrefix := fs.String("id-prefix", "synth-", "start of each id (as fill's)")
	node := fs.String("node", "5e1f5e1f", "node name in each value (as fill's)")
	ttl := fs.Int("ttl", 600, "seconds")
	batch := fs.Int("batch", 512, "scripts per round trip (presence.go's batch)")
	_ = fs.Parse(args)

	c, err := net.Dial("tcp", *addr)
	if err != nil {
		return err
	}
	defer c.Close()
	r := bufio.NewReaderSize(c, 1<<16)
	do := func(args ...string) (string, error) {
		if _, err := c.Write(appendCommand(nil, args...)); err != nil {
			return "", err
		}
		return readReply(r)
	}
	sha, err := do("SCRIPT", "LOAD", refreshLua)
	if err != nil {
		return err
	}
	before, err := readInfo(c, r)
	if err != nil {
		return err
	}
	ttlS := strconv.Itoa(*ttl)
	results := map[string]int{}
	t0 := time.Now()
	var buf []byte
	for i := 0; i < *n; {
		m := min(*batch, *n-i)
		buf = buf[:0]
		for j := range m {
			k := i + j
			buf = appendCommand(buf, "EVALSHA", sha, "1", *prefix+"id:"+*idPrefix+strconv.Itoa(k), *node+"-"+base36(k+1), ttlS)
		}
		if _, err := c.Write(buf); err != nil {
			return err
		}
		for range m {
			v, err := readReply(r)
			if err != nil {
				return err
			}
			results[v]++
		}
		i += m
	}
	d := time.Since(t0)
	after, err := readInfo(c, r)
	if err != nil {
		return err
	}
	cpu := after.cpu - before.cpu
	fmt.Printf("refreshed %d ids in %.2fs: %.0f/s, %d round trips; results %v (1: renewed, 2: written anew, 0: another's); Redis CPU %.2fs, %.2f µs per id\n",
		*n, d.Seconds(), float64(*n)/d.Seconds(), (*n+*batch-1) / *batch, results, cpu, 1e6*cpu/float64(*n))
	return nil
}
