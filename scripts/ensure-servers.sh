#!/usr/bin/env bash
# ensure-servers.sh: make sure the tools the tests need are installed: PostgreSQL >= 15
# server binaries (postgres, initdb, pg_ctl), redis-server and go.
#
# Quiet and exit 0 when everything is present. On Debian/Ubuntu (apt-get) it installs
# the missing server packages; elsewhere it says what to install and exits 1.
# Tests never use the system cluster that Debian's postgresql package starts:
# internal/testenv runs its own servers on free loopback ports.
#
# Usage: scripts/ensure-servers.sh [-v]    (-v: say what was found)
set -euo pipefail

readonly MIN_PG_MAJOR=15
verbose=0
[[ "${1:-}" == "-v" ]] && verbose=1

say() { [[ $verbose == 1 ]] && echo "ensure-servers: $*" >&2 || true; }
warn() { echo "ensure-servers: $*" >&2; }

# postgres_major BIN: the major version of a postgres binary, or nothing.
postgres_major() {
	"$1" --version 2>/dev/null | sed -n 's/.*(PostgreSQL) \([0-9][0-9]*\).*/\1/p'
}

# find_postgres: print the bin directory of a PostgreSQL >= MIN_PG_MAJOR with postgres,
# initdb and pg_ctl, searching PATH first, then package directories, newest first.
# Same search as internal/testenv.
find_postgres() {
	local candidates=() dir bin
	if bin=$(command -v postgres 2>/dev/null); then
		candidates+=("$(dirname "$(readlink -f "$bin" 2>/dev/null || echo "$bin")")")
	fi
	for dir in $(ls -d /usr/lib/postgresql/*/bin /usr/pgsql-*/bin \
		/opt/homebrew/opt/postgresql@*/bin /usr/local/opt/postgresql@*/bin 2>/dev/null | sort -V -r); do
		candidates+=("$dir")
	done
	for dir in "${candidates[@]}"; do
		[[ -x "$dir/postgres" ]] || continue
		{ [[ -x "$dir/initdb" ]] || command -v initdb >/dev/null; } || continue
		{ [[ -x "$dir/pg_ctl" ]] || command -v pg_ctl >/dev/null; } || continue
		local major
		major=$(postgres_major "$dir/postgres")
		if [[ -n "$major" && "$major" -ge $MIN_PG_MAJOR ]]; then
			echo "$dir"
			return 0
		fi
		say "skipping PostgreSQL ${major:-?} in $dir (need $MIN_PG_MAJOR or newer)"
	done
	return 1
}

find_redis() {
	command -v redis-server 2>/dev/null && return 0
	local dir
	for dir in /usr/bin /usr/sbin /usr/local/bin /opt/homebrew/bin; do
		[[ -x "$dir/redis-server" ]] && { echo "$dir/redis-server"; return 0; }
	done
	return 1
}

missing=()
if pg_dir=$(find_postgres); then
	say "PostgreSQL $(postgres_major "$pg_dir/postgres") in $pg_dir"
else
	missing+=(postgresql)
fi
if redis_bin=$(find_redis); then
	say "redis-server at $redis_bin"
else
	missing+=(redis-server)
fi

# install_with_apt: install the server packages; returns 1 when that is not possible.
install_with_apt() {
	local sudo=()
	if [[ $(id -u) != 0 ]]; then
		if ! command -v sudo >/dev/null; then
			warn "missing: ${missing[*]}; not root and sudo is not installed."
			warn "run as root: apt-get update && apt-get install -y postgresql redis-server"
			return 1
		fi
		sudo=(sudo)
	fi
	warn "installing: ${missing[*]} (apt-get)"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server >/dev/null
	local ok=0
	if ! find_postgres >/dev/null; then
		if compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
			warn "this distribution's postgresql package is older than $MIN_PG_MAJOR. Add the PGDG repository and install $MIN_PG_MAJOR:"
			warn "  apt-get install -y postgresql-common && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y && apt-get install -y postgresql-$MIN_PG_MAJOR"
		else
			warn "PostgreSQL server binaries are still missing after apt-get install postgresql"
		fi
		ok=1
	fi
	if ! find_redis >/dev/null; then
		warn "redis-server is still missing after apt-get install redis-server"
		ok=1
	fi
	return $ok
}

status=0
if ((${#missing[@]} > 0)); then
	if command -v apt-get >/dev/null; then
		install_with_apt || status=1
	else
		warn "missing: ${missing[*]}"
		case "$(uname -s)" in
		Darwin)
			warn "install them with Homebrew: brew install postgresql@$MIN_PG_MAJOR redis"
			warn "(postgresql@$MIN_PG_MAJOR is keg-only; tests find it under \$(brew --prefix)/opt/postgresql@$MIN_PG_MAJOR/bin)"
			;;
		*)
			warn "install the PostgreSQL $MIN_PG_MAJOR+ server (postgres, initdb, pg_ctl) and redis-server with your package manager,"
			warn "e.g. dnf install postgresql-server redis, or apk add postgresql$MIN_PG_MAJOR redis"
			;;
		esac
		status=1
	fi
	if ((status != 0)); then
		warn "or point the tests at running servers: DATABASE_URL (wal_level=logical, role with CREATEDB and REPLICATION) and REDIS_URL"
	fi
fi

if go_bin=$(command -v go 2>/dev/null) || { [[ -x /usr/local/go/bin/go ]] && go_bin=/usr/local/go/bin/go; }; then
	say "$("$go_bin" version) at $go_bin"
	if [[ "$go_bin" == /usr/local/go/bin/go ]] && ! command -v go >/dev/null; then
		warn "go is installed but not on PATH: export PATH=\$PATH:/usr/local/go/bin"
		status=1
	fi
else
	go_version=$(sed -n 's/^go \([0-9.]*\).*/\1/p' "$(dirname "$0")/../go.mod" 2>/dev/null || true)
	go_os=$(uname -s | tr '[:upper:]' '[:lower:]')
	case "$(uname -m)" in x86_64) go_arch=amd64 ;; aarch64 | arm64) go_arch=arm64 ;; *) go_arch=$(uname -m) ;; esac
	warn "go is not installed: download Go ${go_version:-(see go.mod)} from https://go.dev/dl/ and unpack it,"
	warn "  e.g. curl -fsSL https://go.dev/dl/go${go_version:-VERSION}.$go_os-$go_arch.tar.gz | sudo tar -C /usr/local -xz && export PATH=\$PATH:/usr/local/go/bin"
	warn "(distribution golang packages are usually older than go.mod requires; Go 1.21+ fetches the required toolchain itself)"
	status=1
fi

exit $status
