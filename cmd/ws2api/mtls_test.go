package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ws2api/ws2api/internal/testkit"
)

// Client certificates (OCPP security profile 3): ws2api verifies them
// itself (-tls-client-ca), or HAProxy does in front (deploy/haproxy.cfg),
// and the API gets the verified certificate on the connect GET in RFC
// 9440's Client-Cert and Client-Cert-Chain headers; what a client claims
// in those headers itself never reaches it.

// sfCert decodes an RFC 9440 header value, ":<base64 DER>:", to the
// certificate.
func sfCert(t *testing.T, v string) *x509.Certificate {
	t.Helper()
	inner, okPrefix := strings.CutPrefix(strings.TrimSpace(v), ":")
	inner, okSuffix := strings.CutSuffix(inner, ":")
	if !okPrefix || !okSuffix {
		t.Fatalf("%q is not a structured-field byte sequence", v)
	}
	der, err := base64.StdEncoding.DecodeString(inner)
	if err != nil {
		t.Fatalf("%q: %v", v, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("%q: %v", v, err)
	}
	return c
}

// dialCert dials wss with a client certificate (nil for none) and returns
// the connection or the error.
func dialCert(url string, roots *x509.CertPool, cert *testkit.Cert, header http.Header) (*websocket.Conn, error) {
	conf := &tls.Config{RootCAs: roots}
	if cert != nil {
		// Sent whatever CAs the server names: Go's client would otherwise
		// keep back a certificate no named CA issued.
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert.TLS, nil }
	}
	d := websocket.Dialer{TLSClientConfig: conf, HandshakeTimeout: 5 * time.Second}
	c, _, err := d.Dial(url, header)
	if err == nil {
		// A refused TLS 1.3 client learns it at its first read, not at the
		// handshake: a connection that works answers.
		if err = c.WriteMessage(websocket.TextMessage, []byte("hello")); err == nil {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, _, err = c.ReadMessage()
			_ = c.SetReadDeadline(time.Time{})
		}
		if err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, err
}

// startMTLS runs the gateway serving wss with a fresh server certificate,
// verifying client certificates against ca's, whose file it returns.
func startMTLS(t *testing.T, api *testkit.API, ca *testkit.CA, extra ...string) (p *proc, server *testkit.Cert, caFile string) {
	t.Helper()
	dir := t.TempDir()
	server = testkit.NewCert(t, "gateway")
	certFile, keyFile, caFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "ca.pem")
	writeFile(t, certFile, server.CertPEM)
	writeFile(t, keyFile, server.KeyPEM)
	writeFile(t, caFile, ca.CertPEM)
	args := append([]string{"-api", api.URL(), "-tls-cert", certFile, "-tls-key", keyFile, "-tls-client-ca", caFile}, extra...)
	return start(t, nil, args...), server, caFile
}

