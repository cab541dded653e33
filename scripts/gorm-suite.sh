#!/usr/bin/env bash
# gorm-suite.sh runs GORM's own test suite (the tests/ module of go-gorm/gorm)
# on PostgreSQL without the plugin and with it, and prints the difference:
#
#   make gorm-suite GORM_SRC=/path/to/gorm
#
# GORM_SRC is a checkout (or an extracted archive) of go-gorm/gorm at the
# version in our go.mod. The suite is not in GORM's module download, so this
# stays out of `make test` and CI. The source is copied to a scratch
# directory and only the copy is patched:
#
#   - tests/tests_test.go: OpenTestConnection is renamed, and a file added
#     next to it wraps it to install the plugin on every connection the suite
#     opens; the suite's global DB gets SkipDefaultTransaction in the -skiptx
#     modes.
#   - tests/go.mod: requires this repository (a replace to WT_SRC).
#   - model.go, in the cached modes only: gorm.Model's ID gets the cache tag,
#     so every model that embeds gorm.Model is cached.
#
# Modes (each also with -skiptx: the suite's DB has SkipDefaultTransaction):
#
#   plain      no plugin; the baseline (same module graph as the others)
#   installed  the plugin registered, no model tagged
#   cached     gorm.Model tagged, and every read marked cached
#
# A mode is compared with the plain run of the same SkipDefaultTransaction
# setting, which is added to MODES when missing. The script exits 1 when a
# test passes in plain and does not in another mode, unless the test is in
# EXPECTED below; 2 when it cannot run the suite.
#
# Environment:
#   GORM_SRC     go-gorm/gorm source tree (required)
#   WT_SRC       this repository (default: the checkout holding this script)
#   MODES        modes to run, in order (default: all six)
#   GORM_DSN     PostgreSQL for the suite (default: database gormtest on
#                127.0.0.1, user postgres, created when missing)
#   REDIS_URL    Redis for the plugin (default redis://127.0.0.1:6379/0)
#   RESULTS      directory for each run's output (default: a new one under
#                ${TMPDIR:-/tmp})
#   RUN_TIMEOUT  go test -timeout of one run (default 10m)
#   FAIL_LINES   lines of output shown per failing test (default 12)
#   KEEP_SCRATCH 1 keeps the patched copy and prints where it is
#   REPORT_ONLY  1 prints the report of the earlier run kept in RESULTS,
#                running nothing
set -euo pipefail

readonly ALL_MODES="plain installed cached plain-skiptx installed-skiptx cached-skiptx"
readonly DEFAULT_DSN="host=127.0.0.1 user=postgres dbname=gormtest port=5432 sslmode=disable TimeZone=UTC"
readonly CACHE_TAG='cache:"ttl:10m"'
# The Config field that marks every read cached, once the plugin has one.
# Without it the patch registers a query callback that does the same.
readonly CACHE_ALL_OPTION=${CACHE_ALL_OPTION:-CacheReads}
# TestUpdateReturning indexes its result without checking the error, so a
# refused statement panics the test binary: it runs alone.
readonly ALONE='^TestUpdateReturning$'

# EXPECTED lists the tests that observe the plugin's presence rather than a
# behaviour: a failure there is reported, not counted. One line each:
# test name, a tab, the reason.
readonly EXPECTED="\
TestPreparedStmtLruFromTransaction	expects GORM's prepared-statement cache empty after its TTL; the outbox drainer's poll keeps a statement alive
TestPreparedStmtDeadlock	asserts exactly two prepared statements; the plugin's re-read after each write of a cached model is a third"

log() { printf '%s\n' "$*"; }
die() {
	printf 'gorm-suite.sh: %s\n' "$*" >&2
	exit 2
}
have() { command -v "$1" >/dev/null 2>&1; }

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WT_SRC=$(cd "${WT_SRC:-$script_dir/..}" && pwd)
GORM_SRC=${GORM_SRC:-}
GORM_DSN=${GORM_DSN:-}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
RUN_TIMEOUT=${RUN_TIMEOUT:-10m}
FAIL_LINES=${FAIL_LINES:-12}
GO=${GO:-go}

# ------------------------------------------------------------------ checks

