package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The files of deploy/ that a test can hold to the binary (haproxy.cfg and
// nginx.conf run for real in TestCluster; the Dockerfile needs a Docker
// engine, which CI machines lack).

// TestGrafanaDashboardReadsMetricsThatExist: every series the dashboard
// queries is one a node exports (started with -redis, so that the cluster
// families are there too).
func TestGrafanaDashboardReadsMetricsThatExist(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "grafana", "ws2api.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	p := start(t, nil, "-api", "http://127.0.0.1:1/", "-redis", "redis://127.0.0.1:1/0")
	_, exported := get(t, p.control+"/metrics")
	families := map[string]bool{}
	for line := range strings.Lines(exported) {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			families[f[2]] = true
		} else if len(f) >= 2 && f[0] != "#" {
			name, _, _ := strings.Cut(f[0], "{")
			families[name] = true
		}
	}
	series := regexp.MustCompile(`([a-z_][a-z0-9_]*)\{`)
	asked := 0
	for _, panel := range dash.Panels {
		if len(panel.Targets) == 0 {
			t.Errorf("panel %q has no query", panel.Title)
		}
		for _, target := range panel.Targets {
			for _, m := range series.FindAllStringSubmatch(target.Expr, -1) {
				name := strings.TrimSuffix(m[1], "_bucket")
				if name == "by" {
					continue
				}
				asked++
				if !families[name] {
					t.Errorf("panel %q queries %s, which ws2api does not export", panel.Title, m[1])
				}
			}
		}
	}
	for _, want := range []string{"ws2api_connections", "ws2api_messages_in_total", "ws2api_messages_out_total",
		"ws2api_api_request_duration_seconds", "ws2api_api_retries_total", "ws2api_closes_total"} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("the dashboard does not show %s", want)
		}
	}
	if asked < 20 {
		t.Errorf("only %d series found in the dashboard's queries", asked)
	}
}

// TestSystemdEnvironmentFileStartsTheGateway: every variable of
// deploy/systemd/ws2api.env is a flag's, and the gateway starts with them.
func TestSystemdEnvironmentFileStartsTheGateway(t *testing.T) {
	t.Parallel()
	dir := filepath.Join("..", "..", "deploy", "systemd")
	f, err := os.Open(filepath.Join(dir, "ws2api.env"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var help strings.Builder
	if err := run(t.Context(), []string{"-h"}, func(string) string { return "" }, &help, &help); err == nil || !strings.Contains(help.String(), "env WS2API_LISTEN") {
		t.Fatalf("-h: %v\n%s", err, help.String())
	}
	var env []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, _, ok := strings.Cut(line, "=")
		if !ok || !strings.Contains(help.String(), "env "+name+")") {
			t.Errorf("ws2api.env sets %q, which is no flag's variable", line)
		}
		env = append(env, line)
	}
	if len(env) < 5 {
		t.Fatalf("ws2api.env sets only %d variables", len(env))
	}
	// Its values as they are; the addresses overridden by flags (a flag
	// wins), so that the test takes free ports.
	p := start(t, env, "-api", "http://127.0.0.1:1/")
	if status, _ := get(t, p.control+"/healthz"); status != 200 {
		t.Errorf("healthz %d", status)
	}

	unit, err := os.ReadFile(filepath.Join(dir, "ws2api.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"EnvironmentFile=/etc/ws2api/ws2api.env", "ExecStart=/usr/local/bin/ws2api\n",
		"ExecReload=/bin/kill -HUP $MAINPID", "LimitNOFILE=1048576", "User=ws2api"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("ws2api.service lacks %q", want)
		}
	}
	// systemd's own check, on a copy that points at this test's binary,
	// environment file and an existing user.
	abs, _ := filepath.Abs(filepath.Join(dir, "ws2api.env"))
	rendered := strings.NewReplacer("/usr/local/bin/ws2api", binary, "/etc/ws2api/ws2api.env", abs,
		"User=ws2api", "User=daemon", "Group=ws2api", "Group=daemon").Replace(string(unit))
	unitFile := filepath.Join(t.TempDir(), "ws2api.service")
	if err := os.WriteFile(unitFile, []byte(rendered), 0o644); err != nil {
		t.Fatal(err)
	}
	// It exits 0 on a line it could not parse, and says "ignoring".
	out, err := exec.Command(tool(t, "systemd-analyze"), "verify", unitFile).CombinedOutput()
	if err != nil || strings.Contains(string(out), "ignoring") || strings.Contains(string(out), "Unknown") {
		t.Errorf("systemd-analyze verify ws2api.service: %v\n%s", err, out)
	}

	sysctl, err := os.ReadFile(filepath.Join(dir, "60-ws2api.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"fs.file-max", "fs.nr_open", "net.netfilter.nf_conntrack_max", "net.ipv4.ip_local_port_range", "net.core.somaxconn"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(key) + ` = \d`).Match(sysctl) {
			t.Errorf("60-ws2api.conf does not set %s", key)
		}
	}
}
