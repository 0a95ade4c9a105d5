package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/internal/testenv"
)

// partitionedSchema has a partitioned rule table with two partitions, a
// table ready to be attached (with a row), and an unrelated rule table.
const partitionedSchema = `
CREATE TABLE events (id bigint, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
CREATE TABLE events_fr (id bigint, region text, PRIMARY KEY (id, region));
INSERT INTO events VALUES (1, 'eu'), (2, 'us');
INSERT INTO events_fr VALUES (7, 'fr');
CREATE TABLE accounts (id bigint PRIMARY KEY);
`

const partitionedRules = `
rule "event" {
  table = "public.events"
  invalidate { keys = ["event:${row.id}"] }
}
rule "account" {
  table = "public.accounts"
  invalidate { keys = ["account:${row.id}"] }
}
`

// ATTACH, DETACH, DROP and CREATE of a partition while streaming: none is
// published, yet rows of the root come or go (or a partition appears
// without a truncate trigger). Each flushes the root's rules, with no row
// change, and leaves other rules' keys alone. A partition created while
// streaming then gets the truncate trigger without a restart.
func TestPartitionTreeChangesFlush(t *testing.T) {
	tests := []struct {
		name, ddl string
		// after runs once the flush was seen.
		after func(e *env, d *daemon)
	}{
		{name: "attach", ddl: `ALTER TABLE events ATTACH PARTITION events_fr FOR VALUES IN ('fr')`},
		{name: "detach", ddl: `ALTER TABLE events DETACH PARTITION events_us`},
		{name: "drop", ddl: `DROP TABLE events_us`},
		{name: "create", ddl: `CREATE TABLE events_asia PARTITION OF events FOR VALUES IN ('asia')`,
			after: func(e *env, d *daemon) {
				e.exec(`INSERT INTO events VALUES (5, 'asia')`)
				e.caughtUp(d, 30*time.Second)
				e.set("event:5", "event:6", "account:2")
				e.exec(`TRUNCATE events_asia`)
				e.gone("event:5", "event:6")
				e.present("account:2")
				testenv.Eventually(t, 10*time.Second, "truncate flush logged", func() (bool, string) {
					return strings.Contains(d.log.String(), "flush(event: truncate)"), ""
				})
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := setup(t, partitionedSchema, partitionedRules)
			d := e.start()
			e.waitStreaming(d)
			e.caughtUp(d, 30*time.Second)
			e.set("event:1", "event:2", "event:7", "event:99", "account:1")
			e.exec(tt.ddl)
			e.gone("event:1", "event:2", "event:7", "event:99")
			e.present("account:1")
			testenv.Eventually(t, 10*time.Second, "partitions flush logged", func() (bool, string) {
				return strings.Contains(d.log.String(), "flush(event: partitions_changed)"), ""
			})
			if tt.after != nil {
				tt.after(e, d)
			}
			if d.exited() {
				t.Fatalf("daemon exited\n%s", d.log.String())
			}
		})
	}
}

// A partition attached while no instance streams is flushed for at the next
// start: the trees seen are recorded in Redis and compared at start. A
// restart with the trees unchanged flushes nothing.
func TestPartitionTreeChangedWhileStopped(t *testing.T) {
	e := setup(t, partitionedSchema, partitionedRules)
	d := e.start()
	e.waitStreaming(d)
	if code := d.stop(); code != 0 {
		t.Fatalf("stop: exit %d\n%s", code, d.log.String())
	}
	e.set("event:1", "account:1")
	d = e.start()
	e.waitStreaming(d)
	e.caughtUp(d, 30*time.Second)
	e.present("event:1", "account:1")
	if code := d.stop(); code != 0 {
		t.Fatalf("stop: exit %d\n%s", code, d.log.String())
	}
	e.exec(`ALTER TABLE events ATTACH PARTITION events_fr FOR VALUES IN ('fr')`)
	e.set("event:7", "account:1")
	d = e.start()
	e.waitStreaming(d)
	e.gone("event:7")
	e.present("account:1")
	if !strings.Contains(d.log.String(), "since the cache was last streamed (PostgreSQL publishes none of it)") {
		t.Errorf("the start-time partitions flush was not logged")
	}
}

// A crash after a partition change was seen and before its flush reached
// the WAL: the tree seen last is recorded only after the flush is written,
// so the next start still finds the change and flushes.
func TestPartitionTreeChangeSurvivesCrash(t *testing.T) {
	e := setup(t, partitionedSchema, partitionedRules)
	crashing := e.start("CACHESYNC_FAILPOINT=partitions-changed")
	e.waitStreaming(crashing)
	e.caughtUp(crashing, 30*time.Second)
	e.set("event:2", "account:1")
	e.exec(`ALTER TABLE events DETACH PARTITION events_us`)
	crashing.waitExit(30 * time.Second)
	e.present("event:2") // the crash came before any flush
	d := e.start()
	e.waitStreaming(d)
	e.gone("event:2")
	e.present("account:1")
}
