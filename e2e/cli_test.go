package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
)

func TestValidate(t *testing.T) {
	e := setup(t, schema+`ALTER TABLE users REPLICA IDENTITY DEFAULT;`, rules)
	if out, code := e.cliEnv([]string{"DATABASE_URL="}, "validate"); code != 0 || !strings.Contains(out, "3 rules OK") {
		t.Fatalf("validate without a database: exit %d\n%s", code, out)
	}
	// users is back to REPLICA IDENTITY DEFAULT while its rule reads email
	// and org_id: the old row could not be found on UPDATE/DELETE.
	out, code := e.cli("validate", "--database-url", e.dbURL)
	if code != 1 {
		t.Fatalf("validate --database-url: exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{"rules.hcl:", `rule "user"`, `"email"`, "ALTER TABLE public.users REPLICA IDENTITY FULL"} {
		if !strings.Contains(out, want) {
			t.Errorf("validate output lacks %q:\n%s", want, out)
		}
	}
	// run refuses to start on the same finding, and creates nothing.
	out, code = e.cli("run")
	if code != 1 || !strings.Contains(out, "REPLICA IDENTITY FULL") {
		t.Fatalf("run with insufficient replica identity: exit %d\n%s", code, out)
	}
	var slots int
	if err := e.db.QueryRow(e.ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&slots); err != nil || slots != 0 {
		t.Errorf("a refused run left %d slots (err %v)", slots, err)
	}

	bad := filepath.Join(t.TempDir(), "bad.hcl")
	os.WriteFile(bad, []byte("rule \"x\" {\n  table = \"public.users\"\n  invalidate {\n    keys = [\"${row.id}\"]\n  }\n  colour = 1\n}\n"), 0o644)
	out, code = e.cliEnv([]string{"DATABASE_URL="}, "validate", "--config", bad)
	if code != 1 {
		t.Fatalf("bad rules: exit %d\n%s", code, out)
	}
	for _, want := range []string{"bad.hcl:4:13", "bad.hcl:6:3", "literal"} {
		if !strings.Contains(out, want) {
			t.Errorf("diagnostics lack %q:\n%s", want, out)
		}
	}

	// A when that reads only new judges both images of an UPDATE by the new
	// row: the file is valid, but validate says so, with the fix.
	onlyNew := filepath.Join(t.TempDir(), "new.hcl")
	os.WriteFile(onlyNew, []byte("rule \"open_orders\" {\n  table = \"public.orders\"\n  when  = new.status != \"archived\"\n  invalidate {\n    keys = [\"order:${row.id}\"]\n  }\n}\n"), 0o644)
	out, code = e.cliEnv([]string{"DATABASE_URL="}, "validate", "--config", onlyNew)
	if code != 0 {
		t.Fatalf("a warning must not fail validate: exit %d\n%s", code, out)
	}
	for _, want := range []string{
		`new.hcl:3:11: warning: rule "open_orders": when reads only new`,
		"    3 |   when  = new.status != \"archived\"\n      |           ^^^^^^^^^^\n",
		"= hint: write row.<column> instead of new.<column>",
		"1 rule OK",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("validate output lacks %q:\n%s", want, out)
		}
	}
}