check_inputs() {
	local tool want_version have_version
	[[ -n $GORM_SRC ]] || die "set GORM_SRC to a go-gorm/gorm checkout at the version in go.mod (make gorm-suite GORM_SRC=...)"
	[[ -f $GORM_SRC/model.go && -f $GORM_SRC/tests/tests_test.go ]] ||
		die "GORM_SRC=$GORM_SRC does not look like go-gorm/gorm (no model.go or tests/tests_test.go)"
	GORM_SRC=$(cd "$GORM_SRC" && pwd)
	[[ -f $WT_SRC/go.mod ]] || die "WT_SRC=$WT_SRC has no go.mod"
	for tool in jq psql redis-cli "$GO"; do
		have "$tool" || die "$tool is not installed"
	done

	want_version=$(awk '$1 == "gorm.io/gorm" { print $2; exit }' "$WT_SRC/go.mod")
	if have_version=$(git -C "$GORM_SRC" describe --tags --exact-match 2>/dev/null); then
		[[ $have_version == "$want_version" ]] ||
			log "warning: GORM_SRC is at $have_version, go.mod requires gorm.io/gorm $want_version"
	else
		log "note: cannot tell GORM_SRC's version; go.mod requires gorm.io/gorm $want_version"
	fi
}

# choose_modes sets modes: MODES in order, each preceded by the plain run of
# its SkipDefaultTransaction setting.
modes=()
choose_modes() {
	local m
	for m in ${MODES:-$ALL_MODES}; do
		[[ " $ALL_MODES " == *" $m "* ]] || die "unknown mode $m (modes: $ALL_MODES)"
		if [[ $m == *-skiptx ]]; then add_mode plain-skiptx; else add_mode plain; fi
		add_mode "$m"
	done
}
add_mode() {
	local m
	for m in "${modes[@]}"; do [[ $m == "$1" ]] && return; done
	modes+=("$1")
}

# ---------------------------------------------------------------- services

check_services() {
	redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 || die "Redis at $REDIS_URL does not answer (make services)"

	if [[ -z $GORM_DSN ]]; then
		GORM_DSN=$DEFAULT_DSN
		local pg=(psql -X -w -q -t -A -h 127.0.0.1 -p 5432 -U postgres -d postgres)
		"${pg[@]}" -c 'select 1' >/dev/null 2>&1 || die "PostgreSQL on 127.0.0.1:5432 does not let user postgres in (make services)"
		if [[ $("${pg[@]}" -c "select 1 from pg_database where datname = 'gormtest'") != 1 ]]; then
			"${pg[@]}" -c 'create database gormtest' >/dev/null || die "cannot create database gormtest"
			log "created database gormtest"
		fi
	fi
	psql -X -w -q -t -A "$(psql_dsn "$GORM_DSN")" -c 'select 1' >/dev/null 2>&1 ||
		die "cannot connect to GORM_DSN ($GORM_DSN)"
}

# psql does not know the pgx-only TimeZone keyword.
psql_dsn() { sed -E 's/(^|[[:space:]])TimeZone=[^[:space:]]*//' <<<"$1"; }

# ------------------------------------------------------------------ scratch

scratch=
src=
prefixes=()

cleanup() {
	local p
	for p in "${prefixes[@]}"; do delete_keys "$p"; done
	[[ -n $scratch ]] || return 0
	if [[ ${KEEP_SCRATCH:-} == 1 ]]; then
		log "scratch copy kept in $scratch"
	else
		rm -rf "$scratch"
	fi
}

# delete_keys removes every Redis key under a prefix.
delete_keys() {
	redis-cli -u "$REDIS_URL" --scan --pattern "$1:*" 2>/dev/null |
		xargs -r -n 500 redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1 || true
}

# make_scratch copies GORM_SRC, without its .git, to a new scratch directory.
make_scratch() {
	trap cleanup EXIT
	scratch=$(mktemp -d "${TMPDIR:-/tmp}/gorm-suite.XXXXXX")
	src=$scratch/gorm
	mkdir -p "$src"
	tar -C "$GORM_SRC" --exclude=.git -cf - . | tar -C "$src" -xf -
	cp "$src/model.go" "$scratch/model.go.orig"
}

