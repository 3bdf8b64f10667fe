package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/testkit"
)

// The finding this guards against: an id such as ..%2Fadmin%2F, appended
// as it was sent to -api http://api/ws/, made ws2api's GET, POST and DELETE
// reach /admin/ behind nginx, which decodes %2F before it removes dot
// segments. Here a real nginx serves /admin/ with a 403 (standing in for
// "allow 127.0.0.1; deny all", which cannot tell apart requests that all
// come from loopback) and php-fpm under every other path, and its access
// log records every request: each attack id must be refused by the
// gateway with 400 and none may reach nginx at all, for the bases /ws/ and
// /. Before ids were decoded and checked (gateway/id.go), none was
// refused by the gateway: under /ws/ the first three reached /admin/ (the
// client got 502 for nginx's 403), admin%2F reached /ws/admin/ (and
// /admin/ under the base /), ., .., %2e%2e and .%2e reached / and were
// upgraded, and %0d%0a and %6Detrics were upgraded too; CP%31 was a
// client apart from CP1.
func TestIDsCannotLeaveTheAPIBase(t *testing.T) {
	t.Parallel()
	api := startIDAPI(t)

	// The harness first: nginx itself takes the attack to /admin/.
	resp, err := http.Get("http://" + api.addr + "/ws/..%2Fadmin%2F")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	api.waitLine(t, 0, "GET /ws/..%2Fadmin%2F")
	if l := api.lines(t, 0); resp.StatusCode != 403 || len(l) != 1 || l[0].uri != "/admin/" {
		t.Fatalf("harness: nginx answers /ws/..%%2Fadmin%%2F %d and logs %v; want 403 as /admin/", resp.StatusCode, l)
	}

	attacks := []string{"..%2Fadmin%2F", "%2e%2e%2Fadmin%2F", "a%2F..%2F..%2Fadmin%2F", "admin%2F", "%2e%2e", ".", "..",
		"%00", "%0d%0a", "%6Detrics", "a%5C..%5C..%5Cadmin", "%2E%2E", ".%2e", "%C0%AE%C0%AE%C0%AFadmin"}
	for _, base := range []string{"/ws/", "/"} {
		t.Run("base "+base, func(t *testing.T) {
			gw := start(t, nil, "-api", "http://"+api.addr+base)
			from := len(api.lines(t, 0))
			for _, id := range attacks {
				head := "GET /" + id + "?x=1 HTTP/1.1\r\nHost: " + gw.public + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
					"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
				if status, body := testkit.RawRequest(t, gw.public, head); status != 400 || !strings.Contains(body, "bad client id") {
					t.Errorf("upgrade for /%s: %d %q, want 400 bad client id", id, status, body)
				}
			}
			// A good client, so that the log is seen to record the
			// gateway's requests: its GET, POST and DELETE.
			c := testkit.Dial(t, "ws://"+gw.public+"/CP%201", nil)
			send(t, c, "hello")
			if _, got := testkit.Read(t, c, 10*time.Second); got != "echo:hello" {
				t.Fatalf("reply %q", got)
			}
			_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye"))
			api.waitLine(t, from, "DELETE "+base+"CP%201")
			got := api.lines(t, from)
			for _, l := range got {
				rest, under := strings.CutPrefix(l.uri, base)
				if !under || strings.Contains(rest, "/") || !strings.HasPrefix(l.requestURI, base) || strings.HasPrefix(l.uri, "/admin") {
					t.Errorf("nginx got %s %s (%s, status %s): not one segment under %s", l.method, l.requestURI, l.uri, l.status, base)
				}
			}
			if len(got) != 3 {
				t.Errorf("nginx got %d requests, want the good client's GET, POST and DELETE: %v", len(got), got)
			}
		})
	}

	// CP%31 and CP1 are one client: the second replaces the first (4000),
	// the API sees /ws/CP1 both times, and a push to /CP%31 reaches it.
	gw := start(t, nil, "-api", "http://"+api.addr+"/ws/")
	from := len(api.lines(t, 0))
	first := testkit.Dial(t, "ws://"+gw.public+"/CP1", nil)
	second := testkit.Dial(t, "ws://"+gw.public+"/CP%31", nil)
	testkit.ExpectClose(t, first, 4000, "replaced", 10*time.Second)
	if status, body := post(t, gw.control+"/CP%31", "pushed"); status != 200 {
		t.Fatalf("push to /CP%%31: %d %q", status, body)
	}
	if _, got := testkit.Read(t, second, 10*time.Second); got != "pushed" {
		t.Fatalf("push received as %q", got)
	}
	if status, body := get(t, gw.control+"/CP1"); status != 200 || !strings.Contains(body, `"id":"CP1"`) {
		t.Fatalf("GET /CP1: %d %s", status, body)
	}
	_ = second.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye"))
	api.waitLine(t, from, "DELETE /ws/CP1")
	var seen []string
	for _, l := range api.lines(t, from) {
		seen = append(seen, l.method+" "+l.requestURI)
	}
	if want := []string{"GET /ws/CP1", "GET /ws/CP1", "DELETE /ws/CP1"}; fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("nginx got %q, want %q: one client, one path", seen, want)
	}
}

