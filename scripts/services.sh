#!/usr/bin/env bash
# services.sh makes sure the servers the tests talk to answer:
#
#   PostgreSQL on 127.0.0.1:5432 (user postgres, no password, database test)
#   Redis      on 127.0.0.1:6379
#
# It is idempotent: a server that already answers is left alone. One that
# does not is started from the installed binaries, and installed from
# Debian's packages first when it is missing and we are root (or have sudo).
# PostgreSQL must run with wal_level = logical (change-data-capture reads its
# logical replication stream): when it does not, the setting is changed with
# ALTER SYSTEM and the local cluster is restarted.
#
# It also makes sure the redis-server binary is installed, because the fault
# tests start their own redis-server on free ports.
#
# With DATABASE_URL or REDIS_URL set, that server is only checked: nothing is
# started for it.
#
# Environment:
#   DATABASE_URL        PostgreSQL to check instead of the local one
#   REDIS_URL           Redis to check instead of the local one
#   WT_SERVICES_DIR     where a Redis started here keeps its log
#                       (default ${TMPDIR:-/tmp}/writethrough-services)
#   WT_SERVICES_WAIT    seconds to wait for a server to answer (default 30)
set -euo pipefail

readonly PG_HOST=127.0.0.1
readonly PG_PORT=5432
readonly PG_USER=postgres
readonly PG_DB=test
readonly REDIS_HOST=127.0.0.1
readonly REDIS_PORT=6379
readonly WAIT_SECONDS=${WT_SERVICES_WAIT:-30}
readonly STATE_DIR=${WT_SERVICES_DIR:-${TMPDIR:-/tmp}/writethrough-services}
readonly HBA_MARKER="# writethrough: trust loopback TCP for postgres"

