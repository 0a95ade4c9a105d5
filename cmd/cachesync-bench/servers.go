package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/internal/testenv"
)

// servers are the private PostgreSQL and redis-server of one benchmark process, on
// free loopback ports, with their files in one temporary directory. They are started
// the way internal/testenv and scripts/demo.sh start theirs (PostgreSQL as the
// postgres OS user when we are root), with the parent-death signal set so that a
// killed benchmark leaves nothing running.
type servers struct {
	dir      string
	pgBin    string
	pgPort   int
	pg       *exec.Cmd
	redisURL string
	redis    *exec.Cmd
	cred     *syscall.Credential // nil unless we are root
	logf     func(string, ...any)

	// cluster is the private Redis Cluster of the cluster workload (-cluster), nil
	// without it; clusterMasters are its masters' addresses.
	cluster        *testenv.RedisCluster
	clusterMasters []string
}

// pgSettings trade durability for speed like testenv does (the data is thrown away),
// but keep synchronous_commit on: the lag figure includes a real commit.
var pgSettings = []string{
	"listen_addresses=127.0.0.1",
	"wal_level=logical",
	"max_replication_slots=16",
	"max_wal_senders=16",
	"fsync=off",
	"full_page_writes=off",
	"synchronous_commit=on",
	"shared_buffers=256MB",
	"max_wal_size=4GB",
	"checkpoint_timeout=30min",
	"logical_decoding_work_mem=64MB",
	"unix_socket_directories=",
}

func startServers(logf func(string, ...any)) (_ *servers, err error) {
	s := &servers{logf: logf}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	if s.pgBin, err = findPostgresBin(); err != nil {
		return nil, err
	}
	if s.dir, err = os.MkdirTemp("", "cachesync-bench-"); err != nil {
		return nil, err
	}
	if err := os.Chmod(s.dir, 0o755); err != nil {
		return nil, err
	}
	pgDir := filepath.Join(s.dir, "pg")
	if err := os.Mkdir(pgDir, 0o755); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root, but there is no OS user postgres to run PostgreSQL as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(pgDir, uid, gid); err != nil {
			return nil, err
		}
	}
	dataDir := filepath.Join(pgDir, "data")
	var initErr error
	for _, locale := range []string{"C.UTF-8", "C"} {
		cmd := s.pgCommand(filepath.Join(s.pgBin, "initdb"), "-D", dataDir, "-U", "postgres", "--auth=trust",
			"-E", "UTF8", "--locale="+locale, "--no-sync", "--no-instructions")
		cmd.Dir = pgDir
		out, err := cmd.CombinedOutput()
		if err == nil {
			initErr = nil
			break
		}
		initErr = fmt.Errorf("initdb: %v\n%s", err, out)
		_ = os.RemoveAll(dataDir)
	}
	if initErr != nil {
		return nil, initErr
	}
	hba := filepath.Join(dataDir, "pg_hba.conf")
	old, err := os.ReadFile(hba)
	if err != nil {
		return nil, err
	}
	lines := "host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n"
	if err := os.WriteFile(hba, append([]byte(lines), old...), 0o600); err != nil {
		return nil, err
	}
	if s.cred != nil {
		_ = os.Chown(hba, int(s.cred.Uid), int(s.cred.Gid))
	}

	for attempt := 0; ; attempt++ {
		if s.pgPort, err = freePort(); err != nil {
			return nil, err
		}
		args := []string{"-D", dataDir, "-p", strconv.Itoa(s.pgPort)}
		for _, kv := range pgSettings {
			args = append(args, "-c", kv)
		}
		s.pg = s.pgCommand(filepath.Join(s.pgBin, "postgres"), args...)
		s.pg.Dir = pgDir
		logFile, err := os.Create(filepath.Join(s.dir, "postgres.log"))
		if err != nil {
			return nil, err
		}
		s.pg.Stdout, s.pg.Stderr = logFile, logFile
		s.pg.SysProcAttr.Pdeathsig = syscall.SIGQUIT
		if err := s.pg.Start(); err != nil {
			return nil, fmt.Errorf("start postgres: %w", err)
		}
		err = poll(30*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			c, err := pgx.Connect(ctx, s.pgURL("postgres"))
			if err != nil {
				return err
			}
			return c.Close(ctx)
		})
		if err == nil {
			break
		}
		_ = s.pg.Process.Kill()
		_ = s.pg.Wait()
		s.pg = nil
		log, _ := os.ReadFile(logFile.Name())
		if attempt < 4 && strings.Contains(string(log), "Address already in use") {
			continue
		}
		return nil, fmt.Errorf("PostgreSQL did not start: %v\n%s", err, tail(string(log)))
	}

	redisServer, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server not found: run make deps")
	}
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		logPath := filepath.Join(s.dir, "redis.log")
		s.redis = exec.Command(redisServer, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", s.dir,
			"--logfile", logPath, "--daemonize", "no")
		s.redis.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
		if err := s.redis.Start(); err != nil {
			return nil, fmt.Errorf("start redis-server: %w", err)
		}
		s.redisURL = fmt.Sprintf("redis://127.0.0.1:%d/0", port)
		err = poll(20*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
			defer c.Close()
			return c.Ping(ctx).Err()
		})
		if err == nil {
			break
		}
		_ = s.redis.Process.Kill()
		_ = s.redis.Wait()
		s.redis = nil
		log, _ := os.ReadFile(logPath)
		if attempt < 4 && strings.Contains(string(log), "Address already in use") {
			continue
		}
		return nil, fmt.Errorf("redis-server did not start: %v\n%s", err, tail(string(log)))
	}
	logf("servers: PostgreSQL on 127.0.0.1:%d (%s), Redis at %s, files in %s", s.pgPort, s.pgBin, s.redisURL, s.dir)
	return s, nil
}

