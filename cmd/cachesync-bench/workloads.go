package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// workload is one throughput workload: a table, the rule that reads it, and how its
// rows are committed.
type workload struct {
	Name  string
	Rule  string // rule body (inside rule "w" { table = ... })
	Table string // CREATE TABLE
	// TxRows is the number of rows per transaction; 0 means all rows in one.
	TxRows int
	// Cluster runs cachesync (setup and run) against the Redis Cluster instead of
	// the standalone Redis.
	Cluster bool
}

const invTable = `CREATE TABLE w (id int PRIMARY KEY, email text NOT NULL, org_id int NOT NULL);
ALTER TABLE w REPLICA IDENTITY FULL`
const invRule = `invalidate {
    keys = ["w:${row.id}", "w:email:${lower(row.email)}"]
    tags = ["org:${row.org_id}"]
  }`
const refTable = `CREATE TABLE w (id int PRIMARY KEY, email text NOT NULL, org_id int NOT NULL,
  name text NOT NULL, price numeric(10,2) NOT NULL, published bool NOT NULL)`
const refRule = `refresh {
    key   = "w:${row.id}"
    value = jsonencode(row)
    ttl   = "1h"
  }`

// clusterBaseline is the standalone workload that the cluster workload repeats, and
// whose throughput in the same run its own is compared with.
const clusterBaseline = "invalidate, 1000-row tx"

func workloads(full, cluster bool) []workload {
	ws := []workload{
		{Name: clusterBaseline, Rule: invRule, Table: invTable, TxRows: 1000},
	}
	if cluster {
		// Same table, rule and load as its baseline: the user keys hash to every
		// master, and the tags org:<n> have no hash tag, so the daemon deletes them in
		// steps (detach, then the members by slot), as it must on a cluster.
		ws = append(ws, workload{Name: clusterBaseline + ", cluster", Rule: invRule, Table: invTable, TxRows: 1000, Cluster: true})
	}
	ws = append(ws,
		workload{Name: "invalidate, 1-row tx", Rule: invRule, Table: invTable, TxRows: 1},
		workload{Name: "refresh JSON, 1000-row tx", Rule: refRule, Table: refTable, TxRows: 1000},
	)
	if full {
		ws = append(ws, workload{Name: "invalidate, 1M-row tx", Rule: invRule, Table: invTable, TxRows: 0})
	}
	return ws
}

// selectWorkloads keeps the workloads whose name matches expr (-workloads;
// the flag checked it compiles), all of them when expr is empty.
func selectWorkloads(ws []workload, expr string) []workload {
	if expr == "" {
		return ws
	}
	re := regexp.MustCompile(expr)
	return slices.DeleteFunc(ws, func(w workload) bool { return !re.MatchString(w.Name) })
}

// throughput is what one run of one workload measured.
type throughput struct {
	Rows            int
	DecodeSeconds   float64 // pg_recvlogical, slot start to endpos
	CachesyncSecs   float64 // cachesync, slot start to confirmed_flush_lsn >= end
	RedisCommands   int64   // commands Redis processed meanwhile (on a cluster: its masters, summed)
	PeakRSSBytes    int64   // cachesync VmHWM
	DecodePeakRSS   int64   // pg_recvlogical VmHWM (for reference)
	WALBytes        int64
	CachesyncCPUSec float64
}

// bench holds what every measurement needs.
type bench struct {
	srv       *servers
	cachesync string
	logf      func(string, ...any)
	dbSeq     int
}

// newDatabase creates a fresh database with one table and writes a rules file for it;
// with cluster, the file's redis block names the Redis Cluster.
func (b *bench) newDatabase(ctx context.Context, table, rule string, cluster bool) (db, rules, dataDir string, err error) {
	return b.newDatabaseRules(ctx, table, fmt.Sprintf("rule \"w\" {\n  table = \"public.w\"\n  %s\n}\n", rule), cluster)
}

// newDatabaseRules is newDatabase with the schema (tables) and rule blocks given whole.
func (b *bench) newDatabaseRules(ctx context.Context, table, ruleBlocks string, cluster bool) (db, rules, dataDir string, err error) {
	b.dbSeq++
	db = fmt.Sprintf("bench%d", b.dbSeq)
	admin, err := pgx.Connect(ctx, b.srv.pgURL("postgres"))
	if err != nil {
		return "", "", "", err
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+db); err != nil {
		return "", "", "", err
	}
	conn, err := pgx.Connect(ctx, b.srv.pgURL(db))
	if err != nil {
		return "", "", "", err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, table); err != nil {
		return "", "", "", err
	}
	dir := filepath.Join(b.srv.dir, db)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", "", "", err
	}
	rules = filepath.Join(dir, "rules.hcl")
	redisBlock := ""
	if cluster {
		redisBlock = "\n" + b.srv.clusterBlock()
	}
	text := fmt.Sprintf(`postgres {
  slot        = "cs"
  publication = "bench"
}
%s
%s`, redisBlock, ruleBlocks)
	if err := os.WriteFile(rules, []byte(text), 0o644); err != nil {
		return "", "", "", err
	}
	return db, rules, filepath.Join(dir, "data"), nil
}