log() { printf '%s\n' "$*"; }
die() {
	printf 'services.sh: %s\n' "$*" >&2
	exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# join prints its arguments after the first, separated by the first.
join() {
	local sep=$1 out=
	shift
	for x in "$@"; do out+=${out:+$sep}$x; done
	printf '%s' "$out"
}

# as_root runs a command as root: directly when we are root, through sudo
# when that works without a password, and fails otherwise.
as_root() {
	if [[ $(id -u) -eq 0 ]]; then
		"$@"
	elif have sudo && sudo -n true 2>/dev/null; then
		sudo -n "$@"
	else
		return 1
	fi
}

can_be_root() {
	[[ $(id -u) -eq 0 ]] || { have sudo && sudo -n true 2>/dev/null; }
}

# as_postgres runs a command as the postgres system user, to reach the local
# cluster over its Unix socket with peer authentication.
as_postgres() {
	if [[ $(id -un) == postgres ]]; then
		"$@"
	elif [[ $(id -u) -eq 0 ]]; then
		runuser -u postgres -- "$@"
	else
		sudo -n -u postgres -- "$@"
	fi
}

apt_updated=false
apt_install() {
	can_be_root || die "$* not installed, and installing it needs root or passwordless sudo: install $* and run again"
	if ! $apt_updated; then
		as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null ||
			die "apt-get update failed"
		apt_updated=true
	fi
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null ||
		die "apt-get install $* failed"
}

# wait_for runs its arguments until they succeed or WAIT_SECONDS pass.
wait_for() {
	local deadline=$((SECONDS + WAIT_SECONDS))
	until "$@"; do
		((SECONDS < deadline)) || return 1
		sleep 0.5
	done
}

# ---------------------------------------------------------------- PostgreSQL

# pg_answers reports whether PostgreSQL accepts connections: at DATABASE_URL
# when it is set, else at the local address, without a password.
pg_answers() {
	if [[ -n ${DATABASE_URL:-} ]]; then
		if have psql; then
			psql "$DATABASE_URL" -X -w -q -t -A -c 'select 1' >/dev/null 2>&1
		elif have pg_isready; then
			pg_isready -q -d "$DATABASE_URL" -t 2
		else
			tcp_open "$(url_hostport "$DATABASE_URL" 5432)"
		fi
		return
	fi
	if have pg_isready; then
		pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2
	elif have psql; then
		# An authentication error still proves the server answers.
		local out
		out=$(psql -X -w -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -c 'select 1' 2>&1) ||
			[[ $out == *authentication* || $out == *password* || $out == *"does not exist"* ]]
	else
		tcp_open "$PG_HOST:$PG_PORT"
	fi
}

# pg_usable reports whether user postgres logs in over TCP without a
# password and finds database test.
pg_usable() {
	have psql || return 0
	psql -X -w -q -t -A -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -c 'select 1' >/dev/null 2>&1
}

# pg_cluster prints "VERSION NAME" of the local cluster to use: the one on
# port 5432, else the newest version's main cluster, else nothing.
pg_cluster() {
	have pg_lsclusters || return 0
	local found
	found=$(pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '$3 == port { print $1, $2; exit }')
	if [[ -z $found && -d /etc/postgresql ]]; then
		local ver
		ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
		[[ -n $ver ]] && found="$ver main"
	fi
	printf '%s' "$found"
}

pg_installed() { have pg_ctlcluster && [[ -n $(ls /usr/lib/postgresql 2>/dev/null) ]]; }

# pg_prepare makes the local cluster usable by the tests: trust for postgres
# over loopback TCP, and database test. It needs root (or sudo) to edit
# pg_hba.conf and reach the cluster as the postgres user.
pg_prepare() {
	local ver=$1 name=$2 changed=()
	can_be_root || die "PostgreSQL answers on $PG_HOST:$PG_PORT, but user $PG_USER cannot log in to database $PG_DB without a password, and fixing that needs root"

	if ! psql -X -w -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -c 'select 1' >/dev/null 2>&1; then
		local hba
		hba=$(as_postgres psql -X -q -t -A -p "$PG_PORT" -c 'show hba_file' 2>/dev/null) ||
			hba=/etc/postgresql/$ver/$name/pg_hba.conf
		[[ -f $hba ]] || die "cannot find pg_hba.conf of cluster $ver/$name"
		if ! grep -qF "$HBA_MARKER" "$hba"; then
			# First match wins in pg_hba.conf: our lines go on top.
			local tmp
			tmp=$(mktemp)
			{
				printf '%s\n' "$HBA_MARKER"
				printf 'host all %s 127.0.0.1/32 trust\n' "$PG_USER"
				printf 'host all %s ::1/128 trust\n' "$PG_USER"
				cat "$hba"
			} >"$tmp"
			as_root cp "$tmp" "$hba"
			rm -f "$tmp"
		fi
		as_postgres psql -X -q -p "$PG_PORT" -c 'select pg_reload_conf()' >/dev/null ||
			as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload ||
			die "cannot reload cluster $ver/$name"
		wait_for psql -X -w -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -c 'select 1' >/dev/null 2>&1 ||
			die "user $PG_USER still cannot log in over TCP without a password; see $hba"
		changed+=("trusted loopback TCP for $PG_USER")
	fi

	local exists
	exists=$(psql -X -w -q -t -A -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres \
		-c "select 1 from pg_database where datname = '$PG_DB'")
	if [[ $exists != 1 ]]; then
		psql -X -w -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -c "create database $PG_DB" >/dev/null ||
			die "cannot create database $PG_DB"
		changed+=("created database $PG_DB")
	fi
	join '; ' "${changed[@]}"
}

ensure_postgres() {
	if [[ -n ${DATABASE_URL:-} ]]; then
		wait_for pg_answers || die "PostgreSQL at DATABASE_URL does not answer (nothing is started when DATABASE_URL is set)"
		log "postgres: answering at DATABASE_URL (checked only)"
		return
	fi

	local did=()
	if ! pg_answers; then
		if ! pg_installed; then
			apt_install postgresql
			did+=("installed postgresql")
		fi
		local cluster ver name
		cluster=$(pg_cluster)
		if [[ -z $cluster ]]; then
			ver=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
			as_root pg_createcluster "$ver" main >/dev/null || die "cannot create cluster $ver/main"
			did+=("created cluster $ver/main")
			cluster="$ver main"
		fi
		read -r ver name <<<"$cluster"
		# The packages may have started it already (systemd); start is
		# then a no-op that fails, so only the answer below counts.
		if ! pg_answers; then
			as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start ||
				log "postgres: pg_ctlcluster $ver $name start failed; waiting in case it is starting anyway"
			did+=("started cluster $ver/$name")
		fi
		wait_for pg_answers ||
			die "PostgreSQL does not answer on $PG_HOST:$PG_PORT after ${WAIT_SECONDS}s; see /var/log/postgresql/postgresql-$ver-$name.log"
	fi

	if ! pg_usable; then
		local cluster ver name fixed
		cluster=$(pg_cluster)
		[[ -n $cluster ]] ||
			die "PostgreSQL answers on $PG_HOST:$PG_PORT, but user $PG_USER cannot use database $PG_DB without a password, and no local cluster was found to fix"
		read -r ver name <<<"$cluster"
		fixed=$(pg_prepare "$ver" "$name")
		[[ -z $fixed ]] || did+=("${fixed//; /, }")
		pg_usable || die "user $PG_USER still cannot use database $PG_DB on $PG_HOST:$PG_PORT"
	fi

	if ((${#did[@]} == 0)); then
		log "postgres: already answering at $PG_HOST:$PG_PORT"
	else
		log "postgres: $(join ', ' "${did[@]}"); answering at $PG_HOST:$PG_PORT"
	fi
}

# ensure_logical makes the local cluster run with wal_level = logical, which
# change-data-capture (package cdc) needs: ALTER SYSTEM, then a restart, since
# PostgreSQL reads wal_level only at start. A database at DATABASE_URL is only
# checked and reported.
ensure_logical() {
	have psql || return 0
	local url level
	if [[ -n ${DATABASE_URL:-} ]]; then
		level=$(psql "$DATABASE_URL" -X -w -q -t -A -c 'show wal_level' 2>/dev/null) || return 0
		[[ $level == logical ]] ||
			log "postgres: wal_level is $level at DATABASE_URL; the cdc tests skip (they need wal_level = logical)"
		return 0
	fi
	url="host=$PG_HOST port=$PG_PORT user=$PG_USER dbname=$PG_DB"
	level=$(psql "$url" -X -w -q -t -A -c 'show wal_level' 2>/dev/null) || return 0
	[[ $level == logical ]] && return 0
	psql "$url" -X -w -q -c 'alter system set wal_level = logical' >/dev/null ||
		die "cannot set wal_level = logical (ALTER SYSTEM failed)"
	local cluster ver name
	cluster=$(pg_cluster)
	if [[ -n $cluster ]] && can_be_root; then
		read -r ver name <<<"$cluster"
		as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" restart ||
			die "cannot restart cluster $ver/$name to apply wal_level = logical"
	else
		local dir
		dir=$(psql "$url" -X -w -q -t -A -c 'show data_directory')
		as_postgres pg_ctl -D "$dir" -w restart >/dev/null ||
			die "cannot restart PostgreSQL (data directory $dir) to apply wal_level = logical"
	fi
	wait_for pg_usable || die "PostgreSQL does not answer after the restart for wal_level = logical"
	level=$(psql "$url" -X -w -q -t -A -c 'show wal_level')
	[[ $level == logical ]] || die "wal_level is still $level after the restart"
	log "postgres: set wal_level = logical and restarted"
}

# --------------------------------------------------------------------- Redis

# redis_ping_tcp sends PING over bash's /dev/tcp and expects +PONG.
redis_ping_tcp() {
	local host=$1 port=$2 reply=
	(
		exec 3<>"/dev/tcp/$host/$port" || exit 1
		printf 'PING\r\n' >&3
		IFS= read -r -t 2 reply <&3 || exit 1
		[[ $reply == +PONG* ]]
	) 2>/dev/null
}

redis_answers() {
	if [[ -n ${REDIS_URL:-} ]]; then
		if have redis-cli; then
			[[ $(redis-cli -u "$REDIS_URL" ping 2>/dev/null) == PONG ]]
		else
			local hp
			hp=$(url_hostport "$REDIS_URL" 6379)
			redis_ping_tcp "${hp%:*}" "${hp##*:}"
		fi
		return
	fi
	if have redis-cli; then
		[[ $(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
	else
		redis_ping_tcp "$REDIS_HOST" "$REDIS_PORT"
	fi
}

ensure_redis() {
	local did=()
	# The fault tests run their own redis-server, whichever Redis is shared.
	if ! have redis-server; then
		apt_install redis-server
		did+=("installed redis-server")
	fi

	if [[ -n ${REDIS_URL:-} ]]; then
		wait_for redis_answers || die "Redis at REDIS_URL does not answer (nothing is started when REDIS_URL is set)"
		log "redis: $(join ', ' "${did[@]}" "answering at REDIS_URL (checked only)")"
	elif redis_answers; then
		if ((${#did[@]} == 0)); then
			log "redis: already answering at $REDIS_HOST:$REDIS_PORT"
		else
			log "redis: $(join ', ' "${did[@]}"); already answering at $REDIS_HOST:$REDIS_PORT"
		fi
	else
		mkdir -p "$STATE_DIR"
		local logfile=$STATE_DIR/redis-$REDIS_PORT.log
		redis-server --daemonize yes --bind "$REDIS_HOST" -::1 --port "$REDIS_PORT" \
			--save "" --appendonly no --dir "$STATE_DIR" --logfile "$logfile" ||
			die "redis-server failed to start; see $logfile"
		wait_for redis_answers ||
			die "Redis does not answer on $REDIS_HOST:$REDIS_PORT after ${WAIT_SECONDS}s; see $logfile"
		did+=("started redis-server (log $logfile)")
		log "redis: $(join ', ' "${did[@]}"); answering at $REDIS_HOST:$REDIS_PORT"
	fi
}

# ------------------------------------------------------------------- helpers

# tcp_open reports whether host:port accepts a TCP connection.
tcp_open() {
	local hp=$1
	(exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}") 2>/dev/null
}

# url_hostport prints host:port of a URL such as
# scheme://user:pass@host:port/db?x=y, or of a keyword/value DSN
# (host=... port=...), using the default port when none is given.
url_hostport() {
	local u=$1 def=$2 host port
	if [[ $u == *://* ]]; then
		u=${u#*://}
		u=${u%%/*}
		u=${u%%\?*}
		u=${u##*@}
		if [[ $u == \[* ]]; then
			host=${u%%]*}
			host=${host#[}
			port=${u##*]}
			port=${port#:}
		elif [[ $u == *:* ]]; then
			host=${u%:*}
			port=${u##*:}
		else
			host=$u
		fi
	else
		host=$(sed -n 's/.*\bhost=\([^ ]*\).*/\1/p' <<<"$u")
		port=$(sed -n 's/.*\bport=\([^ ]*\).*/\1/p' <<<"$u")
	fi
	printf '%s:%s' "${host:-127.0.0.1}" "${port:-$def}"
}

ensure_postgres
ensure_logical
ensure_redis
