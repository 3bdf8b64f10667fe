package main

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lorenzodonini/ocpp-go/ocpp"
	ocpp16 "github.com/lorenzodonini/ocpp-go/ocpp1.6"
	"github.com/lorenzodonini/ocpp-go/ocpp1.6/core"
	types16 "github.com/lorenzodonini/ocpp-go/ocpp1.6/types"
	ocpp2 "github.com/lorenzodonini/ocpp-go/ocpp2.0.1"
	"github.com/lorenzodonini/ocpp-go/ocpp2.0.1/availability"
	"github.com/lorenzodonini/ocpp-go/ocpp2.0.1/provisioning"
	"github.com/lorenzodonini/ocpp-go/ocpp2.0.1/remotecontrol"
	types201 "github.com/lorenzodonini/ocpp-go/ocpp2.0.1/types"
	"github.com/lorenzodonini/ocpp-go/ocppj"
	"github.com/lorenzodonini/ocpp-go/ws"

	"github.com/ws2api/ws2api/internal/testkit"
)

// OCPP through the binary with charge point libraries this project did not
// write, in front of both example APIs (examples/php under php -S, and
// examples/go): Node's ocpp-rpc in strict mode, which checks every message
// either way against the OCPP 1.6 JSON schemas (from npm, installed by
// scripts/deps into .cache/npm; testdata/ocpp/chargepoint.js), and Go's
// ocpp-go, OCPP 1.6 and 2.0.1, which validates every message it sends and
// receives (in this process). Each boots and gets the API's answers,
// answers the CALLs the API pushes, answers a CALL sent with ?await to its
// caller and not to the API, and over wss connects with a client
// certificate (OCPP security profile 3) and is refused without.

// ocppVersion is what the central system's CALLs look like in one OCPP
// version: each an action and its payload, as they follow the unique id.
type ocppVersion struct {
	proto string
	reset string // accepted
	start string // a remote start: accepted
	fail  string // UnlockConnector: the charge point's handler fails, a CALLERROR
}

var (
	ocppV16  = ocppVersion{"ocpp1.6", `"Reset",{"type":"Soft"}`, `"RemoteStartTransaction",{"connectorId":1,"idTag":"TAG-1"}`, `"UnlockConnector",{"connectorId":1}`}
	ocppV201 = ocppVersion{"ocpp2.0.1", `"Reset",{"type":"Immediate"}`, `"RequestStartTransaction",{"idToken":{"idToken":"TAG-1","type":"ISO14443"},"remoteStartId":1}`, `"UnlockConnector",{"evseId":1,"connectorId":1}`}
)

// ocppCall is the CALL of action-and-payload ap with unique id uid.
func ocppCall(uid, ap string) string { return `[2,"` + uid + `",` + ap + `]` }

// charger is one library's charge point.
type charger struct {
	name    string // short: the tests' ids are made of it
	version ocppVersion
	// connect connects as id to base (ws:// or wss://host:port) and boots;
	// the lines are what it got. The error is the connection's: an
	// *httpRefusal when the upgrade was answered with a status.
	connect func(t *testing.T, base, id string, tc *chargerTLS) (*lines, error)
}

func chargers() []charger {
	return []charger{
		{"rpc16", ocppV16, connectRPC},
		{"go16", ocppV16, connectGo16},
		{"go201", ocppV201, connectGo201},
	}
}

// chargerTLS is a charge point's side of wss: the server certificate it
// trusts, the client certificate it presents (nil: none), and a
// Client-Cert header it sends itself, as a forger would ("": none).
type chargerTLS struct {
	server, client *testkit.Cert
	forged         string
}

type httpRefusal struct {
	status int
	text   string
}

func (e *httpRefusal) Error() string { return fmt.Sprintf("HTTP %d %s", e.status, e.text) }