// connectedDatabase is newDatabaseRules (standalone Redis) with a connection
// to the database; done closes it and drops the database.
func (b *bench) connectedDatabase(ctx context.Context, schema, ruleBlocks string) (db, rules, dataDir string, conn *pgx.Conn, done func(), err error) {
	if db, rules, dataDir, err = b.newDatabaseRules(ctx, schema, ruleBlocks, false); err != nil {
		return "", "", "", nil, nil, err
	}
	drop := func() {
		if err := b.dropDatabase(context.Background(), db); err != nil {
			b.logf("drop database %s: %v", db, err)
		}
	}
	if conn, err = pgx.Connect(ctx, b.srv.pgURL(db)); err != nil {
		drop()
		return "", "", "", nil, nil, err
	}
	return db, rules, dataDir, conn, func() { conn.Close(context.Background()); drop() }, nil
}

func (b *bench) dropDatabase(ctx context.Context, db string) error {
	admin, err := pgx.Connect(ctx, b.srv.pgURL("postgres"))
	if err != nil {
		return err
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1`, db); err != nil {
		return err
	}
	_, err = admin.Exec(ctx, "DROP DATABASE "+db+" WITH (FORCE)")
	if err == nil {
		_, err = admin.Exec(ctx, "CHECKPOINT") // recycle the WAL the slots held
	}
	return err
}

// cachesyncCmd builds `cachesync <sub> --config rules` against the private servers:
// the standalone Redis by --redis-url, or with cluster the Redis Cluster that the
// rules file names (the daemon refuses --redis-url and REDIS_URL with a cluster
// block, so REDIS_URL is emptied).
func (b *bench) cachesyncCmd(sub, rules, dataDir, db string, cluster bool) *exec.Cmd {
	args := []string{sub, "--config", rules, "--database-url", b.srv.pgURL(db)}
	if !cluster {
		args = append(args, "--redis-url", b.srv.redisURL)
	}
	cmd := exec.Command(b.cachesync, args...)
	cmd.Env = append(os.Environ(), "CACHESYNC_DATA_DIR="+dataDir, "CACHESYNC_HEARTBEAT_INTERVAL=0", "CACHESYNC_LISTEN=127.0.0.1:0",
		"CACHESYNC_FAILPOINT=")
	if cluster {
		cmd.Env = append(cmd.Env, "REDIS_URL=") // the last value wins
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// preparedDatabase is a fresh database with the workload's table, its rules
// file and data dir, and cachesync setup done (against the cluster with cluster);
// drop removes it.
func (b *bench) preparedDatabase(ctx context.Context, table, rule string, cluster bool) (db, rules, dataDir string, drop func(), err error) {
	if db, rules, dataDir, err = b.newDatabase(ctx, table, rule, cluster); err != nil {
		return "", "", "", nil, err
	}
	drop = func() {
		if err := b.dropDatabase(context.Background(), db); err != nil {
			b.logf("drop database %s: %v", db, err)
		}
	}
	if err := b.setup(ctx, rules, dataDir, db, cluster); err != nil {
		drop()
		return "", "", "", nil, err
	}
	return db, rules, dataDir, drop, nil
}

func (b *bench) setup(ctx context.Context, rules, dataDir, db string, cluster bool) error {
	out, err := b.cachesyncCmd("setup", rules, dataDir, db, cluster).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cachesync setup: %v\n%s", err, out)
	}
	return nil
}

// load commits rows rows into table w, txRows per transaction (0: one transaction).
func load(ctx context.Context, conn *pgx.Conn, w workload, rows int) error {
	values := `g, 'User' || g || '@Example.com', g % 100`
	if w.Table == refTable {
		values += `, 'product ' || g, (g % 1000) + 0.99, true`
	}
	switch {
	case w.TxRows == 1:
		// One server-side loop committing each row: transaction control in DO.
		_, err := conn.Exec(ctx, fmt.Sprintf(`DO $$ BEGIN
  FOR g IN 1..%d LOOP
    INSERT INTO w SELECT %s;
    COMMIT;
  END LOOP;
END $$`, rows, values))
		return err
	case w.TxRows == 0 || w.TxRows >= rows:
		_, err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO w SELECT %s FROM generate_series(1, %d) g`, values, rows))
		return err
	default:
		for from := 1; from <= rows; from += w.TxRows {
			to := min(from+w.TxRows-1, rows)
			if _, err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO w SELECT %s FROM generate_series(%d, %d) g`, values, from, to)); err != nil {
				return err
			}
		}
		return nil
	}
}

// runThroughput loads rows rows of w with both slots created first, then drains the
// same WAL with pg_recvlogical (decode ceiling) and with cachesync.
func (b *bench) runThroughput(ctx context.Context, w workload, rows int) (throughput, error) {
	res := throughput{Rows: rows}
	db, rules, dataDir, drop, err := b.preparedDatabase(ctx, w.Table, w.Rule, w.Cluster)
	if err != nil {
		return res, err
	}
	defer drop()
	conn, err := pgx.Connect(ctx, b.srv.pgURL(db))
	if err != nil {
		return res, err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot('recv', 'pgoutput')`); err != nil {
		return res, err
	}
	var startLSN string
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&startLSN); err != nil {
		return res, err
	}
	began := time.Now()
	if err := load(ctx, conn, w, rows); err != nil {
		return res, fmt.Errorf("load: %w", err)
	}
	var endLSN string
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text, pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint`, startLSN).Scan(&endLSN, &res.WALBytes); err != nil {
		return res, err
	}
	b.logf("%s: loaded %d rows in %s (%d MiB of WAL up to %s)", w.Name, rows, time.Since(began).Round(time.Millisecond), res.WALBytes>>20, endLSN)

	// Decode ceiling.
	recv := exec.Command(filepath.Join(b.srv.pgBin, "pg_recvlogical"), "-d", b.srv.pgURL(db),
		"--slot", "recv", "--start", "-o", "proto_version=1", "-o", "publication_names=bench",
		"-o", "messages=true", "-f", "/dev/null", "--endpos", endLSN, "--no-loop")
	recv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var recvOut bytes.Buffer
	recv.Stdout, recv.Stderr = &recvOut, &recvOut
	started := time.Now()
	if err := recv.Start(); err != nil {
		return res, err
	}
	t0, err := waitActive(ctx, conn, "recv", recv)
	var hwm int64
	stopHWM := func() {}
	switch {
	case err != nil && exited(recv):
		// A small workload can be decoded to --endpos between two looks at
		// the slot: then it is timed from the start of the process (a
		// slightly low ceiling), and a failed exit is reported below.
		t0 = started
	case err != nil:
		_ = recv.Process.Kill()
		_ = recv.Wait()
		return res, fmt.Errorf("pg_recvlogical: %w\n%s", err, recvOut.String())
	default:
		stopHWM = watchHWM(recv.Process.Pid, &hwm)
	}
	err = recv.Wait()
	res.DecodeSeconds = time.Since(t0).Seconds()
	stopHWM()
	res.DecodePeakRSS = hwm
	if err != nil {
		return res, fmt.Errorf("pg_recvlogical: %v\n%s", err, recvOut.String())
	}

	// cachesync.
	counter := b.commandCounter(w.Cluster)
	defer counter.close()
	cmdsBefore, err := counter.total(ctx)
	if err != nil {
		return res, err
	}
	cs := b.cachesyncCmd("run", rules, dataDir, db, w.Cluster)
	var csOut bytes.Buffer
	cs.Stdout, cs.Stderr = &csOut, &csOut
	if err := cs.Start(); err != nil {
		return res, err
	}
	defer func() {
		if cs.ProcessState == nil {
			_ = cs.Process.Kill()
			_ = cs.Wait()
		}
	}()
	t0, err = waitActive(ctx, conn, "cs", cs)
	if err != nil {
		return res, fmt.Errorf("cachesync run: %w\n%s", err, tail(csOut.String()))
	}
	hwm = 0
	stopHWM = watchHWM(cs.Process.Pid, &hwm)
	if err := waitConfirmed(ctx, conn, "cs", endLSN, cs); err != nil {
		stopHWM()
		return res, fmt.Errorf("cachesync run: %w\n%s", err, tail(csOut.String()))
	}
	res.CachesyncSecs = time.Since(t0).Seconds()
	stopHWM()
	res.PeakRSSBytes = hwm
	res.CachesyncCPUSec = cpuSeconds(cs.Process.Pid)
	cmdsAfter, err := counter.total(ctx)
	if err != nil {
		return res, err
	}
	res.RedisCommands = cmdsAfter - cmdsBefore - counter.ownCommands()
	if w.Cluster {
		if err := b.srv.checkClusterMasters(ctx); err != nil {
			return res, err
		}
	}
	_ = cs.Process.Signal(syscall.SIGTERM)
	waitOrKill(cs, 20*time.Second, syscall.SIGKILL)
	return res, nil
}

// waitActive waits until the slot has an active walsender, and returns when it saw it.
func waitActive(ctx context.Context, conn *pgx.Conn, slot string, proc *exec.Cmd) (time.Time, error) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var active bool
		if err := conn.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()`, slot).Scan(&active); err != nil {
			return time.Time{}, err
		}
		if active {
			return time.Now(), nil
		}
		if exited(proc) {
			return time.Time{}, fmt.Errorf("exited before the slot became active")
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("slot %s not active after 30s", slot)
}