# patch_helper writes the Go file added to the scratch tests: the one place
# that says how the plugin is installed. The cached modes mark every read
# cached through Config.$CACHE_ALL_OPTION when the plugin has it, else
# through a query callback that does what writethrough.Cached does.
patch_helper() {
	local cache_all
	if find "$WT_SRC" -maxdepth 1 -name '*.go' ! -name '*_test.go' \
		-exec grep -Eqs "^[[:space:]]+${CACHE_ALL_OPTION}[[:space:]]+bool\b" {} +; then
		log "cached modes: Config.$CACHE_ALL_OPTION marks every read cached"
		cache_all="	cfg.$CACHE_ALL_OPTION = cacheAll
	if err := db.Use(writethrough.New(rdb, cfg)); err != nil {
		return err
	}
	return nil"
	else
		log "cached modes: a query callback marks every read cached (no Config.$CACHE_ALL_OPTION)"
		cache_all="	if err := db.Use(writethrough.New(rdb, cfg)); err != nil {
		return err
	}
	if !cacheAll {
		return nil
	}
	return db.Callback().Query().Before(\"gorm:query\").Register(\"gorm_suite:cache_all\", func(db *gorm.DB) {
		writethrough.Cached(db)
	})"
	fi
	cat >"$src/tests/zz_writethrough_test.go" <<EOF
package tests_test

// Added by writethrough's scripts/gorm-suite.sh to a scratch copy of GORM's
// suite; not part of GORM.

import (
	"os"

	"github.com/gorm-writethrough/writethrough"
	"github.com/redis/go-redis/v9"
	"gorm.io/gorm"
)

// gormSuiteSkipDefaultTransaction is the suite's global DB setting.
var gormSuiteSkipDefaultTransaction = os.Getenv("GORM_SUITE_SKIP_DEFAULT_TX") == "1"

// OpenTestConnection wraps the suite's own, renamed gormOpenTestConnection,
// and installs the plugin on the connection it opens.
func OpenTestConnection(cfg *gorm.Config) (*gorm.DB, error) {
	db, err := gormOpenTestConnection(cfg)
	if err != nil {
		return db, err
	}
	return db, gormSuiteInstall(db)
}

func gormSuiteInstall(db *gorm.DB) error {
	mode := os.Getenv("GORM_SUITE_MODE")
	if mode == "plain" {
		return nil
	}
	cacheAll := mode == "cached"
	opt, err := redis.ParseURL(os.Getenv("GORM_SUITE_REDIS_URL"))
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opt)
	cfg := writethrough.Config{Prefix: os.Getenv("GORM_SUITE_PREFIX")}
$cache_all
}
EOF
}

# patch edits the scratch copy once; the mode is chosen at run time, except
# the cache tag (set_tag).
patch() {
	local t=$src/tests/tests_test.go
	grep -q '^func OpenTestConnection(' "$t" || die "tests_test.go has no func OpenTestConnection"
	grep -qF 'DB, err = OpenTestConnection(&gorm.Config{})' "$t" ||
		die "tests_test.go does not open DB with OpenTestConnection(&gorm.Config{})"
	sed -i -e 's/^func OpenTestConnection(/func gormOpenTestConnection(/' \
		-e 's/DB, err = OpenTestConnection(&gorm.Config{})/DB, err = OpenTestConnection(\&gorm.Config{SkipDefaultTransaction: gormSuiteSkipDefaultTransaction})/' "$t"
	patch_helper
	(
		cd "$src/tests"
		"$GO" mod edit -require=github.com/gorm-writethrough/writethrough@v0.0.0-00010101000000-000000000000 \
			-replace=github.com/gorm-writethrough/writethrough="$WT_SRC"
		"$GO" mod tidy
	) >"$RESULTS/setup.log" 2>&1 || die "go mod tidy failed in the scratch tests; see $RESULTS/setup.log"
}

# set_tag puts the cache tag on gorm.Model's ID, or takes it off.
set_tag() {
	cp "$scratch/model.go.orig" "$src/model.go"
	[[ $1 == on ]] || return 0
	local bt='`'
	sed -i -E "s/^([[:space:]]*ID[[:space:]]+uint[[:space:]]+${bt}gorm:\"primarykey\")${bt}/\\1 ${CACHE_TAG}${bt}/" "$src/model.go"
	grep -qF "$CACHE_TAG" "$src/model.go" || die "cannot tag gorm.Model's ID in model.go"
}