// TestOCPPLibraries: each library's charge point connects with its
// version's subprotocol, boots, and the example API answers its
// BootNotification, Heartbeat and StatusNotification (which the libraries
// validate); a CALL the API pushes is answered, and that CALLRESULT reaches
// the API as an ordinary POST.
func TestOCPPLibraries(t *testing.T) {
	t.Parallel()
	goAPI := buildExample(t, "go")
	for _, lang := range []string{"php", "go"} {
		t.Run(lang, func(t *testing.T) {
			t.Parallel()
			api, p := startOCPPAPI(t, lang, goAPI)
			for _, ch := range chargers() {
				t.Run(ch.name, func(t *testing.T) {
					t.Parallel()
					id := lang + "-" + ch.name
					cp, err := ch.connect(t, "ws://"+p.public, id, nil)
					if err != nil {
						t.Fatalf("%s did not connect: %v", id, err)
					}
					checkBoot(t, cp, api, p, id, ch.version)
					if status, body := post(t, p.control+"/"+id, ocppCall("push-"+id, ch.version.reset)); status != 200 {
						t.Fatalf("push: %d %s", status, body)
					}
					api.waitLine(t, "OCPP CALLRESULT push-"+id+" from "+id+`: {"status":"Accepted"`)
				})
			}
		})
	}
}

// TestOCPPLibrariesAwait: the API's synchronous call, POST
// <control>/<id>?await=: Reset and the remote start come back as the
// library's CALLRESULT, the CALL its handler fails as its CALLERROR, each
// with 200, and none of them is also POSTed to the API. In the PHP case the
// Reset goes through examples/php/call.php.
func TestOCPPLibrariesAwait(t *testing.T) {
	t.Parallel()
	goAPI := buildExample(t, "go")
	for _, lang := range []string{"php", "go"} {
		t.Run(lang, func(t *testing.T) {
			t.Parallel()
			api, p := startOCPPAPI(t, lang, goAPI)
			if lang == "php" {
				out, err := exec.Command(tool(t, "php"), filepath.Join(examplesDir("php"), "call.php"), "nobody", ocppCall("n-1", ocppV16.reset), p.control, "2").Output()
				if err == nil || !strings.HasPrefix(string(out), "404 ") {
					t.Errorf("call.php to nobody: %q, %v; want 404 and a failing exit", out, err)
				}
			}
			for _, ch := range chargers() {
				t.Run(ch.name, func(t *testing.T) {
					t.Parallel()
					id := lang + "-await-" + ch.name
					cp, err := ch.connect(t, "ws://"+p.public, id, nil)
					if err != nil {
						t.Fatalf("%s did not connect: %v", id, err)
					}
					cp.waitLine(t, "StatusNotification answered")
					v := ch.version

					uid := "reset-" + id
					var status int
					var body string
					if lang == "php" {
						out := runCmd(t, examplesDir("php"), tool(t, "php"), "call.php", id, ocppCall(uid, v.reset), p.control, "5")
						code, rest, _ := strings.Cut(strings.TrimSuffix(out, "\n"), " ")
						status, _ = strconv.Atoi(code)
						body = rest
					} else {
						status, _, body = callAwait(t, p, id, "5s", ocppCall(uid, v.reset))
					}
					expectAccepted(t, status, body, uid)

					// The time as plain seconds.
					status, ctype, body := callAwait(t, p, id, "5", ocppCall("start-"+id, v.start))
					expectAccepted(t, status, body, "start-"+id)
					if !strings.HasPrefix(ctype, "application/json") {
						t.Errorf("an awaited answer came as %q, want application/json", ctype)
					}

					status, _, body = callAwait(t, p, id, "5s", ocppCall("unlock-"+id, v.fail))
					msg := answerOf(t, status, body, 4, "unlock-"+id)
					var code, desc string
					if len(msg) != 5 || json.Unmarshal(msg[2], &code) != nil || json.Unmarshal(msg[3], &desc) != nil || code != "NotSupported" {
						t.Errorf("the failed CALL's answer: %s, want [4, uid, \"NotSupported\", description, details]", body)
					}

					// A CALL pushed the ordinary way: its answer reaches the
					// API, after any of the awaited ones would have (one
					// connection's messages reach the API in order).
					if status, body := post(t, p.control+"/"+id, ocppCall("after-"+id, v.reset)); status != 200 {
						t.Fatalf("push: %d %s", status, body)
					}
					api.waitLine(t, "OCPP CALLRESULT after-"+id+" from "+id)
					for _, uid := range []string{"reset-" + id, "start-" + id, "unlock-" + id} {
						if n := api.count(" " + uid + " from " + id); n != 0 {
							t.Errorf("the answer to the awaited %s was POSTed to the API too", uid)
						}
					}
				})
			}
		})
	}
}

