package replication

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/wal"
)

// readAllChunks reads table t in chunks of n rows and returns each row's
// primary key (columns joined by "|") and the chunk sizes.
func readAllChunks(t *testing.T, conn *pgx.Conn, table, where string, n int) (keys []string, sizes []int) {
	t.Helper()
	ctx := context.Background()
	r, err := NewTableReader(ctx, conn, config.TableName{Schema: "public", Name: table}, where)
	if err != nil {
		t.Fatal(err)
	}
	var after []string
	for range 1000 {
		ch, err := r.Read(ctx, conn, after, n, 0)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(ch.Rows))
		for _, row := range ch.Rows {
			var k []string
			for _, i := range r.Relation().PrimaryKey {
				k = append(k, row[i].Text)
			}
			keys = append(keys, strings.Join(k, "|"))
		}
		if !ch.More {
			return keys, sizes
		}
		after = ch.LastKey
	}
	t.Fatalf("%s: still more rows after 1000 chunks (keys %v)", table, keys[:min(len(keys), 20)])
	return nil, nil
}

// sqlKeys returns the keys the query selects, in its order.
func sqlKeys(t *testing.T, conn *pgx.Conn, query string) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), query)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestTableReaderKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := connectTestDatabase(t)
	if _, err := conn.Exec(ctx, `
		CREATE TABLE ints (id int PRIMARY KEY, v text);
		INSERT INTO ints SELECT g, 'v' || g FROM generate_series(1, 25) g;
		CREATE TABLE twenty (id bigint PRIMARY KEY);
		INSERT INTO twenty SELECT generate_series(1, 20);
		CREATE TABLE pairs (org int, name text, v int, PRIMARY KEY (org, name));
		INSERT INTO pairs SELECT o, n, 1 FROM generate_series(1, 4) o, unnest(ARRAY['a', 'B', 'c', 'a b', '']) n;
		CREATE TABLE uuids (id uuid PRIMARY KEY);
		INSERT INTO uuids SELECT md5(g::text)::uuid FROM generate_series(1, 17) g;
		CREATE TABLE words (w text COLLATE "en-x-icu" PRIMARY KEY);
		INSERT INTO words VALUES ('a'), ('B'), ('c'), ('D'), ('é'), ('e'), ('Z'), ('_x'), ('10'), ('9');
		CREATE TABLE nopk (id int, v text);`); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		table, where string
		n            int
		want         string // query giving the keys in order
		sizes        []int
	}{
		{table: "ints", n: 10, want: "SELECT id::text FROM ints ORDER BY ints.id", sizes: []int{10, 10, 5}},
		// A chunk boundary exactly at the last row: one more, empty read.
		{table: "twenty", n: 10, want: "SELECT id::text FROM twenty ORDER BY twenty.id", sizes: []int{10, 10, 0}},
		{table: "pairs", n: 3, want: "SELECT org || '|' || name FROM pairs ORDER BY org, name"},
		{table: "uuids", n: 4, want: "SELECT id::text FROM uuids ORDER BY uuids.id"},
		// Not the C order ('B' < 'a' there): the column's collation.
		{table: "words", n: 2, want: "SELECT w FROM words ORDER BY w"},
		// The predicate is parenthesized: OR does not escape the keyset.
		{table: "ints", where: "id = 3 OR id = 7 OR id = 25", n: 1, want: "SELECT id::text FROM ints WHERE id IN (3, 7, 25) ORDER BY ints.id", sizes: []int{1, 1, 1, 0}},
		{table: "pairs", where: "name <> 'a'", n: 2, want: "SELECT org || '|' || name FROM pairs WHERE name <> 'a' ORDER BY org, name"},
	}
	for _, c := range cases {
		keys, sizes := readAllChunks(t, conn, c.table, c.where, c.n)
		want := sqlKeys(t, conn, c.want)
		if !slices.Equal(keys, want) {
			t.Errorf("%s where %q by %d: keys %q, want %q", c.table, c.where, c.n, keys, want)
		}
		if c.sizes != nil && !slices.Equal(sizes, c.sizes) {
			t.Errorf("%s where %q by %d: chunks of %v rows, want %v", c.table, c.where, c.n, sizes, c.sizes)
		}
	}
	if words := sqlKeys(t, conn, "SELECT w FROM words ORDER BY w"); slices.Index(words, "a") > slices.Index(words, "B") {
		t.Fatalf("en-x-icu orders %q: the test needs a collation unlike C", words)
	}

	_, err := NewTableReader(ctx, conn, config.TableName{Schema: "public", Name: "nopk"}, "")
	if !errors.Is(err, ErrNoPrimaryKey) || !strings.Contains(err.Error(), "ADD PRIMARY KEY") {
		t.Errorf("table without a primary key: %v, want ErrNoPrimaryKey with the fix", err)
	}
}

