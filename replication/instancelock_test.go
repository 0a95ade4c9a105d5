package replication

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/internal/testenv"
)

func TestInstanceLockHolder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := testenv.Database(t)
	connect := func(app string) *pgx.Conn {
		t.Helper()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		if _, err := conn.Exec(ctx, "SET application_name = '"+app+"'"); err != nil {
			t.Fatal(err)
		}
		return conn
	}
	holder, other := connect("holder"), connect("other")
	var holderPID int32
	if err := holder.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&holderPID); err != nil {
		t.Fatal(err)
	}

	// pg_locks splits the key in two halves: keys whose hashtext is
	// negative (high half all ones) and positive must both be found.
	signs := map[bool]bool{}
	for i := range 8 {
		slot := fmt.Sprintf("slot_%d", i)
		var hash int32
		if err := other.QueryRow(ctx, "SELECT hashtext($1)", InstanceLockKey(slot)).Scan(&hash); err != nil {
			t.Fatal(err)
		}
		signs[hash < 0] = true
		if ok, err := TryInstanceLock(ctx, holder, slot); err != nil || !ok {
			t.Fatalf("slot %s: holder took the lock = %v, %v; want true", slot, ok, err)
		}
		if ok, err := TryInstanceLock(ctx, other, slot); err != nil || ok {
			t.Fatalf("slot %s: a second session took the held lock = %v, %v; want false", slot, ok, err)
		}
		h, err := InstanceLockHolder(ctx, other, slot)
		if err != nil {
			t.Fatal(err)
		}
		if h == nil || h.PID != holderPID || h.ApplicationName != "holder" || h.State != "idle" || h.StateChange == nil || h.Idle < 0 {
			t.Fatalf("slot %s (hashtext %d): holder = %+v, want pid %d, application_name holder, idle", slot, hash, h, holderPID)
		}
	}
	if !signs[true] || !signs[false] {
		t.Fatalf("the slots' hashtext signs cover only %v: pick names with both signs", signs)
	}
	if h, err := InstanceLockHolder(ctx, other, "nobody_holds_this"); err != nil || h != nil {
		t.Fatalf("holder of a free lock = %+v, %v; want none", h, err)
	}

	// A holder that ran a query since it was looked up renewed its lease:
	// it is not terminated.
	stale, err := InstanceLockHolder(ctx, other, "slot_0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if done, err := TerminateLockHolder(ctx, other, *stale); err != nil || done {
		t.Fatalf("terminating a holder that renewed since = %v, %v; want false", done, err)
	}
	if err := holder.Ping(ctx); err != nil {
		t.Fatalf("the holder was terminated although it renewed: %v", err)
	}
	current, err := InstanceLockHolder(ctx, other, "slot_0")
	if err != nil {
		t.Fatal(err)
	}
	if done, err := TerminateLockHolder(ctx, other, *current); err != nil || !done {
		t.Fatalf("terminating an unchanged holder = %v, %v; want true", done, err)
	}
	testenv.Eventually(t, 10*time.Second, "the lock released after terminating its holder", func() (bool, string) {
		ok, err := TryInstanceLock(ctx, other, "slot_0")
		if err != nil {
			t.Fatal(err)
		}
		return ok, "the lock is still held"
	})
	if h, err := InstanceLockHolder(ctx, other, "slot_0"); err != nil || h == nil || h.ApplicationName != "other" {
		t.Fatalf("holder after the takeover = %+v, %v; want the other session", h, err)
	}
}

func TestWALSenderTimeout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testenv.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, c := range []struct {
		setting string
		want    time.Duration
	}{{"7s", 7 * time.Second}, {"1500ms", 1500 * time.Millisecond}, {"0", 0}} {
		if _, err := conn.Exec(ctx, "SET wal_sender_timeout = '"+c.setting+"'"); err != nil {
			t.Fatal(err)
		}
		if got, err := WALSenderTimeout(ctx, conn); err != nil || got != c.want {
			t.Errorf("wal_sender_timeout %s: got %s, %v; want %s", c.setting, got, err, c.want)
		}
	}
}
