package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"
)

// The real API servers of the conformance matrix: apiServer, one or more
// processes on an address and log of its own, started, probed directly,
// crashed and restarted; and the set-up of php -S, nginx with php-fpm and
// Apache with mod_php, their configurations filled from
// testdata/conformance (apiKinds starts Node, Go and Python directly).

// apiServer is one instance of an API server, as one or more processes
// (nginx and php-fpm), on its own address and log.
type apiServer struct {
	name  string
	addr  string
	log   string
	dir   string
	parts []*apiPart
}

// apiPart is one process of a server.
type apiPart struct {
	name    string
	crashes bool // the crash case kills (and restarts) it
	dir     string
	env     []string
	args    []string
	out     lockedBuffer
	cmd     *exec.Cmd
	done    chan struct{}
}

func startAPIServer(t *testing.T, kind apiKind) *apiServer {
	t.Helper()
	s := &apiServer{name: kind.name, addr: freeAddr(t), dir: t.TempDir()}
	s.log = filepath.Join(s.dir, "api.log")
	kind.configure(t, s)
	t.Cleanup(func() {
		for _, p := range slices.Backward(s.parts) {
			p.kill()
		}
		if t.Failed() {
			for _, p := range s.parts {
				t.Logf("%s's output (its end):\n%s", p.name, tail(p.out.String(), 30))
			}
		}
	})
	for _, p := range s.parts {
		p.start(t)
	}
	s.waitReady(t)
	return s
}

func (s *apiServer) add(crashes bool, name, dir string, env []string, args ...string) {
	s.parts = append(s.parts, &apiPart{name: name, crashes: crashes, dir: dir, env: env, args: args})
}

func (s *apiServer) url() string { return "http://" + s.addr + "/" }

// crash kills the server's crashing processes, with their process groups
// (a master's workers die with it).
func (s *apiServer) crash() {
	for _, p := range s.parts {
		if p.crashes {
			p.kill()
		}
	}
}

func (s *apiServer) restart(t *testing.T) {
	t.Helper()
	for _, p := range s.parts {
		if p.crashes {
			p.start(t)
		}
	}
	s.waitReady(t)
}

// waitReady waits until the server answers GET /probe with ok.
func (s *apiServer) waitReady(t *testing.T) {
	t.Helper()
	probeClient := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := probeClient.Get(s.url() + "probe")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && string(b) == "ok" {
				return
			}
			err = fmt.Errorf("%s %q", resp.Status, b)
		}
		for _, p := range s.parts {
			select {
			case <-p.done:
				t.Fatalf("%s exited: %v\n%s", p.name, p.cmd.ProcessState, tail(p.out.String(), 30))
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not answer on %s: %v", s.name, s.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// direct sends one message straight to the server, not through the
// gateway (id "probe", which no case uses), to check the harness itself:
// it returns the answer, its framing, and whether the server closes after
// it.
func (s *apiServer) direct(t *testing.T, msg string) (body, framing string, closes bool) {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
	if err != nil {
		t.Fatalf("harness: %s: %v", s.name, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "POST /probe HTTP/1.1\r\nHost: %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s", s.addr, len(msg), msg)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("harness: %s answers no HTTP: %v", s.name, err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("harness: %s's answer: %v", s.name, err)
	}
	switch {
	case slices.Contains(resp.TransferEncoding, "chunked"):
		framing = "chunked"
	case resp.ContentLength >= 0:
		framing = "Content-Length"
	default:
		framing = "close-delimited " + resp.Proto
	}
	return string(b), framing, resp.Close
}

func (p *apiPart) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(p.args[0], p.args[1:]...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = &p.out, &p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its workers die with it
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", p.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.cmd, p.done = cmd, done
}

// kill ends the process and its group at once, as a crash (or the OOM
// killer, or systemd's KillMode=control-group) would.
func (p *apiPart) kill() {
	if p.cmd == nil {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	p.cmd = nil
}

// phpS runs router.php under PHP's built-in server, with workers worker
// processes (PHP_CLI_SERVER_WORKERS) or, for 0, its default single one.
func phpS(t *testing.T, s *apiServer, workers int) {
	env := []string{"CONFORMANCE_LOG=" + s.log}
	if workers > 0 {
		env = append(env, fmt.Sprintf("PHP_CLI_SERVER_WORKERS=%d", workers))
	}
	s.add(true, "php -S", confFile(""), env, tool(t, "php"), "-S", s.addr, confFile("router.php"))
}

// nginxFPM runs router.php in a static pool of 16 php-fpm workers behind
// nginx. The crash kills php-fpm's master with its workers: killing the
// master alone leaves the workers serving the socket, and a new master
// then refuses to start ("Another FPM instance seems to already listen").
func nginxFPM(t *testing.T, s *apiServer) {
	fpm := globOne(t, "/usr/sbin/php-fpm*", "php-fpm")
	nginx := tool(t, "nginx")
	conf := confTemplate{Dir: s.dir, Addr: s.addr, Router: confFile("router.php"), Log: s.log, Root: os.Geteuid() == 0}
	fpmConf, nginxConf := conf.render(t, "php-fpm.conf"), conf.render(t, "nginx.conf")
	s.add(true, "php-fpm", s.dir, nil, fpm, "--nodaemonize", "--allow-to-run-as-root", "--fpm-config", fpmConf)
	s.add(false, "nginx", s.dir, nil, nginx, "-e", filepath.Join(s.dir, "nginx-error.log"), "-p", s.dir, "-c", nginxConf)
}

// apacheModPHP runs router.php under Apache's prefork MPM with mod_php,
// 16 workers. As root, Apache's workers run as nobody, who must be able to
// write the log.
func apacheModPHP(t *testing.T, s *apiServer) {
	apache := tool(t, "apache2")
	mod := globOne(t, "/usr/lib/apache2/modules/libphp*.so", "libapache2-mod-php")
	conf := confTemplate{Dir: s.dir, Addr: s.addr, Router: confFile("router.php"), Log: s.log,
		Modules: filepath.Dir(mod), PHPModule: mod, Root: os.Geteuid() == 0}
	if conf.Root {
		for _, d := range []string{s.dir, filepath.Dir(s.dir)} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(s.log, nil, 0o666); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(s.log, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	s.add(true, "apache2", s.dir, nil, apache, "-DFOREGROUND", "-f", conf.render(t, "apache2.conf"))
}

// confTemplate fills the server configurations of testdata/conformance.
type confTemplate struct {
	Dir, Addr, Router, Log string
	Modules, PHPModule     string
	Root                   bool // running as root
}

// render writes testdata/conformance/name, filled in, to the server's
// directory and returns its path.
func (c confTemplate) render(t *testing.T, name string) string {
	t.Helper()
	tmpl, err := template.ParseFiles(confFile(name))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, c); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(c.Dir, name)
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// confFile is the absolute path of testdata/conformance/name.
func confFile(name string) string {
	p, err := filepath.Abs(filepath.Join("testdata", "conformance", name))
	if err != nil {
		panic(err)
	}
	return p
}

// globOne finds an installed file whose name is versioned.
func globOne(t *testing.T, pattern, pkg string) string {
	t.Helper()
	m, _ := filepath.Glob(pattern)
	if len(m) == 0 {
		t.Fatalf("%s is not installed (no %s): run scripts/deps, which installs it, or apt-get install %s", pkg, pattern, pkg)
	}
	return m[len(m)-1]
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-lines):], "\n")
}

// lockedBuffer is a process's output, written by exec's copying goroutine
// and read by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
