#!/usr/bin/env bash
# demo.sh: cachesync end to end on this machine, in well under a minute.
#
# It installs PostgreSQL and redis-server if they are missing (scripts/ensure-servers.sh),
# builds bin/cachesync, starts a private PostgreSQL (wal_level=logical) and a private
# redis-server on free loopback ports under ${TMPDIR:-/tmp}, creates the demo schema
# that rules.hcl is written for, runs `cachesync run` and drives a narrated workload:
# each step caches keys the way an application would, commits SQL, and shows what
# cachesync did to Redis, with the daemon's own log lines underneath. Then it stops
# the daemon with SIGTERM, shows `cachesync status`, and removes everything it started.
#
# It doubles as a smoke test: it exits 1 when an expected effect did not happen.
#
# Usage: scripts/demo.sh    (or: make demo)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly started_at=$SECONDS
readonly slot=cachesync # postgres.slot in rules.hcl

# --- output ---------------------------------------------------------------------------

if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then
	bold=$'\e[1m' dim=$'\e[2m' red=$'\e[31m' green=$'\e[32m' reset=$'\e[0m'
else
	bold='' dim='' red='' green='' reset=''
	export NO_COLOR=1 # the daemon's console log too
fi

failures=0
checks=0
say() { printf '%s\n' "$*"; }
header() { printf '\n%s==> %s%s\n' "$bold" "$*" "$reset"; }
ok() { checks=$((checks + 1)); printf '    %s✓%s %s\n' "$green" "$reset" "$*"; }
bad() {
	checks=$((checks + 1)) failures=$((failures + 1))
	printf '    %s✗ %s%s\n' "$red" "$*" "$reset"
}

# die MESSAGE: stop the demo, showing what the servers and the daemon said.
die() {
	printf '\n%sdemo: %s%s\n' "$red" "$*" "$reset" >&2
	show_file_tail "daemon log" "${daemon_log:-}" 100
	show_file_tail "PostgreSQL log" "${pgdir:-}/server.log" 20
	show_file_tail "redis-server log" "${redisdir:-}/redis.log" 20
	exit 1
}

show_file_tail() {
	local what=$1 file=$2 lines=$3
	[[ -n "$file" && -s "$file" ]] || return 0
	printf '%s--- %s (last %d lines: %s) ---%s\n' "$dim" "$what" "$lines" "$file" "$reset" >&2
	tail -n "$lines" "$file" >&2
}

# poll SECONDS COMMAND...: run COMMAND every 50ms until it succeeds; 1 after SECONDS.
poll() {
	local deadline=$(($(date +%s%N) + $1 * 1000000000))
	shift
	until "$@"; do
		(($(date +%s%N) < deadline)) || return 1
		sleep 0.05
	done
}

# exited PID: the process is gone. reaped PID: not even a zombie is left.
exited() { ! kill -0 "$1" 2>/dev/null; }
reaped() { [[ ! -e /proc/$1 ]]; }

# --- cleanup: whatever happens, leave nothing running ----------------------------------

work='' pgdir='' redisdir='' daemon_log='' daemon_pid='' redis_pid=''
as_pg=()

