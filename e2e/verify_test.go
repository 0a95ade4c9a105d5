package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/verify"
)

// verifyReport is `cachesync verify --json`'s document.
type verifyReport struct{ verify.Report }

// verifyJSON runs `cachesync verify --json` with args and decodes its
// report.
func (e *env) verifyJSON(wantCode int, args ...string) verifyReport {
	e.t.Helper()
	out, code := e.cli(append([]string{"verify", "--json", "--log-level", "warn"}, args...)...)
	if code != wantCode {
		e.t.Fatalf("verify %v: exit %d, want %d\n%s", args, code, wantCode, out)
	}
	var rep verifyReport
	// The report is stdout's one document; stderr's last line follows it.
	if err := json.NewDecoder(strings.NewReader(out)).Decode(&rep); err != nil {
		e.t.Fatalf("verify %v: %v\n%s", args, err, out)
	}
	return rep
}

// findings lists a report's findings as "key result".
func (r verifyReport) findings() []string {
	var out []string
	for _, f := range r.Findings {
		out = append(out, f.Key+" "+string(f.Result))
	}
	slices.Sort(out)
	return out
}

// TestVerifyRefreshRule: after a streamed workload, verify finds every
// sampled product key consistent (exit 0, ≥ N nines); after keys are
// corrupted by hand (wrong values, a key left for a deleted row, one for a
// row the rule's when filters out), it finds exactly those (exit 1), from
// both directions, and lists them in text too.
func TestVerifyRefreshRule(t *testing.T) {
	e := setup(t, schema, rules)
	d := e.start()
	e.waitStreaming(d)
	e.exec(`INSERT INTO products SELECT g, 'p' || g, g * 1.5, g % 3 <> 0, 'd' || g FROM generate_series(1, 200) g`)
	e.exec(`UPDATE products SET name = 'renamed ' || id, price = price + 1 WHERE id % 4 = 0`)
	e.exec(`UPDATE products SET published = NOT published WHERE id BETWEEN 20 AND 30`)
	e.exec(`DELETE FROM products WHERE id > 190`)
	e.caughtUp(d, 30*time.Second)

	// Verify while a workload goes on updating rows: changes in flight
	// are not stale (re-checked after the window).
	stop, done := make(chan struct{}), make(chan int)
	go func() {
		n := 0
		defer func() { done <- n }()
		conn, err := pgx.Connect(e.ctx, e.dbURL)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close(e.ctx)
		for ; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := conn.Exec(e.ctx, `UPDATE products SET price = price + 1, published = NOT published WHERE id = $1`, 1+n*37%190); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	rep := e.verifyJSON(0, "--rule", "product", "--window", "3s")
	close(stop)
	updates := <-done
	if updates == 0 {
		t.Fatal("the workload wrote nothing during verify")
	}
	if len(rep.Rules) != 1 {
		t.Fatalf("rules %+v, want product only", rep.Rules)
	}
	r := rep.Rules[0]
	t.Logf("verify under a workload of %d updates: %+v", updates, r.Counts)
	// 190 rows, each checked once (the keys found by SCAN are theirs);
	// rows the workload changed during the window may be unverifiable,
	// never stale.
	if r.Checked != 190 || r.Stale+r.Orphaned != 0 || len(rep.Findings) != 0 || r.Consistent == 0 {
		t.Fatalf("under a workload: %+v findings %v, want 190 checked, none stale", r.Counts, rep.findings())
	}
	e.caughtUp(d, 30*time.Second)
	// The workload toggled published: put it back as generated, so that
	// the corrupted keys below are of published rows.
	e.exec(`UPDATE products SET published = id % 3 <> 0 WHERE published <> (id % 3 <> 0) AND id NOT BETWEEN 20 AND 30`)
	e.exec(`UPDATE products SET published = id % 3 = 0 WHERE published <> (id % 3 = 0) AND id BETWEEN 20 AND 30`)
	e.caughtUp(d, 30*time.Second)
	rep = e.verifyJSON(0, "--rule", "product", "--window", "1s")
	r = rep.Rules[0]
	if r.Checked != 190 || r.Consistent != 190 || r.Stale+r.Orphaned+r.Unverifiable+r.Absent != 0 || len(rep.Findings) != 0 {
		t.Fatalf("clean cache: %+v findings %v, want 190 consistent", r.Counts, rep.findings())
	}
	if r.Nines == nil || !r.NinesAtLeast || *r.Nines < 2.27 || *r.Nines > 2.28 {
		t.Errorf("clean cache: nines %v at least %v, want ≥ log10(190) = 2.28", r.Nines, r.NinesAtLeast)
	}

	// Corrupt: wrong values on published rows, a key of a deleted row, a
	// key of an unpublished row (product 3).
	for _, k := range []string{"product:1", "product:2", "product:8", "product:100"} {
		if err := e.rdb.Set(e.ctx, k, `{"id":"wrong"}`, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	e.set("product:195", "product:3")
	rep = e.verifyJSON(1, "--rule", "product", "--window", "1s")
	want := []string{"product:1 stale", "product:100 stale", "product:195 orphaned", "product:2 stale", "product:3 orphaned", "product:8 stale"}
	if got := rep.findings(); !slices.Equal(got, want) {
		t.Fatalf("findings %v, want %v", got, want)
	}
	if r := rep.Rules[0]; r.Stale != 4 || r.Orphaned != 2 || r.Checked != 191 || r.Consistent != 185 || r.NinesAtLeast {
		t.Errorf("corrupted cache: %+v, want 4 stale and 2 orphaned of 191", r)
	}

	// Text: the counts and the keys; every rule without --rule (the
	// others are not verifiable here: no commit timestamps, versions).
	out, code := e.cli("verify", "--window", "0s", "--log-level", "warn")
	t.Logf("cachesync verify:\n%s", out)
	if code != 1 || !strings.Contains(out, "stale 4, orphaned 2") || !strings.Contains(out, "product product:195 orphaned (age unknown): its row is gone") ||
		!strings.Contains(out, "rule order_lists (bump_version): not verified") || !strings.Contains(out, "track_commit_timestamp = on") {
		t.Errorf("verify (text): exit %d\n%s", code, out)
	}
	out, code = e.cli("verify", "--rule", "prodcut")
	if code != 2 || !strings.Contains(out, `no rule "prodcut" (did you mean product?)`) {
		t.Errorf("verify --rule prodcut: exit %d, want 2 and a suggestion\n%s", code, out)
	}
}

// TestVerifyFillStamps: invalidate rules' keys are dated by their fill
// stamps against the rows' commit times (track_commit_timestamp = on): a
// key filled before its row's last change is stale, a key of a deleted row
// orphaned, one without a stamp unverifiable, one filled after the change
// consistent.
func TestVerifyFillStamps(t *testing.T) {
	e, _ := setupPrivateWith(t, map[string]string{"track_commit_timestamp": "on"}, schema, rules)
	e.exec(`INSERT INTO users VALUES (1, 'a@x.io', 1, 'A'), (2, 'b@x.io', 1, 'B'), (3, 'c@x.io', 1, 'C')`)
	now := time.Now()
	stamp := func(key string, at time.Time) {
		t.Helper()
		e.set(key)
		if err := e.rdb.Set(e.ctx, keyspace.StampKey(key), strconv.FormatInt(at.UnixMilli(), 10), 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	stamp("user:1", now.Add(time.Second))           // filled after the change
	stamp("user:2", now.Add(-time.Hour))            // filled an hour before it
	e.set("user:3")                                 // no stamp
	stamp("user:9", now)                            // no row 9
	stamp("user:email:a@x.io", now.Add(-time.Hour)) // not invertible (lower())
	rep := e.verifyJSON(1, "--rule", "user", "--window", "1s")
	if got, want := rep.findings(), []string{"user:2 stale", "user:9 orphaned"}; !slices.Equal(got, want) {
		t.Fatalf("findings %v, want %v", got, want)
	}
	r := rep.Rules[0]
	if r.Checked != 5 || r.Consistent != 1 || r.Stale != 1 || r.Orphaned != 1 || r.Unverifiable != 2 {
		t.Errorf("counts %+v, want 5 checked: 1 consistent, 1 stale, 1 orphaned, 2 unverifiable", r)
	}
	if f := rep.Findings[0]; f.Key == "user:2" && (f.AgeSeconds == nil || *f.AgeSeconds <= 0 || *f.AgeSeconds > 60) {
		t.Errorf("user:2's age %v, want the seconds since its row's commit", f.AgeSeconds)
	}
	if len(r.Notes) != 2 {
		t.Errorf("reasons of the unverifiable keys: %v, want 2 (no stamp, template not invertible)", r.Notes)
	}
}

// TestVerifyUsageErrors: bad flag values are usage errors (exit 2), found
// before the rules file is read.
func TestVerifyUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"verify", "--sample", "0"}, "--sample 0: give a positive number of rows and keys per rule"},
		{[]string{"verify", "--window", "-1s"}, "--window -1s: give a duration of zero or more, like 5s"},
		{[]string{"verify", "--sample", "many"}, `invalid value "many" for flag --sample`},
	} {
		out, errOut, code := runCachesync(t, nil, tc.args...)
		if code != 2 || out != "" || !strings.Contains(errOut, tc.want) || !strings.HasSuffix(errOut, "Run 'cachesync verify --help' for usage.\n") {
			t.Errorf("cachesync %s: exit %d, want 2 and %q\nstdout: %s\nstderr: %s", strings.Join(tc.args, " "), code, tc.want, out, errOut)
		}
	}
}

// productsWorkload runs writers concurrent transactions on products 1..200
// (inserted first): renames, price changes, some rows unpublished (the
// rule's when filters them out) and some deleted.
func (e *env) productsWorkload(writers, perWriter int) {
	e.t.Helper()
	e.exec(`INSERT INTO products SELECT g, 'p' || g, g * 1.5, true, 'd' || g FROM generate_series(1, 200) g`)
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		go func() {
			errs <- func() error {
				conn, err := pgx.Connect(e.ctx, e.dbURL)
				if err != nil {
					return err
				}
				defer conn.Close(e.ctx)
				for i := 0; i < perWriter; i++ {
					id := 1 + (w*perWriter+i)*37%200
					sql := `UPDATE products SET name = $2, price = price + 1 WHERE id = $1`
					switch {
					case i%11 == 10:
						sql = `DELETE FROM products WHERE id = $1 AND $2 <> ''`
					case i%5 == 4:
						sql = `UPDATE products SET published = NOT published, name = $2 WHERE id = $1`
					}
					if _, err := conn.Exec(e.ctx, sql, id, fmt.Sprintf("w%d-%d", w, i)); err != nil {
						return err
					}
				}
				return nil
			}()
		}()
	}
	for w := 0; w < writers; w++ {
		if err := <-errs; err != nil {
			e.t.Fatal(err)
		}
	}
}

