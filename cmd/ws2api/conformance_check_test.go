package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The checker of the conformance tests: reading an API's log, and
// counting what reached the API (lost, duplicated, reordered, foreign) and
// what came back to the clients (unanswered, extra, misordered, malformed)
// against what they sent; and the big-body helpers (bigPattern,
// sha256Hex, firstDiff) the cases and faultAPI compare bodies with.

// waitLogged waits until a request matching f is in the server's log.
func (s *apiServer) waitLogged(t *testing.T, what string, timeout time.Duration, f func(delivery) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !slices.ContainsFunc(s.deliveries(t), f) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s in the API's log within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *apiServer) deliveries(t *testing.T) []delivery {
	t.Helper()
	b, err := os.ReadFile(s.log)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []delivery
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) != 5 {
			t.Fatalf("harness: malformed API log line %q", line)
		}
		d := delivery{method: f[0], id: f[1], key: f[2], body: f[4]}
		if d.key == "-" {
			d.key = ""
		} else if d.key, err = url.PathUnescape(d.key); err != nil {
			t.Fatalf("harness: API log line %q: %v", line, err)
		}
		if d.size, err = strconv.Atoi(f[3]); err != nil {
			t.Fatalf("harness: API log line %q: %v", line, err)
		}
		if d.body == "-" && d.size == 0 {
			d.body = ""
		} else if !strings.HasPrefix(d.body, "sha256:") {
			if d.body, err = url.PathUnescape(d.body); err != nil {
				t.Fatalf("harness: API log line %q: %v", line, err)
			}
		}
		out = append(out, d)
	}
	return out
}

// delivery is one request in an API's log.
type delivery struct {
	method, id, key string
	size            int
	body            string // the body, or sha256:<hex> when over 64 bytes
}

// logTally is what an API's log says about the messages each client sent,
// in order.
type logTally struct {
	messages  int
	lost      int // never reached the API
	dups      int // re-sends of a message the API already had
	badDups   int // re-sends without the key the message first came with
	keyless   int // POSTs without an Idempotency-Key
	shared    int // keys that more than one message carried
	reordered int // messages that first reached the API before an earlier one of their client
	foreign   int // POSTs of a test client with a body it never sent
	example   string
}

func (l logTally) ok() bool {
	return l.lost+l.badDups+l.keyless+l.shared+l.reordered+l.foreign == 0
}

func (l logTally) String() string {
	s := fmt.Sprintf("API log: %d msgs, lost %d, dup %d (%d without the first key), keyless %d, shared keys %d, reordered %d, foreign %d",
		l.messages, l.lost, l.dups, l.badDups, l.keyless, l.shared, l.reordered, l.foreign)
	if l.example != "" {
		s += " (e.g. " + l.example + ")"
	}
	return s
}

// note keeps the first example of what went wrong.
func (l *logTally) note(format string, args ...any) {
	if l.example == "" {
		l.example = fmt.Sprintf(format, args...)
	}
}

func tallyLog(log []delivery, sent map[string][]string) logTally {
	var l logTally
	keyOwner := map[string]string{}
	for id, msgs := range sent {
		index := map[string]int{}
		for i, m := range msgs {
			index[m] = i
		}
		l.messages += len(msgs)
		firstKey := map[int]string{}
		last := -1
		for _, d := range log {
			if d.method != "POST" || d.id != id {
				continue
			}
			i, ok := index[d.body]
			if !ok {
				l.foreign++
				l.note("%s POSTed %d bytes %.40q, never sent", id, d.size, d.body)
				continue
			}
			if d.key == "" {
				l.keyless++
			} else if owner, ok := keyOwner[d.key]; ok && owner != id+"\x00"+d.body {
				l.shared++
			} else {
				keyOwner[d.key] = id + "\x00" + d.body
			}
			if k, seen := firstKey[i]; seen {
				l.dups++
				if d.key == "" || d.key != k {
					l.badDups++
					l.note("%s %q POSTed again with key %q, first with %q", id, d.body, d.key, k)
				}
				continue
			}
			firstKey[i] = d.key
			if i < last {
				l.reordered++
				l.note("%s %q first reached the API after %q", id, d.body, msgs[last])
			}
			last = max(last, i)
		}
		l.lost += len(msgs) - len(firstKey)
		for i, m := range msgs {
			if _, ok := firstKey[i]; !ok {
				l.note("%s %q never reached the API", id, m)
			}
		}
	}
	return l
}

// replyTally is what clients received against what they sent.
type replyTally struct {
	messages   int
	unanswered int // messages whose answer never came
	extra      int // answers that came more than once
	misordered int // answers that came before an earlier message's
	malformed  int // replies that answer nothing the client sent
	example    string
	missing    map[string][]int // the unanswered messages, by client: their indexes
}

func (r replyTally) ok() bool { return r.unanswered+r.extra+r.misordered+r.malformed == 0 }

func (r replyTally) String() string {
	s := fmt.Sprintf("replies: unanswered %d/%d, extra %d, misordered %d, malformed %d",
		r.unanswered, r.messages, r.extra, r.misordered, r.malformed)
	if r.example != "" {
		s += " (e.g. " + r.example + ")"
	}
	return s
}

// tallyReplies matches each client's replies with its messages; answers
// lists the replies a message may rightly get.
func tallyReplies(got, sent map[string][]string, answers func(msg string) []string) replyTally {
	var r replyTally
	for id, msgs := range sent {
		of := map[string]int{}
		for i, m := range msgs {
			for _, a := range answers(m) {
				of[a] = i
			}
		}
		r.messages += len(msgs)
		seen := make([]int, len(msgs))
		last := -1
		for _, reply := range got[id] {
			i, ok := of[reply]
			if !ok {
				r.malformed++
				if r.example == "" {
					r.example = fmt.Sprintf("%s got %.40q", id, reply)
				}
				continue
			}
			if seen[i]++; seen[i] > 1 {
				r.extra++
				continue
			}
			if i < last {
				r.misordered++
			}
			last = max(last, i)
		}
		for i, n := range seen {
			if n == 0 {
				r.unanswered++
				if r.missing == nil {
					r.missing = map[string][]int{}
				}
				r.missing[id] = append(r.missing[id], i)
				if r.example == "" {
					r.example = fmt.Sprintf("%s's %q unanswered", id, msgs[i])
				}
			}
		}
	}
	return r
}

// bigPattern is the API's big:<n> answer: blocks "%015d\n" of 0, 1, 2...,
// cut at n bytes.
func bigPattern(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%015d\n", i)
	}
	return b.Bytes()[:n]
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