// TestTableReaderValues checks that values are read as pgoutput sends them
// (the replication connection's settings, whatever the session had), that
// the predicate runs read-only, and the estimate and count.
func TestTableReaderValues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := connectTestDatabase(t)
	if _, err := conn.Exec(ctx, `
		CREATE TABLE items (id int PRIMARY KEY, at timestamptz, price numeric(10,2), f float8, b bytea, n text);
		INSERT INTO items VALUES (1, '2024-05-06 07:08:09+02', 9.5, 0.1, '\x0102', NULL);
		INSERT INTO items SELECT g, now(), g, g, NULL, 'x' FROM generate_series(2, 40) g;
		ANALYZE items;
		CREATE SEQUENCE s;
		SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'German'; SET extra_float_digits = 0; SET bytea_output = 'escape'`); err != nil {
		t.Fatal(err)
	}
	table := config.TableName{Schema: "public", Name: "items"}
	r, err := NewTableReader(ctx, conn, table, "")
	if err != nil {
		t.Fatal(err)
	}
	ch, err := r.Read(ctx, conn, nil, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	row := ch.Rows[0]
	got := []string{row[1].Text, row[2].Text, row[3].Text, row[4].Text}
	want := []string{"2024-05-06 05:08:09+00", "9.50", "0.1", `\x0102`}
	if !slices.Equal(got, want) || row[5].Kind != wal.Null {
		t.Errorf("row 1 read as %q (null %c), want %q and a NULL", got, row[5].Kind, want)
	}
	if !ch.More || !slices.Equal(ch.LastKey, []string{"1"}) {
		t.Errorf("chunk: more %v, last key %q", ch.More, ch.LastKey)
	}
	// A byte bound cuts the chunk after the row that passes it.
	if ch, err := r.Read(ctx, conn, nil, 10, 1); err != nil || len(ch.Rows) != 1 || !ch.More {
		t.Errorf("byte-bounded chunk: %d rows, more %v, %v; want 1 row and more", len(ch.Rows), ch.More, err)
	}
	if n, err := r.Estimate(ctx, conn); err != nil || n != 40 {
		t.Errorf("Estimate = %d, %v; want 40", n, err)
	}
	even, err := NewTableReader(ctx, conn, table, "id % 2 = 0")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := even.Count(ctx, conn); err != nil || n != 20 {
		t.Errorf("Count where id %% 2 = 0 = %d, %v; want 20", n, err)
	}
	// The predicate cannot write: the transaction is read-only.
	writes, err := NewTableReader(ctx, conn, table, "nextval('s') > 0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := writes.Read(ctx, conn, nil, 10, 0); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("a predicate calling nextval: %v, want refused in a read-only transaction", err)
	}
	var v int64
	if err := conn.QueryRow(ctx, "SELECT last_value FROM s").Scan(&v); err != nil || v != 1 {
		t.Errorf("sequence moved to %d (%v)", v, err)
	}
}
