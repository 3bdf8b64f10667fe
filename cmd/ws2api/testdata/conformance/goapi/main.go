// Command goapi is the conformance API (see ../../../conformance_test.go and
// ../router.php, whose behaviour it repeats) on Go's net/http.
//
// Usage: goapi <host:port> <log file>
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		log.Fatal("usage: goapi <host:port> <log file>")
	}
	f, err := os.OpenFile(os.Args[2], os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666)
	if err != nil {
		log.Fatal(err)
	}
	a := &api{log: f}
	log.Print("listening on ", os.Args[1])
	log.Fatal(http.ListenAndServe(os.Args[1], a))
}

type api struct {
	mu  sync.Mutex
	log *os.File
}

func pattern(n int) []byte {
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%015d\n", i)
	}
	return []byte(b.String()[:n])
}

func hash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func (a *api) record(method, id, key string, body []byte) {
	digest := "-"
	switch {
	case len(body) > 64:
		digest = "sha256:" + hash(body)
	case len(body) > 0:
		digest = url.PathEscape(string(body))
	}
	if key == "" {
		key = "-"
	} else {
		key = url.PathEscape(key)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	fmt.Fprintf(a.log, "%s %s %s %d %s\n", method, id, key, len(body), digest)
}

func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	a.record(r.Method, strings.TrimPrefix(r.URL.EscapedPath(), "/"), r.Header.Get("Idempotency-Key"), body)
	switch r.Method {
	case http.MethodGet:
		io.WriteString(w, "ok")
		return
	case http.MethodPost:
	default:
		return
	}
	if len(body) > 100000 {
		io.WriteString(w, hash(body))
		return
	}
	verb, rest, _ := strings.Cut(string(body), ":")
	switch verb {
	case "echo":
		io.WriteString(w, rest)
	case "big":
		n, _ := strconv.Atoi(rest)
		w.Write(pattern(n))
	case "sleep":
		ms, text, _ := strings.Cut(rest, ":")
		n, _ := strconv.Atoi(ms)
		time.Sleep(time.Duration(n) * time.Millisecond)
		io.WriteString(w, text)
	case "close":
		w.Header().Set("Connection", "close")
		io.WriteString(w, rest)
	case "chunked":
		io.WriteString(w, rest[:len(rest)/2])
		w.(http.Flusher).Flush()
		io.WriteString(w, rest[len(rest)/2:])
	default:
		w.Write(body)
	}
}