# ---------------------------------------------------------------------- run

# timeout_seconds converts a go duration of minutes or seconds ("10m", "90s").
timeout_seconds() {
	case $1 in
	*m) echo $((${1%m} * 60)) ;;
	*s) echo "${1%s}" ;;
	*) die "RUN_TIMEOUT=$1: use minutes (10m) or seconds (600s)" ;;
	esac
}

# list_tests writes the suite's top-level test names to RESULTS/tests.list.
list_tests() {
	(
		cd "$src/tests"
		GORM_DIALECT=postgres GORM_DSN=$GORM_DSN GORM_SUITE_MODE=plain GOWORK=off \
			"$GO" test -count=1 -list '^Test' .
	) 2>>"$RESULTS/setup.log" | grep '^Test' | sort -u >"$RESULTS/tests.list" ||
		die "cannot list the suite's tests; see $RESULTS/setup.log"
}

# go_test runs the suite once in a mode with one -run or -skip argument,
# appending to RESULTS/<mode>.json, then refreshes RESULTS/<mode>.status:
# one line per top-level test with a result, "name action".
go_test() {
	local mode=$1 arg=$2 base=${1%-skiptx} skip=0 limit
	[[ $mode == *-skiptx ]] && skip=1
	limit=$(($(timeout_seconds "$RUN_TIMEOUT") + 120))
	(
		cd "$src/tests"
		GORM_DIALECT=postgres GORM_DSN=$GORM_DSN GORM_SUITE_MODE=$base \
			GORM_SUITE_SKIP_DEFAULT_TX=$skip GORM_SUITE_REDIS_URL=$REDIS_URL \
			GORM_SUITE_PREFIX=$(prefix_of "$mode") GOWORK=off \
			timeout --kill-after=30s "$limit" \
			"$GO" test -count=1 -json -timeout="$RUN_TIMEOUT" "$arg" .
	) >>"$RESULTS/$mode.json" 2>>"$RESULTS/$mode.stderr" || true
	jq -r 'select(.Test != null and (.Test | contains("/") | not)
		and (.Action == "pass" or .Action == "fail" or .Action == "skip"))
		| "\(.Test) \(.Action)"' "$RESULTS/$mode.json" 2>/dev/null |
		sort -u -k1,1 >"$RESULTS/$mode.status" || true
}

prefix_of() { printf 'gorm-suite-%s-%s' "$$" "$1"; }

# unfinished prints the tests of the list without a result in a mode, but
# the ones that run alone.
unfinished() {
	join -v1 "$RESULTS/tests.list" <(cut -d' ' -f1 "$RESULTS/$1.status") | grep -Ev "$ALONE" || true
}

# run_mode runs the suite in one mode: everything but ALONE; again for the
# tests a panic left without a result, as long as that makes progress; then
# ALONE.
run_mode() {
	local mode=$1 left n prev=-1 start=$SECONDS
	prefixes+=("$(prefix_of "$mode")")
	if [[ ${mode%-skiptx} == cached ]]; then set_tag on; else set_tag off; fi
	log "==> $mode: go test (timeout $RUN_TIMEOUT)"
	: >"$RESULTS/$mode.json"
	: >"$RESULTS/$mode.status"
	go_test "$mode" "-skip=$ALONE"
	while left=$(unfinished "$mode") && n=$(wc -w <<<"$left") && ((n > 0 && n != prev)); do
		prev=$n
		log "    the test binary died; running the $n test(s) it left"
		go_test "$mode" "-run=^($(tr '\n' '|' <<<"$left" | sed 's/|$//'))\$"
	done
	go_test "$mode" "-run=$ALONE"
	delete_keys "$(prefix_of "$mode")"
	jq -j 'select(.Action == "output") | .Output' "$RESULTS/$mode.json" >"$RESULTS/$mode.log" 2>/dev/null || true
	log "    $(counts "$mode") in $((SECONDS - start))s"
	if [[ ! -s $RESULTS/$mode.status ]]; then
		sed -n '1,20p' "$RESULTS/$mode.stderr" >&2
		die "$mode: no test ran; see $RESULTS/$mode.stderr"
	fi
}

