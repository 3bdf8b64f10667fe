package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ws2api/ws2api/internal/ws"
)

// Real clients with their own permessage-deflate, through the binary in
// front of the echo API: Node's ws (from npm, installed by scripts/deps
// into .cache/npm) and Python's websockets (Debian's python3-websockets).
// Each sends a short text, 300 KB of text, 70 KB of binary and a message
// in three frames, and checks every echo; with its default offer
// compression is negotiated (and the gateway's counters show the
// messages that went compressed each way), with server_max_window_bits=10 the gateway
// declines and the same messages go uncompressed.
func TestCompressionWithNodeAndPythonClients(t *testing.T) {
	t.Parallel()
	nodePath, err := filepath.Abs(filepath.Join("..", "..", ".cache", "npm", "node_modules"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(nodePath, "ws")); err != nil {
		t.Fatalf("Node's ws is not installed (scripts/deps installs it): %v", err)
	}
	clients := map[string][]string{
		"node-ws":           {tool(t, "node"), confFile("../compression/client.js")},
		"python-websockets": {"/usr/bin/python3", confFile("../compression/client.py")},
	}
	for name, argv := range clients {
		for _, mode := range []string{"default", "window10"} {
			t.Run(name+"/"+mode, func(t *testing.T) {
				t.Parallel()
				p := startWithEcho(t, "-compression", "on")
				inBefore := metricValue(t, p, "ws2api_compressed_messages_in_total")
				outBefore := metricValue(t, p, "ws2api_compressed_messages_out_total")
				cmd := exec.Command(argv[0], append(argv[1:], "ws://"+p.public+"/"+name+"-"+mode, mode)...)
				cmd.Env = append(os.Environ(), "NODE_PATH="+nodePath)
				raw, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("%s: %v\n%s", name, err, raw)
				}
				var out struct {
					Negotiated string          `json:"negotiated"`
					OK         bool            `json:"ok"`
					Replies    json.RawMessage `json:"replies"`
					Error      string          `json:"error"`
				}
				lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
				if err := json.Unmarshal([]byte(lines[len(lines)-1]), &out); err != nil || out.Error != "" {
					t.Fatalf("%s said: %s", name, raw)
				}
				if !out.OK {
					t.Errorf("%s: the echoes were not the messages: %s", name, out.Replies)
				}
				in := metricValue(t, p, "ws2api_compressed_messages_in_total") - inBefore
				sent := metricValue(t, p, "ws2api_compressed_messages_out_total") - outBefore
				switch mode {
				case "default":
					if out.Negotiated != ws.DeflateExtension {
						t.Errorf("%s negotiated %q, want %q", name, out.Negotiated, ws.DeflateExtension)
					}
					// The three large replies go compressed (the short one
					// under -compression-min does not). What the client
					// compresses is its choice: ws skips messages under 1 KiB,
					// each fragment of the fragmented one included, so 2;
					// websockets compresses all four.
					wantIn := map[string]float64{"node-ws": 2, "python-websockets": 4}[name]
					if in != wantIn || sent != 3 {
						t.Errorf("%s: %v messages came compressed and %v went, want %v and 3", name, in, sent, wantIn)
					}
				case "window10":
					if out.Negotiated != "" || in != 0 || sent != 0 {
						t.Errorf("%s asked for a 1 KiB window: negotiated %q, %v in and %v out compressed; want it declined", name, out.Negotiated, in, sent)
					}
				}
			})
		}
	}
}