cleanup() {
	local rc=$?
	set +e
	if [[ -n "$daemon_pid" ]] && kill -0 "$daemon_pid" 2>/dev/null; then
		kill -TERM "$daemon_pid" 2>/dev/null
		poll 15 exited "$daemon_pid" || kill -KILL "$daemon_pid" 2>/dev/null
		wait "$daemon_pid" 2>/dev/null
	fi
	if [[ -n "$pgdir" && -f "$pgdir/data/postmaster.pid" ]]; then
		local postmaster
		postmaster=$(head -n 1 "$pgdir/data/postmaster.pid" 2>/dev/null)
		if ! "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pgdir/data" -m fast -w -t 30 stop >/dev/null 2>&1; then
			[[ -n "$postmaster" ]] && kill -KILL "$postmaster" 2>/dev/null
		fi
		# pg_ctl returns once the pid file is gone; give init a moment to reap the postmaster.
		[[ -n "$postmaster" ]] && poll 5 reaped "$postmaster"
	fi
	if [[ -n "$redis_pid" ]] && kill -0 "$redis_pid" 2>/dev/null; then
		kill -TERM "$redis_pid" 2>/dev/null
		poll 10 exited "$redis_pid" || kill -KILL "$redis_pid" 2>/dev/null
		wait "$redis_pid" 2>/dev/null
	fi
	[[ -n "$work" ]] && rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools ----------------------------------------------------------------------------

header "Checking for PostgreSQL and redis-server (scripts/ensure-servers.sh)"
bash scripts/ensure-servers.sh || die "scripts/ensure-servers.sh failed: install what it names, then run again"

postgres_major() { "$1" --version 2>/dev/null | sed -n 's/.*(PostgreSQL) \([0-9][0-9]*\).*/\1/p'; }

# The newest PostgreSQL >= 15 with initdb and pg_ctl: PATH first, then package directories.
pg_bin=''
for dir in $(command -v pg_ctl >/dev/null && dirname "$(readlink -f "$(command -v pg_ctl)")") \
	$(ls -d /usr/lib/postgresql/*/bin /usr/pgsql-*/bin 2>/dev/null | sort -V -r); do
	[[ -x "$dir/postgres" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]] || continue
	major=$(postgres_major "$dir/postgres")
	if [[ -n "$major" ]] && ((major >= 15)); then
		pg_bin=$dir
		break
	fi
done
[[ -n "$pg_bin" ]] || die "no PostgreSQL 15+ server binaries (postgres, initdb, pg_ctl) found"
psql_bin=$pg_bin/psql
[[ -x "$psql_bin" ]] || psql_bin=$(command -v psql) || die "psql not found: install postgresql-client"
redis_server=$(command -v redis-server) || die "redis-server not found: install redis-server"
redis_cli=$(command -v redis-cli) || die "redis-cli not found: install redis-tools"
say "PostgreSQL $(postgres_major "$pg_bin/postgres") in $pg_bin, $("$redis_server" --version | cut -d' ' -f1-3)"

header "Building bin/cachesync"
go build -o bin/cachesync ./cmd/cachesync || die "go build failed"
go build -o bin/cacheaside-example ./examples/cacheaside || die "go build of examples/cacheaside failed"
cachesync=$PWD/bin/cachesync
say "built $cachesync"

# --- private servers ------------------------------------------------------------------

# free_port: a loopback port nobody listens on now (the servers retry if one is taken
# between this check and their bind).
free_port() {
	local port
	for _ in $(seq 100); do
		port=$((20000 + RANDOM % 30000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "$port"
			return 0
		fi
	done
	return 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/cachesync-demo.XXXXXX")
chmod 755 "$work" # the postgres OS user must reach its directory inside
pgdir=$work/pg
redisdir=$work/redis
daemon_log=$work/cachesync.log
mkdir "$pgdir" "$redisdir"
if [[ $(id -u) == 0 ]]; then
	# PostgreSQL refuses to run as root.
	id postgres >/dev/null 2>&1 || die "running as root, but there is no OS user postgres to run PostgreSQL as: useradd --system postgres"
	chown postgres: "$pgdir"
	as_pg=(runuser -u postgres --)
fi
"${as_pg[@]}" test -w "$pgdir" ||
	die "the postgres OS user cannot write to $pgdir; point TMPDIR at a directory it can reach (TMPDIR=/tmp make demo)"

header "Starting a private PostgreSQL (wal_level=logical) and redis-server on loopback"
initdb_ok=0
for locale in C.UTF-8 C; do
	if (cd "$pgdir" && "${as_pg[@]}" "$pg_bin/initdb" -D "$pgdir/data" -U postgres --auth=trust -E UTF8 \
		--locale="$locale" --no-sync --no-instructions) >"$work/initdb.log" 2>&1; then
		initdb_ok=1
		break
	fi
	rm -rf "$pgdir/data"
done
((initdb_ok)) || { cat "$work/initdb.log" >&2; die "initdb failed"; }

# A Unix socket path must fit in sockaddr_un; with a very long TMPDIR, go without one.
socket_dir=$pgdir
((${#pgdir} + 16 <= 100)) || socket_dir=''
cat >>"$pgdir/data/postgresql.conf" <<EOF

# cachesync demo
listen_addresses = '127.0.0.1'
unix_socket_directories = '$socket_dir'
wal_level = logical
max_wal_senders = 4
max_replication_slots = 4
fsync = off
full_page_writes = off
EOF

pg_port=''
for _ in 1 2 3 4 5; do
	port=$(free_port) || die "no free loopback port found"
	if (cd "$pgdir" && "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w -t 30 \
		-o "-p $port" start) >/dev/null 2>&1; then
		pg_port=$port
		break
	fi
	grep -q "Address already in use" "$pgdir/server.log" 2>/dev/null || die "PostgreSQL did not start"
done
[[ -n "$pg_port" ]] || die "PostgreSQL: no free port after 5 attempts"

redis_port=''
for _ in 1 2 3 4 5; do
	port=$(free_port) || die "no free loopback port found"
	: >"$redisdir/redis.log"
	"$redis_server" --port "$port" --bind 127.0.0.1 --protected-mode no --save '' --appendonly no \
		--dir "$redisdir" --logfile "$redisdir/redis.log" --daemonize no </dev/null &
	redis_pid=$!
	redis_up() { [[ $("$redis_cli" -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]] || ! kill -0 "$redis_pid" 2>/dev/null; }
	poll 20 redis_up || die "redis-server did not answer within 20s"
	if kill -0 "$redis_pid" 2>/dev/null; then
		redis_port=$port
		break
	fi
	wait "$redis_pid" 2>/dev/null || true
	redis_pid=''
	grep -q "Address already in use" "$redisdir/redis.log" || die "redis-server exited at start"
done
[[ -n "$redis_port" ]] || die "redis-server: no free port after 5 attempts"

export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/demo?sslmode=disable"
export REDIS_URL="redis://127.0.0.1:$redis_port/0"
# The replay journal of this throwaway database lives and dies with the demo.
export CACHESYNC_DATA_DIR="$work/cachesync-data"
# The metrics, health and pprof endpoints, on a free loopback port.
export CACHESYNC_LISTEN=127.0.0.1:0
say "PostgreSQL: $DATABASE_URL (data in $pgdir)"
say "Redis:      $REDIS_URL"

# sql [psql args...]: psql on the demo database; stops at the first error.
sql() { "$psql_bin" -X -q -v ON_ERROR_STOP=1 --no-psqlrc -At "$DATABASE_URL" "$@"; }
rcli() { "$redis_cli" -h 127.0.0.1 -p "$redis_port" "$@"; }

"$psql_bin" -X -q -v ON_ERROR_STOP=1 "postgres://postgres@127.0.0.1:$pg_port/postgres?sslmode=disable" \
	-c "CREATE DATABASE demo" || die "CREATE DATABASE failed"

header "Creating the schema rules.hcl is written for"
schema="
CREATE TABLE users (
  id     int PRIMARY KEY,
  email  text NOT NULL,
  org_id int,
  name   text
);
-- The user rule's keys and tags read email and org_id: the old row must carry them.
ALTER TABLE users REPLICA IDENTITY FULL;

CREATE TABLE orders (
  id          int PRIMARY KEY,
  customer_id int NOT NULL,
  total       numeric(10,2) NOT NULL,
  status      text NOT NULL
);
-- The order_lists rule's namespace reads customer_id: the old row must carry it.
ALTER TABLE orders REPLICA IDENTITY FULL;

-- The product rule's key reads only id (the primary key), so the default replica
-- identity is enough: value and when read the new row.
CREATE TABLE products (
  id          int PRIMARY KEY,
  name        text NOT NULL,
  price       numeric(10,2) NOT NULL,
  published   bool NOT NULL DEFAULT false,
  description text
);

-- The write_behind block's table: the application writes to Redis, cachesync upserts here.
CREATE TABLE page_views (
  page  text PRIMARY KEY,
  views bigint NOT NULL
);"
sql -c "$schema" || die "creating the schema failed"
say "${dim}${schema#$'\n'}${reset}"

header "cachesync validate --config rules.hcl (with DATABASE_URL set: tables, columns and replica identity too)"
"$cachesync" validate --config rules.hcl || die "validate refused rules.hcl against the demo schema"

# --- the daemon -----------------------------------------------------------------------

log_offset=0
# show_log [N]: print the daemon's new log lines, after waiting (up to 5s) until they
# hold at least N new "applied" lines.
show_log() {
	local want=${1:-0}
	new_applied() { (($(tail -c +$((log_offset + 1)) "$daemon_log" | grep -c ' applied ') >= want)); }
	poll 5 new_applied || true
	local size
	size=$(stat -c %s "$daemon_log")
	((size > log_offset)) || return 0
	head -c "$size" "$daemon_log" | tail -c +$((log_offset + 1)) | sed "s/^/    ${dim}cachesync │${reset} /"
	log_offset=$size
}

header "A cache that predates cachesync: SET user:1 (stale), SET session:abc (no rule covers it)"
rcli SET user:1 '{"id":1,"email":"stale@example.com"}' >/dev/null
rcli SET session:abc '{"user":1}' >/dev/null

header "cachesync run --config rules.hcl --log-format console --log-level debug"
NO_COLOR=1 "$cachesync" run --config rules.hcl --log-format console --log-level debug >"$daemon_log" 2>&1 </dev/null &
daemon_pid=$!

streaming() {
	kill -0 "$daemon_pid" 2>/dev/null || die "cachesync run exited before streaming"
	[[ $(sql -c "SELECT active FROM pg_replication_slots WHERE slot_name = '$slot'" 2>/dev/null) == t ]] &&
		grep -q ' streaming ' "$daemon_log"
}
poll 30 streaming || die "cachesync did not start streaming within 30s"
show_log

# Expectations: each polls Redis for up to 10s, then records a failure and goes on.
exists() { [[ $(rcli EXISTS "$1") == 1 ]]; }
missing() { ! exists "$1"; }
expect_deleted() {
	local key
	for key; do
		if poll 10 missing "$key"; then ok "$key: deleted"; else bad "$key: still cached after 10s"; fi
	done
}
expect_kept() {
	local key
	for key; do
		if exists "$key"; then ok "$key: kept"; else bad "$key: deleted, but no rule covers it"; fi
	done
}
expect_value() {
	local key=$1 want=$2
	value_is() { [[ $(rcli GET "$key") == "$want" ]]; }
	if poll 10 value_is; then ok "$key = $want"; else bad "$key = $(rcli GET "$key") after 10s, want $want"; fi
}
# expect_json KEY FRAGMENT...: KEY holds a value containing every FRAGMENT; shows it and its TTL.
expect_json() {
	local key=$1
	shift
	has_all() {
		local v f
		v=$(rcli GET "$key")
		for f; do [[ "$v" == *"$f"* ]] || return 1; done
	}
	if poll 10 has_all "$@"; then
		local ttl
		ttl=$(rcli PTTL "$key")
		ok "$key = $(rcli GET "$key")"
		if ((ttl >= 55 * 60 * 1000 && ttl <= 65 * 60 * 1000)); then
			ok "$key: PTTL $ttl ms ($((ttl / 60000))m$((ttl / 1000 % 60))s: ttl 1h, jitter ±5m)"
		else
			bad "$key: PTTL $ttl ms, want 1h ± 5m"
		fi
	else
		bad "$key = $(rcli GET "$key") after 10s, want a value containing: $*"
	fi
}

say
say "First start: cachesync created the slot and flushed every rule's key space, since"
say "nothing cached before the slot's consistent point would ever be invalidated."
expect_deleted user:1
expect_kept session:abc
marker=$(rcli GET "cachesync:slot:$slot:applied")
if [[ -n "$marker" ]]; then ok "cachesync:slot:$slot:applied = $marker (the cache's applied position, advanced before each confirm)"; else bad "no applied position cachesync:slot:$slot:applied"; fi

# settle: wait until the slot confirmed everything committed so far (cachesync confirms
# a transaction's end only after its effects are applied), then show the daemon's log.
settle() {
	local target
	target=$(sql -c "SELECT pg_current_wal_lsn()")
	confirmed_past() { [[ $(sql -c "SELECT confirmed_flush_lsn >= '$target' FROM pg_replication_slots WHERE slot_name = '$slot'") == t ]]; }
	if poll 20 confirmed_past; then
		ok "applied, then confirmed: the slot's confirmed_flush_lsn reached $target"
	else
		bad "the slot's confirmed_flush_lsn did not reach $target within 20s"
	fi
	show_log 1
}

# commit SQL: run SQL in its own transaction, printing it dimmed.
commit() {
	say "    ${dim}psql: $1${reset}"
	sql -c "$1" || die "SQL failed: $1"
}

# --- the workload ---------------------------------------------------------------------

header "INSERT INTO users ... (1, 'Ann@Example.com', org 7) (cached keys: user:1, user:email:ann@example.com)"
say "    The application cached both lookups as misses (null) before the user existed."
rcli SET user:1 null >/dev/null
rcli SET user:email:ann@example.com null >/dev/null
commit "INSERT INTO users (id, email, org_id, name) VALUES (1, 'Ann@Example.com', 7, 'Ann')"
expect_deleted user:1 user:email:ann@example.com
settle

header "UPDATE users SET email = 'ann@new.example.com' WHERE id = 1 (cached keys: user:1, user:email:ann@example.com, user:email:ann@new.example.com)"
say "    On UPDATE the keys of the old row and of the new row go: the moved email's old key too."
rcli SET user:1 '{"id":1,"email":"Ann@Example.com"}' >/dev/null
rcli SET user:email:ann@example.com '{"id":1}' >/dev/null
rcli SET user:email:ann@new.example.com null >/dev/null
commit "UPDATE users SET email = 'ann@new.example.com' WHERE id = 1"
expect_deleted user:1 user:email:ann@example.com user:email:ann@new.example.com
settle

header "UPDATE users SET name = 'Ann B.' WHERE id = 1 (cached keys: tag:org:7 = {page:org:7:members, page:org:7:dashboard}, tag:org:8 = {page:org:8:members})"
say "    Tag invalidation: the application registers pages under tag:org:<id> (SADD)."
for page in page:org:7:members page:org:7:dashboard page:org:8:members; do
	rcli SET "$page" '<html>...</html>' >/dev/null
done
rcli SADD tag:org:7 page:org:7:members page:org:7:dashboard >/dev/null
rcli SADD tag:org:8 page:org:8:members >/dev/null
commit "UPDATE users SET name = 'Ann B.' WHERE id = 1"
expect_deleted page:org:7:members page:org:7:dashboard tag:org:7
expect_kept page:org:8:members tag:org:8
settle

header "INSERT INTO orders ... (100, customer 5) (cached keys: orders:customer:5:v0:recent; version:orders:customer:5 absent = 0)"
say "    Version bump: list caches live under orders:customer:5:v<n>:...; INCR retires them all."
rcli SET orders:customer:5:v0:recent '[]' >/dev/null
commit "INSERT INTO orders (id, customer_id, total, status) VALUES (100, 5, 42.50, 'new')"
expect_value version:orders:customer:5 1
say "    Clients now read orders:customer:5:v1:recent; the v0 entry is retired and expires or is flushed."
settle

header "UPDATE orders SET customer_id = 6 WHERE id = 100 (versions: orders:customer:5 = 1, orders:customer:6 absent)"
say "    Both customers' lists changed: the old row's namespace and the new row's."
commit "UPDATE orders SET customer_id = 6 WHERE id = 100"
expect_value version:orders:customer:5 2
expect_value version:orders:customer:6 1
settle

header "INSERT INTO products ... (1, 'Widget', 19.99, published) (cached keys: none yet)"
say "    Write-through refresh: cachesync writes the committed row (jsonencode(row)), TTL 1h ± 5m."
commit "INSERT INTO products (id, name, price, published, description) VALUES (1, 'Widget', 19.99, true, 'A fine widget')"
expect_json product:1 '"id":1' '"price":"19.99"' '"published":true'
settle

header "UPDATE products SET price = 24.50 WHERE id = 1 (cached keys: product:1)"
say "    numeric stays as PostgreSQL prints it: \"24.50\", not 24.5."
commit "UPDATE products SET price = 24.50 WHERE id = 1"
expect_json product:1 '"price":"24.50"'
settle

header "UPDATE products SET published = false WHERE id = 1 (cached keys: product:1)"
say "    when = row.published is now false: the key is deleted, not refreshed."
commit "UPDATE products SET published = false WHERE id = 1"
expect_deleted product:1
settle

header "TRUNCATE users (cached keys: user:1, user:2, user:email:bob@example.com, tag:org:8 = {page:org:8:members}, tag:org:9 = {page:org:9:home})"
say "    TRUNCATE carries no rows: the user rule's whole key space is flushed (SCAN + UNLINK of"
say "    user:*, and every tag:org:* set with its members). Keys of other rules and apps stay."
commit "INSERT INTO users (id, email, org_id, name) VALUES (2, 'bob@example.com', 9, 'Bob')"
settle
rcli SET user:1 '{"id":1}' >/dev/null
rcli SET user:2 '{"id":2}' >/dev/null
rcli SET user:email:bob@example.com '{"id":2}' >/dev/null
rcli SET page:org:9:home '<html>...</html>' >/dev/null
rcli SADD tag:org:9 page:org:9:home >/dev/null
rcli SET orders:customer:6:v1:recent '[100]' >/dev/null
commit "TRUNCATE users"
expect_deleted user:1 user:2 user:email:bob@example.com tag:org:8 page:org:8:members tag:org:9 page:org:9:home
expect_kept session:abc orders:customer:6:v1:recent version:orders:customer:6
settle

# --- the read side ----------------------------------------------------------------------

header "The read side: examples/cacheaside reads through cacheaside.GetOrLoad while cachesync runs"
say "    The application fills user:100 (tagged org:42) and its customer's order list in the"
say "    version namespace orders:customer:77; writers change the rows; cachesync invalidates."
if bin/cacheaside-example 2>&1 | sed "s/^/    ${dim}example │${reset} /"; [[ ${PIPESTATUS[0]} -eq 0 ]]; then
	ok "examples/cacheaside: loads, hits, invalidation and version bump as described"
else
	bad "examples/cacheaside failed"
fi
show_log

# --- write-behind -----------------------------------------------------------------------

header "Write-behind: the application counts page views in Redis; cachesync writes them to PostgreSQL"
say "    Each write sets page_views:<page> and appends the row to wb:page_views in one script,"
say "    as cacheaside.WriteBehind does; cachesync drains the stream in batched upserts."
# write_behind PAGE VIEWS: the application's write, key and entry in one step.
write_behind() {
	local row="{\"page\":\"$1\",\"views\":$2}"
	say "    ${dim}SET page_views:$1 $row + XADD wb:page_views * op upsert row $row${reset}"
	rcli EVAL "redis.call('XADD', KEYS[2], '*', 'op', 'upsert', 'row', ARGV[1]) redis.call('SET', KEYS[1], ARGV[1], 'PX', 3600000) return 1" \
		2 "page_views:$1" wb:page_views "$row" >/dev/null
}
write_behind /home 1
write_behind /home 2
write_behind /about 1
write_behind /home 3
views_are() { [[ $(sql -c "SELECT string_agg(page || '=' || views, ' ' ORDER BY page) FROM page_views") == "$1" ]]; }
if poll 10 views_are "/about=1 /home=3"; then
	ok "page_views in PostgreSQL: /about=1 /home=3 (the last write per page, each applied once)"
else
	bad "page_views in PostgreSQL: $(sql -c "SELECT string_agg(page || '=' || views, ' ' ORDER BY page) FROM page_views"), want /about=1 /home=3"
fi
stream_drained() { [[ $(rcli XLEN wb:page_views) == 0 ]]; }
if poll 10 stream_drained; then ok "wb:page_views: drained, acknowledged and trimmed"; else bad "wb:page_views still holds $(rcli XLEN wb:page_views) entries"; fi
expect_value page_views:/home '{"page":"/home","views":3}'
say "    An entry that can never apply (views is not a number) goes to the dead-letter stream;"
say "    the ones around it still apply."
write_behind /broken '"many"'
write_behind /pricing 7
dead_letter() { [[ $(rcli XLEN wb:page_views:dead) == 1 ]]; }
if poll 10 dead_letter; then
	ok "wb:page_views:dead: $(rcli XRANGE wb:page_views:dead - + | tail -1)"
else
	bad "wb:page_views:dead holds $(rcli XLEN wb:page_views:dead) entries, want 1"
fi
if poll 10 views_are "/about=1 /home=3 /pricing=7"; then ok "page_views in PostgreSQL: /pricing=7 applied"; else bad "page_views: /pricing=7 not applied"; fi
settle

# --- metrics and health -----------------------------------------------------------------

# http_get PATH: a plain HTTP GET against the daemon's listener, with bash alone.
http_get() {
	local port=${listen##*:}
	exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
	printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$1" >&3
	cat <&3
	exec 3<&-
}
listen=$(sed -n 's/.*serving \/metrics.* addr=\([0-9.:]*\).*/\1/p' "$daemon_log" | head -n 1)
header "Metrics and health on $listen (run --listen; default 127.0.0.1:9716)"
if [[ -z "$listen" ]]; then
	bad "the daemon did not log its listen address"
else
	ready=$(http_get /readyz | tail -n 1)
	say "    GET /readyz → $ready"
	[[ "$ready" == streaming* ]] && ok "/readyz says streaming" || bad "/readyz: $ready"
	metrics_text=$(http_get /metrics)
	grep -E '^cachesync_(changes_received_total\{kind="[a-z]+",table="public.users"|redis_operations_total\{kind="(delete|bump_version|set)",result="applied"|keyspace_flushes_total|replication_lag_seconds|confirmed_lsn)' <<<"$metrics_text" | sed "s/^/    ${dim}metrics │${reset} /"
	if grep -q '^cachesync_keyspace_flushes_total{reason="truncate",rule="user"} 1' <<<"$metrics_text"; then
		ok "/metrics counts the TRUNCATE's flush of the user rule"
	else
		bad "/metrics lacks the user rule's truncate flush"
	fi
fi

# --- stop, status, teardown -----------------------------------------------------------

header "Stopping cachesync with SIGTERM"
kill -TERM "$daemon_pid"
poll 30 exited "$daemon_pid" || die "cachesync still running 30s after SIGTERM"
daemon_rc=0
wait "$daemon_pid" || daemon_rc=$?
daemon_pid=''
show_log
if ((daemon_rc == 0)); then ok "cachesync exited 0"; else bad "cachesync exited $daemon_rc"; fi
final_lsn=$(sed -n 's/.* stopped .*confirmed_lsn=\([0-9A-Fa-f]*\/[0-9A-Fa-f]*\).*/\1/p' "$daemon_log" | tail -n 1)
slot_lsn=$(sql -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '$slot'")
if [[ -n "$final_lsn" && "$final_lsn" == "$slot_lsn" ]]; then
	ok "final confirmation $final_lsn is the slot's confirmed_flush_lsn"
else
	bad "the daemon's last words name confirmed_lsn '${final_lsn}', the slot has $slot_lsn"
fi

header "cachesync status --config rules.hcl"
"$cachesync" status --config rules.hcl || bad "cachesync status failed"

header "cachesync teardown --config rules.hcl --yes"
"$cachesync" teardown --config rules.hcl --yes || bad "cachesync teardown failed"

echo
if ((failures > 0)); then
	die "$failures of $checks checks failed"
fi
say "${green}${bold}demo passed${reset}: $checks checks in $((SECONDS - started_at))s; stopping the servers and removing $work"
