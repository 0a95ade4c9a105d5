package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/config"
)

func databaseURL(c *cli.Context, cfg *config.Config) (string, error) {
	u := c.String("database-url")
	if u == "" {
		u = cfg.Postgres.URL
	}
	if u == "" {
		return "", &exitError{code: 1, msg: "no PostgreSQL URL: set postgres { url = ... } in the rules file, --database-url or DATABASE_URL"}
	}
	// A URL that does not parse never will: fail now rather than retry.
	// pgx's message masks the password.
	if _, err := pgx.ParseConfig(u); err != nil {
		return "", &exitError{code: 1, msg: "invalid PostgreSQL URL: " + err.Error()}
	}
	return u, nil
}

// redisClient connects to Redis as the rules file's redis block says:
// standalone (url, overridden by --redis-url/REDIS_URL), cluster or
// sentinel. No error message ever echoes a URL or a password.
func redisClient(c *cli.Context, cfg *config.Config) (redis.UniversalClient, error) {
	rc := cfg.Redis
	if u := c.String("redis-url"); u != "" && rc.Mode != config.RedisStandalone && rc.Mode != "" {
		return nil, &exitError{code: 1, msg: fmt.Sprintf("--redis-url (REDIS_URL) is for a standalone Redis, and the rules file says mode = %q: give the nodes in redis { addresses }", rc.Mode)}
	}
	tlsFiles := tlsFiles{ca: first(c.String("redis-ca-file"), rc.CAFile), cert: first(c.String("redis-cert-file"), rc.CertFile), key: first(c.String("redis-key-file"), rc.KeyFile)}
	switch rc.Mode {
	case config.RedisCluster, config.RedisSentinel:
		var tc *tls.Config
		if rc.TLS {
			tc = &tls.Config{}
		}
		if err := tlsFiles.apply(tc); err != nil {
			return nil, &exitError{code: 1, msg: err.Error()}
		}
		if rc.Mode == config.RedisCluster {
			return redis.NewClusterClient(&redis.ClusterOptions{
				Addrs: rc.Addresses, Username: rc.Username, Password: rc.Password, TLSConfig: tc,
				// go-redis reloads the slot map on MOVED/ASK only, or on
				// this timer (60s by default): after a master dies, writes
				// to its slots would fail until then.
				ClusterStateReloadInterval: 2 * time.Second,
			}), nil
		}
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: rc.MasterName, SentinelAddrs: rc.Addresses,
			SentinelUsername: rc.SentinelUsername, SentinelPassword: rc.SentinelPassword,
			Username: rc.Username, Password: rc.Password, DB: rc.DB, TLSConfig: tc,
		}), nil
	}
	u := first(c.String("redis-url"), rc.URL)
	if u == "" {
		return nil, &exitError{code: 1, msg: "no Redis URL: set redis { url = ... } in the rules file, --redis-url or REDIS_URL"}
	}
	opts, err := redis.ParseURL(u)
	if err != nil {
		// The URL may hold a password: name the problem, not the URL.
		return nil, &exitError{code: 1, msg: "invalid Redis URL: use redis://[user:password@]host:port/db or rediss:// for TLS"}
	}
	if err := tlsFiles.apply(opts.TLSConfig); err != nil {
		return nil, &exitError{code: 1, msg: err.Error()}
	}
	return redis.NewClient(opts), nil
}

func first(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// tlsFiles are the PEM files of a Redis TLS connection.
type tlsFiles struct{ ca, cert, key string }

// apply loads the files into tc, which is nil when TLS is off (rediss://
// or tls = true turn it on).
func (f tlsFiles) apply(tc *tls.Config) error {
	if f.ca == "" && f.cert == "" && f.key == "" {
		return nil
	}
	if tc == nil {
		return errors.New("a Redis CA, certificate or key file needs TLS: a rediss:// URL, or tls = true in the redis block")
	}
	tc.MinVersion = tls.VersionTLS12
	if f.ca != "" {
		pem, err := os.ReadFile(f.ca)
		if err != nil {
			return fmt.Errorf("the Redis CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("the Redis CA file %s has no PEM certificate in it", f.ca)
		}
		tc.RootCAs = pool
	}
	if (f.cert == "") != (f.key == "") {
		return errors.New("a Redis client certificate and its key go together (--redis-cert-file and --redis-key-file)")
	}
	if f.cert != "" {
		pair, err := tls.LoadX509KeyPair(f.cert, f.key)
		if err != nil {
			return fmt.Errorf("the Redis client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return nil
}

// connectPG opens a normal (catalog) connection; a failure is an exit error.
func connectPG(c *cli.Context, url string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(c.Context, url)
	if err != nil {
		return nil, &exitError{code: 1, msg: fmt.Sprintf("connect to PostgreSQL: %v", err)}
	}
	return conn, nil
}

// redisConfigured reports whether a command that can do without Redis has
// one to talk to: a URL, or a cluster's or sentinels' addresses.
func redisConfigured(c *cli.Context, cfg *config.Config) bool {
	return c.String("redis-url") != "" || cfg.Redis.URL != "" || len(cfg.Redis.Addresses) > 0
}
