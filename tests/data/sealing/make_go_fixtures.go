// Remakes go-controller-cert.pem and go-sealed.txt from test-key.pem with Go's own crypto, so the
// Python tests check cupaas against the controller's implementation and not only against the spec.
// Not part of the build or the suite; run by hand from this folder: `go run make_go_fixtures.go`.
package main

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"math/big"
	"os"
	"time"
)

func check(err error) {
	if err != nil {
		panic(err)
	}
}

// controllerCert uses the template of the controller's pkg/crypto/keys.go SignKey (10-year --key-ttl).
func controllerCert(key *rsa.PrivateKey) []byte {
	now := time.Now()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	check(err)
	tmpl := x509.Certificate{
		SerialNumber:          serial,
		KeyUsage:              x509.KeyUsageEncipherOnly,
		NotBefore:             now.UTC(),
		NotAfter:              now.Add(87600 * time.Hour).UTC(),
		Subject:               pkix.Name{CommonName: ""},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	check(err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// hybridEncrypt has the byte layout of the controller's pkg/crypto/crypto.go HybridEncrypt.
func hybridEncrypt(pub *rsa.PublicKey, plaintext, label []byte) []byte {
	sessionKey := make([]byte, 32)
	_, err := rand.Read(sessionKey)
	check(err)
	block, err := aes.NewCipher(sessionKey)
	check(err)
	gcm, err := cipher.NewGCM(block)
	check(err)
	rsaCiphertext, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, sessionKey, label)
	check(err)
	out := make([]byte, 2)
	binary.BigEndian.PutUint16(out, uint16(len(rsaCiphertext)))
	out = append(out, rsaCiphertext...)
	return gcm.Seal(out, make([]byte, gcm.NonceSize()), plaintext, nil)
}

func main() {
	data, err := os.ReadFile("test-key.pem")
	check(err)
	block, _ := pem.Decode(data)
	key, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	check(err)
	check(os.WriteFile("go-controller-cert.pem", controllerCert(key), 0o644))
	sealed := hybridEncrypt(&key.PublicKey, []byte("correct horse battery staple ✓"), []byte("team-a/db-creds"))
	check(os.WriteFile("go-sealed.txt", []byte(base64.StdEncoding.EncodeToString(sealed)+"\n"), 0o644))
}