// waitConfirmed polls until the slot's confirmed_flush_lsn reaches end.
func waitConfirmed(ctx context.Context, conn *pgx.Conn, slot, end string, proc *exec.Cmd) error {
	deadline := time.Now().Add(30 * time.Minute)
	for time.Now().Before(deadline) {
		var done bool
		if err := conn.QueryRow(ctx, `SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()`, slot, end).Scan(&done); err != nil {
			return err
		}
		if done {
			return nil
		}
		if exited(proc) {
			return fmt.Errorf("exited before confirming %s", end)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("slot %s did not reach %s", slot, end)
}

func exited(proc *exec.Cmd) bool {
	return proc.Process.Signal(syscall.Signal(0)) != nil || isZombie(proc.Process.Pid)
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// watchHWM samples /proc/pid/status VmHWM (the kernel's own peak RSS) every 20ms and
// once more when stopped, keeping the largest value seen.
func watchHWM(pid int, peak *int64) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	sample := func() {
		if v := procStatusKB(pid, "VmHWM:"); v*1024 > *peak {
			*peak = v * 1024
		}
	}
	go func() {
		defer close(finished)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				sample()
				return
			case <-t.C:
				sample()
			}
		}
	}()
	return func() { close(done); <-finished }
}

func procStatusKB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// cpuSeconds is the user+system CPU time of a live process.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	sy, _ := strconv.ParseFloat(f[12], 64)
	return (u + sy) / 100 // USER_HZ is 100 on Linux
}