// TestOCPPAwaitStatuses: ?await's failures, with ocpp-rpc as the charge
// point (it can leave a CALL unanswered): 404 for an id not connected, 400
// for a body that is not a CALL (sent to nobody), 504 when no answer comes
// in time, 409 for a second CALL with the unique id of one still waiting
// (not sent either), 410 when the charge point goes away meanwhile.
func TestOCPPAwaitStatuses(t *testing.T) {
	t.Parallel()
	_, p := startOCPPAPI(t, "php", "")
	id := "await-statuses"
	cp, err := connectRPC(t, "ws://"+p.public, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	cp.waitLine(t, "StatusNotification answered")
	hang := func(uid string) string { return ocppCall(uid, `"DataTransfer",{"vendorId":"hang"}`) }

	if status, _, body := callAwait(t, p, "nobody", "5s", ocppCall("n-1", ocppV16.reset)); status != 404 {
		t.Errorf("to an id not connected: %d %s, want 404", status, body)
	}
	for _, bad := range []string{"hello", `[3,"r-1",{"status":"Accepted"}]`, `{"jsonrpc":"2.0","method":"Reset"}`, `[2]`} {
		if status, _, body := callAwait(t, p, id, "5s", bad); status != 400 {
			t.Errorf("%s: %d %s, want 400", bad, status, body)
		}
	}

	began := time.Now()
	status, _, body := callAwait(t, p, id, "1s", hang("hang-1"))
	if took := time.Since(began); status != 504 || took < time.Second || took > 5*time.Second {
		t.Errorf("a CALL left unanswered: %d %s after %v, want 504 after 1s", status, body, took)
	}
	cp.waitLine(t, "not answering DataTransfer hang-1")

	type answer struct {
		status int
		body   string
		err    error
	}
	first := make(chan answer, 1)
	go func() {
		status, _, body, err := awaitCall(p, id, "10s", hang("hang-2"))
		first <- answer{status, body, err}
	}()
	cp.waitLine(t, "not answering DataTransfer hang-2")
	if status, _, body := callAwait(t, p, id, "5s", ocppCall("hang-2", ocppV16.reset)); status != 409 {
		t.Errorf("a second CALL hang-2: %d %s, want 409", status, body)
	}
	if status, body := del(t, p.control+"/"+id); status != 200 {
		t.Fatalf("closing %s: %d %s", id, status, body)
	}
	select {
	case a := <-first:
		if a.err != nil || a.status != 410 {
			t.Errorf("the CALL waiting when its charge point went away: %d %s %v, want 410", a.status, a.body, a.err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the CALL waiting when its charge point went away had no answer 5s later")
	}
	cp.waitLine(t, "closed 1000")
	// What the charge point got, in order: the 400s' bodies would have come
	// before hang-1, the second hang-2 before the close.
	if n := cp.count("bad message") + cp.count("handled Reset") + cp.count("CALLERROR"); n != 0 {
		t.Errorf("the charge point got a message it should not have:\n%s", cp.text())
	}
}

// TestOCPPLibrariesMTLS: OCPP security profile 3, wss with client
// certificates (-tls-client-ca, a root whose intermediate issued them).
// Each library connects with a certificate for its identity and boots, and
// the API gets that certificate (RFC 9440's Client-Cert, the intermediate
// in Client-Cert-Chain); without one, or with one from another CA, the TLS
// handshake fails; with another charger's, the API refuses it. With
// -tls-client-auth optional it connects without one, and a Client-Cert
// header it sends itself does not reach the API.
func TestOCPPLibrariesMTLS(t *testing.T) {
	t.Parallel()
	goAPI := buildExample(t, "go")
	server := testkit.NewCert(t, "ws2api")
	root := testkit.NewCA(t, "chargers root")
	issuing := root.Intermediate(t, "chargers issuing")
	stranger := testkit.NewCA(t, "another root")
	dir := t.TempDir()
	files := map[string][]byte{"cert.pem": server.CertPEM, "key.pem": server.KeyPEM, "ca.pem": root.CertPEM}
	for name, data := range files {
		writeFile(t, filepath.Join(dir, name), data)
	}
	flags := []string{"-tls-cert", filepath.Join(dir, "cert.pem"), "-tls-key", filepath.Join(dir, "key.pem"), "-tls-client-ca", filepath.Join(dir, "ca.pem")}
	for _, lang := range []string{"php", "go"} {
		t.Run(lang, func(t *testing.T) {
			t.Parallel()
			api, p := startOCPPAPI(t, lang, goAPI, flags...)
			opt := start(t, nil, append([]string{"-api", "http://" + api.addr + "/", "-tls-client-auth", "optional"}, flags...)...)
			for _, ch := range chargers() {
				t.Run(ch.name, func(t *testing.T) {
					t.Parallel()
					base := "wss://" + p.public
					id := lang + "-tls-" + ch.name
					cp, err := ch.connect(t, base, id, &chargerTLS{server: server, client: issuing.Client(t, id)})
					if err != nil {
						t.Fatalf("%s with its certificate did not connect: %v", id, err)
					}
					checkBoot(t, cp, api, p, id, ch.version)
					if line := api.waitAny(t, "connect "+id+" ("); !strings.Contains(line, " with client certificate CN="+id+" (chain: CN=chargers issuing") {
						t.Errorf("the API did not get %s's certificate and its chain: %s", id, line)
					}

					for what, cert := range map[string]*testkit.Cert{"none": nil, "stranger": stranger.Client(t, id+"-stranger")} {
						_, err := ch.connect(t, base, id+"-"+what, &chargerTLS{server: server, client: cert})
						if !tlsRefused(err) {
							t.Errorf("with certificate %s: %v; want the TLS handshake refused", what, err)
						}
					}

					_, err = ch.connect(t, base, id+"-other", &chargerTLS{server: server, client: issuing.Client(t, id)})
					if refusal := (*httpRefusal)(nil); !errors.As(err, &refusal) || refusal.status != 403 {
						t.Errorf("with another charger's certificate: %v, want 403 from the API", err)
					}
					api.waitLine(t, "refused "+id+`-other: the client certificate is for "`+id+`"`)

					// -tls-client-auth optional.
					base = "wss://" + opt.public
					bare := id + "-optional"
					forged := issuing.Client(t, bare).TLS.Certificate[0] // a real certificate, but not presented
					cp, err = ch.connect(t, base, bare, &chargerTLS{server: server, forged: ":" + base64.StdEncoding.EncodeToString(forged) + ":"})
					if err != nil {
						t.Fatalf("optional, without a certificate: %v", err)
					}
					checkBoot(t, cp, api, opt, bare, ch.version)
					if line := api.waitAny(t, "connect "+bare+" ("); strings.Contains(line, "certificate") {
						t.Errorf("a Client-Cert header the charger sent itself reached the API: %s", line)
					}
					signed := id + "-optional-cert"
					if _, err := ch.connect(t, base, signed, &chargerTLS{server: server, client: issuing.Client(t, signed)}); err != nil {
						t.Errorf("optional, with a certificate: %v", err)
					} else if line := api.waitAny(t, "connect "+signed+" ("); !strings.Contains(line, " with client certificate CN="+signed+" ") {
						t.Errorf("optional: the API did not get %s's certificate: %s", signed, line)
					}
					_, err = ch.connect(t, base, id+"-optional-stranger", &chargerTLS{server: server, client: stranger.Client(t, id+"-optional-stranger")})
					if !tlsRefused(err) {
						t.Errorf("optional, with a certificate from another CA: %v; want the TLS handshake refused", err)
					}
				})
			}
		})
	}
}

// tlsRefused tells a connect that ws2api refused in the TLS handshake (an
// alert) from one refused with an HTTP status, or one that failed
// otherwise.
func tlsRefused(err error) bool {
	var refusal *httpRefusal
	if err == nil || errors.As(err, &refusal) {
		return false
	}
	s := strings.ToLower(err.Error())
	return strings.Contains(s, "remote error: tls:") || strings.Contains(s, "alert")
}

// startOCPPAPI starts an example API, PHP's under php -S or Go's (goAPI,
// built), and a gateway in front of it with flags.
func startOCPPAPI(t *testing.T, lang, goAPI string, flags ...string) (*lines, *proc) {
	t.Helper()
	if lang == "php" {
		api := startPHP(t)
		return api, start(t, nil, append([]string{"-api", "http://" + api.addr + "/"}, flags...)...)
	}
	addr, ctl := freeAddr(t), freeAddr(t)
	api := startLines(t, "example API", goAPI, "-listen", addr, "-control", "http://"+ctl)
	api.addr = addr
	api.waitLine(t, "example API on "+addr)
	return api, start(t, nil, append([]string{"-api", "http://" + addr + "/", "-control", ctl}, flags...)...)
}

// checkBoot checks what a charge point got for its BootNotification,
// Heartbeat and StatusNotification, that the API answered each, and that
// the connection has the version's subprotocol.
func checkBoot(t *testing.T, cp, api *lines, p *proc, id string, v ocppVersion) {
	t.Helper()
	var boot struct {
		Status      string    `json:"status"`
		Interval    int       `json:"interval"`
		CurrentTime time.Time `json:"currentTime"`
	}
	answered(t, cp, "BootNotification", &boot)
	if boot.Status != "Accepted" || boot.Interval != 10 || time.Since(boot.CurrentTime).Abs() > time.Minute {
		t.Errorf("%s: BootNotification answered %+v", id, boot)
	}
	var beat struct {
		CurrentTime time.Time `json:"currentTime"`
	}
	answered(t, cp, "Heartbeat", &beat)
	if time.Since(beat.CurrentTime).Abs() > time.Minute {
		t.Errorf("%s: Heartbeat answered %+v", id, beat)
	}
	var status map[string]any
	if answered(t, cp, "StatusNotification", &status); len(status) != 0 {
		t.Errorf("%s: StatusNotification answered %v", id, status)
	}
	for _, action := range []string{"BootNotification", "Heartbeat", "StatusNotification"} {
		api.waitLine(t, "OCPP "+action+" from "+id+": answered with a CALLRESULT")
	}
	_, info := get(t, p.control+"/"+id)
	var conn struct {
		Subprotocol string `json:"subprotocol"`
	}
	if json.Unmarshal([]byte(info), &conn) != nil || conn.Subprotocol != v.proto {
		t.Errorf("%s is connected with subprotocol %q, want %q (%s)", id, conn.Subprotocol, v.proto, info)
	}
}

// answered reads the charge point's line "<action> answered <json>" into v.
func answered(t *testing.T, cp *lines, action string, v any) {
	t.Helper()
	line := cp.waitAny(t, action+" answered ", action+" failed")
	_, js, ok := strings.Cut(line, action+" answered ")
	if !ok {
		t.Fatalf("%s: %s", cp.name, line)
	}
	if err := json.Unmarshal([]byte(js), v); err != nil {
		t.Fatalf("%s: %s: %v", cp.name, line, err)
	}
}

// callAwait sends a CALL with POST <control>/<id>?await=<wait> and returns
// the answer's status, Content-Type and body.
func callAwait(t *testing.T, p *proc, id, wait, call string) (int, string, string) {
	t.Helper()
	status, ctype, body, err := awaitCall(p, id, wait, call)
	if err != nil {
		t.Fatal(err)
	}
	return status, ctype, body
}

var awaitClient = &http.Client{Timeout: 15 * time.Second}

func awaitCall(p *proc, id, wait, call string) (int, string, string, error) {
	resp, err := awaitClient.Post(p.control+"/"+url.PathEscape(id)+"?await="+wait, "application/json", strings.NewReader(call))
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b), err
}

// answerOf checks that an awaited answer is a 200 with the charge point's
// message of type typ (3, a CALLRESULT; 4, a CALLERROR) to uid, and returns
// its elements.
func answerOf(t *testing.T, status int, body string, typ int, uid string) []json.RawMessage {
	t.Helper()
	var msg []json.RawMessage
	var gotType int
	var gotUID string
	if status != 200 || json.Unmarshal([]byte(body), &msg) != nil || len(msg) < 3 ||
		json.Unmarshal(msg[0], &gotType) != nil || json.Unmarshal(msg[1], &gotUID) != nil || gotType != typ || gotUID != uid {
		t.Fatalf("the answer to %s: %d %s, want 200 and [%d, %q, ...]", uid, status, body, typ, uid)
	}
	return msg
}

// expectAccepted checks that an awaited answer is [3, uid,
// {"status":"Accepted"}]. (ocpp-go 2.0.1 sends the optional fields it has
// no value for as null, "statusInfo":null, which OCPP 2.0.1's schemas do
// not allow; a null counts as absent here.)
func expectAccepted(t *testing.T, status int, body, uid string) {
	t.Helper()
	msg := answerOf(t, status, body, 3, uid)
	var payload map[string]any
	if len(msg) == 3 && json.Unmarshal(msg[2], &payload) == nil {
		for k, v := range payload {
			if v == nil {
				delete(payload, k)
			}
		}
	}
	if len(msg) != 3 || len(payload) != 1 || payload["status"] != "Accepted" {
		t.Errorf("the answer to %s: %s, want [3, %q, {\"status\":\"Accepted\"}]", uid, body, uid)
	}
}

// connectRPC runs testdata/ocpp/chargepoint.js, ocpp-rpc's charge point.
func connectRPC(t *testing.T, base, id string, tc *chargerTLS) (*lines, error) {
	t.Helper()
	modules, err := filepath.Abs(filepath.Join("..", "..", ".cache", "npm", "node_modules"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(modules, "ocpp-rpc")); err != nil {
		t.Fatalf("ocpp-rpc is not installed (scripts/deps installs it): %v", err)
	}
	env := []string{"NODE_PATH=" + modules}
	if tc != nil {
		dir := t.TempDir()
		pem := func(name string, data []byte) string {
			writeFile(t, filepath.Join(dir, name), data)
			return filepath.Join(dir, name)
		}
		env = append(env, "OCPP_CA="+pem("ca.pem", tc.server.CertPEM))
		if tc.client != nil {
			env = append(env, "OCPP_CERT="+pem("cert.pem", tc.client.CertPEM), "OCPP_KEY="+pem("key.pem", tc.client.KeyPEM))
		}
		if tc.forged != "" {
			env = append(env, "OCPP_CLIENT_CERT_HEADER="+tc.forged)
		}
	}
	script, err := filepath.Abs(filepath.Join("testdata", "ocpp", "chargepoint.js"))
	if err != nil {
		t.Fatal(err)
	}
	cp := startLinesIn(t, "", "ocpp-rpc "+id, env, tool(t, "node"), script, base, id)
	line := cp.waitAny(t, "connected with ", "connect failed: ")
	if why, failed := strings.CutPrefix(line, "connect failed: "); failed {
		code, text, _ := strings.Cut(why, " ")
		if status, err := strconv.Atoi(code); err == nil {
			return cp, &httpRefusal{status, text}
		}
		return cp, errors.New(why)
	}
	return cp, nil
}

// ocppGoClient is ocpp-go's WebSocket client for tc.
func ocppGoClient(tc *chargerTLS) *ws.Client {
	if tc == nil {
		return ws.NewClient()
	}
	conf := &tls.Config{RootCAs: tc.server.Pool}
	if cert := tc.client; cert != nil {
		// Go's TLS client leaves out a certificate that no CA the server
		// names has issued; this sends it all the same, as a charger with
		// one certificate does (and as ocpp-rpc's OpenSSL does).
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert.TLS, nil }
	}
	c := ws.NewTLSClient(conf)
	if tc.forged != "" {
		c.SetHeaderValue("Client-Cert", tc.forged)
	}
	return c
}

func ocppGoError(err error) error {
	var refusal ws.HttpConnectionError
	if errors.As(err, &refusal) {
		return &httpRefusal{refusal.HttpCode, refusal.Details}
	}
	return err
}

// record adds a charge point's line for an answer it got, as
// chargepoint.js prints them.
func record(cp *lines, action string, answer any, err error) {
	if err != nil {
		cp.add(action + " failed: " + err.Error())
		return
	}
	b, _ := json.Marshal(answer)
	cp.add(action + " answered " + string(b))
}

// connectGo16 is ocpp-go's OCPP 1.6 charge point.
func connectGo16(t *testing.T, base, id string, tc *chargerTLS) (*lines, error) {
	t.Helper()
	cp := newLines("ocpp-go 1.6 " + id)
	c := ocpp16.NewChargePoint(id, nil, ocppGoClient(tc))
	c.SetCoreHandler(core16{cp: cp})
	if err := c.Start(base); err != nil {
		return cp, ocppGoError(err)
	}
	t.Cleanup(c.Stop)
	boot, err := c.BootNotification("strict", "ocpp-go")
	record(cp, "BootNotification", boot, err)
	beat, err := c.Heartbeat()
	record(cp, "Heartbeat", beat, err)
	status, err := c.StatusNotification(1, core.NoError, core.ChargePointStatusAvailable)
	record(cp, "StatusNotification", status, err)
	return cp, nil
}

// core16 is ocpp-go 1.6's charge point side: Reset and
// RemoteStartTransaction accepted, UnlockConnector failed (a CALLERROR).
// The nil interface stands for the actions the tests do not send.
type core16 struct {
	core.ChargePointHandler
	cp *lines
}

func (h core16) OnReset(r *core.ResetRequest) (*core.ResetConfirmation, error) {
	h.cp.add("handled Reset " + string(r.Type))
	return core.NewResetConfirmation(core.ResetStatusAccepted), nil
}

func (h core16) OnRemoteStartTransaction(r *core.RemoteStartTransactionRequest) (*core.RemoteStartTransactionConfirmation, error) {
	h.cp.add("handled RemoteStartTransaction " + r.IdTag)
	return core.NewRemoteStartTransactionConfirmation(types16.RemoteStartStopStatusAccepted), nil
}

func (h core16) OnUnlockConnector(*core.UnlockConnectorRequest) (*core.UnlockConnectorConfirmation, error) {
	return nil, ocpp.NewError(ocppj.NotSupported, "this charger has no connector lock", "")
}

// connectGo201 is ocpp-go's OCPP 2.0.1 charging station.
func connectGo201(t *testing.T, base, id string, tc *chargerTLS) (*lines, error) {
	t.Helper()
	cp := newLines("ocpp-go 2.0.1 " + id)
	c := ocpp2.NewChargingStation(id, nil, ocppGoClient(tc))
	c.SetProvisioningHandler(provisioning201{cp: cp})
	c.SetRemoteControlHandler(remote201{cp: cp})
	if err := c.Start(base); err != nil {
		return cp, ocppGoError(err)
	}
	t.Cleanup(c.Stop)
	boot, err := c.BootNotification(provisioning.BootReasonPowerUp, "strict", "ocpp-go")
	record(cp, "BootNotification", boot, err)
	beat, err := c.Heartbeat()
	record(cp, "Heartbeat", beat, err)
	status, err := c.StatusNotification(types201.NewDateTime(time.Now()), availability.ConnectorStatusAvailable, 1, 1)
	record(cp, "StatusNotification", status, err)
	return cp, nil
}

// provisioning201 and remote201 are ocpp-go 2.0.1's charging station
// side: Reset and RequestStartTransaction accepted, UnlockConnector failed
// (a CALLERROR).
type provisioning201 struct {
	provisioning.ChargingStationHandler
	cp *lines
}

func (h provisioning201) OnReset(r *provisioning.ResetRequest) (*provisioning.ResetResponse, error) {
	h.cp.add("handled Reset " + string(r.Type))
	return provisioning.NewResetResponse(provisioning.ResetStatusAccepted), nil
}

type remote201 struct {
	remotecontrol.ChargingStationHandler
	cp *lines
}

func (h remote201) OnRequestStartTransaction(r *remotecontrol.RequestStartTransactionRequest) (*remotecontrol.RequestStartTransactionResponse, error) {
	h.cp.add("handled RequestStartTransaction " + r.IDToken.IdToken)
	return remotecontrol.NewRequestStartTransactionResponse(remotecontrol.RequestStartStopStatusAccepted), nil
}

func (h remote201) OnUnlockConnector(*remotecontrol.UnlockConnectorRequest) (*remotecontrol.UnlockConnectorResponse, error) {
	return nil, ocpp.NewError(ocppj.NotSupported, "this charger has no connector lock", "")
}

// newLines is a lines the test writes itself: an in-process charge
// point's record.
func newLines(name string) *lines { return &lines{name: name, more: make(chan struct{})} }

func (l *lines) add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.out = append(l.out, line)
	close(l.more)
	l.more = make(chan struct{})
}

// waitAny waits up to 10 s for a line containing one of wants and returns
// the first such line.
func (l *lines) waitAny(t *testing.T, wants ...string) string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		l.mu.Lock()
		more := l.more
		for _, line := range l.out {
			for _, want := range wants {
				if strings.Contains(line, want) {
					l.mu.Unlock()
					return line
				}
			}
		}
		l.mu.Unlock()
		select {
		case <-more:
		case <-deadline:
			t.Fatalf("%s printed none of %q; it printed:\n%s", l.name, wants, l.text())
		}
	}
}