func TestValidateMissingTableAndColumn(t *testing.T) {
	e := setup(t, `CREATE TABLE users (id bigint PRIMARY KEY, org_id int);`, `
rule "user" {
  table = "public.users"
  invalidate { keys = ["user:${row.id}", "user:email:${row.email}"] }
}
rule "gone" {
  table = "public.nope"
  invalidate { keys = ["nope:${row.id}"] }
}`)
	out, code := e.cli("validate", "--database-url", e.dbURL)
	if code != 1 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	for _, want := range []string{`has no column "email"`, "public.nope does not exist", "rules.hcl:"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// With --database-url, validate evaluates every template on a trial row of
// the table's column types: a refresh value that is an object (at run time:
// the key deleted instead of written, on every change) fails validate at
// its line, and so does run. A mistyped table gets a "did you mean" at the
// table line; a view one error.
func TestValidateEvaluatesTemplatesOnATrialRow(t *testing.T) {
	e := setup(t, `CREATE TABLE users (id bigint PRIMARY KEY, email text);
CREATE VIEW emails AS SELECT id, email FROM users;`, `
rule "user" {
  table = "public.users"
  refresh {
    key   = "user:${row.id}"
    value = row
    ttl   = "1h"
  }
}
rule "typo" {
  table = "public.user"
  invalidate { keys = ["u:${row.id}"] }
}
rule "view" {
  table = "public.emails"
  invalidate { keys = ["e:${row.email}"] }
}`)
	want := []string{
		`rules.hcl:10:13: error: rule "user": value fails on every row of public.users; value must be a string: wrap it in jsonencode()`,
		"At run time this would delete the key instead of writing the row on every change.",
		"   10 |     value = row\n",
		`rules.hcl:15:11: error: rule "typo": table public.user does not exist; did you mean public.users?`,
		`rules.hcl:19:11: error: rule "view": public.emails is a view: logical replication publishes only tables; point the rule at the underlying table`,
	}
	out, code := e.cli("validate", "--database-url", e.dbURL)
	if code != 1 {
		t.Fatalf("validate: exit %d, want 1\n%s", code, out)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("validate output lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "REPLICA IDENTITY") {
		t.Errorf("validate says more than that the view is a view:\n%s", out)
	}
	out, code = e.cli("run", "--log-format", "console") // the findings as text, not inside a JSON line
	if code != 1 || !strings.Contains(out, want[0]) {
		t.Errorf("run: exit %d, want 1 with %q:\n%s", code, want[0], out)
	}

	// A template that fails only on a NULL is a warning: validate says so
	// and succeeds.
	nullOnly := filepath.Join(t.TempDir(), "null.hcl")
	os.WriteFile(nullOnly, []byte("rule \"mail\" {\n  table = \"public.users\"\n  refresh {\n    key   = \"user:${row.id}\"\n    value = \"mail: ${row.email}\"\n    ttl   = \"1h\"\n  }\n}\n"), 0o644)
	out, code = e.cli("validate", "--config", nullOnly, "--database-url", e.dbURL)
	for _, w := range []string{`null.hcl:5:22: warning: rule "mail": value fails when public.users.email is NULL`, "1 rule OK"} {
		if code != 0 || !strings.Contains(out, w) {
			t.Errorf("validate: exit %d, want 0 with %q:\n%s", code, w, out)
		}
	}
	// run starts with such a file, and says the same once in its log.
	d := e.launch(binary, []string{"--log-format", "console"}, []string{"CACHESYNC_CONFIG=" + nullOnly})
	testenv.Eventually(t, 30*time.Second, "run logs the preflight's warning", func() (bool, string) {
		return strings.Contains(d.log.String(), `null.hcl:5:22: warning: rule`), d.log.String()
	})
	if d.exited() {
		t.Errorf("run exited on a warning:\n%s", d.log.String())
	}
}

func (e *env) publicationTables() []string {
	e.t.Helper()
	var tables []string
	err := e.db.QueryRow(e.ctx, `SELECT coalesce(array_agg(schemaname || '.' || tablename ORDER BY schemaname, tablename), '{}') FROM pg_publication_tables WHERE pubname = 'cachesync'`).Scan(&tables)
	if err != nil {
		e.t.Fatal(err)
	}
	return tables
}

func TestSetupStatusTeardown(t *testing.T) {
	e := setup(t, schema, rules)
	e.set("user:1", "product:9", "unrelated:1")
	for range 2 {
		if out, code := e.cli("setup"); code != 0 {
			t.Fatalf("setup: exit %d\n%s", code, out)
		}
	}
	if got := strings.Join(e.publicationTables(), ","); got != "public.orders,public.products,public.users" {
		t.Errorf("publication tables %s", got)
	}
	var viaRoot, ins, upd, del, trunc bool
	e.db.QueryRow(e.ctx, `SELECT pubviaroot, pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = 'cachesync'`).Scan(&viaRoot, &ins, &upd, &del, &trunc)
	if !viaRoot || !ins || !upd || !del || !trunc {
		t.Errorf("publication options: via_root=%v insert=%v update=%v delete=%v truncate=%v", viaRoot, ins, upd, del, trunc)
	}
	var temporary bool
	var plugin string
	if err := e.db.QueryRow(e.ctx, `SELECT temporary, plugin FROM pg_replication_slots WHERE slot_name = $1`, e.slot).Scan(&temporary, &plugin); err != nil || temporary || plugin != "pgoutput" {
		t.Errorf("slot: temporary=%v plugin=%q err=%v", temporary, plugin, err)
	}
	// Entries cached before the slot existed are flushed once it does.
	e.gone("user:1", "product:9")
	e.present("unrelated:1")

	out, code := e.cli("status", "--json")
	if code != 0 {
		t.Fatalf("status: %d\n%s", code, out)
	}
	var st struct {
		Exists bool `json:"exists"`
		Info   struct {
			Active            bool
			ConfirmedFlushLSN uint64
			LagBytes          int64
		} `json:"info"`
		Tables []string `json:"publication_tables"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if !st.Exists || st.Info.ConfirmedFlushLSN == 0 || st.Info.Active || len(st.Tables) != 3 {
		t.Errorf("status: %+v", st)
	}
	if out, code := e.cli("status"); code != 0 || !strings.Contains(out, "confirmed LSN") || !strings.Contains(out, "retained WAL") {
		t.Errorf("status table: %d\n%s", code, out)
	}
	// The retained-WAL threshold takes a size with a unit: a row's worth
	// of WAL the slot has not consumed is over 1B and under 1TiB.
	e.exec(`INSERT INTO unrelated VALUES (1, 'wal')`)
	if out, code := e.cli("status", "--warn-retained-bytes", "1B"); code != 0 || !strings.Contains(out, "WARNING") || !strings.Contains(out, "(over 1 B)") {
		t.Errorf("status --warn-retained-bytes 1B: exit %d, want a WARNING\n%s", code, out)
	}
	if out, code := e.cliEnv([]string{"CACHESYNC_WARN_RETAINED_BYTES=1 TiB"}, "status"); code != 0 || strings.Contains(out, "WARNING") {
		t.Errorf("status with CACHESYNC_WARN_RETAINED_BYTES=1 TiB: exit %d, want no WARNING\n%s", code, out)
	}

	// Dropping a rule removes its table from the publication; adding one
	// adds the table and flushes its key space.
	two := strings.Replace(rules, `rule "order_lists" {
  table = "public.orders"
  bump_version {
    namespaces = ["orders:customer:${row.customer_id}"]
  }
}`, `rule "unrelated" {
  table = "public.unrelated"
  invalidate { keys = ["unrelated:${row.id}"] }
}`, 1)
	os.WriteFile(e.rules, []byte(strings.Replace(mustRead(t, e.rules), rules, two, 1)), 0o644)
	e.set("unrelated:1", "orders:customer:2:v0:x")
	if out, code := e.cli("setup"); code != 0 {
		t.Fatalf("setup after a rule change: %d\n%s", code, out)
	}
	if got := strings.Join(e.publicationTables(), ","); got != "public.products,public.unrelated,public.users" {
		t.Errorf("publication tables after a rule change: %s", got)
	}
	e.gone("unrelated:1")
	e.present("orders:customer:2:v0:x")

	// Without a terminal to ask on, and without --yes, teardown drops
	// nothing.
	var n int
	count := `SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1) + (SELECT count(*) FROM pg_publication WHERE pubname = 'cachesync')`
	if out, code := e.cli("teardown"); code != 2 || !strings.Contains(out, "Pass --yes to go ahead") {
		t.Errorf("teardown without --yes: exit %d, want 2\n%s", code, out)
	}
	if e.db.QueryRow(e.ctx, count, e.slot).Scan(&n); n != 2 {
		t.Errorf("teardown without --yes left %d of the slot and the publication, want both", n)
	}
	if out, code := e.cli("teardown", "--yes"); code != 0 {
		t.Fatalf("teardown: %d\n%s", code, out)
	}
	e.db.QueryRow(e.ctx, count, e.slot).Scan(&n)
	if n != 0 {
		t.Errorf("teardown left %d slot/publication", n)
	}
	if out, code := e.cli("teardown", "--yes"); code != 0 || !strings.Contains(out, "absent") {
		t.Errorf("second teardown: %d\n%s", code, out)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDryRun(t *testing.T) {
	e := setup(t, schema, rules)
	if out, code := e.cli("setup"); code != 0 {
		t.Fatalf("setup: %d\n%s", code, out)
	}
	confirmed := e.confirmedLSN()
	lines, cmd, logs := e.dryRun()
	e.set("user:1")
	e.exec(`INSERT INTO users VALUES (1, 'A@x.io', 7, 'Ann')`)
	e.exec(`INSERT INTO products VALUES (9, 'Pen', 9.5, true, 'blue')`)
	// Durations print as the rules file writes them, not as nanoseconds.
	want := map[string]bool{"delete user:1": false, "delete user:email:a@x.io": false, "delete_tag org:7": false,
		`set product:9 ttl "1h" jitter "5m" {"description":"blue","id":9,"name":"Pen","price":"9.50","published":true}`: false}
	deadline := time.After(30 * time.Second)
	for missing := len(want); missing > 0; {
		select {
		case m, ok := <-lines:
			if !ok {
				t.Fatalf("dry run ended early:\n%s", logs.String())
			}
			k := m["op"].(string) + " " + m["key"].(string)
			if m["op"] == "set" {
				k += fmt.Sprintf(" ttl %q jitter %q %s", m["ttl"], m["jitter"], m["value"])
			}
			if seen, ok := want[k]; ok && !seen {
				want[k] = true
				missing--
			} else if !ok {
				t.Errorf("unexpected line %v", m)
			}
			rule := "user"
			if m["op"] == "set" {
				rule = "product"
			}
			if m["rule"] != rule || m["end_lsn"] == "" {
				t.Errorf("line %v", m)
			}
		case <-deadline:
			t.Fatalf("dry run printed %v of the expected operations\n%s", want, logs.String())
		}
	}
	// Nothing applied, nothing confirmed on the real slot.
	e.present("user:1")
	if got := e.confirmedLSN(); got != confirmed {
		t.Errorf("the dry run moved the real slot from %s to %s", confirmed, got)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("dry run exit: %v\n%s", err, logs.String())
	}
}

// dryRun starts `run --dry-run` and waits until it streams. Its operations
// arrive on lines, one decoded JSON line each; lines closes when it ends.
func (e *env) dryRun() (lines <-chan map[string]any, cmd *exec.Cmd, logs *lockedBuffer) {
	e.t.Helper()
	cmd = exec.Command(binary, "run", "--dry-run", "--status-interval", "1s")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+e.dbURL, "REDIS_URL=redis://127.0.0.1:1", "CACHESYNC_CONFIG="+e.rules)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	logs = &lockedBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	testenv.Eventually(e.t, 30*time.Second, "dry run streaming", func() (bool, string) {
		return strings.Contains(logs.String(), `"streaming"`), logs.String()
	})
	out := make(chan map[string]any)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				out <- m
			}
		}
		close(out)
	}()
	return out, cmd, logs
}

// TestRunRefusesAnEvictingRedis: a maxmemory policy that may evict tag sets,
// guards or version keys stops run and setup before they create anything,
// with the fix; --allow-eviction turns that into a warning and streams.
func TestRunRefusesAnEvictingRedis(t *testing.T) {
	e := setup(t, schema, rules)
	for _, kv := range [][2]string{{"maxmemory", "1gb"}, {"maxmemory-policy", "allkeys-lru"}} {
		if err := e.rdb.ConfigSet(e.ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatalf("CONFIG SET %s %s: %v", kv[0], kv[1], err)
		}
	}
	for _, command := range []string{"run", "setup"} {
		out, code := e.cli(command)
		if code != 1 {
			t.Fatalf("%s with allkeys-lru: exit %d, want 1\n%s", command, code, out)
		}
		for _, want := range []string{"maxmemory-policy allkeys-lru", "CONFIG SET maxmemory-policy noeviction", "--allow-eviction"} {
			if !strings.Contains(out, want) {
				t.Errorf("the refusal of %s lacks %q:\n%s", command, want, out)
			}
		}
	}
	var slots int
	if err := e.db.QueryRow(e.ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&slots); err != nil || slots != 0 {
		t.Errorf("a refused run or setup left %d slots (err %v)", slots, err)
	}

	d := e.start("CACHESYNC_ALLOW_EVICTION=true")
	e.waitStreaming(d)
	if !strings.Contains(d.log.String(), "Redis may evict cachesync's bookkeeping keys") {
		t.Errorf("no eviction warning with --allow-eviction:\n%s", d.log.String())
	}
	e.exec(`INSERT INTO users VALUES (1, 'a@x.io', 1, 'a')`)
	e.quiesce(d)
	e.set("user:1")
	e.exec(`UPDATE users SET name = 'b' WHERE id = 1`)
	e.gone("user:1")
}

// TestRunRefusesARedisUserWithoutPermissions: a Redis ACL user that lacks a
// command cachesync needs stops `run` before it creates anything, with the
// ACL to grant; that ACL, applied as printed, is enough to stream.
func TestRunRefusesARedisUserWithoutPermissions(t *testing.T) {
	e := setup(t, schema, rules)
	if !e.redis.Controllable() {
		t.Skip("needs a Redis of its own (REDIS_URL is set): the test creates ACL users")
	}
	acl := func(user string, rules ...string) string {
		args := []any{"ACL", "SETUSER", user, "reset", "on", ">pw"}
		for _, r := range rules {
			args = append(args, r)
		}
		if err := e.rdb.Do(e.ctx, args...).Err(); err != nil {
			t.Fatalf("ACL SETUSER %s: %v", user, err)
		}
		return "REDIS_URL=redis://" + user + ":pw@" + e.redis.Addr() + "/0"
	}
	noScan := acl("noscan", "+@all", "-scan", "~*")
	out, code := e.cliEnv([]string{noScan}, "run")
	if code != 1 {
		t.Fatalf("run as a user without SCAN: exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{"NOPERM", "SCAN", "ACL SETUSER <user>", "+scan", "~user:email:*", "~tag:org:*", "~version:orders:customer:*", "registers under a tag"} {
		if !strings.Contains(out, want) {
			t.Errorf("the refusal lacks %q:\n%s", want, out)
		}
	}
	// setup too, before it creates the slot (whose flush would retry the
	// refusal forever).
	if out, code := e.cliEnv([]string{noScan}, "setup"); code != 1 || !strings.Contains(out, "NOPERM") {
		t.Errorf("setup as a user without SCAN: exit %d, want 1 with NOPERM\n%s", code, out)
	}
	var slots int
	if err := e.db.QueryRow(e.ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&slots); err != nil || slots != 0 {
		t.Errorf("a refused run or setup left %d slots (err %v)", slots, err)
	}

	// The advice, as printed, lets the daemon do all it does: slot and
	// rules records, flushes, applied position, every rule's effects.
	_, advice, ok := strings.Cut(out, "ACL SETUSER <user> ")
	if !ok {
		t.Fatalf("no ACL advice in:\n%s", out)
	}
	advice, _, _ = strings.Cut(advice, "\n")
	advice = strings.TrimRight(advice, `"}`)
	// Plus the application's keys registered under tags, as it says.
	exact := acl("exact", append(strings.Fields(advice), "~org-*")...)
	d := e.start(exact)
	e.waitStreaming(d)
	e.exec(`INSERT INTO users VALUES (1, 'a@x.io', 1, 'a')`)
	e.exec(`INSERT INTO orders VALUES (1, 7)`)
	e.quiesce(d)
	e.set("user:1", "user:email:a@x.io", "orders:customer:7:v0:list")
	e.rdb.SAdd(e.ctx, "tag:org:1", "org-page")
	e.set("org-page")
	e.exec(`UPDATE users SET name = 'b' WHERE id = 1`)
	e.exec(`UPDATE orders SET customer_id = 7 WHERE id = 1`)
	e.gone("user:1", "user:email:a@x.io", "org-page")
	testenv.Eventually(t, 30*time.Second, "version bumped", func() (bool, string) {
		v, _ := e.rdb.Get(e.ctx, "version:orders:customer:7").Result()
		return v != "" && v != "0", v
	})
	if strings.Contains(d.log.String(), "NOPERM") {
		t.Errorf("the daemon met NOPERM with the advised ACL:\n%s", d.log.String())
	}
}
