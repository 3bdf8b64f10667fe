package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync/atomic"
	"time"
)

// certificate holds the -tls-cert and -tls-key pair in use; SIGHUP loads
// it again. Handshakes read it atomically, so a reload drops no connection:
// those already open keep their session, new ones get the new pair.
type certificate struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

// load reads the pair; on error the one in use stays.
func (c *certificate) load() (*x509.Certificate, error) {
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
	return leaf, nil
}

// serverConfig is the public listener's TLS, Mozilla's "intermediate"
// profile: TLS 1.3, and TLS 1.2 with ECDHE key exchange (forward secrecy)
// and AEAD ciphers only; Go's default curves (X25519MLKEM768, X25519,
// P-256, P-384); ALPN http/1.1, the protocol a WebSocket upgrade needs.
func (c *certificate) serverConfig() *tls.Config {
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
