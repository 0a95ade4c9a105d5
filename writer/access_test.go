package writer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cachesync/cachesync/keyspace"
	"github.com/cachesync/cachesync/mapping"
	"github.com/cachesync/cachesync/writer"
)

// TestCheckAccess runs the permission check against users of a real Redis:
// the ACL that CheckAccess's own error recommends is enough for every
// operation of the writer, and a user without one command, one key pattern
// or the right password is refused with what to grant.
func TestCheckAccess(t *testing.T) {
	t.Parallel()
	tb := setup(t, writer.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	spaces := []mapping.Keyspace{
		{Keys: []string{"user:*", "user:email:*"}, Tags: []string{"org:*"}},
		{Keys: []string{"product:*"}, Versions: []string{"orders:customer:*"}},
	}
	patterns := writer.KeyPatterns(spaces)
	wantPatterns := []string{"cachesync:*", "user:*", "user:email:*", "tag:org:*", "product:*", "version:orders:customer:*", "orders:customer:*:v*"}
	if strings.Join(patterns, " ") != strings.Join(wantPatterns, " ") {
		t.Errorf("KeyPatterns = %q, want %q", patterns, wantPatterns)
	}
	user := func(name string, rules ...string) *redis.Client {
		t.Helper()
		if err := tb.client.Do(ctx, aclSetUser(name, rules...)...).Err(); err != nil {
			t.Fatalf("ACL SETUSER %s: %v", name, err)
		}
		c := redis.NewClient(&redis.Options{Addr: tb.server.Addr(), Username: name, Password: "pw", MaxRetries: -1})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	grant := func(dropCommand, dropPattern string) []string {
		var rules []string
		for _, c := range writer.Commands(tb.client) {
			if c != dropCommand {
				rules = append(rules, "+"+c)
			}
		}
		for _, p := range patterns {
			if p != dropPattern {
				rules = append(rules, "~"+p)
			}
		}
		return rules
	}

	exact := user("exact", grant("", "")...)
	if err := writer.CheckAccess(ctx, exact, spaces); err != nil {
		t.Fatalf("CheckAccess with exactly the recommended ACL: %v", err)
	}
	if n, _ := tb.client.Keys(ctx, "*preflight*").Result(); len(n) != 0 {
		t.Errorf("CheckAccess left keys behind: %q", n)
	}
	// The same ACL carries every operation of the writer, the scripts
	// included (they run with the caller's permissions).
	tb.populate(t, "user:1", "user:email:a@b", "product:1", "orders:customer:7:v0:page")
	tb.client.SAdd(ctx, keyspace.TagKey("org:1"), "user:1")
	w := writer.New(exact, writer.Options{Logger: zerolog.New(zerolog.NewTestWriter(t))})
	short, stop := context.WithTimeout(ctx, 10*time.Second)
	defer stop()
	err := w.Apply(short, []mapping.Batch{batch(100,
		del("user:email:a@b"), delTag("org:1"), bump("orders:customer:7"),
		set("product:1", `{"id":1}`, 100, time.Hour, time.Minute), unset("product:2", 100),
		flush(spaces[0]), flush(spaces[1]),
	)})
	if err != nil {
		t.Fatalf("Apply as the user with the recommended ACL: %v", err)
	}
	if n, _ := tb.client.Exists(ctx, "user:1", "orders:customer:7:v0:page").Result(); n != 0 {
		t.Errorf("%d keys survived the restricted user's flushes", n)
	}

	noScan := user("noscan", grant("scan", "")...)
	for _, tc := range []struct {
		name   string
		client *redis.Client
		want   []string
	}{
		{"no SCAN", noScan, []string{"SCAN", "+scan", "~tag:org:*"}},
		{"no EVALSHA", user("noevalsha", grant("evalsha", "")...), []string{"EVALSHA", "+evalsha"}},
		{"no tag sets", user("notags", grant("", "tag:org:*")...), []string{`"tag:org:*"`, "tag:org:cachesync-preflight-", "~tag:org:*"}},
		{"wrong password", redis.NewClient(&redis.Options{Addr: tb.server.Addr(), Username: "exact", Password: "nope", MaxRetries: -1}), []string{"WRONGPASS"}},
	} {
		err := writer.CheckAccess(ctx, tc.client, spaces)
		if !errors.Is(err, writer.ErrNoAccess) {
			t.Errorf("%s: CheckAccess = %v, want ErrNoAccess", tc.name, err)
			continue
		}
		for _, want := range tc.want {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: the error lacks %q: %v", tc.name, want, err)
			}
		}
	}

	if n, _ := tb.client.Keys(ctx, "*preflight*").Result(); len(n) != 0 {
		t.Errorf("refused checks left keys behind: %q", n)
	}

	// A refusal met while streaming (the ACL changed under a running
	// daemon) is retried like an outage, and the warning says what to do.
	var log strings.Builder
	refused := writer.New(noScan, writer.Options{Logger: zerolog.New(&log), MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	brief, stopBrief := context.WithTimeout(ctx, time.Second)
	defer stopBrief()
	if err := refused.Apply(brief, []mapping.Batch{batch(300, flush(spaces[0]))}); err == nil {
		t.Fatal("a flush without SCAN was acknowledged")
	}
	if got := log.String(); strings.Count(got, "Redis is failing") != 1 || !strings.Contains(got, "Redis permissions") || !strings.Contains(got, "NOPERM") {
		t.Errorf("the refusal's warning does not say what to do:\n%s", got)
	}

	// Redis down is not a refusal: the writer retries it.
	tb.server.Stop(t)
	if err := writer.CheckAccess(ctx, tb.client, spaces); err == nil || errors.Is(err, writer.ErrNoAccess) {
		t.Errorf("CheckAccess with Redis down = %v, want an error that is not ErrNoAccess", err)
	}
}

// aclSetUser is the ACL SETUSER command that (re)creates user name with
// password "pw" and exactly the given rules.
func aclSetUser(name string, rules ...string) []any {
	args := []any{"ACL", "SETUSER", name, "reset", "on", ">pw"}
	for _, r := range rules {
		args = append(args, r)
	}
	return args
}