func redisFromURL(u string) *redis.Client {
	opts, err := redis.ParseURL(u)
	if err != nil {
		panic(err)
	}
	return redis.NewClient(opts)
}

func redisCommands(ctx context.Context, rc *redis.Client) (int64, error) {
	info, err := rc.Info(ctx, "stats").Result()
	if err != nil {
		return 0, err
	}
	if v := infoField(info, "total_commands_processed"); v != "" {
		return strconv.ParseInt(v, 10, 64)
	}
	return 0, fmt.Errorf("no total_commands_processed in INFO stats")
}

// infoField returns a field of an INFO reply, "" when absent.
func infoField(info, field string) string {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}

// commandCounter reads total_commands_processed from the servers that cachesync
// writes to: the standalone Redis, or every master of the cluster (a replica's
// count would add the replicated stream again). Each client keeps its connection,
// so that only the INFO calls themselves add to the counts.
type commandCounter struct {
	clients []*redis.Client
}

func (b *bench) commandCounter(cluster bool) *commandCounter {
	if !cluster {
		return &commandCounter{clients: []*redis.Client{redisFromURL(b.srv.redisURL)}}
	}
	c := &commandCounter{}
	for _, addr := range b.srv.clusterMasters {
		c.clients = append(c.clients, redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1}))
	}
	return c
}

// total is the sum of the servers' total_commands_processed.
func (c *commandCounter) total(ctx context.Context) (int64, error) {
	var sum int64
	for _, rc := range c.clients {
		n, err := redisCommands(ctx, rc)
		if err != nil {
			return 0, fmt.Errorf("INFO stats on %s: %w", rc.Options().Addr, err)
		}
		sum += n
	}
	return sum, nil
}

// ownCommands is what a pair of total calls adds to the difference of their sums:
// on each server the first INFO is counted by the second (a command counts once
// it has run).
func (c *commandCounter) ownCommands() int64 { return int64(len(c.clients)) }

func (c *commandCounter) close() {
	for _, rc := range c.clients {
		_ = rc.Close()
	}
}

// redisCeiling measures pipelined DELs from go-redis: ops pipelines of 1000.
func redisCeiling(ctx context.Context, url string, ops int) (float64, error) {
	rc := redisFromURL(url)
	defer rc.Close()
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = "ceiling:" + strconv.Itoa(i)
	}
	began := time.Now()
	for done := 0; done < ops; done += len(keys) {
		pipe := rc.Pipeline()
		for _, k := range keys {
			pipe.Del(ctx, k)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return 0, err
		}
	}
	return float64(ops) / time.Since(began).Seconds(), nil
}