func TestClientCertificatesVerifiedByTheGateway(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	root := testkit.NewCA(t, "charging network")
	sub := root.Intermediate(t, "charging network, chargers")
	other := testkit.NewCA(t, "someone else")
	p, server, caFile := startMTLS(t, api, root)
	url := "wss://" + p.public + "/"

	// A charger with a certificate from the network's intermediate CA,
	// which it sends after its own: both reach the API. What it claims in
	// the headers itself does not.
	cp1 := sub.Client(t, "CP1")
	spoof := http.Header{"Client-Cert": {":" + base64.StdEncoding.EncodeToString(other.Cert.Raw) + ":"}, "Client-Cert-Chain": {":AAAA:"}}
	c, err := dialCert(url+"CP1", server.Pool, cp1, spoof)
	if err != nil {
		t.Fatalf("a charger with a valid certificate: %v", err)
	}
	c.Close()
	get := api.CallsFor("CP1")[0]
	if v := get.Header.Values("Client-Cert"); len(v) != 1 || sfCert(t, v[0]).Subject.CommonName != "CP1" {
		t.Errorf("Client-Cert %q, want CP1's certificate alone", v)
	}
	if v := get.Header.Values("Client-Cert-Chain"); len(v) != 1 || sfCert(t, v[0]).Subject.CommonName != "charging network, chargers" {
		t.Errorf("Client-Cert-Chain %q, want the intermediate alone", v)
	}

	// No certificate, or one from another CA: refused at the handshake,
	// and the API hears nothing.
	if c, err := dialCert(url+"nocert", server.Pool, nil, nil); err == nil {
		c.Close()
		t.Error("a client without a certificate connected")
	}
	if c, err := dialCert(url+"stranger", server.Pool, other.Client(t, "stranger"), nil); err == nil {
		c.Close()
		t.Error("a client with another CA's certificate connected")
	}
	if n := len(api.CallsFor("nocert")) + len(api.CallsFor("stranger")); n != 0 {
		t.Errorf("the API got %d requests from refused clients", n)
	}

	// SIGHUP reloads the CA bundle: the other CA's clients get in, the
	// first's no longer (the connection already open is kept).
	c, err = dialCert(url+"CP2", server.Pool, root.Client(t, "CP2"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	writeFile(t, caFile, other.CertPEM)
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, p, "SIGHUP: TLS certificate reloaded")
	if c, err := dialCert(url+"stranger2", server.Pool, other.Client(t, "stranger2"), nil); err != nil {
		t.Errorf("after the reload, a certificate from the new CA: %v", err)
	} else {
		c.Close()
	}
	if c, err := dialCert(url+"CP3", server.Pool, root.Client(t, "CP3"), nil); err == nil {
		c.Close()
		t.Error("after the reload, a certificate from the old CA connected")
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	if _, got := testkit.Read(t, c, 5*time.Second); got != "echo:still here" {
		t.Errorf("the connection open through the reload: %q", got)
	}
}

func TestClientCertificatesOptional(t *testing.T) {
	t.Parallel()
	api := testkit.NewAPI(t)
	ca := testkit.NewCA(t, "network")
	p, server, _ := startMTLS(t, api, ca, "-tls-client-auth", "optional")
	url := "wss://" + p.public + "/"

	// Without a certificate a client connects, and no Client-Cert reaches
	// the API, even one it sent itself; with one, it does.
	spoof := http.Header{"Client-Cert": {":" + base64.StdEncoding.EncodeToString(ca.Cert.Raw) + ":"}}
	c, err := dialCert(url+"browser", server.Pool, nil, spoof)
	if err != nil {
		t.Fatalf("without a certificate, optional: %v", err)
	}
	c.Close()
	if v := api.CallsFor("browser")[0].Header.Values("Client-Cert"); len(v) != 0 {
		t.Errorf("a client's own Client-Cert reached the API: %q", v)
	}
	c, err = dialCert(url+"CP9", server.Pool, ca.Client(t, "CP9"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if v := api.CallsFor("CP9")[0].Header.Get("Client-Cert"); v == "" || sfCert(t, v).Subject.CommonName != "CP9" {
		t.Errorf("Client-Cert %q, want CP9's", v)
	}
	if v := api.CallsFor("CP9")[0].Header.Values("Client-Cert-Chain"); len(v) != 0 {
		t.Errorf("Client-Cert-Chain %q for a certificate the root signed: there is no chain to send", v)
	}
	// A certificate that does not verify is refused even so.
	if c, err := dialCert(url+"forged", server.Pool, testkit.NewCA(t, "forger").Client(t, "CP9"), nil); err == nil {
		c.Close()
		t.Error("optional: a certificate from an unknown CA connected")
	}
}

// TestClientCertificatesVerifiedByHAProxy: deploy/haproxy.cfg's mutual-TLS
// frontend, for real: HAProxy verifies, ws2api (trusting it) passes its
// Client-Cert on, a node that does not trust the proxy drops it.
func TestClientCertificatesVerifiedByHAProxy(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	api := testkit.NewAPI(t)
	trusting := start(t, nil, "-api", api.URL(), "-trusted-proxies", "127.0.0.1")
	cert := testkit.NewCert(t, "lb")
	lb := startHAProxy(t, dir, cert, []*proc{trusting})
	url := "wss://" + lb.mtls + "/"

	c, err := dialCert(url+"CP1", cert.Pool, lb.clientCA.Client(t, "CP1"), nil)
	if err != nil {
		t.Fatalf("through HAProxy with a valid certificate: %v", err)
	}
	c.Close()
	if v := api.CallsFor("CP1")[0].Header.Values("Client-Cert"); len(v) != 1 || sfCert(t, v[0]).Subject.CommonName != "CP1" {
		t.Errorf("Client-Cert through HAProxy %q, want CP1's certificate", v)
	}
	spoof := http.Header{"Client-Cert": {":" + base64.StdEncoding.EncodeToString(cert.TLS.Certificate[0]) + ":"}}
	if c, err := dialCert(url+"nocert", cert.Pool, nil, spoof); err == nil {
		c.Close()
		t.Error("HAProxy let a client without a certificate through")
	}
	// The plain frontend asks for none, and what a client claims there is
	// dropped by HAProxy.
	c, err = dialCert("wss://"+lb.public+"/browser", cert.Pool, nil, spoof)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if v := api.CallsFor("browser")[0].Header.Values("Client-Cert"); len(v) != 0 {
		t.Errorf("a client's own Client-Cert came through HAProxy's plain frontend: %q", v)
	}

	// A node that does not trust its peer drops the header, whoever sent it.
	untrusting := start(t, nil, "-api", api.URL())
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+untrusting.public+"/direct", spoof)
	if err != nil {
		t.Fatal(err)
	}
	ws.Close()
	if v := api.CallsFor("direct")[0].Header.Values("Client-Cert"); len(v) != 0 {
		t.Errorf("an untrusted peer's Client-Cert reached the API: %q", v)
	}
}
