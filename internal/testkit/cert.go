package testkit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"testing"
	"time"
)

// Cert is a self-signed certificate for 127.0.0.1 and localhost.
type Cert struct {
	CertPEM, KeyPEM []byte
	Pool            *x509.CertPool // trusts exactly this certificate
	Serial          *big.Int
	TLS             tls.Certificate
}

// NewCert makes a fresh certificate, valid for an hour, whose subject
// names it (name is how a test tells two certificates apart).
func NewCert(t testing.TB, name string) *Cert {
	t.Helper()
	cert, certPEM, key := issue(t, name, nil, nil, true, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, func(tmpl *x509.Certificate) {
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	})
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c := &Cert{
		CertPEM: certPEM,
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		Pool:    x509.NewCertPool(),
		Serial:  cert.SerialNumber,
	}
	c.Pool.AddCert(cert)
	if c.TLS, err = tls.X509KeyPair(c.CertPEM, c.KeyPEM); err != nil {
		t.Fatal(err)
	}
	return c
}

// CA is a certificate authority for client certificates (mutual TLS): a
// root, or an intermediate under one (then Chain holds its PEM, which the
// certificates it issues carry after their own).
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	Pool    *x509.CertPool // trusts exactly the root
	Chain   []byte         // PEM of the intermediates, leaf side first
	key     *ecdsa.PrivateKey
}

// NewCA makes a root CA, valid for an hour, whose subject names it.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	ca := &CA{Pool: x509.NewCertPool()}
	ca.Cert, ca.CertPEM, ca.key = issue(t, name, nil, nil, true, nil, nil)
	ca.Pool.AddCert(ca.Cert)
	return ca
}

// Intermediate makes a CA that ca signs.
func (ca *CA) Intermediate(t testing.TB, name string) *CA {
	t.Helper()
	sub := &CA{Pool: ca.Pool}
	sub.Cert, sub.CertPEM, sub.key = issue(t, name, ca.Cert, ca.key, true, nil, nil)
	sub.Chain = append(append([]byte(nil), sub.CertPEM...), ca.Chain...)
	return sub
}

// Client issues a client certificate whose subject's common name is cn
// (an OCPP charger's is its identity). Its CertPEM is the leaf, then ca's
// intermediates: what a client sends.
func (ca *CA) Client(t testing.TB, cn string) *Cert {
	t.Helper()
	leaf, leafPEM, key := issue(t, cn, ca.Cert, ca.key, false, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil)
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c := &Cert{
		CertPEM: append(leafPEM, ca.Chain...),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		Pool:    ca.Pool,
		Serial:  leaf.SerialNumber,
	}
	if c.TLS, err = tls.X509KeyPair(c.CertPEM, c.KeyPEM); err != nil {
		t.Fatal(err)
	}
	return c
}

// issue makes a certificate for name, valid for an hour, signed by parent
// (self-signed when parent is nil); more, if not nil, adds to its
// template.
func issue(t testing.TB, name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, isCA bool, usage []x509.ExtKeyUsage, more func(*x509.Certificate)) (*x509.Certificate, []byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           usage,
		BasicConstraintsValid: true,
		IsCA:                  isCA,
	}
	if isCA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	if more != nil {
		more(tmpl)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key
}
