package main

import (
	"bufio"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/testkit"
)

// The examples of examples/, run as a user runs them, behind the real
// gateway: PHP under `php -S` (Debian's php-cli, which scripts/deps
// installs), the Go API, and the OCPP charger simulator against the PHP
// API.

// TestExamplePHP: accept, refuse, reply, push with push.php, disconnect.
func TestExamplePHP(t *testing.T) {
	t.Parallel()
	php := startPHP(t)
	p := start(t, nil, "-api", "http://"+php.addr+"/")

	c := testkit.Dial(t, "ws://"+p.public+"/php-1", nil)
	send(t, c, "hello")
	expectText(t, c, "you said: hello")

	status, body := testkit.DialStatus(t, "ws://"+p.public+"/banned-1", nil)
	if status != http.StatusForbidden || body != "you are not welcome here" {
		t.Errorf("a banned id: %d %q, want 403 with the API's text", status, body)
	}

	out := runCmd(t, examplesDir("php"), tool(t, "php"), "push.php", "php-1", "pushed by PHP", p.control)
	if out != "200 ok\n" {
		t.Errorf("push.php printed %q", out)
	}
	expectText(t, c, "pushed by PHP")
	if out, err := exec.Command(tool(t, "php"), filepath.Join(examplesDir("php"), "push.php"), "nobody", "x", p.control).Output(); err == nil || string(out) != "404 not found\n" {
		t.Errorf("push.php to nobody: %q, %v; want 404 and a failing exit", out, err)
	}

	_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye"))
	php.waitLine(t, "disconnect php-1: code 1000 bye")
	php.waitLine(t, "refused banned-1")
}

// TestExampleOCPP: the charger simulator boots and sends heartbeats
// through the gateway to each example API (PHP and Go); the API pushes a
// Reset CALL, and the charger's CALLRESULT reaches the API as an ordinary
// POST.
func TestExampleOCPP(t *testing.T) {
	t.Parallel()
	charger := buildExample(t, "ocpp-charger")
	for _, lang := range []string{"php", "go"} {
		t.Run(lang, func(t *testing.T) {
			t.Parallel()
			var api *lines
			var p *proc
			var push func(msg string)
			if lang == "php" {
				api = startPHP(t)
				p = start(t, nil, "-api", "http://"+api.addr+"/")
				push = func(msg string) {
					if out := runCmd(t, examplesDir("php"), tool(t, "php"), "push.php", "CP1", msg, p.control); out != "200 ok\n" {
						t.Errorf("push.php printed %q", out)
					}
				}
			} else {
				addr, ctl := freeAddr(t), freeAddr(t)
				api = startLines(t, "example API", buildExample(t, "go"), "-listen", addr, "-control", "http://"+ctl)
				api.waitLine(t, "example API on "+addr)
				p = start(t, nil, "-api", "http://"+addr+"/", "-control", ctl)
				push = func(msg string) {
					if status, body := post(t, p.control+"/CP1", msg); status != 200 {
						t.Errorf("push: %d %s", status, body)
					}
				}
			}
			ch := startLines(t, "charger", charger, "-url", "ws://"+p.public+"/", "-id", "CP1", "-heartbeat", "200ms")

			ch.waitLine(t, "connected to ws://"+p.public+"/CP1 with ocpp1.6")
			ch.waitLine(t, "BootNotification: Accepted, heartbeat interval 10s")
			ch.waitLine(t, "Heartbeat: central system time 20")
			api.waitLine(t, "OCPP BootNotification from CP1: answered with a CALLRESULT")
			api.waitLine(t, "OCPP Heartbeat from CP1: answered with a CALLRESULT")

			beats := ch.count("Heartbeat: central system time 20")
			push(`[2,"reset-1","Reset",{"type":"Soft"}]`)
			ch.waitLine(t, `Reset requested by the central system ([2,"reset-1","Reset",{"type":"Soft"}]): accepted`)
			api.waitLine(t, `OCPP CALLRESULT reset-1 from CP1: {"status":"Accepted"}`)
			ch.waitCount(t, "Heartbeat: central system time 20", beats+1) // and it carries on
		})
	}
}