// wrongProducts lists the product keys that hold something their row does
// not: a value that differs from the row's, or any value for a row that is
// gone or unpublished. An absent key is not wrong (a cache may miss).
func (e *env) wrongProducts() []string {
	e.t.Helper()
	var wrong []string
	for id := 1; id <= 200; id++ {
		key := fmt.Sprintf("product:%d", id)
		raw, err := e.rdb.Get(e.ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			continue
		} else if err != nil {
			e.t.Fatal(err)
		}
		var name, price, desc string
		var published bool
		err = e.db.QueryRow(e.ctx, `SELECT name, price::text, published, description FROM products WHERE id = $1`, id).Scan(&name, &price, &published, &desc)
		var got map[string]any
		switch {
		case errors.Is(err, pgx.ErrNoRows) || err == nil && !published:
			wrong = append(wrong, key)
		case err != nil:
			e.t.Fatal(err)
		case json.Unmarshal([]byte(raw), &got) != nil || !reflect.DeepEqual(got, productJSON(id, name, price, published, desc)):
			wrong = append(wrong, key)
		}
	}
	slices.Sort(wrong)
	return wrong
}

// TestVerifyDetectsDroppedEffects (issue 17, item 5): a faultinject build
// drops one in 8 Redis effects under a concurrent workload and confirms them
// all the same; verify then finds every key a dropped effect left wrong
// (≥ 99% required; it samples every row and key here), and nothing else.
// The same workload on the same binary without drops: nothing stale.
func TestVerifyDetectsDroppedEffects(t *testing.T) {
	bin := faultBinary(t)
	for _, every := range []int{8, 0} {
		t.Run(fmt.Sprintf("drop one in %d", every), func(t *testing.T) {
			e := setup(t, schema, rules)
			dropLog := filepath.Join(t.TempDir(), "dropped")
			var env []string
			if every > 0 {
				env = []string{fmt.Sprintf("CACHESYNC_DROP_EFFECTS=%d", every), "CACHESYNC_DROP_EFFECTS_LOG=" + dropLog}
			}
			d := e.startBinary(bin, env...)
			e.waitStreaming(d)
			e.productsWorkload(4, 60)
			e.caughtUp(d, 60*time.Second)
			wrong := e.wrongProducts()
			var dropped []string
			if every > 0 {
				dropped = droppedKeys(t, dropLog)
				if len(dropped) < 20 {
					t.Fatalf("%d effects dropped, want about one in %d of ~440", len(dropped), every)
				}
				if len(wrong) == 0 {
					t.Fatalf("no key left wrong by %d dropped effects", len(dropped))
				}
				// Every wrong key is one a dropped effect left behind.
				for _, k := range wrong {
					if !slices.Contains(dropped, k) {
						t.Errorf("%s is wrong but no effect on it was dropped", k)
					}
				}
			} else if len(wrong) != 0 {
				t.Fatalf("keys wrong without injection: %v", wrong)
			}

			code := 0
			if len(wrong) > 0 {
				code = 1
			}
			rep := e.verifyJSON(code, "--rule", "product", "--window", "2s")
			var found []string
			for _, f := range rep.Findings {
				found = append(found, f.Key)
			}
			slices.Sort(found)
			missed := 0
			for _, k := range wrong {
				if !slices.Contains(found, k) {
					missed++
				}
			}
			t.Logf("dropped %d effects; %d keys still wrong; verify found %d of them (%+v)", len(dropped), len(wrong), len(wrong)-missed, rep.Rules[0].Counts)
			if float64(missed) > 0.01*float64(len(wrong)) {
				t.Errorf("verify missed %d of %d wrong keys: found %v, wrong %v", missed, len(wrong), found, wrong)
			}
			if !slices.Equal(found, wrong) {
				t.Errorf("verify found %v, want exactly the wrong keys %v", found, wrong)
			}
		})
	}
}
