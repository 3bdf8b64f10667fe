package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// The README's first command, `ws2api demo`, as a person uses it: real
// headless Chromium (Debian's chromium, which scripts/deps installs)
// loads the page from the control listener, connects to the public one,
// sends a message and sees the echo, presses "Push" and sees the push
// arrive, its same-origin POST answered 200 (no no-cors). The screenshot
// is kept in artifacts/demo-chromium.png.
func TestDemoInChromium(t *testing.T) {
	t.Parallel()
	p := start(t, nil, "demo")
	page := p.control + "/debug/demo"
	if _, note := get(t, "http://"+p.public+"/"); !strings.Contains(note, "/debug/demo") {
		t.Errorf("the public listener's GET / does not say where the page is:\n%s", note)
	}
	b := startChromium(t)
	tab := b.open(t, page)

	tab.waitFor(t, `document.readyState === "complete" && !!document.getElementById("connect")`)
	tab.eval(t, `document.getElementById("id").value = "chromium-1"; document.getElementById("connect").click()`)
	tab.waitFor(t, `document.getElementById("status").textContent === "connected as chromium-1"`)

	tab.eval(t, `document.getElementById("msg").value = "hello from chromium"; document.getElementById("send").click()`)
	tab.waitFor(t, `document.getElementById("log").textContent.includes("reply: echo: hello from chromium")`)

	before := metricValue(t, p, "ws2api_pushes_total")
	tab.eval(t, `document.getElementById("push-text").value = "pushed to chromium"; document.getElementById("push").click()`)
	tab.waitFor(t, `document.getElementById("log").textContent.includes("push received: pushed to chromium")`)
	tab.waitFor(t, `document.getElementById("log").textContent.includes("control API answered 200 ok")`)
	if after := metricValue(t, p, "ws2api_pushes_total"); after != before+1 {
		t.Errorf("ws2api_pushes_total went from %v to %v: the push did not go through the control API", before, after)
	}

	shot := tab.screenshot(t)
	dir := filepath.Join("..", "..", "artifacts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "demo-chromium.png")
	if err := os.WriteFile(file, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("the screenshot is not a PNG: %v", err)
	}
	if r := img.Bounds(); r.Dx() < 400 || r.Dy() < 300 {
		t.Errorf("the screenshot is %v", r)
	}
	abs, _ := filepath.Abs(file)
	t.Logf("screenshot: %s", abs)

	// An id the demo API refuses: the page says so, the socket stays shut.
	tab.eval(t, `document.getElementById("disconnect").click()`)
	tab.waitFor(t, `document.getElementById("status").textContent === "not connected"`)
	tab.eval(t, `document.getElementById("id").value = "bad-1"; document.getElementById("connect").click()`)
	tab.waitFor(t, `document.getElementById("log").textContent.includes("could not connect")`)

	// The log gave the page's address, and the demo API logged the whole
	// story.
	for _, want := range []string{`"url":"` + page + `"`, `"connect accepted"`, `"text":"hello from chromium"`, `"disconnected"`, `"connect refused"`} {
		if !strings.Contains(p.logs(), want) {
			t.Errorf("the demo's log lacks %s", want)
		}
	}
}

var metricLine = regexp.MustCompile(`(?m)^(\S+) (\S+)$`)

// metricValue reads one unlabelled metric from the control listener.
func metricValue(t *testing.T, p *proc, name string) float64 {
	t.Helper()
	_, body := get(t, p.control+"/metrics")
	for _, m := range metricLine.FindAllStringSubmatch(body, -1) {
		if m[1] == name {
			var v float64
			fmt.Sscan(m[2], &v)
			return v
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// browser is a headless Chromium driven over the DevTools protocol.
type browser struct {
	port string // its DevTools HTTP port
}

// startChromium starts the browser, with extra command-line switches.
func startChromium(t *testing.T, extra ...string) *browser {
	t.Helper()
	args := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--window-size=1000,900",
		"--user-data-dir=" + t.TempDir(), "--remote-debugging-port=0"}, extra...)
	cmd := exec.Command(tool(t, "chromium"), append(args, "about:blank")...)
	// Its own process group: the renderers and helpers it starts go with
	// it (before its profile directory is removed).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	found := make(chan string, 1)
	var out strings.Builder
	var mu sync.Mutex
	go func() {
		re := regexp.MustCompile(`DevTools listening on ws://127\.0\.0\.1:(\d+)/`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			out.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
			}
		}
	}()
	select {
	case port := <-found:
		return &browser{port: port}
	case <-time.After(30 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("chromium did not start:\n%s", out.String())
		return nil
	}
}

// tab is one page of the browser and its DevTools connection.
type tab struct {
	conn *websocket.Conn
	next int
}

// open makes a new tab showing url.
func (b *browser) open(t *testing.T, url string) *tab {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, "http://127.0.0.1:"+b.port+"/json/new?"+url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var target struct {
		WebSocketDebuggerURL string `json:"webSocketDebuggerUrl"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&target); err != nil || target.WebSocketDebuggerURL == "" {
		t.Fatalf("new tab: %v %+v", err, target)
	}
	conn, _, err := websocket.DefaultDialer.Dial(target.WebSocketDebuggerURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &tab{conn: conn}
}

// call sends one DevTools command and returns its result, skipping the
// events that arrive meanwhile.
func (tb *tab) call(t *testing.T, method string, params any) json.RawMessage {
	t.Helper()
	tb.next++
	id := tb.next
	if err := tb.conn.WriteJSON(map[string]any{"id": id, "method": method, "params": params}); err != nil {
		t.Fatal(err)
	}
	_ = tb.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		var msg struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := tb.conn.ReadJSON(&msg); err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		if msg.ID != id {
			continue
		}
		if msg.Error != nil {
			t.Fatalf("%s: %s", method, msg.Error.Message)
		}
		return msg.Result
	}
}

// eval runs JavaScript in the page and returns its value.
func (tb *tab) eval(t *testing.T, js string) any {
	t.Helper()
	raw := tb.call(t, "Runtime.evaluate", map[string]any{"expression": js, "returnByValue": true, "awaitPromise": true})
	var r struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	if r.Exception != nil {
		t.Fatalf("%s: %s", js, r.Exception.Text)
	}
	return r.Result.Value
}

// waitFor waits up to 10 s for a JavaScript condition to hold.
func (tb *tab) waitFor(t *testing.T, cond string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for tb.eval(t, "!!("+cond+")") != true {
		if time.Now().After(deadline) {
			t.Fatalf("the page never satisfied %s; its log: %v", cond, tb.eval(t, `document.getElementById("log") ? document.getElementById("log").innerText : document.body.innerText`))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (tb *tab) screenshot(t *testing.T) []byte {
	t.Helper()
	raw := tb.call(t, "Page.captureScreenshot", map[string]any{"format": "png"})
	var r struct {
		Data string `json:"data"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	b, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