// TestExampleGo: the net/http example accepts, refuses, answers and
// pushes a welcome through the control listener.
func TestExampleGo(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	ctl := freeAddr(t)
	api := startLines(t, "example API", buildExample(t, "go"), "-listen", addr, "-control", "http://"+ctl)
	api.waitLine(t, "example API on "+addr)
	p := start(t, nil, "-api", "http://"+addr+"/", "-control", ctl)

	c := testkit.Dial(t, "ws://"+p.public+"/go-1", nil)
	expectText(t, c, "welcome, go-1") // pushed by the API a second after the connect
	send(t, c, "hi")
	expectText(t, c, "you said: hi")
	if status, body := testkit.DialStatus(t, "ws://"+p.public+"/banned-2", nil); status != http.StatusForbidden || body != "you are not welcome here" {
		t.Errorf("a banned id: %d %q", status, body)
	}
	c.Close()
	api.waitLine(t, "disconnect go-1: code 1006")
	api.waitLine(t, "push to go-1: 200 OK")
}

func send(t *testing.T, c *websocket.Conn, text string) {
	t.Helper()
	if err := c.WriteMessage(websocket.TextMessage, []byte(text)); err != nil {
		t.Fatal(err)
	}
}

func expectText(t *testing.T, c *websocket.Conn, want string) {
	t.Helper()
	if _, got := testkit.Read(t, c, 5*time.Second); got != want {
		t.Fatalf("received %q, want %q", got, want)
	}
}

func examplesDir(name string) string { return filepath.Join("..", "..", "examples", name) }

// buildExample builds examples/<name> and returns the binary.
func buildExample(t *testing.T, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	cmd := exec.Command("go", "build", "-o", bin, "./"+examplesDir(name))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building examples/%s: %v\n%s", name, err, out)
	}
	return bin
}

// startPHP serves examples/php with PHP's built-in server.
func startPHP(t *testing.T) *lines {
	t.Helper()
	addr := freeAddr(t)
	l := startLinesIn(t, examplesDir("php"), "php", []string{"PHP_CLI_SERVER_WORKERS=4"}, tool(t, "php"), "-S", addr, "index.php")
	l.addr = addr
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/probe")
		if err == nil {
			resp.Body.Close()
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("php -S does not answer on %s: %v\n%s", addr, err, l.text())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lines is a process whose output the test reads line by line.
type lines struct {
	name string
	addr string
	mu   sync.Mutex
	out  []string
	more chan struct{} // closed and replaced at each new line
}

func startLines(t *testing.T, name, bin string, args ...string) *lines {
	t.Helper()
	return startLinesIn(t, "", name, nil, bin, args...)
}

func startLinesIn(t *testing.T, dir, name string, env []string, bin string, args ...string) *lines {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(cmd.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // php -S's workers go with it
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l := &lines{name: name, more: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			l.mu.Lock()
			l.out = append(l.out, sc.Text())
			close(l.more)
			l.more = make(chan struct{})
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s's output:\n%s", name, l.text())
		}
	})
	return l
}

func (l *lines) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.out, "\n")
}

// waitLine waits up to 10 s for a line containing want.
func (l *lines) waitLine(t *testing.T, want string) {
	t.Helper()
	l.waitCount(t, want, 1)
}

// count returns how many lines so far contain want.
func (l *lines) count(want string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.out {
		if strings.Contains(line, want) {
			n++
		}
	}
	return n
}

// waitCount waits up to 10 s for n lines containing want.
func (l *lines) waitCount(t *testing.T, want string, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		l.mu.Lock()
		more := l.more
		l.mu.Unlock()
		if l.count(want) >= n {
			return
		}
		select {
		case <-more:
		case <-deadline:
			t.Fatalf("%s printed %q fewer than %d times; it printed:\n%s", l.name, want, n, l.text())
		}
	}
}

// runCmd runs a command in dir and returns its standard output.
func runCmd(t *testing.T, dir, bin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", bin, args, err, out)
	}
	return string(out)
}
