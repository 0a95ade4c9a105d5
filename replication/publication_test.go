package replication

import (
	"context"
	"slices"
	"testing"

	"github.com/cachesync/cachesync/config"
)

// A rules file of write_behind blocks has no rule, so no table to publish:
// EnsurePublication creates a publication of no table, and empties one
// that has tables (ALTER PUBLICATION … SET TABLE needs one at least).
func TestEnsurePublicationWithoutTables(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := connectTestDatabase(t)
	if _, err := conn.Exec(ctx, `CREATE TABLE a (id int PRIMARY KEY); CREATE SCHEMA "S.x"; CREATE TABLE "S.x"."B" (id int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	tables := func() []string {
		t.Helper()
		pub, err := ReadPublication(ctx, conn, "pub")
		if err != nil || pub == nil {
			t.Fatalf("read publication: %v (%v)", pub, err)
		}
		return pub.Tables
	}
	if added, err := EnsurePublication(ctx, conn, "pub", nil); err != nil || len(added) != 0 {
		t.Fatalf("create without tables: added %v, %v", added, err)
	}
	if got := tables(); len(got) != 0 {
		t.Fatalf("tables %v, want none", got)
	}
	both := []config.TableName{{Schema: "public", Name: "a"}, {Schema: "S.x", Name: "B"}}
	if added, err := EnsurePublication(ctx, conn, "pub", both); err != nil || !slices.Equal(added, []string{"S.x.B", "public.a"}) {
		t.Fatalf("add tables: added %v, %v", added, err)
	}
	if added, err := EnsurePublication(ctx, conn, "pub", nil); err != nil || len(added) != 0 {
		t.Fatalf("remove every table: added %v, %v", added, err)
	}
	if got := tables(); len(got) != 0 {
		t.Fatalf("tables %v, want none", got)
	}
	if _, err := EnsurePublication(ctx, conn, "pub", nil); err != nil {
		t.Fatalf("again without tables: %v", err)
	}
}
