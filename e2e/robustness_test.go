package e2e

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/internal/testenv"
)

// A killed walsender (network blip, server restart of the backend) ends the
// session: the daemon reconnects from the slot and misses nothing.
func TestReconnectAfterWalsenderKilled(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)
	for round := 1; round <= 2; round++ {
		var pid int32
		if err := e.db.QueryRow(e.ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&pid); err != nil {
			t.Fatal(err)
		}
		e.exec("SELECT pg_terminate_backend($1)", pid)
		key := fmt.Sprintf("user:%d", round)
		e.set(key)
		e.exec(`INSERT INTO users VALUES ($1, $2, 1, 'n')`, round, fmt.Sprintf("u%d@x.io", round))
		e.gone(key)
	}
	e.caughtUp(d, 60*time.Second)
	if n := strings.Count(d.log.String(), "reconnecting"); n < 2 {
		t.Errorf("want 2 reconnects logged, got %d\n%s", n, d.log.String())
	}
}

// A transaction larger than the key cap never holds its keys in memory: the
// rule's key space is flushed instead, which removes keys nothing named.
func TestLargeTransactionFlushesKeySpace(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start("CACHESYNC_KEY_CAP=1000")
	e.waitStreaming(d)
	e.set("user:999999", "user:email:someone", "product:1")
	e.exec(`INSERT INTO users SELECT g, 'u' || g || '@x.io', g % 10, 'n' FROM generate_series(1, 50000) g`)
	e.gone("user:999999", "user:email:someone")
	e.present("product:1")
	e.caughtUp(d, 120*time.Second)
	if !strings.Contains(d.log.String(), "flush(user: key_cap)") {
		t.Errorf("no key_cap flush logged\n%s", d.log.String())
	}
}

func TestPreflightRefusesWithoutReplicationPrivilege(t *testing.T) {
	e := setup(t, schema, rules)
	e.exec(`CREATE ROLE app_user LOGIN`)
	e.exec(`GRANT ALL ON ALL TABLES IN SCHEMA public TO app_user`)
	t.Cleanup(func() { e.db.Exec(context.Background(), `DROP OWNED BY app_user; DROP ROLE app_user`) })
	u, err := url.Parse(e.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User("app_user")
	// The refusal as a reader sees it (with the default json format it is
	// the message of the last log line).
	out, code := e.cliEnv([]string{"DATABASE_URL=" + u.String()}, "run", "--log-format", "console")
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{`role "app_user" may not use replication`, "ALTER ROLE app_user REPLICATION", "does not own public.users"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestPreflightRefusesWithoutLogicalWAL(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{Settings: map[string]string{"wal_level": "replica"}})
	dbURL := pg.URL("postgres")
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), schema); err != nil {
		t.Fatal(err)
	}
	rulesFile := t.TempDir() + "/rules.hcl"
	os.WriteFile(rulesFile, []byte(rules), 0o644)
	cmd := exec.Command(binary, "run", "--config", rulesFile, "--database-url", dbURL, "--redis-url", "redis://127.0.0.1:1", "--log-format", "console")
	out, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 1 {
		t.Fatalf("exit %d, want 1\n%s", cmd.ProcessState.ExitCode(), out)
	}
	for _, want := range []string{`wal_level is "replica"`, "ALTER SYSTEM SET wal_level = logical"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// Idle rule tables beside a busy unrelated table: keepalive barriers and
// heartbeats keep the slot moving, so retained WAL stays flat.
func TestIdleRulesBusyUnrelatedTableKeepsWALFlat(t *testing.T) {
	e := setup(t, schema+`CREATE TABLE noise (id bigserial PRIMARY KEY, payload text);`, rules)
	d := e.start("CACHESYNC_HEARTBEAT_INTERVAL=1s")
	e.waitStreaming(d)
	start := e.currentLSN()
	for range 20 {
		e.exec(`INSERT INTO noise (payload) SELECT repeat(md5(g::text), 32) FROM generate_series(1, 2000) g`)
	}
	generated := e.currentLSN() - start
	if generated < 8<<20 {
		t.Fatalf("the workload wrote only %d bytes of WAL; the test would prove nothing", generated)
	}
	e.caughtUp(d, 60*time.Second)
	var retained int64
	testenv.Eventually(t, 60*time.Second, "retained WAL back to a few MiB", func() (bool, string) {
		if err := e.db.QueryRow(e.ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1`, e.slot).Scan(&retained); err != nil {
			t.Fatal(err)
		}
		return retained < 4<<20, fmt.Sprintf("retained %d bytes after %d bytes of unrelated WAL", retained, generated)
	})
	t.Logf("unrelated WAL written: %.1f MiB; retained by the slot afterwards: %.2f MiB", float64(generated)/(1<<20), float64(retained)/(1<<20))
	testenv.Eventually(t, 30*time.Second, "heartbeats written", func() (bool, string) {
		return strings.Count(d.log.String(), `"heartbeat written"`) >= 2, ""
	})
}
