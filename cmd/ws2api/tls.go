package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync/atomic"
	"time"
)

// certificate holds the -tls-cert and -tls-key pair in use, and the
// -tls-client-ca certificates that client certificates are verified
// against; SIGHUP loads them again. Handshakes read them atomically, so a
// reload drops no connection: those already open keep their session, new
// ones get the new pair and authorities.
type certificate struct {
	certFile, keyFile string
	caFile            string // -tls-client-ca; "" asks no client for a certificate
	clientAuth        tls.ClientAuthType
	cur               atomic.Pointer[tls.Certificate]
	clientCAs         atomic.Pointer[x509.CertPool]
}

// load reads the pair and the client CAs; on error those in use stay.
func (c *certificate) load() (*x509.Certificate, error) {
	var cas *x509.CertPool
	if c.caFile != "" {
		var err error
		if cas, err = loadCAs(c.caFile); err != nil {
			return nil, err
		}
	}
	pair, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	leaf := pair.Leaf // parsed by LoadX509KeyPair
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("tls: %s: %w", c.certFile, err)
		}
	}
	if time.Now().After(leaf.NotAfter) {
		return nil, fmt.Errorf("tls: %s expired on %s", c.certFile, leaf.NotAfter.UTC().Format(time.DateOnly))
	}
	c.cur.Store(&pair)
	if cas != nil {
		c.clientCAs.Store(cas)
	}
	return leaf, nil
}

// loadCAs reads a PEM bundle of certificate authorities.
func loadCAs(file string) (*x509.CertPool, error) {
	pemData, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("tls: client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, fmt.Errorf("tls: client CA: %s holds no PEM certificate", file)
	}
	return pool, nil
}

// serverConfig is the public listener's TLS, Mozilla's "intermediate"
// profile: TLS 1.3, and TLS 1.2 with ECDHE key exchange (forward secrecy)
// and AEAD ciphers only; Go's default curves (X25519MLKEM768, X25519,
// P-256, P-384); ALPN http/1.1, the protocol a WebSocket upgrade needs.
// With -tls-client-ca, each handshake asks for a client certificate and
// verifies it against the authorities loaded last (required or, with
// -tls-client-auth optional, if one is sent).
func (c *certificate) serverConfig() *tls.Config {
	base := c.config()
	if c.caFile != "" {
		base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			conf := c.config()
			conf.ClientAuth, conf.ClientCAs = c.clientAuth, c.clientCAs.Load()
			return conf, nil
		}
	}
	return base
}

func (c *certificate) config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		CipherSuites: []uint16{ // TLS 1.2 only; TLS 1.3's are not configurable
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.cur.Load(), nil
		},
	}
}