counts() {
	local lost
	lost=$(unfinished "$1" | wc -l)
	awk -v lost="$lost" '{ n[$2]++ }
		END { printf "%d pass, %d fail, %d skip, %d without a result", n["pass"], n["fail"], n["skip"], lost }' \
		"$RESULTS/$1.status"
}

# failure_lines prints the first FAIL_LINES lines a test (and its subtests)
# wrote, without go test's own bookkeeping lines, GORM's slow-statement
# reports and terminal colours.
failure_lines() {
	local mode=$1 test=$2
	jq -r --arg t "$test" 'select(.Action == "output" and .Test != null
		and (.Test == $t or (.Test | startswith($t + "/")))) | .Output' "$RESULTS/$mode.json" |
		sed -E -e 's/\x1b\[[0-9;]*m//g' -e 's/\r//g' |
		grep -Ev '^[[:space:]]*(=== (RUN|PAUSE|CONT|NAME)|--- (PASS|SKIP))' |
		awk -v n="$FAIL_LINES" '
			/SLOW SQL >=/ { slow = 1; next }   # GORM logger: slow statements,
			slow && /^\[[0-9.]+ms\]/ { slow = 0; next } # two lines each
			{ slow = 0 }
			/ testing postgres\.\.\.$/ { next }
			NF && ++i <= n { print "        " $0 }'
}

expected_reason() {
	awk -F'\t' -v t="$1" '$1 == t { print $2; exit }' <<<"$EXPECTED"
}

# report prints each mode's counts and its difference from plain; it fails
# when a difference is not in EXPECTED.
report() {
	log
	log "==> summary (top-level tests)"
	for mode in "${modes[@]}"; do
		printf '  %-18s %s\n' "$mode" "$(counts "$mode")"
	done

	local mode baseline line test reason unexpected=0 lost gained
	for mode in "${modes[@]}"; do
		[[ $mode == plain || $mode == plain-skiptx ]] && continue
		baseline=plain
		[[ $mode == *-skiptx ]] && baseline=plain-skiptx
		# Tests that pass in the baseline and fail, skip or never finish here.
		mapfile -t lost < <(join -a1 -e missing -o 0,2.2 \
			<(awk '$2 == "pass" { print $1 }' "$RESULTS/$baseline.status") \
			"$RESULTS/$mode.status" | awk '$2 != "pass"')
		mapfile -t gained < <(join -o 0 \
			<(awk '$2 != "pass" { print $1 }' "$RESULTS/$baseline.status") \
			<(awk '$2 == "pass" { print $1 }' "$RESULTS/$mode.status"))
		log
		log "==> $mode vs $baseline: ${#lost[@]} passing test(s) no longer pass"
		for line in "${lost[@]}"; do
			test=${line%% *}
			reason=$(expected_reason "$test")
			if [[ -n $reason ]]; then
				log "  ${line} (expected: $reason)"
			else
				unexpected=$((unexpected + 1))
				log "  ${line}"
				failure_lines "$mode" "$test"
			fi
		done
		((${#gained[@]} == 0)) || log "  passing only with the plugin: ${gained[*]}"
	done

	log
	if ((unexpected > 0)); then
		log "gorm-suite: $unexpected unexpected difference(s); full output in $RESULTS"
		return 1
	fi
	log "gorm-suite: no unexpected difference; full output in $RESULTS"
}

# --------------------------------------------------------------------- main

if [[ ${REPORT_ONLY:-} == 1 ]]; then
	# Print the report of an earlier run kept in RESULTS.
	[[ -n ${RESULTS:-} && -f $RESULTS/tests.list ]] || die "REPORT_ONLY=1 needs RESULTS, the directory of an earlier run"
	for m in $ALL_MODES; do
		[[ -s $RESULTS/$m.status ]] && add_mode "$m"
	done
	report
	exit
fi

check_inputs
choose_modes
check_services
RESULTS=${RESULTS:-$(mktemp -d "${TMPDIR:-/tmp}/gorm-suite-results.XXXXXX")}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
log "GORM_SRC=$GORM_SRC"
log "WT_SRC=$WT_SRC"
log "results in $RESULTS"
make_scratch
patch
list_tests
for mode in "${modes[@]}"; do run_mode "$mode"; done
report
