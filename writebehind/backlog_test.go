package writebehind_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/writebehind"
	"github.com/cachesync/cachesync/writebehind/backlogtest"
)

// TestReadBacklog builds streams and the consumer group by hand, with IDs
// at known times, and checks what ReadBacklog makes of each state.
func TestReadBacklog(t *testing.T) {
	rdb := testenv.Redis(t).Client(t)
	ctx := context.Background()
	now := time.UnixMilli(10_000)
	prefix := t.Name() + ":"
	check := func(stream string, want writebehind.Backlog) {
		t.Helper()
		got, err := writebehind.ReadBacklog(ctx, rdb, stream, now)
		if err != nil {
			t.Fatalf("%s: %v", stream, err)
		}
		if got != want {
			t.Errorf("%s:\n got %+v\nwant %+v", stream, got, want)
		}
	}
	four := []string{"1000-0", "2000-0", "3000-0", "4000-0"}

	// Nothing there yet: no backlog.
	check(prefix+"missing", writebehind.Backlog{})

	// Entries, no worker yet: all of them wait, the first since its ID.
	s := prefix + "nogroup"
	backlogtest.Build(t, rdb, s, backlogtest.Stream{IDs: four[:3]})
	check(s, writebehind.Backlog{Length: 3, Lag: 3, OldestPending: 9 * time.Second})

	// Two of four delivered, one acknowledged: the oldest not applied is
	// the pending one.
	s = prefix + "pending"
	backlogtest.Build(t, rdb, s, backlogtest.Stream{IDs: four, Group: true, Deliver: 2, Ack: four[:1]})
	check(s, writebehind.Backlog{Length: 4, Pending: 1, Lag: 2, OldestPending: 8 * time.Second})

	// Delivered ones acknowledged and trimmed: the oldest is the first
	// undelivered one.
	s = prefix + "lag"
	backlogtest.Build(t, rdb, s, backlogtest.Stream{IDs: four, Group: true, Deliver: 2, Ack: four[:2]})
	if err := rdb.XTrimMinID(ctx, s, "3000-0").Err(); err != nil {
		t.Fatal(err)
	}
	check(s, writebehind.Backlog{Length: 2, Lag: 2, OldestPending: 7 * time.Second})

	// All applied, dead letters kept aside.
	s = prefix + "drained"
	backlogtest.Build(t, rdb, s, backlogtest.Stream{IDs: four[:2], Group: true, Deliver: 10, Ack: four[:2], Dead: 2})
	check(s, writebehind.Backlog{Length: 2, DeadLetters: 2})

	// An entry deleted after the group's last delivered one: Redis cannot
	// tell the lag (nil); the stream's undelivered entries stand in.
	s = prefix + "nillag"
	backlogtest.Build(t, rdb, s, backlogtest.Stream{IDs: four, Group: true, Deliver: 1})
	if err := rdb.XDel(ctx, s, "3000-0").Err(); err != nil {
		t.Fatal(err)
	}
	infos, err := rdb.XInfoGroups(ctx, s).Result()
	if err != nil || len(infos) != 1 || infos[0].Lag != -1 {
		t.Fatalf("XINFO GROUPS after XDEL: %+v, %v; want a nil lag", infos, err)
	}
	check(s, writebehind.Backlog{Length: 3, Pending: 1, Lag: 2, OldestPending: 9 * time.Second})
}

func TestIDTime(t *testing.T) {
	id, err := writebehind.ParseID("1700000000123-4")
	if err != nil || id.Time().UnixMilli() != 1700000000123 {
		t.Errorf("ParseID(1700000000123-4).Time() = %v, %v", id.Time(), err)
	}
}

// TestReadPosition: "" before any worker created the table or recorded
// the stream, then the recorded ID; status shows it.
func TestReadPosition(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	read := func(want string) {
		t.Helper()
		if got, err := writebehind.ReadPosition(ctx, conn, "wb:c"); err != nil || got != want {
			t.Errorf("ReadPosition = %q, %v; want %q", got, err, want)
		}
	}
	read("") // no schema
	pg.Exec(t, "postgres", "CREATE SCHEMA cachesync")
	read("") // no table
	pg.Exec(t, "postgres", "CREATE TABLE "+writebehind.PositionsTable+" (stream text PRIMARY KEY, last_id text NOT NULL, updated_at timestamptz)")
	read("") // no row
	pg.Exec(t, "postgres", "INSERT INTO "+writebehind.PositionsTable+" VALUES ('wb:c', '1764800000000-7', now()), ('wb:other', '9-0', now())")
	read("1764800000000-7")
	pg.Exec(t, "postgres", "REVOKE ALL ON SCHEMA cachesync FROM PUBLIC; CREATE ROLE nobody LOGIN")
	other, err := pgx.Connect(ctx, strings.Replace(pg.URL("postgres"), "postgres@", "nobody@", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	if _, err := writebehind.ReadPosition(ctx, other, "wb:c"); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("without the privilege: %v, want permission denied", err)
	}
}
