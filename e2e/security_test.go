package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/internal/testenv"
)

// testCA is a throwaway certificate authority and a server certificate it
// signed for 127.0.0.1.
type testCA struct {
	caPEM, certPEM, keyPEM []byte
	caFile                 string
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cachesync test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{
		caPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	dir := t.TempDir()
	ca.caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca.caFile, ca.caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return ca
}

// startTLSRedis starts a redis-server that accepts TLS only, and returns its
// rediss:// URL.
func startTLSRedis(t *testing.T, ca *testCA) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server: %v (make deps installs it)", err)
	}
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "redis.crt"), filepath.Join(dir, "redis.key")
	if err := os.WriteFile(cert, ca.certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, ca.keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "--port", "0", "--tls-port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca.caFile, "--tls-auth-clients", "no",
		"--save", "", "--appendonly", "no", "--dir", dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.caPEM)
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), TLSConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}})
	defer rdb.Close()
	testenv.Eventually(t, 20*time.Second, "redis-server with TLS", func() (bool, string) {
		err := rdb.Ping(context.Background()).Err()
		return err == nil, fmt.Sprint(err, "\n", out.String())
	})
	return fmt.Sprintf("rediss://127.0.0.1:%d/0", port)
}

// TestTLSPassThrough runs the daemon against a PostgreSQL that speaks TLS
// (sslmode=verify-full with the throwaway CA) and a Redis that only speaks
// TLS (rediss:// and --redis-ca-file), and checks that both connections are
// encrypted and invalidation works through them.
func TestTLSPassThrough(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{
		Settings: map[string]string{"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"},
		Files:    map[string][]byte{"server.crt": ca.certPEM, "server.key": ca.keyPEM},
	})
	redisURL := startTLSRedis(t, ca)
	dbURL := strings.Replace(pg.URL("postgres"), "sslmode=disable", "sslmode=verify-full&sslrootcert="+ca.caFile, 1)
	if !strings.Contains(dbURL, "verify-full") {
		t.Fatalf("cannot turn %s into a verify-full URL", dbURL)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, org_id int, name text); ALTER TABLE users REPLICA IDENTITY FULL`); err != nil {
		t.Fatal(err)
	}
	rules := filepath.Join(t.TempDir(), "rules.hcl")
	os.WriteFile(rules, []byte(`postgres {
  slot        = "tls"
  publication = "tls"
}
rule "user" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
}
`), 0o644)

	cmd := exec.Command(binary, "run", "--status-interval", "1s")
	cmd.Env = append(os.Environ(), "CACHESYNC_CONFIG="+rules, "DATABASE_URL="+dbURL, "REDIS_URL="+redisURL, "REDIS_CA_FILE="+ca.caFile)
	var log lockedBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.caPEM)
	opts, _ := redis.ParseURL(redisURL)
	opts.TLSConfig.RootCAs = pool
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	testenv.Eventually(t, 60*time.Second, "the daemon streaming over TLS", func() (bool, string) {
		var ssl bool
		err := conn.QueryRow(ctx, `SELECT s.ssl FROM pg_replication_slots r JOIN pg_stat_ssl s ON s.pid = r.active_pid WHERE r.slot_name = 'tls'`).Scan(&ssl)
		if err == nil && !ssl {
			t.Fatalf("the replication connection is not encrypted\n%s", log.String())
		}
		return err == nil && ssl, fmt.Sprint(err, "\n", log.String())
	})
	rdb.Set(ctx, "user:1", "stale", 0)
	if _, err := conn.Exec(ctx, `INSERT INTO users VALUES (1, 'a@x.io', 1, 'a')`); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "user:1 deleted through TLS", func() (bool, string) {
		n, err := rdb.Exists(ctx, "user:1").Result()
		return err == nil && n == 0, fmt.Sprint(n, err)
	})

	// The CA is required: without it, the server's certificate is refused
	// and the run fails rather than falling back to plain text.
	out, _ := exec.Command(binary, "status", "--config", rules, "--database-url", dbURL, "--redis-url", redisURL).CombinedOutput()
	if !strings.Contains(string(out), "applied LSN") || !strings.Contains(string(out), "unknown") {
		t.Errorf("status without --redis-ca-file should report the cache unreachable:\n%s", out)
	}
	out, _ = exec.Command(binary, "status", "--config", rules, "--database-url", dbURL, "--redis-url", redisURL, "--redis-ca-file", ca.caFile).CombinedOutput()
	if strings.Contains(string(out), "unknown") {
		t.Errorf("status with --redis-ca-file cannot read the cache:\n%s", out)
	}
}

// TestSecretsNeverLogged runs every command with passwords in both URLs,
// against servers that refuse or cannot be reached, and checks that no
// output carries the passwords.
func TestSecretsNeverLogged(t *testing.T) {
	t.Parallel()
	const pgSecret, redisSecret = "pg-s3cret-Xq7", "redis-s3cret-Zk9"
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.hcl")
	os.WriteFile(rules, []byte(`postgres {
  slot        = "s"
  publication = "s"
}
rule "user" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}"] }
}
`), 0o644)
	dbURLs := []string{
		"postgres://app:" + pgSecret + "@127.0.0.1:1/db?sslmode=disable&connect_timeout=2", // nothing listens
		"postgres://app:" + pgSecret + "@127.0.0.1:notaport/db",                            // does not parse
	}
	redisURLs := []string{
		"redis://app:" + redisSecret + "@127.0.0.1:1/0",
		"redis://app:" + redisSecret + "@127.0.0.1:notaport/0",
	}
	commands := [][]string{
		{"validate", "--database-url"},
		{"setup", "--database-url"},
		{"status", "--database-url"},
		{"teardown", "--yes", "--database-url"},
		{"run", "--listen", "", "--database-url"},
	}
	for _, db := range dbURLs {
		for _, rd := range redisURLs {
			for _, c := range commands {
				args := append([]string{c[0], "--config", rules, "--data-dir", dir}, c[1:]...)
				args = append(args, db, "--redis-url", rd)
				if c[0] == "validate" {
					args = []string{"validate", "--config", rules, "--database-url", db}
				}
				// run retries an unreachable database forever; its first
				// attempts are what could leak.
				timeout := 20 * time.Second
				if c[0] == "run" {
					timeout = 5 * time.Second
				}
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				cmd := exec.CommandContext(ctx, binary, args...)
				out, _ := cmd.CombinedOutput()
				cancel()
				for _, secret := range []string{pgSecret, redisSecret} {
					if strings.Contains(string(out), secret) {
						t.Errorf("cachesync %s printed a password:\n%s", c[0], out)
					}
				}
			}
		}
	}
}