// pgCommand runs a PostgreSQL binary, as the postgres OS user when we are root.
func (s *servers) pgCommand(bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd
}

func (s *servers) pgURL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.pgPort, db)
}

// clusterNodeTimeout is the cluster's cluster-node-timeout: twice testenv's 1 s (which
// paces its failover tests), so that a node left unscheduled for a moment on a loaded
// machine is not failed over. Redis's default, 15 s, would be safer still, but a new
// cluster's masters wait min(timeout, 5 s) before they declare it ok, which made the
// start take 5–8 s instead of about 2 s; checkClusterMasters catches a failover anyway.
const clusterNodeTimeout = 2 * time.Second

// startCluster starts a private Redis Cluster of 3 masters with a replica each, the
// way the e2e tests get theirs (internal/testenv, redis-cli --cluster create), and
// notes which nodes are masters. stop stops it.
func (s *servers) startCluster() error {
	c, err := testenv.NewRedisCluster(testenv.ClusterOptions{NodeTimeout: clusterNodeTimeout}, s.logf)
	if err != nil {
		return fmt.Errorf("start the Redis Cluster (-cluster): %w", err)
	}
	s.cluster = c
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if s.clusterMasters, err = s.masters(ctx); err != nil {
		return err
	}
	if len(s.clusterMasters) != 3 {
		return fmt.Errorf("redis cluster: %d masters among %v, want 3", len(s.clusterMasters), c.Addrs())
	}
	return nil
}

// masters returns the addresses of the cluster's nodes that say they are masters
// (INFO replication), in the order of Addrs.
func (s *servers) masters(ctx context.Context) ([]string, error) {
	var masters []string
	for _, addr := range s.cluster.Addrs() {
		rc := redis.NewClient(&redis.Options{Addr: addr})
		info, err := rc.Info(ctx, "replication").Result()
		_ = rc.Close()
		if err != nil {
			return nil, fmt.Errorf("redis cluster: INFO replication on %s: %w", addr, err)
		}
		if infoField(info, "role") == "master" {
			masters = append(masters, addr)
		}
	}
	return masters, nil
}

// checkClusterMasters fails when the masters changed since the start: a failover
// during a measurement would leave its figures meaningless (and the command counts
// would miss the promoted replica).
func (s *servers) checkClusterMasters(ctx context.Context) error {
	now, err := s.masters(ctx)
	if err != nil {
		return err
	}
	if !slices.Equal(now, s.clusterMasters) {
		return fmt.Errorf("redis cluster: the masters were %v and are now %v: a failover happened during the measurement", s.clusterMasters, now)
	}
	return nil
}

// clusterBlock is the rules file's redis block for the cluster. One seed address
// is enough: the daemon's client learns the other nodes from it.
func (s *servers) clusterBlock() string {
	return fmt.Sprintf("redis {\n  mode      = \"cluster\"\n  addresses = [%q]\n}\n", s.clusterMasters[0])
}

func (s *servers) stop() {
	if s.cluster != nil {
		if err := s.cluster.Close(); err != nil {
			s.logf("stop redis cluster: %v", err)
		}
		s.cluster = nil
	}
	if s.pg != nil && s.pg.Process != nil {
		_ = s.pg.Process.Signal(syscall.SIGINT) // fast shutdown
		waitOrKill(s.pg, 20*time.Second, syscall.SIGQUIT)
	}
	if s.redis != nil && s.redis.Process != nil {
		_ = s.redis.Process.Signal(syscall.SIGTERM)
		waitOrKill(s.redis, 10*time.Second, syscall.SIGKILL)
	}
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
}

// waitOrKill waits for cmd to exit, sending sig after timeout.
func waitOrKill(cmd *exec.Cmd, timeout time.Duration, sig syscall.Signal) {
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Signal(sig)
		<-done
	}
}

// findPostgresBin returns the newest PostgreSQL 15+ bin directory with postgres,
// initdb and pg_recvlogical: PATH's first, then the package directories.
func findPostgresBin() (string, error) {
	var dirs []string
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(r))
		}
	}
	pkg, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	more, _ := filepath.Glob("/usr/pgsql-*/bin")
	pkg = append(pkg, more...)
	num := regexp.MustCompile(`[0-9]+`)
	major := func(d string) int { n, _ := strconv.Atoi(num.FindString(d)); return n }
	sort.Slice(pkg, func(i, j int) bool { return major(pkg[i]) > major(pkg[j]) })
	dirs = append(dirs, pkg...)
	versionRE := regexp.MustCompile(`\(PostgreSQL\) ([0-9]+)`)
	for _, d := range dirs {
		ok := true
		for _, b := range []string{"postgres", "initdb", "pg_recvlogical"} {
			if _, err := os.Stat(filepath.Join(d, b)); err != nil {
				ok = false
			}
		}
		if !ok {
			continue
		}
		out, err := exec.Command(filepath.Join(d, "postgres"), "--version").Output()
		if err != nil {
			continue
		}
		if m := versionRE.FindSubmatch(out); m != nil {
			if v, _ := strconv.Atoi(string(m[1])); v >= 15 {
				return d, nil
			}
		}
	}
	return "", errors.New("no PostgreSQL 15+ binaries (postgres, initdb, pg_recvlogical) found: run make deps")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func poll(timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}