// idAPI is nginx in front of php-fpm, with an access log of every request.
type idAPI struct {
	addr   string
	access string
}

// accessLine is one line of idAPI's access log: $uri is the path nginx
// routes by, decoded and with its dot segments removed.
type accessLine struct {
	method, status, requestURI, uri string
}

func (l accessLine) String() string {
	return l.method + " " + l.requestURI + " (" + l.uri + ") " + l.status
}

func startIDAPI(t *testing.T) *idAPI {
	t.Helper()
	nginx := tool(t, "nginx")
	fpms, _ := filepath.Glob("/usr/sbin/php-fpm*")
	if len(fpms) == 0 {
		t.Fatal("php-fpm is not installed (no /usr/sbin/php-fpm*): run scripts/deps, which installs it, or apt-get install php-fpm")
	}
	dir := t.TempDir()
	a := &idAPI{addr: freeAddr(t), access: filepath.Join(dir, "access.log")}
	fpmAddr := freeAddr(t)
	root := os.Geteuid() == 0
	script := filepath.Join(dir, "api.php")
	writeFile(t, script, []byte(`<?php
// GET: ok (accept); POST: echo:<message>; DELETE: nothing.
switch ($_SERVER['REQUEST_METHOD']) {
case 'GET':
    echo 'ok';
    break;
case 'POST':
    echo 'echo:' . file_get_contents('php://input');
    break;
}
`))
	fpmConf := "[global]\npid = " + dir + "/fpm.pid\nerror_log = /proc/self/fd/2\ndaemonize = no\n\n[api]\n" +
		"listen = " + fpmAddr + "\npm = static\npm.max_children = 4\n"
	if root {
		fpmConf += "user = root\ngroup = root\n"
	}
	writeFile(t, filepath.Join(dir, "fpm.conf"), []byte(fpmConf))
	user := ""
	if root {
		user = "user root;\n"
	}
	writeFile(t, filepath.Join(dir, "nginx.conf"), []byte(user+`worker_processes 1;
pid `+dir+`/nginx.pid;
events { worker_connections 256; }
http {
    log_format paths "$request_method\t$status\t$request_uri\t$uri";
    access_log `+a.access+` paths;
    client_body_temp_path `+dir+`/body;
    fastcgi_temp_path `+dir+`/fastcgi;
    proxy_temp_path `+dir+`/proxy;
    uwsgi_temp_path `+dir+`/uwsgi;
    scgi_temp_path `+dir+`/scgi;
    server {
        listen `+a.addr+`;
        # The API, under /ws/ (and, for -api .../, everywhere else).
        location / {
            fastcgi_pass `+fpmAddr+`;
            fastcgi_param SCRIPT_FILENAME `+script+`;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param REQUEST_URI $request_uri;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
        }
        # In production: allow 127.0.0.1; deny all.
        location /admin/ {
            return 403;
        }
    }
}
`))
	fpm := &daemon{name: "php-fpm", addr: fpmAddr, args: []string{fpms[len(fpms)-1], "--nodaemonize", "--allow-to-run-as-root", "--fpm-config", filepath.Join(dir, "fpm.conf")}}
	fpm.cleanup(t)
	fpm.start(t)
	ng := &daemon{name: "nginx", addr: a.addr, args: []string{nginx, "-e", "stderr", "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-g", "daemon off;"}}
	ng.cleanup(t)
	ng.start(t)
	return a
}

// lines returns the access log's lines from the from-th on.
func (a *idAPI) lines(t *testing.T, from int) []accessLine {
	t.Helper()
	b, err := os.ReadFile(a.access)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []accessLine
	for line := range strings.Lines(string(b)) {
		f := strings.Split(strings.TrimSuffix(line, "\n"), "\t")
		if len(f) != 4 {
			t.Fatalf("harness: access log line %q", line)
		}
		out = append(out, accessLine{method: f[0], status: f[1], requestURI: f[2], uri: f[3]})
	}
	return out[min(from, len(out)):]
}

// waitLine waits for "<method> <request URI>" in the log, after from.
func (a *idAPI) waitLine(t *testing.T, from int, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, l := range a.lines(t, from) {
			if l.method+" "+l.requestURI == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx never got %s; it got %v", want, a.lines(t, from))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
