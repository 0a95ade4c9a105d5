package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// explainCLI runs `cachesync explain` with the repository's rules.hcl and no
// database (no DATABASE_URL), and returns stdout, stderr and the exit code.
func explainCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runCLI(t, []string{"DATABASE_URL=", "CACHESYNC_CONFIG=../rules.hcl"}, append([]string{"explain"}, args...)...)
}

// runCLI runs the binary with env, apart from the test's own cachesync
// variables, and returns stdout and stderr apart.
func runCLI(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runCachesync(t, env, args...)
}

// ruleLine is where `rule "name"` starts in the repository's rules.hcl.
func ruleLine(t *testing.T, name string) string {
	t.Helper()
	for i, line := range strings.Split(mustRead(t, "../rules.hcl"), "\n") {
		if strings.HasPrefix(line, fmt.Sprintf("rule %q", name)) {
			return fmt.Sprintf("../rules.hcl:%d:1", i+1)
		}
	}
	t.Fatalf("no rule %q in ../rules.hcl", name)
	return ""
}

// TestExplain: explain prints, per rule of the table, the operations an
// INSERT, UPDATE or DELETE of the given row produces, the same as JSON lines
// with --json, and refuses bad input with exit 2 and what to fix.
func TestExplain(t *testing.T) {
	t.Parallel()
	user := ruleLine(t, "user")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"insert", []string{"--table", "public.users", "--row", `{"id":42,"email":"A@x.io","org_id":3}`}, `INSERT into public.users
column types: inferred from the JSON values (--database-url reads the table's)

rule "user" (` + user + `)
  DELETE user:42
  DELETE user:email:a@x.io
  DELETE TAG org:3 (every key in the set tag:org:3, then the set)
`},
		{"update", []string{"--table", "users", "--row", `{"id":42,"email":"A@x.io","org_id":3}`, "--old", `{"id":42,"email":"old@x.io","org_id":null}`}, `UPDATE of public.users
column types: inferred from the JSON values (--database-url reads the table's)

rule "user" (` + user + `)
  DELETE user:42
  DELETE user:email:old@x.io
  DELETE user:email:a@x.io
  DELETE TAG org:3 (every key in the set tag:org:3, then the set)
`},
		{"delete", []string{"--table", "public.orders", "--old", `{"id":1,"customer_id":7,"total":9.5}`}, `DELETE from public.orders
column types: inferred from the JSON values (--database-url reads the table's)

rule "order_lists" (` + ruleLine(t, "order_lists") + `)
  BUMP VERSION orders:customer:7 (INCR version:orders:customer:7)
`},
		{"refresh", []string{"--table", "public.products", "--row", `{"id":1,"name":"Pen","price":"9.50","published":true,"description":null}`}, `INSERT into public.products
column types: inferred from the JSON values (--database-url reads the table's)

rule "product" (` + ruleLine(t, "product") + `)
  SET product:1 TTL 1h ± 5m (55m to 1h5m)
    value {"description":null,"id":1,"name":"Pen","price":"9.50","published":true}
`},
		{"refresh when false", []string{"--table", "public.products", "--row", `{"id":1,"name":"Pen","price":"9.50","published":false,"description":"x"}`}, `INSERT into public.products
column types: inferred from the JSON values (--database-url reads the table's)

rule "product" (` + ruleLine(t, "product") + `)
  UNSET product:1 (deleted, with a guard that keeps an older change from writing it back)
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := explainCLI(t, tc.args...)
			if code != 0 || out != tc.want {
				t.Fatalf("exit %d\n--- got:\n%s\n--- want:\n%s\n--- stderr:\n%s", code, out, tc.want, errOut)
			}
		})
	}

	t.Run("json", func(t *testing.T) {
		out, errOut, code := explainCLI(t, "--json", "--table", "public.products",
			"--row", `{"id":1,"name":"Pen","price":"9.50","published":true,"description":null}`,
			"--old", `{"id":2,"name":"Pen","price":"9.50","published":true,"description":null}`)
		if code != 0 {
			t.Fatalf("exit %d\n%s%s", code, out, errOut)
		}
		got := explainOps(t, out)
		want := []string{
			`{"key":"product:2","op":"unset","rule":"product"}`,
			`{"jitter":"5m","key":"product:1","op":"set","rule":"product","ttl":"1h","value":"{\"description\":null,\"id\":1,\"name\":\"Pen\",\"price\":\"9.50\",\"published\":true}"}`,
		}
		if !slices.Equal(got, want) {
			t.Errorf("--json lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})

	t.Run("usage errors", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--row", `{"id":1}`}, "--table is required"},
			{[]string{"--table", "public.users"}, "give the change: --row (INSERT)"},
			{[]string{"--table", "public.user", "--row", `{"id":1}`}, "no rule reads table public.user (did you mean public.users?); the rules read public.orders, public.page_views, public.products, public.users"},
			{[]string{"--table", "public.users", "--row", `{"id":1,"emial":"a@x.io","org_id":1}`}, `--row has no column "email", which rule "user" reads (is "emial" a typo for it?)`},
			{[]string{"--table", "public.users", "--row", `{"id":1`}, "--row must be a JSON object"},
			{[]string{"--table", "public.users", "--row", `[1]`}, "--row must be a JSON object"},
			{[]string{"--table", "public.users", "--pk", "1"}, "--pk reads the row from the database: give --database-url"},
			{[]string{"--table", "public.users", "--pk", "1", "--row", `{"id":1}`}, "--pk and --row both give the new row"},
			{[]string{"--table", "public.users", "--row", `{"id":1}`, "extra"}, `unexpected argument "extra"`},
		} {
			out, errOut, code := explainCLI(t, tc.args...)
			if code != 2 || !strings.Contains(errOut, tc.want) || out != "" {
				t.Errorf("explain %q: exit %d, want 2 with %q\nstdout: %s\nstderr: %s", tc.args, code, tc.want, out, errOut)
			}
		}
	})

	t.Run("nothing to do", func(t *testing.T) {
		rules := filepath.Join(t.TempDir(), "rules.hcl")
		os.WriteFile(rules, []byte(`rule "vip" {
  table = "public.users"
  when  = row.org_id == 1
  invalidate { keys = ["vip:${row.id}"] }
}
rule "by_name" {
  table = "public.users"
  invalidate { keys = ["name:${lower(row.name)}"] }
}
`), 0o644)
		out, errOut, code := runCLI(t, []string{"DATABASE_URL="}, "explain", "--config", rules, "--table", "users", "--row", `{"id":1,"org_id":2,"name":null}`)
		want := fmt.Sprintf(`INSERT into public.users
column types: inferred from the JSON values (--database-url reads the table's)

rule "vip" (%[1]s:1:1)
  nothing: when (%[1]s:3:11) is false for this row

rule "by_name" (%[1]s:6:1)
  nothing: its key templates gave NULL for this row: no such key

no rule acts on this change: nothing would be sent to Redis
`, rules)
		if code != 0 || out != want {
			t.Errorf("exit %d\n--- got:\n%s\n--- want:\n%s\n%s", code, out, want, errOut)
		}
	})
}

// explainOps returns the operations of JSON lines in the dry-run format,
// without the transaction's fields (xid, LSNs, commit time), each
// re-encoded with sorted keys.
func explainOps(t *testing.T, out string) []string {
	t.Helper()
	var ops []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not a JSON line: %q: %v", line, err)
		}
		ops = append(ops, opOnly(m))
	}
	return ops
}

// opOnly is a dry-run line without its transaction's fields.
func opOnly(m map[string]any) string {
	op := map[string]any{}
	for k, v := range m {
		switch k {
		case "xid", "commit_lsn", "end_lsn", "commit_time":
		default:
			op[k] = v
		}
	}
	b, _ := json.Marshal(op)
	return string(b)
}

// TestExplainReadsTheDatabase: with --database-url explain reads values as
// the table's columns store them, reads a row by primary key (--pk, also
// composite), names unknown columns, and follows the replica identity:
// under DEFAULT a DELETE carries the key only, so the rule that reads email
// flushes, as run does.
func TestExplainReadsTheDatabase(t *testing.T) {
	e := setup(t, schema+`
CREATE TABLE members (org_id int, user_id bigint, role text, PRIMARY KEY (org_id, user_id));
ALTER TABLE members REPLICA IDENTITY FULL;
INSERT INTO users VALUES (42, 'A@x.io', 3, 'Ann');
INSERT INTO products VALUES (9, 'Pen', 9.5, true, 'blue');
INSERT INTO members VALUES (3, 42, 'admin');`, rules+`
rule "member" {
  table = "public.members"
  invalidate { keys = ["member:${row.org_id}:${row.user_id}:${row.role}"] }
}
`)
	explain := func(args ...string) (string, string, int) {
		return runCLI(t, []string{"CACHESYNC_CONFIG=" + e.rules, "DATABASE_URL=" + e.dbURL}, append([]string{"explain"}, args...)...)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--table", "public.users", "--pk", "42"}, `
  DELETE user:42
  DELETE user:email:a@x.io
  DELETE TAG org:3 (every key in the set tag:org:3, then the set)
`},
		// 9.5 is 9.50 in a numeric(10,2), true is t, as pgoutput sends them.
		{[]string{"--table", "public.products", "--pk", "9"}, `
  SET product:9 TTL 1h ± 5m (55m to 1h5m)
    value {"description":"blue","id":9,"name":"Pen","price":"9.50","published":true}
`},
		{[]string{"--table", "public.products", "--row", `{"id":9,"name":"Pen","price":9.5,"published":"yes","description":"blue"}`}, `
  SET product:9 TTL 1h ± 5m (55m to 1h5m)
    value {"description":"blue","id":9,"name":"Pen","price":"9.50","published":true}
`},
		{[]string{"--table", "public.members", "--pk", `{"user_id":42,"org_id":3}`}, `
  DELETE member:3:42:admin
`},
	} {
		out, errOut, code := explain(tc.args...)
		if code != 0 || !strings.Contains(out, "column types: read from the database\n") || !strings.HasSuffix(out, tc.want) {
			t.Errorf("explain %q: exit %d\n--- got:\n%s\n--- want the end:\n%s\n%s", tc.args, code, out, tc.want, errOut)
		}
	}

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--table", "public.users", "--row", `{"id":1,"emial":"a@x.io","org_id":1}`}, 2, `--row: public.users has no column "emial" (did you mean "email"?); its columns: id, email, org_id, name`},
		{[]string{"--table", "public.users", "--row", `{"id":"x","email":"a@x.io","org_id":1}`}, 2, `column "id" (bigint): ERROR: invalid input syntax for type bigint: "x"`},
		{[]string{"--table", "public.users", "--pk", "7"}, 1, "no row of public.users has id = 7"},
		{[]string{"--table", "public.members", "--pk", "3"}, 2, `the primary key of public.members is (org_id, user_id): give it as a JSON object, like --pk '{"org_id":...,"user_id":...}'`},
		{[]string{"--table", "public.members", "--pk", `{"org_id":3}`}, 2, `"user_id" is missing`},
	} {
		out, errOut, code := explain(tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("explain %q: exit %d, want %d with %q\n%s%s", tc.args, code, tc.code, tc.want, out, errOut)
		}
	}

	e.exec(`ALTER TABLE users REPLICA IDENTITY DEFAULT`)
	out, errOut, code := explain("--table", "public.users", "--old", `{"id":42,"email":"A@x.io","org_id":3,"name":"Ann"}`)
	want := "note: public.users has REPLICA IDENTITY DEFAULT: the old row carries only (id)\n"
	if code != 0 || !strings.Contains(out, want) || !strings.Contains(out, "  FLUSH keys user:*, user:email:*; tags org:* (reason: not_sent)\n") {
		t.Errorf("DELETE under REPLICA IDENTITY DEFAULT: exit %d\n%s%s", code, out, errOut)
	}
}

// TestExplainMatchesRun holds explain against the daemon: random INSERTs,
// UPDATEs and DELETEs of the repository's tables are committed while
// `run --dry-run` streams, and for each one, explain --json of the same
// row (typed by the database) prints exactly the operations the dry run
// printed for its transaction.
func TestExplainMatchesRun(t *testing.T) {
	e := setup(t, schema, rules)
	if out, code := e.cli("setup"); code != 0 {
		t.Fatalf("setup: %d\n%s", code, out)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CACHESYNC_EXPLAIN_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (CACHESYNC_EXPLAIN_SEED reruns it)", seed)
	changes := randomChanges(rand.New(rand.NewPCG(seed, 14)), 20)
	lines, cmd, logs := e.dryRun()
	ops := make([]faultOp, len(changes))
	for i, c := range changes {
		ops[i] = c.op
	}
	// A last transaction with a known key closes the run.
	ops = append(ops, faultOp{sql: `INSERT INTO users VALUES (1000000, 'end@x.io', NULL, NULL)`})
	txns, err := runWorkload(e.ctx, e.dbURL, ops, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	printed := map[string][]string{} // xid → its operations, in order
	for done := false; !done; {
		select {
		case m, ok := <-lines:
			if !ok {
				t.Fatalf("the dry run ended:\n%s", logs.String())
			}
			xid := strconv.FormatFloat(m["xid"].(float64), 'f', -1, 64)
			printed[xid] = append(printed[xid], opOnly(m))
			done = m["key"] == "user:1000000"
		case <-time.After(60 * time.Second):
			t.Fatalf("the dry run did not print the last transaction\n%s", logs.String())
		}
	}
	cmd.Process.Kill()

	env := []string{"CACHESYNC_CONFIG=" + e.rules, "DATABASE_URL=" + e.dbURL}
	for i, c := range changes {
		args := append([]string{"explain", "--json", "--table", c.table}, c.args...)
		out, errOut, code := runCLI(t, env, args...)
		if code != 0 {
			t.Fatalf("change %d (%s): explain exit %d\n%s", i, c.op, code, errOut)
		}
		got, want := explainOps(t, out), printed[txns[i].xid]
		if len(want) == 0 {
			t.Errorf("change %d (%s): the dry run printed nothing for xid %s", i, c.op, txns[i].xid)
		}
		if !slices.Equal(got, want) {
			t.Errorf("change %d (%s), explain %q:\nexplain printed:\n  %s\nthe dry run printed:\n  %s", i, c.op, args[1:],
				strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
	}
}

// explainedChange is a committed change and the explain flags that describe it.
type explainedChange struct {
	op    faultOp
	table string
	args  []string
}

// randomChanges returns n changes of users, orders and products: inserts of
// new rows, updates (keys moved, NULLs, odd text) and deletes of earlier
// ones, each with the JSON rows explain is given for it.
func randomChanges(r *rand.Rand, n int) []explainedChange {
	texts := []string{"A@x.io", "Ünïcode@X.io", "e\u0301@x.io", "  spaced  ", `quote"back\slash`, "ß", "", "{}", "1e3"}
	text := func() any {
		if r.IntN(6) == 0 {
			return nil
		}
		return texts[r.IntN(len(texts))] + strconv.Itoa(r.IntN(100))
	}
	num := func() any {
		switch r.IntN(5) {
		case 0:
			return nil
		case 1:
			return json.Number(strconv.Itoa(r.IntN(1000)))
		case 2:
			return json.Number(fmt.Sprintf("%d.%d", r.IntN(1000), r.IntN(10)))
		}
		return json.Number(fmt.Sprintf("%d.%02d", r.IntN(1000), r.IntN(100)))
	}
	type table struct {
		name    string
		columns []string
		types   []string
		row     func(id int64) map[string]any
	}
	tables := []table{
		{"users", []string{"id", "email", "org_id", "name"}, []string{"bigint", "text", "int", "text"}, func(id int64) map[string]any {
			return map[string]any{"id": id, "email": texts[r.IntN(len(texts))], "org_id": []any{nil, 1, 2, int64(r.IntN(1 << 30))}[r.IntN(4)], "name": text()}
		}},
		{"orders", []string{"id", "customer_id", "total", "status"}, []string{"bigint", "bigint", "numeric", "text"}, func(id int64) map[string]any {
			return map[string]any{"id": id, "customer_id": r.IntN(5), "total": num(), "status": text()}
		}},
		{"products", []string{"id", "name", "price", "published", "description"}, []string{"bigint", "text", "numeric", "bool", "text"}, func(id int64) map[string]any {
			return map[string]any{"id": id, "name": text(), "price": num(), "published": []any{nil, true, false, "yes", "f"}[r.IntN(5)], "description": text()}
		}},
	}
	live := map[string]map[int64]map[string]any{}
	var out []explainedChange
	for i := range n {
		tb := tables[r.IntN(len(tables))]
		rows := live[tb.name]
		if rows == nil {
			rows = map[int64]map[string]any{}
			live[tb.name] = rows
		}
		var oldID int64
		if ids := slices.Sorted(maps.Keys(rows)); len(ids) > 0 {
			oldID = ids[r.IntN(len(ids))]
		}
		mustJSON := func(v any) string {
			b, err := json.Marshal(v)
			if err != nil {
				panic(err)
			}
			return string(b)
		}
		// Values go to PostgreSQL as the text explain reads them as.
		sqlArgs := func(row map[string]any) []any {
			args := make([]any, len(tb.columns))
			for j, col := range tb.columns {
				switch v := row[col].(type) {
				case nil:
				case string:
					args[j] = v
				default:
					args[j] = fmt.Sprint(v)
				}
			}
			return args
		}
		casts := func(from int) []string {
			out := make([]string, len(tb.columns))
			for j, col := range tb.columns {
				out[j] = fmt.Sprintf("%s = $%d::text::%s", col, from+j, tb.types[j])
			}
			return out
		}
		c := explainedChange{table: "public." + tb.name}
		switch k := r.IntN(4); {
		case oldID == 0 || k < 2:
			id := int64(i + 1)
			row := tb.row(id)
			vals := casts(1)
			for j := range vals {
				_, vals[j], _ = strings.Cut(vals[j], " = ")
			}
			c.op = faultOp{sql: fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s)", tb.name, strings.Join(tb.columns, ", "), strings.Join(vals, ", ")), args: sqlArgs(row)}
			c.args = []string{"--row", mustJSON(row)}
			rows[id] = row
		case k == 2:
			old := rows[oldID]
			id := oldID
			if r.IntN(3) == 0 {
				id = int64(1000 + i) // the key moves too
			}
			row := tb.row(id)
			c.op = faultOp{sql: fmt.Sprintf("UPDATE %s SET %s WHERE id = $%d", tb.name, strings.Join(casts(1), ", "), len(tb.columns)+1), args: append(sqlArgs(row), oldID)}
			c.args = []string{"--row", mustJSON(row), "--old", mustJSON(old)}
			delete(rows, oldID)
			rows[id] = row
		default:
			c.op = faultOp{sql: fmt.Sprintf("DELETE FROM %s WHERE id = $1", tb.name), args: []any{oldID}}
			c.args = []string{"--old", mustJSON(rows[oldID])}
			delete(rows, oldID)
		}
		out = append(out, c)
	}
	return out
}
