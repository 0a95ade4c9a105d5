package replication

import (
	"context"
	"slices"
	"testing"

	"github.com/cachesync/cachesync/config"
)

func TestPartitionTreesChanged(t *testing.T) {
	tests := []struct {
		name        string
		before, now PartitionTrees
		want        []string
	}{
		{"same", PartitionTrees{"public.a": "x", "public.b": "y"}, PartitionTrees{"public.a": "x", "public.b": "y"}, nil},
		{"one tree changed", PartitionTrees{"public.a": "x", "public.b": "y"}, PartitionTrees{"public.a": "x", "public.b": "z"}, []string{"public.b"}},
		{"a root appeared", PartitionTrees{}, PartitionTrees{"public.a": "x"}, []string{"public.a"}},
		{"a root is gone", PartitionTrees{"public.b": "y", "public.a": "x"}, PartitionTrees{}, []string{"public.a", "public.b"}},
		{"nothing recorded, nothing partitioned", nil, PartitionTrees{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.before.Changed(tt.now); !slices.Equal(got, tt.want) {
				t.Errorf("Changed = %q, want %q", got, tt.want)
			}
		})
	}
}

// Each way a partition tree changes shows in its digest, detach-then-attach
// of the same partition included; what leaves the tree as it was (rows,
// maintenance, the truncate trigger) does not.
func TestReadPartitionTrees(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := connectTestDatabase(t)
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`
CREATE TABLE events (id bigint, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us', 'ca') PARTITION BY LIST (region);
CREATE TABLE events_us_only PARTITION OF events_us FOR VALUES IN ('us');
CREATE TABLE "Odd.Name" (id bigint, PRIMARY KEY (id)) PARTITION BY RANGE (id);
CREATE TABLE plain (id bigint PRIMARY KEY);
CREATE TABLE spare (id bigint, region text, PRIMARY KEY (id, region));
`)
	events := config.TableName{Schema: "public", Name: "events"}
	tables := []config.TableName{events, {Schema: "public", Name: "Odd.Name"}, {Schema: "public", Name: "plain"}, {Schema: "public", Name: "missing"}}
	read := func() PartitionTrees {
		t.Helper()
		trees, err := ReadPartitionTrees(ctx, conn, tables)
		if err != nil {
			t.Fatal(err)
		}
		return trees
	}
	last := read()
	if len(last) != 2 || last["public.events"] == "" || last["public.Odd.Name"] == "" {
		t.Fatalf("trees %v: want the two partitioned tables", last)
	}
	steps := []struct {
		sql     string
		changed bool
	}{
		{`INSERT INTO events VALUES (1, 'eu'), (2, 'us')`, false},
		{`VACUUM FULL events_eu`, false},
		{`ANALYZE events`, false},
		{`TRUNCATE events_eu`, false},
		{`CREATE TRIGGER t BEFORE TRUNCATE ON events_eu FOR EACH STATEMENT EXECUTE FUNCTION suppress_redundant_updates_trigger()`, false},
		{`ALTER TABLE events DETACH PARTITION events_eu`, true},
		{`ALTER TABLE events ATTACH PARTITION events_eu FOR VALUES IN ('eu')`, true},
		{`ALTER TABLE events DETACH PARTITION events_eu; ALTER TABLE events ATTACH PARTITION events_eu FOR VALUES IN ('eu')`, true},
		{`ALTER TABLE events ATTACH PARTITION spare FOR VALUES IN ('fr')`, true},
		{`DROP TABLE events_us_only`, true},
		{`CREATE TABLE events_ca PARTITION OF events_us FOR VALUES IN ('ca')`, true},
		{`DROP TABLE spare`, true},
	}
	for _, s := range steps {
		exec(s.sql)
		now := read()
		want := []string(nil)
		if s.changed {
			want = []string{"public.events"}
		}
		if got := last.Changed(now); !slices.Equal(got, want) {
			t.Errorf("after %s: changed %q, want %q", s.sql, got, want)
		}
		last = now
	}
}
